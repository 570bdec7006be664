"""Benchmarks: step time and memory vs K (``parts``), jmtl vs PyTorch (``step``), every weighting
method (``weighting``), seeds in one program (``seeds``), the soak (``soak``), the architecture zoo
(``architectures``), Multi-LeNet's layer formulations (``lenet_ops``), the PyTorch reference
(``torch_reference``) and what they share (``common``). Each runs as ``python -m experiments.bench.<name>``
and writes into ``results/bench/`` with its provenance."""

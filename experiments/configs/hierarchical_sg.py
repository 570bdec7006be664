"""Experiment 1 -- Søgaard & Goldberg (ACL 2016) on CoNLL-2000: where to supervise POS.

Three-layer bi-LSTM tagger, linear softmax heads, trained by alternating tasks (each step draws one
task uniformly; S&G draw a task, then an example). Variants:

* ``single``: chunking alone, at layer 3;
* ``top``: POS and chunking both at layer 3;
* ``hier``: POS at layer 1, chunking at layer 3 (S&G's proposal).

    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py:hier \
        --workdir /tmp/sg --config.dataset.data_dir=../shared/data
    # the table: every variant, three seeds, results/hierarchical/sg.{json,md}
    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py \
        --workdir /tmp/sg --variants=single,top,hier --seeds=0,1,2 --results=results/hierarchical/sg

S&G used pretrained embeddings; none are available offline (`--config.model.pretrained_embeddings=PATH` reads a local GloVe / word2vec / Senna file), so by default words start random and a character
CNN helps with rare words.
"""

from experiments.configs import hierarchical_common


def get_config(arg=None):
    c = hierarchical_common.base_config()
    c.dataset.name = "conll2000"
    c.variants = dict(
        single=dict(chunk=3),
        top=dict(pos=3, chunk=3),
        hier=dict(pos=1, chunk=3),
    )
    c.select_on = "chunk"
    return hierarchical_common.apply_arg(c, arg, "hier")

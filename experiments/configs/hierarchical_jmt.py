"""Experiment 2 -- the Joint Many-Task layout (Hashimoto et al., EMNLP 2017) on CoNLL-2000.

Embeddings and LSTMs of size 100; every layer above the first receives the word representation
(shortcut) and the softmax-weighted label embeddings (size 100) of the tasks below it; heads have
one ReLU hidden layer of 100. Variants as in their "all-3" comparison:

* ``single``: chunking alone (layer 2, JMT's chunking layer);
* ``top``: POS and chunking at the same (top, 2nd) layer, no label embeddings passed;
* ``hier``: POS at layer 1, chunking at layer 2 with the POS label embeddings.

JMT trains the layers successively (one epoch per task, bottom up, with successive
regularisation); here all tasks train jointly with equal weights (``--config`` arg ``hier,NAME``
picks any other scheme, e.g. ``hier,alternating`` or ``hier,mgda``). No pretrained embeddings (a local file can be given with ``--config.model.pretrained_embeddings=PATH``) or
character n-gram embeddings are available offline: a character CNN stands in for the latter.
"""

from experiments.configs import common, hierarchical_common


def get_config(arg=None):
    c = hierarchical_common.base_config()
    c.dataset.name = "conll2000"
    c.variants = dict(
        single=dict(chunk=2),
        top=dict(pos=2, chunk=2),
        hier=dict(pos=1, chunk=2),
    )
    c.select_on = "chunk"
    c.model.num_layers = 2
    c.model.word_dim = 100
    c.model.hidden = 100
    c.model.label_dim = 100
    c.model.shortcut = True
    c.model.head_hidden = 100
    c.weighting = common.method_config("equal")
    return hierarchical_common.apply_arg(c, arg, "hier")

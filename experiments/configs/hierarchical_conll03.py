"""Experiment 3 -- three levels on CoNLL-2003 English: POS at layer 1, chunking at 2, NER at 3.

JMT-style layout (shortcuts, label embeddings of the lower tasks passed up, 100-d everywhere).
Variants:

* ``hier``: POS 1, chunk 2, NER 3;
* ``top``: all three at layer 3 (no label embeddings passed);
* ``single``: NER alone at layer 3.

Chunk and NER tags are IOB1 in the files and trained as IOB2 (same spans); eng.testa is the
validation split and eng.testb the test split; the validation NER F1 picks the epoch.
"""

from experiments.configs import common, hierarchical_common


def get_config(arg=None):
    c = hierarchical_common.base_config()
    c.dataset.name = "conll2003"
    c.dataset.kwargs.buckets = (16, 32, 48, 64, 128)
    c.variants = dict(
        hier=dict(pos=1, chunk=2, ner=3),
        top=dict(pos=3, chunk=3, ner=3),
        single=dict(ner=3),
    )
    c.select_on = "ner"
    c.model.word_dim = 100
    c.model.label_dim = 100
    c.model.shortcut = True
    c.model.head_hidden = 100
    c.model.dropout_rate = 0.5
    c.weighting = common.method_config("equal")
    return hierarchical_common.apply_arg(c, arg, "hier")

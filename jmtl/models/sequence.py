"""Hierarchical multi-task sequence taggers: a bi-LSTM stack with each task's head at its own layer.

Covers both papers' layouts with one module:

* Søgaard & Goldberg (2016): a stack of bi-LSTM layers; a task's softmax reads the layer given by
  its depth (POS at 1 and chunking at 3, or both at 3).
* Hashimoto et al. (2017, the Joint Many-Task model): additionally every layer above the first
  also receives the word representation (``shortcut``) and the *label embeddings* of the tasks
  below it: ``y = sum_j p(j | h) l_j``, the embedding table weighted by the lower task's softmax
  (``label_dim > 0``). Their classifiers have one ReLU hidden layer (``head_hidden``).

Params layout (what the multi-task train step expects)::

    {'shared': {'words':  word embedding (+ character CNN),
                'lstm_1' ... 'lstm_L': bi-LSTM layers,
                'labels_<task>': label embedding tables},   # several tasks' gradients
     'tasks':  {task: head}}                                 # one task's gradient each

A layer above the lowest task's head gets gradient only from the tasks above it, and a label
embedding table only from the tasks above its task; they are still shared (several tasks reach
them). The softmax passed up is ``stop_gradient``-ed, so a lower task's head is trained by that
task alone and really is task-specific -- the gradient weighting schemes see every cross-task
interaction in the Jacobian of ``'shared'``. (JMT lets the higher task's gradient flow into the
lower classifier; this is the one deliberate difference.)

Input: ``{'words': int32 [B, T], 'chars': int32 [B, T, W]}`` with id 0 = padding (sentence length
= number of non-zero word ids). Output: ``{task: logits [B, T, C_task]}``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models import crf
from jmtl.tasks import CRF_TAGGING

Array = jax.Array

PAD_ID = 0
UNK_ID = 1


class CharCNN(nn.Module):
    """Character embeddings -> 1-D convolution -> max over the word's characters (Ma & Hovy 2016).

    Gives unknown and rare words a representation from their spelling (suffixes, capitals, digits).
    """

    num_chars: int
    embed_dim: int = 16
    features: int = 32
    width: int = 3

    @nn.compact
    def __call__(self, chars: Array) -> Array:
        b, t, w = chars.shape
        x = nn.Embed(self.num_chars, self.embed_dim, embedding_init=nn.initializers.normal(0.1), name="embed")(chars)
        y = nn.Conv(self.features, (self.width,), padding="SAME", name="conv")(x.reshape(b * t, w, self.embed_dim))
        valid = (chars > PAD_ID).reshape(b * t, w, 1)
        # Padding characters must not win the max; an all-padding word (a padding token) gets zeros.
        y = jnp.max(jnp.where(valid, y, -jnp.inf), axis=1)
        y = jnp.where(jnp.isfinite(y), y, 0.0)
        return y.reshape(b, t, self.features)


class WordRepresentation(nn.Module):
    """Word embedding, concatenated with the character CNN's features when ``char_features > 0``.

    ``word_dropout``: during training each real word id is replaced by ``<unk>`` with this
    probability, which is how the ``<unk>`` embedding gets trained (every train word is in the
    vocabulary) and how the model learns to lean on the characters for unknown words.

    ``embedding_init``: the word table's initializer (default: normal, std ``word_dim**-0.5``);
    :func:`pretrained_init` gives one from a pretrained matrix. ``freeze``: the table gets no
    gradient (``stop_gradient``), so no task and no gradient-weighting scheme sees or moves it.
    """

    num_words: int
    num_chars: int
    word_dim: int = 100
    char_dim: int = 16
    char_features: int = 32
    char_width: int = 3
    word_dropout: float = 0.0
    embedding_init: Optional[Callable] = None
    freeze: bool = False

    @nn.compact
    def __call__(self, words: Array, chars: Array, *, train: bool) -> Array:
        if train and self.word_dropout > 0:
            drop = jax.random.bernoulli(self.make_rng("dropout"), self.word_dropout, words.shape)
            words = jnp.where(drop & (words > PAD_ID), UNK_ID, words)
        # std 1/sqrt(dim): unit-norm-ish vectors, the scale pretrained embeddings usually have.
        init = self.embedding_init or nn.initializers.normal(self.word_dim**-0.5)
        embed = nn.Embed(self.num_words, self.word_dim, embedding_init=init, name="embed")
        if self.freeze:
            x = jnp.take(jax.lax.stop_gradient(embed.embedding), words, axis=0)
        else:
            x = embed(words)
        if self.char_features > 0:
            c = CharCNN(self.num_chars, self.char_dim, self.char_features, self.char_width, name="chars")(chars)
            x = jnp.concatenate([x, c], axis=-1)
        return x


class BiLSTM(nn.Module):
    """One bidirectional LSTM layer; ``lengths`` keeps padding out of both directions' states."""

    hidden: int

    @nn.compact
    def __call__(self, x: Array, lengths: Array) -> Array:
        fwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name="fwd"))
        bwd = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name="bwd"))
        return nn.Bidirectional(fwd, bwd)(x, seq_lengths=lengths)


class SharedStack(nn.Module):
    """Everything that several tasks train: word representation, LSTM layers, label embeddings.

    Its methods are called one layer at a time by :class:`HierarchicalTagger`, interleaved with the
    task heads.
    """

    num_words: int
    num_chars: int
    num_layers: int
    hidden: int
    word_dim: int
    char_dim: int
    char_features: int
    char_width: int
    word_dropout: float
    dropout_rate: float
    label_dim: int
    label_tasks: tuple[str, ...]  # tasks whose label embeddings are passed up
    word_embedding_init: Optional[Callable] = None
    freeze_word_embeddings: bool = False

    def setup(self):
        self.words = WordRepresentation(
            self.num_words,
            self.num_chars,
            self.word_dim,
            self.char_dim,
            self.char_features,
            self.char_width,
            self.word_dropout,
            self.word_embedding_init,
            self.freeze_word_embeddings,
        )
        self.layers = [BiLSTM(self.hidden, name=f"lstm_{i + 1}") for i in range(self.num_layers)]
        if self.label_dim:
            self.label_tables = {
                t: nn.Dense(self.label_dim, use_bias=False, name=f"labels_{t}") for t in self.label_tasks
            }
        self.dropout = nn.Dropout(self.dropout_rate)

    def embed(self, words: Array, chars: Array, *, train: bool) -> Array:
        return self.dropout(self.words(words, chars, train=train), deterministic=not train)

    def layer(self, index: int, x: Array, lengths: Array, *, train: bool) -> Array:
        """Layer ``index`` (0-based) with dropout on its output."""
        return self.dropout(self.layers[index](x, lengths), deterministic=not train)

    def embed_labels(self, task: str, probs: Array) -> Array:
        """``sum_j p_j l_j``: the label embedding table weighted by the task's softmax."""
        return self.label_tables[task](probs)


class TagHead(nn.Module):
    """Per-token classifier: linear (``hidden=0``) or one ReLU hidden layer; with ``crf`` its scores
    are a CRF's emissions and the head also owns the transition scores (a ``crf.CRFOutput``)."""

    num_classes: int
    hidden: int = 0
    dropout_rate: float = 0.0
    crf: bool = False

    @nn.compact
    def __call__(self, x: Array, *, train: bool):
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="out")(x)
        return crf.CRFTransitions(self.num_classes, name="crf")(logits) if self.crf else logits


class TagHeads(nn.Module):
    """One head per task, registered under the task's name (``params['tasks'][name]``)."""

    names: tuple[str, ...]
    num_classes: tuple[int, ...]
    hidden: int = 0
    dropout_rate: float = 0.0
    crf_tasks: tuple[str, ...] = ()

    def setup(self):
        for name, c in zip(self.names, self.num_classes):
            setattr(self, name, TagHead(c, self.hidden, self.dropout_rate, crf=name in self.crf_tasks))

    def head(self, name: str, x: Array, *, train: bool) -> Array:
        return getattr(self, name)(x, train=train)


class HierarchicalTagger(nn.Module):
    """bi-LSTM stack with task ``names[i]`` predicted from layer ``depths[i]`` (1 = innermost).

    Attributes:
      names, num_classes, depths: per task.
      num_words, num_chars: vocabulary sizes (id 0 padding, id 1 unknown).
      num_layers: layers in the stack; layers above the highest head are not built.
      hidden: LSTM units per direction.
      word_dim, char_dim, char_features, char_width: word representation (``char_features=0``: no
        character CNN).
      label_dim: > 0 passes each task's softmax-weighted label embedding (this size) to every
        layer above it (JMT).
      shortcut: layers above the first also receive the word representation (JMT).
      head_hidden: hidden ReLU units of each head (0 = linear softmax as in S&G).
      dropout_rate: dropout on the word representation and on every layer's output.
      word_dropout: probability of replacing a word id by ``<unk>`` in training.
      crf_tasks: tasks with a linear-chain CRF output (``jmtl.models.crf``; task kind
        ``'crf_tagging'``); their label embeddings use the softmax of the emissions.
      word_embedding_init: initializer of the word table (None: random normal); pretrained
        vectors via :func:`pretrained_init`.
      freeze_word_embeddings: keep the word table fixed (no gradient reaches it).
    """

    names: tuple[str, ...]
    num_classes: tuple[int, ...]
    depths: tuple[int, ...]
    num_words: int
    num_chars: int
    num_layers: int = 3
    hidden: int = 100
    word_dim: int = 100
    char_dim: int = 16
    char_features: int = 32
    char_width: int = 3
    label_dim: int = 0
    shortcut: bool = False
    head_hidden: int = 0
    dropout_rate: float = 0.3
    word_dropout: float = 0.0
    crf_tasks: tuple[str, ...] = ()
    word_embedding_init: Optional[Callable] = None
    freeze_word_embeddings: bool = False

    def setup(self):
        if not (len(self.names) == len(self.num_classes) == len(self.depths)) or not self.names:
            raise ValueError("names, num_classes and depths need one entry per task")
        bad = [(n, d) for n, d in zip(self.names, self.depths) if not 1 <= d <= self.num_layers]
        if bad:
            raise ValueError(f"task depths must be in 1..{self.num_layers}, got {bad}")
        top = max(self.depths)
        self.shared = SharedStack(
            num_words=self.num_words,
            num_chars=self.num_chars,
            num_layers=top,
            hidden=self.hidden,
            word_dim=self.word_dim,
            char_dim=self.char_dim,
            char_features=self.char_features,
            char_width=self.char_width,
            word_dropout=self.word_dropout,
            dropout_rate=self.dropout_rate,
            label_dim=self.label_dim,
            label_tasks=tuple(n for n, d in zip(self.names, self.depths) if d < top),
            word_embedding_init=self.word_embedding_init,
            freeze_word_embeddings=self.freeze_word_embeddings,
        )
        unknown = sorted(set(self.crf_tasks) - set(self.names))
        if unknown:
            raise ValueError(f"crf_tasks {unknown} are not tasks of this model ({', '.join(self.names)})")
        self.tasks = TagHeads(self.names, self.num_classes, self.head_hidden, self.dropout_rate, self.crf_tasks)

    def __call__(self, inputs: Mapping[str, Array], *, train: bool = False) -> dict[str, Array]:
        words, chars = inputs["words"], inputs["chars"]
        lengths = jnp.sum(words > PAD_ID, axis=-1).astype(jnp.int32)
        emb = self.shared.embed(words, chars, train=train)
        top = max(self.depths)
        x, passed, outputs = emb, [], {}
        for layer in range(1, top + 1):
            parts = [x]
            if layer > 1:
                if self.shortcut:
                    parts.append(emb)
                parts += passed
            h = self.shared.layer(layer - 1, jnp.concatenate(parts, axis=-1), lengths, train=train)
            for name, depth in zip(self.names, self.depths):
                if depth != layer:
                    continue
                out = self.tasks.head(name, h, train=train)
                outputs[name] = out
                logits = out.emissions if isinstance(out, crf.CRFOutput) else out
                if self.label_dim and layer < top:
                    # stop_gradient: the head stays trained by its own task only (module docstring).
                    probs = jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32)))
                    passed.append(self.shared.embed_labels(name, probs))
            x = h
        return {n: outputs[n] for n in self.names}


def build(
    tasks: Sequence,
    depths: Mapping[str, int],
    *,
    num_words: int,
    num_chars: int,
    **kwargs,
) -> HierarchicalTagger:
    """A tagger for ``tasks`` (``jmtl.tasks.Task`` of kind 'tagging') with ``depths[task.name]``."""
    missing = [t.name for t in tasks if t.name not in depths]
    if missing:
        raise ValueError(f"no depth given for task(s) {', '.join(missing)}")
    return HierarchicalTagger(
        names=tuple(t.name for t in tasks),
        num_classes=tuple(t.num_outputs for t in tasks),
        depths=tuple(int(depths[t.name]) for t in tasks),
        num_words=num_words,
        num_chars=num_chars,
        crf_tasks=tuple(t.name for t in tasks if getattr(t, "kind", "") == CRF_TAGGING),
        **kwargs,
    )


def pretrained_init(matrix: np.ndarray, source: str = "the pretrained matrix") -> Callable:
    """An ``embedding_init`` that returns ``matrix`` (e.g. from :func:`jmtl.data.embeddings.embedding_matrix`).

    Args:
      matrix: ``[num_words, word_dim]`` initial table (row i = word id i).
      source: named in the error when the table's shape differs (e.g. the embeddings file).

    Raises:
      ValueError: at ``init``, when the model's table shape is not ``matrix.shape``, naming both.
    """
    matrix = np.asarray(matrix, np.float32)

    def init(key, shape, dtype=jnp.float32):
        del key  # deterministic: the random rows were drawn when the matrix was built
        if tuple(shape) != matrix.shape:
            raise ValueError(
                f"word embedding table of shape {tuple(shape)} (num_words, config.model.word_dim) "
                f"cannot start from {source} of shape {matrix.shape}"
            )
        return jnp.asarray(matrix, dtype)

    return init

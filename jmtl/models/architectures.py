"""The architecture zoo: how the tasks share (or do not share) the encoder.

Every architecture is a Linen module with the interface of :class:`jmtl.models.mtl.MultiTaskModel`
(``__call__(x, *, train) -> {task: output}``, ``encode`` / ``decode``) and one head per task from
:class:`TaskHeads` (``params['tasks'][task]``), optionally mixed by the task-relation matrix W
(``relation=True``: ``z_i = sum_j W_ij h_j`` before the output layers, ``params['relation']``).
``params['shared']`` holds exactly the parameters that receive gradients from several tasks (the
weighting methods take per-task Jacobians over it); every other top-level subtree is keyed by task.

==================  ======================================================================================
``arch``            params (besides ``tasks`` and the optional ``relation``)
==================  ======================================================================================
hps                 shared = encoder (the default, :class:`MultiTaskModel`)
independent         towers[task] = encoder copy; nothing shared (no ``'shared'`` key at all)
soft_sharing        as ``independent``; the penalty coupling the towers is in :mod:`regularizers`
cross_stitch        shared = {towers: {task: {stage_i}}, stitch_i: {alpha [K, K]}}
mtan                shared = {trunk: {stage_i}, extract: {stage_i}}; attention[task] = {stage_i: mask net}
mmoe / dselect_k    shared = {level_0: {shared_experts}}; gates[task] = {level_0: gate}
cgc / ple           see :mod:`jmtl.models.moe` (lower levels are shared, the last one task-specific)
learning_to_branch  shared = {stage_l: {node_i, parent_logits}} (l < L-1); towers[task] = {node, parent_logits}
==================  ======================================================================================

Why towers sit under ``'shared'`` in cross-stitch networks: the stitch unit after each stage feeds
every tower's activations into every other tower, so tower k's parameters receive gradients from
all tasks (unless the stitch matrices are exactly diagonal). Likewise all but the last stage of a
learning-to-branch tree, MTAN's trunk and the MoE experts.

Encoders: towers, cross-stitch columns, MTAN trunks and branch nodes are copies of the configured
encoder (``multi_lenet`` or ``mlp``), cut into stages by :mod:`jmtl.models.stages`. MoE experts are
copies of the whole encoder on the input (see :mod:`jmtl.models.moe`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jmtl.models import moe, stages as stages_lib
from jmtl.models.arch_base import Bag, bag, heads_forward, no_shared_representation, per_task, relation_param
from jmtl.models.mtl import MultiTaskModel, TaskHeads

Array = jax.Array


# ----------------------------------------------------------------------------- independent / soft


class IndependentTowers(nn.Module):
    """One copy of the encoder per task and no sharing: K single-task models trained in one model.

    With ``arch='soft_sharing'`` the same model is trained with a penalty pulling corresponding
    tower weights together (Duong et al. 2015: L2 distance; Yang & Hospedales 2017: trace norm of
    the stacked weights), see :func:`jmtl.models.regularizers.soft_sharing`. The penalty lives
    outside the module: ``apply`` stays the plain forward pass.

    Params: ``{'towers': {task: encoder params}, 'tasks': {task: head}, 'relation'?}``; Flax omits
    the empty ``'shared'`` collection.
    """

    towers: Bag
    tasks: TaskHeads
    relation: bool = False
    arch: str = "independent"

    def setup(self):
        if self.relation:
            self.relation_matrix = relation_param(self, len(self.tasks.names))

    def encode(self, x: Array, *, train: bool = False) -> Array:
        raise no_shared_representation(self.arch, "every task has its own tower")

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        raise no_shared_representation(self.arch, "every task has its own tower")

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        feats = [self.towers[n](x, train=train) for n in self.tasks.names]
        return heads_forward(self.tasks, feats, self.relation_matrix if self.relation else None, train=train)


# ----------------------------------------------------------------------------- cross-stitch


def _stitch_init(num_tasks: int, self_weight: float) -> Callable:
    """alpha_ii = self_weight, alpha_ij = (1 - self_weight) / (K - 1): rows sum to one."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if num_tasks == 1:
            return jnp.ones(shape, dtype)
        off = (1.0 - self_weight) / (num_tasks - 1)
        return (off * jnp.ones(shape) + (self_weight - off) * jnp.eye(num_tasks)).astype(dtype)

    return init


class CrossStitchUnit(nn.Module):
    """x~_i = sum_j alpha_ij x_j over the K tasks' activations (Misra et al. 2016, eq. 1).

    One K x K matrix per stage, shared by all channels (the paper also allows one per channel).
    Initialised near the identity (0.9 / 0.1 for two tasks, as in the paper's experiments).
    """

    num_tasks: int
    self_weight: float = 0.9

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> list[Array]:
        k = self.num_tasks
        alpha = self.param("alpha", _stitch_init(k, self.self_weight), (k, k))
        stacked = jnp.stack(xs)  # [K, B, ...]
        return list(jnp.einsum("ij,j...->i...", alpha.astype(stacked.dtype), stacked))


class CrossStitch(nn.Module):
    """Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, CVPR 2016).

    One column (copy of the encoder) per task; after every stage a cross-stitch unit mixes the
    columns' activations. With identity stitch matrices it computes exactly what independent towers
    with the same tower params compute.
    """

    shared: Bag  # {'towers': Bag{task: Staged}, 'stitch_i': CrossStitchUnit}
    tasks: TaskHeads
    num_stages: int
    relation: bool = False

    def setup(self):
        if self.relation:
            self.relation_matrix = relation_param(self, len(self.tasks.names))

    def encode(self, x: Array, *, train: bool = False) -> Array:
        raise no_shared_representation("cross_stitch", "every task has its own column")

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        raise no_shared_representation("cross_stitch", "every task has its own column")

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        names = self.tasks.names
        towers = self.shared["towers"]
        xs = [x] * len(names)
        for i in range(self.num_stages):
            xs = [towers[n].stage(i, h, train=train) for n, h in zip(names, xs)]
            xs = self.shared[f"stitch_{i}"](xs)
        return heads_forward(self.tasks, xs, self.relation_matrix if self.relation else None, train=train)


# ----------------------------------------------------------------------------- MTAN


class AttentionMask(nn.Module):
    """MTAN's task attention g: two 1x1 convolutions (Dense over the channel axis), ReLU then a
    sigmoid, giving a soft mask with the shape of the shared features it multiplies.

    The paper also has batch norm after each convolution; jmtl's models keep no batch statistics,
    so it is left out.
    """

    @nn.compact
    def __call__(self, inputs: Array, features: Array) -> Array:
        c = features.shape[-1]
        h = nn.relu(nn.Dense(c, name="g1")(inputs))
        return jax.nn.sigmoid(nn.Dense(c, name="g2")(h)) * features


class MTAN(nn.Module):
    """Multi-task attention network (Liu, Johns, Davison, CVPR 2019), on the stages of any encoder.

    A shared trunk computes features p^j at every stage j. Task k keeps attended features
    a_k^j = g_k^j([p^j, f^j(a_k^{j-1})]) * p^j (for j = 0 the mask reads p^0 alone), where g_k^j is
    task k's :class:`AttentionMask` and f^j, shared by all tasks as in the authors' code, is a copy
    of trunk stage j that carries the previous attended features to stage j's shape (MTAN's "shared
    feature extractor"; a 3x3 conv + pooling there). Head k reads a_k at the last stage.

    Simplification: the paper's attention input is the block's intermediate features u^j and the
    mask multiplies its output p^j; here both are the stage output p^j (stages of LeNet/MLP are
    single layers).
    """

    shared: Bag  # {'trunk': Staged, 'extract': Staged}
    attention: Bag  # {task: Bag{stage_i: AttentionMask}}
    tasks: TaskHeads
    num_stages: int
    relation: bool = False

    def setup(self):
        if self.relation:
            self.relation_matrix = relation_param(self, len(self.tasks.names))

    def encode(self, x: Array, *, train: bool = False) -> Array:
        raise no_shared_representation("mtan", "each task attends to every stage of the trunk")

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        raise no_shared_representation("mtan", "each task attends to every stage of the trunk")

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        names = self.tasks.names
        trunk, extract = self.shared["trunk"], self.shared["extract"]
        p = x
        attended: list[Optional[Array]] = [None] * len(names)
        for j in range(self.num_stages):
            p = trunk.stage(j, p, train=train)
            for k, n in enumerate(names):
                if j == 0:
                    inputs = p
                else:
                    inputs = jnp.concatenate([p, extract.stage(j, attended[k], train=train)], axis=-1)
                attended[k] = self.attention[n][f"stage_{j}"](inputs, p)
        feats = [a.reshape(a.shape[0], -1) for a in attended]
        return heads_forward(self.tasks, feats, self.relation_matrix if self.relation else None, train=train)


# ----------------------------------------------------------------------------- learning to branch


def branch_weights(logits: Array, *, train: bool, temperature: Array | float, hard: bool, rng: Optional[Array]) -> Array:
    """Parent weights ``[children, parents]``: a Gumbel-softmax sample in training, the argmax
    parent (the derived tree) in evaluation. ``hard`` uses the straight-through estimator."""
    if not train:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)
    gumbel = jax.random.gumbel(rng, logits.shape, logits.dtype)
    soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + soft - jax.lax.stop_gradient(soft)


class BranchLayer(nn.Module):
    """``width`` nodes (copies of one encoder stage); each reads a Gumbel-softmax mixture of the
    previous layer's nodes, from its row of ``parent_logits`` ``[width, num_parents]``."""

    stage: nn.Module
    width: int
    num_parents: int
    hard: bool = False

    def setup(self):
        for i in range(self.width):
            setattr(self, f"node_{i}", self.stage.clone())
        if self.num_parents > 1:
            self.parent_logits = self.param("parent_logits", nn.initializers.zeros, (self.width, self.num_parents))

    def __call__(self, parents: Sequence[Array], *, train: bool, temperature) -> list[Array]:
        if self.num_parents == 1:
            inputs = [parents[0]] * self.width
        else:
            # Gumbel noise comes from the 'dropout' stream: the one stream the train step provides,
            # and like dropout it is training-time noise.
            rng = self.make_rng("dropout") if train else None
            w = branch_weights(self.parent_logits, train=train, temperature=temperature, hard=self.hard, rng=rng)
            stacked = jnp.stack(parents)
            inputs = list(jnp.einsum("cp,p...->c...", w.astype(stacked.dtype), stacked))
        return [getattr(self, f"node_{i}")(h, train=train) for i, h in enumerate(inputs)]


class BranchLeaf(nn.Module):
    """Task k's node of the last layer and its parent logits ``[num_parents]`` (task-specific)."""

    stage: nn.Module
    num_parents: int
    hard: bool = False

    def setup(self):
        self.node = self.stage.clone()
        if self.num_parents > 1:
            self.parent_logits = self.param("parent_logits", nn.initializers.zeros, (self.num_parents,))

    def __call__(self, parents: Sequence[Array], *, train: bool, temperature) -> Array:
        if self.num_parents == 1:
            return self.node(parents[0], train=train)
        rng = self.make_rng("dropout") if train else None
        w = branch_weights(self.parent_logits[None], train=train, temperature=temperature, hard=self.hard, rng=rng)[0]
        stacked = jnp.stack(parents)
        return self.node(jnp.einsum("p,p...->...", w.astype(stacked.dtype), stacked), train=train)


class LearningToBranch(nn.Module):
    """Learning to branch (Guo, Lee, Ulbricht, ICML 2020): a tree-structured network whose
    branching is learnt with Gumbel-softmax sampling.

    Stage l of the encoder has ``widths[l]`` nodes (the last stage has one node per task); every
    node of stage l > 0 picks its parent among the nodes of stage l-1 with learnable logits. In
    training the choice is a Gumbel-softmax sample at temperature ``temperature`` (the call argument
    overrides the field, so the train step can decay it over steps: :func:`temperature_schedule`);
    in evaluation every node takes its most probable parent (the derived tree, see :func:`derived_tree`).

    Simplification: the paper alternates updates of the weights and of the branching logits on
    separate data and retrains the derived tree; here both are trained jointly on the same batches.
    """

    shared: Bag  # {'stage_l': BranchLayer} for l < L-1
    towers: Bag  # {task: BranchLeaf}
    tasks: TaskHeads
    widths: tuple[int, ...]
    temperature: float = 1.0
    temperature_decay: float = 1.0  # multiplicative decay per `temperature_decay_steps` steps
    temperature_decay_steps: int = 1
    min_temperature: float = 0.1
    relation: bool = False

    def setup(self):
        if self.relation:
            self.relation_matrix = relation_param(self, len(self.tasks.names))

    def encode(self, x: Array, *, train: bool = False) -> Array:
        raise no_shared_representation("learning_to_branch", "tasks branch off at learnt points of the tree")

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        raise no_shared_representation("learning_to_branch", "tasks branch off at learnt points of the tree")

    def __call__(self, x: Array, *, train: bool = False, temperature: Optional[Array] = None) -> dict[str, Array]:
        tau = self.temperature if temperature is None else temperature
        outs = [x]
        for l in range(len(self.widths) - 1):
            outs = self.shared[f"stage_{l}"](outs, train=train, temperature=tau)
        feats = [self.towers[n](outs, train=train, temperature=tau) for n in self.tasks.names]
        return heads_forward(self.tasks, feats, self.relation_matrix if self.relation else None, train=train)


def temperature_schedule(model: LearningToBranch) -> optax.Schedule:
    """tau(step) = max(min_temperature, temperature * decay^(step / decay_steps))."""
    return optax.exponential_decay(
        model.temperature,
        transition_steps=max(1, model.temperature_decay_steps),
        decay_rate=model.temperature_decay,
        end_value=model.min_temperature if model.temperature_decay < 1.0 else None,
    )


def model_kwargs_fn(model: nn.Module) -> Optional[Callable[[Array], dict]]:
    """``step -> extra model.apply kwargs`` for training (the Gumbel temperature of learning to
    branch), or ``None`` for models that take none."""
    if isinstance(model, LearningToBranch):
        schedule = temperature_schedule(model)
        return lambda step: {"temperature": schedule(step)}
    return None


def derived_tree(params: Mapping[str, Any], task_names: Sequence[str]) -> dict:
    """The argmax parent of every node (the tree used in evaluation): ``{'stage_l': [parent per
    node], task: parent}``; stages with a single parent are omitted."""
    out = {}
    for key, sub in sorted(params.get("shared", {}).items()):
        if "parent_logits" in sub:
            out[key] = [int(i) for i in jnp.argmax(sub["parent_logits"], axis=-1)]
    for n in task_names:
        leaf = params["towers"][n]
        if "parent_logits" in leaf:
            out[n] = int(jnp.argmax(leaf["parent_logits"]))
    return out


# ----------------------------------------------------------------------------- builders


def _towers(encoder, heads, relation, arch):
    towers = bag(per_task(heads.names, lambda n: encoder))
    return IndependentTowers(towers=towers, tasks=heads, relation=relation, arch=arch)


def _build_independent(encoder, heads, relation):
    return _towers(encoder, heads, relation, "independent")


def _build_soft(encoder, heads, relation):
    # The penalty's kind and weight are regularizer keys of arch_kwargs (jmtl.models.regularizers).
    return _towers(encoder, heads, relation, "soft_sharing")


def _build_cross_stitch(encoder, heads, relation, *, self_weight: float = 0.9):
    st = stages_lib.stages_of(encoder)
    k = len(heads.names)
    shared = {"towers": per_task(heads.names, lambda n: stages_lib.Staged(stages=st))}
    for i in range(len(st)):
        shared[f"stitch_{i}"] = CrossStitchUnit(num_tasks=k, self_weight=self_weight)
    return CrossStitch(shared=bag(shared), tasks=heads, num_stages=len(st), relation=relation)


def _build_mtan(encoder, heads, relation):
    st = stages_lib.stages_of(encoder)
    shared = {"trunk": stages_lib.Staged(stages=st), "extract": stages_lib.Staged(stages=st)}
    attention = per_task(heads.names, lambda n: {f"stage_{j}": AttentionMask() for j in range(len(st))})
    return MTAN(shared=bag(shared), attention=bag(attention), tasks=heads, num_stages=len(st), relation=relation)


def _build_l2b(
    encoder,
    heads,
    relation,
    *,
    widths: Optional[Sequence[int]] = None,
    temperature: float = 5.0,
    temperature_decay: float = 0.97,
    temperature_decay_steps: int = 100,
    min_temperature: float = 0.5,
    hard: bool = False,
):
    st = stages_lib.stages_of(encoder)
    k = len(heads.names)
    if widths is None:  # one root node, then one node per task at every later stage
        widths = (k,) if len(st) == 1 else (1,) + (k,) * (len(st) - 1)
    widths = tuple(int(w) for w in widths)
    if len(widths) != len(st) or widths[-1] != k or min(widths) < 1:
        raise ValueError(
            f"learning_to_branch widths must give a node count for each of the encoder's {len(st)} stages "
            f"and end with the number of tasks ({k}); got {widths}"
        )
    parents = (1,) + widths[:-1]
    shared = {
        f"stage_{l}": BranchLayer(stage=st[l], width=widths[l], num_parents=parents[l], hard=hard)
        for l in range(len(st) - 1)
    }
    towers = per_task(heads.names, lambda n: BranchLeaf(stage=st[-1], num_parents=parents[-1], hard=hard))
    return LearningToBranch(
        shared=bag(shared),
        towers=bag(towers),
        tasks=heads,
        widths=widths,
        temperature=temperature,
        temperature_decay=temperature_decay,
        temperature_decay_steps=temperature_decay_steps,
        min_temperature=min_temperature,
        relation=relation,
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "independent": _build_independent,
    "soft_sharing": _build_soft,
    "cross_stitch": _build_cross_stitch,
    "mtan": _build_mtan,
    "mmoe": moe.build_mmoe,
    "dselect_k": moe.build_dselect_k,
    "cgc": moe.build_cgc,
    "ple": moe.build_ple,
    "learning_to_branch": _build_l2b,
}
NAMES = ("hps",) + tuple(ARCHITECTURES)


def build(arch: str, *, encoder: nn.Module, heads: TaskHeads, relation: bool = False, **kwargs) -> nn.Module:
    """The ``arch`` model over copies of ``encoder`` with ``heads``; ``kwargs`` are the
    architecture's options (``config.model.arch_kwargs`` minus the regularizer keys)."""
    if arch == "hps":
        if kwargs:
            raise ValueError(f"arch 'hps' takes no arch_kwargs, got {', '.join(sorted(kwargs))}")
        return MultiTaskModel(shared=encoder, tasks=heads, relation=relation)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(NAMES)}")
    fn = ARCHITECTURES[arch]
    accepted = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    unknown = set(kwargs) - set(accepted)
    if unknown:
        raise ValueError(
            f"unknown arch_kwargs {', '.join(sorted(unknown))} for arch {arch!r}; valid: {', '.join(accepted) or '(none)'}"
        )
    return fn(encoder, heads, relation, **kwargs)


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))

"""The architecture zoo: how the tasks share (or do not share) the encoder.

Every architecture is a :class:`jmtl.models.base.MultiTaskBase` (``__call__(x, *, train) -> {task:
output}``, ``encode`` / ``decode`` / ``decode_split`` and the ``separable_heads`` capability: see
:mod:`jmtl.models.base`) with one head per task from :class:`TaskHeads` (``params['tasks'][task]``),
optionally mixed by the task-relation matrix W (``relation=True``: ``z_i = sum_j W_ij h_j`` before
the output layers, ``params['relation']``). ``params['shared']`` holds exactly the parameters that
receive gradients from several tasks (the weighting schemes take per-task Jacobians over it); every
other top-level subtree is keyed by task.

:data:`ARCHITECTURES` is the registry (every ``arch`` name, ``hps`` included) and :func:`build` its
single entry point.

==================  ======================================================================================
``arch``            params (besides ``tasks`` and the optional ``relation``)
==================  ======================================================================================
hps                 shared = encoder (the default, :class:`MultiTaskModel`)
independent         towers[task] = encoder copy; nothing shared (no ``'shared'`` key at all)
soft_sharing        as ``independent``; the penalty coupling the towers is in :mod:`regularizers`
cross_stitch        shared = {towers: {task: {stage_i}}, stitch_i: {alpha [K, K]}}
mtan                shared = {trunk: {stage_i}, extract: {stage_i}}; attention[task] = {stage_i: mask net}
mtan_segnet         shared = {segnet, enc_att_j, dec_att_i}; attention[task] = {enc_j, dec_i} (SegNet only,
                    :class:`jmtl.models.vision.MTANSegNet`)
omoe                shared = {experts: {expert_i}, gate}: one gate for all tasks (:class:`OneGateMoE`)
mmoe / dselect_k    shared = {level_0: {shared_experts}}; gates[task] = {level_0: gate}
cgc / ple           see :mod:`jmtl.models.moe` (lower levels are shared, the last one task-specific)
learning_to_branch  shared = {stage_l: {node_i, parent_logits}} (l < L-1); towers[task] = {node, parent_logits}
==================  ======================================================================================

Why towers sit under ``'shared'`` in cross-stitch networks: the stitch unit after each stage feeds
every tower's activations into every other tower, so tower k's parameters receive gradients from
all tasks (unless the stitch matrices are exactly diagonal). Likewise all but the last stage of a
learning-to-branch tree, MTAN's trunk and the MoE experts.

Encoders: towers, cross-stitch columns, MTAN trunks and branch nodes are copies of the configured
encoder, cut into stages by :mod:`jmtl.models.stages` (``multi_lenet`` and ``mlp`` have several
stages; any other Linen module with ``__call__(x, *, train)`` is one stage). MoE experts are
copies of the whole encoder on the input (see :mod:`jmtl.models.moe`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jmtl.models import moe, vision
from jmtl.models import stages as stages_lib
from jmtl.models.base import Bag, MultiTaskBase, TaskHeads, bag, mix_tasks, per_task
from jmtl.registry import Registry

Array = jax.Array


# ----------------------------------------------------------------------------- hard sharing (hps)


class MultiTaskModel(MultiTaskBase):
    """Hard parameter sharing: shared encoder -> per-task representations h_k -> (relation mixing)
    -> per-task outputs.

    With ``relation=True`` a learnable K x K matrix W (initialised to the identity) mixes the task
    representations before each output layer: ``z_i = sum_j W_ij h_j``. Its Frobenius penalty
    ``alpha |W|_F^2`` is added to the objective by the train step.

    Params: ``{'shared': encoder, 'tasks': {task: head}, 'relation'?: W}``.
    """

    shared: nn.Module
    tasks: TaskHeads
    relation: bool = False
    arch: ClassVar[str] = "hps"

    @property
    def separable_heads(self) -> bool:
        """Without W task k's output reads the representation through head k alone."""
        return not self.relation

    def encode(self, x: Array, *, train: bool = False) -> Array:
        """The shared representation (input of every head)."""
        return self.shared(x, train=train)

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        """Task outputs from the shared representation."""
        return self.task_outputs([rep] * len(self.tasks.names), train=train)

    def decode_split(self, reps: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        """Like :meth:`decode`, with task k's head reading its own copy ``reps[k]`` of the shared
        representation (only without W: see :mod:`jmtl.models.base`)."""
        self._check_split(reps)
        return self.task_outputs(reps, train=train)

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        return self.decode(self.encode(x, train=train), train=train)


class OneGateMoE(MultiTaskModel):
    """One-gate mixture of experts (OMoE; Ma et al., KDD 2018, eq. 5 and Sec. 6): hard parameter
    sharing whose shared bottom is :class:`jmtl.models.moe.OneGateMixture`, i.e. every task's head
    reads ``y = sum_e g(x)_e f_e(x)`` with ONE softmax gate ``g`` for all tasks (MMoE gives each
    task its own gate). The experts and the gate are shared; ``encode`` returns y.

    Params: ``{'shared': {'experts': {expert_i}, 'gate': {'logits'}}, 'tasks': {task: head}, 'relation'?}``.
    """

    arch: ClassVar[str] = "omoe"


# ----------------------------------------------------------------------------- independent / soft


class IndependentTowers(MultiTaskBase):
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
    no_representation_reason: ClassVar[str] = "every task has its own tower"

    @property
    def no_shared_params(self) -> bool:
        """Nothing is shared: every param has one task's gradient (the step then takes the plain
        sum of the task gradients; a gradient weighting scheme has nothing to balance)."""
        return True

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        feats = [self.towers[n](x, train=train) for n in self.tasks.names]
        return self.task_outputs(feats, train=train)


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
        return mix_tasks(alpha, xs)


class CrossStitch(MultiTaskBase):
    """Cross-stitch networks (Misra, Shrivastava, Gupta, Hebert, CVPR 2016).

    One column (copy of the encoder) per task; after every stage a cross-stitch unit mixes the
    columns' activations. With identity stitch matrices it computes exactly what independent towers
    with the same tower params compute.
    """

    shared: Bag  # {'towers': Bag{task: Staged}, 'stitch_i': CrossStitchUnit}
    tasks: TaskHeads
    num_stages: int
    relation: bool = False
    arch: ClassVar[str] = "cross_stitch"
    no_representation_reason: ClassVar[str] = "every task has its own column"

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        names = self.tasks.names
        towers = self.shared["towers"]
        xs = [x] * len(names)
        for i in range(self.num_stages):
            xs = [towers[n].stage(i, h, train=train) for n, h in zip(names, xs)]
            xs = self.shared[f"stitch_{i}"](xs)
        return self.task_outputs(xs, train=train)


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


class MTAN(MultiTaskBase):
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
    arch: ClassVar[str] = "mtan"
    no_representation_reason: ClassVar[str] = "each task attends to every stage of the trunk"

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
        return self.task_outputs(feats, train=train)


# ----------------------------------------------------------------------------- learning to branch


def branch_weights(
    logits: Array, *, train: bool, temperature: Array | float, hard: bool, rng: Optional[Array]
) -> Array:
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


class LearningToBranch(MultiTaskBase):
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
    arch: ClassVar[str] = "learning_to_branch"
    no_representation_reason: ClassVar[str] = "tasks branch off at learnt points of the tree"

    def __call__(self, x: Array, *, train: bool = False, temperature: Optional[Array] = None) -> dict[str, Array]:
        tau = self.temperature if temperature is None else temperature
        outs = [x]
        for l in range(len(self.widths) - 1):
            outs = self.shared[f"stage_{l}"](outs, train=train, temperature=tau)
        feats = [self.towers[n](outs, train=train, temperature=tau) for n in self.tasks.names]
        return self.task_outputs(feats, train=train)


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


def _build_hps(encoder, heads, relation):
    return MultiTaskModel(shared=encoder, tasks=heads, relation=relation)


def _build_omoe(encoder, heads, relation, *, num_experts: int = 4):
    """OMoE: ``num_experts`` copies of the encoder mixed by one softmax gate shared by all tasks."""
    return OneGateMoE(
        shared=moe.OneGateMixture(template=encoder, num_experts=num_experts), tasks=heads, relation=relation
    )


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


# The registry: arch name -> builder(encoder, heads, relation, **arch options). hps first (names in
# this order in the errors too).
ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry(
    "arch",
    {
        "hps": _build_hps,
        "independent": _build_independent,
        "soft_sharing": _build_soft,
        "cross_stitch": _build_cross_stitch,
        "mtan": _build_mtan,
        "omoe": _build_omoe,
        "mmoe": moe.build_mmoe,
        "dselect_k": moe.build_dselect_k,
        "cgc": moe.build_cgc,
        "ple": moe.build_ple,
        "learning_to_branch": _build_l2b,
        "mtan_segnet": vision.build_mtan_segnet,
    },
    valid_label="valid",
    sort_names=False,
)
NAMES = tuple(ARCHITECTURES)
# Architectures built for one encoder: {arch: the encoder name it needs}. The rest take any encoder.
ENCODER_SPECIFIC = {"mtan_segnet": "segnet"}


def _check_encoder(encoder: Any) -> None:
    """The encoder must be a Linen module called as ``encoder(x, train=...)``."""
    need = "an encoder must be a flax.linen Module with `__call__(self, x, *, train: bool)` returning the features"
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{need}; got {type(encoder).__name__}")
    try:
        params = inspect.signature(type(encoder).__call__).parameters
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return
    takes_train = "train" in params and params["train"].kind in (
        params["train"].KEYWORD_ONLY,
        params["train"].POSITIONAL_OR_KEYWORD,
    )
    if not takes_train and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise ValueError(
            f"{need}; {type(encoder).__name__}.__call__ has no `train` argument (add `*, train: bool = False`)"
        )


def build(arch: str, *, encoder: nn.Module, heads: TaskHeads, relation: bool = False, **kwargs) -> nn.Module:
    """The ``arch`` model over copies of ``encoder`` with ``heads``.

    Args:
      arch: a name of :data:`ARCHITECTURES` (``'hps'`` = hard sharing, :class:`MultiTaskModel`).
      encoder: the (unbound) encoder template: ``encoders.MLP`` / ``encoders.MultiLeNet`` or any
        Linen module with ``__call__(x, *, train)``.
      heads: one head per task.
      relation: add the task-relation matrix W (``params['relation']``).
      **kwargs: the architecture's options (``config.model.arch_kwargs`` minus the regularizer
        keys); the keyword-only arguments of its builder.
    """
    fn = ARCHITECTURES.lookup(arch)
    _check_encoder(encoder)
    accepted = [p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    unknown = set(kwargs) - set(accepted)
    if unknown and not accepted:
        raise ValueError(f"arch {arch!r} takes no arch_kwargs, got {', '.join(sorted(unknown))}")
    if unknown:
        raise ValueError(
            f"unknown arch_kwargs {', '.join(sorted(unknown))} for arch {arch!r}; valid: {', '.join(accepted)}"
        )
    return fn(encoder, heads, relation, **kwargs)


def count_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))

"""Mixture-of-experts architectures: MMoE, DSelect-k, CGC and PLE, as one module.

* MMoE (Ma et al., KDD 2018): E shared experts; task k's output is sum_e g_k(x)_e f_e(x) with a
  softmax gate g_k(x) = softmax(W_k x) per task.
* DSelect-k (Hazimeh et al., NeurIPS 2021): MMoE with each task's softmax gate replaced by a
  DSelect-k gate (:class:`DSelectGate`), which selects at most k experts and is differentiable.
* CGC (Tang et al., RecSys 2020, "Progressive Layered Extraction"): shared experts plus experts
  owned by each task; task k's gate mixes its own and the shared experts.
* PLE (same paper): CGC stacked ``num_levels`` times; at every level but the last a shared gate
  mixes *all* experts into the input of the next level's shared experts, and task k's gate output
  is the input of task k's next-level experts.

MMoE is CGC with no task experts; all four are :class:`MixtureOfExperts` with different settings.

* OMoE (Ma et al.'s one-gate baseline, eq. 5): the same E experts mixed by ONE softmax gate shared
  by all tasks, y = sum_e g(x)_e f_e(x); every task's head reads the same y.
  :class:`OneGateMixture` is that mixture as a shared encoder, so OMoE is hard parameter sharing
  over it (``arch='omoe'`` in :mod:`jmtl.models.architectures`): the experts and the gate all
  receive every task's gradient (``params['shared'] = {experts: {expert_i}, gate: {logits}}``),
  and y is the shared representation (MGDA-UB applies).

Experts: the first level's experts are copies of the whole configured encoder on the input (so a
one-expert MMoE is exactly hard parameter sharing); experts of later PLE levels are one-layer ReLU
MLPs (``level_features`` wide) on the previous level's mixtures. Gates are linear maps of the
flattened input of their level (Ma et al. eq. 5; Tang et al. eq. 4).

Params placement follows the gradient flow (``params['shared']`` = what several tasks' losses
reach). For ``L`` levels:

* shared experts of every level, every expert of levels < L-1 (they feed the shared gate), the
  shared gates, and task gates of levels < L-2 when tasks have experts (their output feeds task
  experts of a level < L-1, hence the shared gate): ``params['shared']['level_l']``;
* task k's experts of the last level: ``params['experts'][k]['level_{L-1}']``;
* task k's remaining gates: ``params['gates'][k]['level_l']``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models import encoders
from jmtl.models import stages as stages_lib
from jmtl.models.base import Bag, MultiTaskBase, TaskHeads, bag, no_shared_representation

Array = jax.Array


# ----------------------------------------------------------------------------- gates


class SoftmaxGate(nn.Module):
    """g(x) = softmax(W x) over ``num_experts`` (no bias, as in Ma et al. eq. 5)."""

    num_experts: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jax.nn.softmax(nn.Dense(self.num_experts, use_bias=False, name="logits")(x), axis=-1)

    def input_size(self) -> int:
        return self.variables["params"]["logits"]["kernel"].shape[0]


def smooth_step(t: Array, gamma: float) -> Array:
    """Hazimeh et al.'s smooth step: 0 below -gamma/2, 1 above gamma/2, and the cubic
    -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2 in between (continuously differentiable)."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def _binary_codes(num_bits: int) -> np.ndarray:
    """``[2^m, m]``: row j is j in binary (bit l = (j >> l) & 1)."""
    j = np.arange(2**num_bits)[:, None]
    return ((j >> np.arange(num_bits)[None, :]) & 1).astype(np.float32)


class DSelectGate(nn.Module):
    """Per-example DSelect-k gate (Hazimeh et al. 2021) over ``num_experts`` experts.

    Each of the k selectors has m = ceil(log2 n) binary-encoding variables z (here z = W_z x + b_z):
    its single-expert selector is r_j = prod_l [S(z_l) if bit l of j is 1 else 1 - S(z_l)] with
    the smooth step S; the gate is sum_i softmax(alpha)_i r(z^(i)) with alpha = W_a x + b_a. Once
    the z saturate (|z| >= gamma/2) every selector is one-hot: at most k experts are used.

    Choices of ours: when n is not a power of two, code j >= n selects expert j mod n, so every
    code is an existing expert (the sum of the gate stays 1); z's bias starts uniform in
    [-gamma/2, gamma/2] (breaks the symmetry between selectors) and its kernel near zero, so z
    starts inside the smooth region. The paper's entropy regularizer is not implemented.
    """

    num_experts: int
    k: int = 2
    gamma: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, k, g = self.num_experts, self.k, self.gamma
        if n == 1:
            return jnp.ones((x.shape[0], 1), x.dtype)
        m = math.ceil(math.log2(n))
        z = nn.Dense(
            k * m,
            kernel_init=nn.initializers.normal(1e-3),
            bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -g / 2, g / 2),
            name="z",
        )(x).reshape(x.shape[0], k, m)
        alpha = nn.Dense(k, kernel_init=nn.initializers.normal(1e-3), name="alpha")(x)  # [B, k]
        s = smooth_step(z, g)[:, :, None, :]  # [B, k, 1, m]
        codes = jnp.asarray(_binary_codes(m), s.dtype)  # [2^m, m]
        r = jnp.prod(codes * s + (1.0 - codes) * (1.0 - s), axis=-1)  # [B, k, 2^m], sums to 1 over codes
        fold = jnp.asarray(np.eye(n, dtype=np.float32)[np.arange(2**m) % n], s.dtype)  # [2^m, n]
        return jnp.einsum("bk,bkn->bn", jax.nn.softmax(alpha, axis=-1), r @ fold)

    def input_size(self) -> int:
        return self.variables["params"]["z"]["kernel"].shape[0]


# ----------------------------------------------------------------------------- experts


class Experts(nn.Module):
    """``num`` copies of ``template`` on the same input; output ``[B, num, features]``."""

    template: nn.Module
    num: int

    def setup(self):
        for i in range(self.num):
            setattr(self, f"expert_{i}", self.template.clone())

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        return jnp.stack([getattr(self, f"expert_{i}")(x, train=train) for i in range(self.num)], axis=1)


class OneGateMixture(nn.Module):
    """OMoE's shared bottom (Ma et al., KDD 2018, eq. 5): ``y = sum_e g(x)_e f_e(x)`` with one
    gate ``g(x) = softmax(W x)`` (no bias) for all tasks; the experts ``f_e`` are copies of
    ``template``. Output ``[B, H]``. With one expert, g = 1 and it is the template itself.

    Attributes:
      template: the expert network (an unbound encoder with ``__call__(x, *, train)``).
      num_experts: E, the number of experts (>= 1).
    """

    template: nn.Module
    num_experts: int = 4

    def setup(self):
        if self.num_experts < 1:
            raise ValueError(f"omoe: num_experts must be >= 1, got {self.num_experts}")
        self.experts = Experts(template=self.template, num=self.num_experts)
        self.gate = SoftmaxGate(num_experts=self.num_experts)

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        z = self.experts(x, train=train)  # [B, E, H]
        w = self.gate(x.reshape(x.shape[0], -1))  # [B, E], one gate: the same weights for every task
        return jnp.einsum("be,beh->bh", w.astype(z.dtype), z)


# ----------------------------------------------------------------------------- the model


def _concat(groups: Sequence[Optional[Array]]) -> Array:
    """Expert outputs ``[B, n_i, H]`` of the present groups along the expert axis."""
    return jnp.concatenate([g for g in groups if g is not None], axis=1)


def _path(kind: str, level: int, task: Optional[str], num_levels: int, num_task_experts: int) -> tuple[str, ...]:
    """Where a piece's params live (see the module docstring for why)."""
    lv = f"level_{level}"
    last = level == num_levels - 1
    if kind == "task_experts":
        return ("experts", task, lv) if last else ("shared", lv, "task_experts", task)
    if kind == "task_gate":
        # Its output is task k's next input; it reaches the shared gate only through task k's
        # experts of a non-last level.
        specific = num_task_experts == 0 or level >= num_levels - 2
        return ("gates", task, lv) if specific else ("shared", lv, "task_gates", task)
    if kind == "shared_experts":
        return ("shared", lv, "shared_experts")
    if kind == "shared_gate":
        return ("shared", lv, "shared_gate")
    raise ValueError(kind)


class MixtureOfExperts(MultiTaskBase):
    """MMoE / DSelect-k / CGC / PLE (see the module docstring). Use the ``build_*`` functions."""

    shared: Bag
    experts: Bag
    gates: Bag
    tasks: TaskHeads
    num_levels: int
    num_shared_experts: int
    num_task_experts: int
    arch: str = "mmoe"
    relation: bool = False

    def _get(self, kind: str, level: int, task: Optional[str] = None) -> nn.Module:
        path = _path(kind, level, task, self.num_levels, self.num_task_experts)
        module = getattr(self, path[0])
        for p in path[1:]:
            module = module[p]
        return module

    def task_features(self, x: Array, *, train: bool = False) -> list[Array]:
        """The mixture fed to each task's head, ``[B, H]`` per task."""
        names = self.tasks.names
        b = x.shape[0]
        flat = x.reshape(b, -1)
        task_in, shared_in = [x] * len(names), x
        task_gate_in, shared_gate_in = [flat] * len(names), flat
        for l in range(self.num_levels):
            shared_out = (
                self._get("shared_experts", l)(shared_in, train=train) if self.num_shared_experts else None
            )  # [B, m_s, H]
            task_out = [
                self._get("task_experts", l, n)(h, train=train) if self.num_task_experts else None
                for n, h in zip(names, task_in)
            ]
            mixed = []
            for k, n in enumerate(names):
                cands = _concat([task_out[k], shared_out])
                w = self._get("task_gate", l, n)(task_gate_in[k])  # [B, m_t + m_s]
                mixed.append(jnp.einsum("be,beh->bh", w.astype(cands.dtype), cands))
            if l < self.num_levels - 1:
                cands = _concat(task_out + [shared_out])
                w = self._get("shared_gate", l)(shared_gate_in)
                shared_in = jnp.einsum("be,beh->bh", w.astype(cands.dtype), cands)
                shared_gate_in = shared_in
            task_in, task_gate_in = mixed, mixed
        return task_in

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        return self.task_outputs(self.task_features(x, train=train), train=train)

    # The shared representation (MGDA-UB): with one level and no task experts (MMoE, DSelect-k)
    # the shared params are exactly the experts, so Z = the expert outputs. The gates also read the
    # input x, so the representation carries x after Z, behind a stop_gradient: the
    # representation Jacobian is then zero on x and its Gramian is that of the expert outputs.

    @property
    def _has_rep(self) -> bool:
        return self.num_levels == 1 and not self.num_task_experts

    @property
    def separable_heads(self) -> bool:
        """With one shared representation and no W, task k's output reads it only through gate k
        and head k (both task k's own)."""
        return self._has_rep and not self.relation

    def _check_rep(self):
        if not self._has_rep:
            raise no_shared_representation(self.arch, "task-specific experts read the input too")

    def encode(self, x: Array, *, train: bool = False) -> Array:
        """``[B, E*H + D]``: the E expert outputs, then the flattened input (for the gates)."""
        self._check_rep()
        z = self._get("shared_experts", 0)(x, train=train)
        b = x.shape[0]
        return jnp.concatenate([z.reshape(b, -1), x.reshape(b, -1).astype(z.dtype)], axis=-1)

    def _unpack(self, rep: Array) -> tuple[Array, Array]:
        """rep -> (expert outputs ``[B, E, H]``, gate input ``[B, D]`` behind a stop_gradient)."""
        d = self._get("task_gate", 0, self.tasks.names[0]).input_size()
        z = rep[:, :-d].reshape(rep.shape[0], self.num_shared_experts, -1)
        return z, jax.lax.stop_gradient(rep[:, -d:])

    def _mix(self, task: str, z: Array, x: Array) -> Array:
        return jnp.einsum("be,beh->bh", self._get("task_gate", 0, task)(x).astype(z.dtype), z)

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        self._check_rep()
        z, x = self._unpack(rep)
        return self.task_outputs([self._mix(n, z, x) for n in self.tasks.names], train=train)

    def decode_split(self, reps: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        """Task k's gate and head on its own copy ``reps[k]`` of the representation."""
        self._check_rep()
        self._check_split(reps)
        feats = [self._mix(n, *self._unpack(r)) for n, r in zip(self.tasks.names, reps)]
        return self.task_outputs(feats, train=train)


def _nest(tree: dict, path: Sequence[str], module: nn.Module) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = module


def _build(
    encoder: nn.Module,
    heads: TaskHeads,
    relation: bool,
    *,
    arch: str,
    num_levels: int,
    num_shared_experts: int,
    num_task_experts: int,
    gate: str = "softmax",
    gate_kwargs: Optional[dict] = None,
    level_features: Optional[int] = None,
) -> MixtureOfExperts:
    names = heads.names
    k = len(names)
    if num_levels < 1 or num_shared_experts < 0 or num_task_experts < 0:
        raise ValueError(f"{arch}: need num_levels >= 1 and non-negative expert counts")
    if num_shared_experts + num_task_experts < 1:
        raise ValueError(f"{arch}: every task needs at least one expert")
    if num_levels > 1 and num_shared_experts < 1:
        raise ValueError(f"{arch}: multi-level PLE needs shared experts (they carry the shared path)")
    if level_features is None:
        level_features = stages_lib.output_features(encoder) or 64
    gate_kwargs = dict(gate_kwargs or {})

    def make_gate(n: int) -> nn.Module:
        return DSelectGate(num_experts=n, **gate_kwargs) if gate == "dselect" else SoftmaxGate(num_experts=n)

    trees: dict[str, dict] = {"shared": {}, "experts": {}, "gates": {}}
    for l in range(num_levels):
        template = encoder if l == 0 else encoders.MLP(features=(level_features,))
        where = lambda kind, task=None: _path(kind, l, task, num_levels, num_task_experts)  # noqa: E731
        if num_shared_experts:
            _nest(trees, where("shared_experts"), Experts(template=template, num=num_shared_experts))
        for n in names:
            if num_task_experts:
                _nest(trees, where("task_experts", n), Experts(template=template, num=num_task_experts))
            _nest(trees, where("task_gate", n), make_gate(num_task_experts + num_shared_experts))
        if l < num_levels - 1:
            _nest(trees, where("shared_gate"), make_gate(k * num_task_experts + num_shared_experts))
    return MixtureOfExperts(
        shared=bag(trees["shared"]),
        experts=bag(trees["experts"]),
        gates=bag(trees["gates"]),
        tasks=heads,
        num_levels=num_levels,
        num_shared_experts=num_shared_experts,
        num_task_experts=num_task_experts,
        arch=arch,
        relation=relation,
    )


def build_mmoe(encoder, heads, relation, *, num_experts: int = 4) -> MixtureOfExperts:
    """MMoE: ``num_experts`` shared experts, a softmax gate per task."""
    return _build(
        encoder, heads, relation, arch="mmoe", num_levels=1, num_shared_experts=num_experts, num_task_experts=0
    )


def build_dselect_k(
    encoder, heads, relation, *, num_experts: int = 4, k: int = 2, gamma: float = 1.0
) -> MixtureOfExperts:
    """MMoE with per-task DSelect-k gates (k selectors, smooth-step width gamma)."""
    return _build(
        encoder,
        heads,
        relation,
        arch="dselect_k",
        num_levels=1,
        num_shared_experts=num_experts,
        num_task_experts=0,
        gate="dselect",
        gate_kwargs=dict(k=k, gamma=gamma),
    )


def build_cgc(encoder, heads, relation, *, num_shared_experts: int = 1, num_task_experts: int = 1) -> MixtureOfExperts:
    """CGC: one level of shared and task-specific experts."""
    return _build(
        encoder,
        heads,
        relation,
        arch="cgc",
        num_levels=1,
        num_shared_experts=num_shared_experts,
        num_task_experts=num_task_experts,
    )


def build_ple(
    encoder,
    heads,
    relation,
    *,
    num_levels: int = 2,
    num_shared_experts: int = 1,
    num_task_experts: int = 1,
    level_features: Optional[int] = None,
) -> MixtureOfExperts:
    """PLE: ``num_levels`` stacked extraction levels (encoder experts first, MLP experts after)."""
    return _build(
        encoder,
        heads,
        relation,
        arch="ple",
        num_levels=num_levels,
        num_shared_experts=num_shared_experts,
        num_task_experts=num_task_experts,
        level_features=level_features,
    )

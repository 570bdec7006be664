"""``jmtl.fit``: a user's Linen model and data (arrays, iterables, factories, per-task data) in the loop.

Truth: a hand-written SGD loop over the same batches (``jax.grad`` of the summed task losses), an
uninterrupted run for resumes, and metrics recomputed by hand from the returned params.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from jmtl.data.iterables import DataExhaustedError, ReplayIterator
from jmtl.runs import workdir as workdir_lib
from jmtl.tasks import Task
from jmtl.training import contract

TASKS = (Task("kind", "classification", 3), Task("size", "regression", 1))


class Trunk(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return nn.tanh(nn.Dense(6)(x))


class Model(nn.Module):
    """The shared part is `trunk` (not `shared`): fit is told so through StepConfig(shared=...)."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = Trunk(name="trunk")(x)
        return {"kind": nn.Dense(3, name="kind_head")(h), "size": nn.Dense(1, name="size_head")(h)[:, 0]}


STEP = jmtl.StepConfig(input_key="x", shared="trunk")


def _split(seed: int, n: int, shift: float = 0.0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=shift, size=(n, 4)).astype(np.float32)
    return {
        "x": x,
        "kind": np.digitize(x[:, 0], [-0.5, 0.5]).astype(np.int32),
        "size": (x[:, 1] - x[:, 2]).astype(np.float32),
    }


def _batches(arrays: dict, size: int) -> list[dict]:
    n = len(arrays["x"]) // size
    return [{k: v[i * size : (i + 1) * size] for k, v in arrays.items()} for i in range(n)]


def _summed_loss(params, batch):
    out = Model().apply({"params": params}, batch["x"])
    ce = optax.softmax_cross_entropy_with_integer_labels(out["kind"], batch["kind"]).mean()
    return ce + jnp.mean((out["size"] - batch["size"]) ** 2)


def _fit(workdir, train, num_steps, **kw):
    kw.setdefault("validation", _split(1, 40))
    kw.setdefault("test", _split(2, 40))
    return jmtl.fit(
        Model(),
        TASKS,
        train,
        workdir=workdir,
        num_steps=num_steps,
        optimizer=optax.sgd(0.1),
        step_config=STEP,
        progress_bar=False,
        checkpoint_every_steps=3,
        eval_every_steps=3,
        **kw,
    )


def test_trains_on_exactly_the_given_batches_in_order(tmp_path):
    batches = _batches(_split(0, 120), 30)  # 4 batches; 6 steps = one pass and two batches of the next
    summary, state = _fit(tmp_path / "run", batches, num_steps=6)
    params = jmtl.init_state(Model(), jmtl.weighting.get("equal"), optax.sgd(0.1), batches[0]["x"][:1], 2, 0).params
    for batch in itertools.islice(itertools.cycle(batches), 6):
        grads = jax.grad(_summed_loss)(params, batch)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), state.params, params)
    assert summary["steps"] == 6 and summary["epochs"] == pytest.approx(1.5)


@pytest.mark.parametrize("kind", ["list", "factory", "generator"])
def test_resume_continues_with_the_next_batch(tmp_path, kind):
    batches = _batches(_split(0, 120), 30)

    def source():
        if kind == "list":
            return batches
        if kind == "factory":  # (seed, epoch) -> that epoch's batches, reshuffled per epoch
            return lambda seed, epoch: [batches[i] for i in np.random.default_rng([seed, epoch]).permutation(4)]
        return itertools.cycle(iter(batches))  # a one-shot iterator: a fresh one is passed on resume

    _, straight = _fit(tmp_path / "straight", source(), num_steps=7)
    _fit(tmp_path / "resumed", source(), num_steps=3)
    _, resumed = _fit(tmp_path / "resumed", source(), num_steps=7)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
    assert (tmp_path / "resumed" / "resumes.jsonl").exists() or any((tmp_path / "resumed").glob("*resume*"))


def test_per_task_inputs_each_task_scored_on_its_own_data(tmp_path):
    train = {"kind": _split(0, 90), "size": _split(1, 60, shift=2.0)}
    val = {"kind": _split(2, 30), "size": _split(3, 30, shift=2.0)}
    test = {"kind": _split(4, 50), "size": _split(5, 40, shift=2.0)}
    summary, state = jmtl.fit(
        Model(),
        TASKS,
        train,
        validation=val,
        test=test,
        workdir=tmp_path / "run",
        per_task_inputs=True,
        batch_size=30,
        num_steps=4,
        num_seeds=2,
        weighting="pcgrad",
        step_config=STEP,
        progress_bar=False,
    )
    for s in range(2):
        params = jax.tree.map(lambda v: v[s], state.params)
        got = summary["seeds"][s]["final"]["test"]
        out_kind = Model().apply({"params": params}, test["kind"]["x"])["kind"]
        out_size = Model().apply({"params": params}, test["size"]["x"])["size"]
        assert got["kind"]["accuracy"] == pytest.approx(float(np.mean(np.argmax(out_kind, -1) == test["kind"]["kind"])))
        assert got["size"]["mse"] == pytest.approx(float(np.mean((out_size - test["size"]["size"]) ** 2)), rel=1e-5)
    # The two seeds trained on their own orders: different params.
    assert not np.allclose(state.params["trunk"]["Dense_0"]["kernel"][0], state.params["trunk"]["Dense_0"]["kernel"][1])


def test_mistakes_are_named(tmp_path):
    arrays = _split(0, 60)
    with pytest.raises(ValueError, match="per_task_inputs=True"):
        _fit(tmp_path / "a", {"kind": arrays, "size": arrays}, num_steps=2, batch_size=30)
    with pytest.raises(ValueError, match="batch_size is required"):
        _fit(tmp_path / "b", arrays, num_steps=2)
    with pytest.raises(ValueError, match="one-shot iterator can feed one seed"):
        _fit(tmp_path / "c", iter(_batches(arrays, 30)), num_steps=2, num_seeds=2)
    with pytest.raises(DataExhaustedError, match="ran out after 2 batches"):
        _fit(tmp_path / "d", iter(_batches(arrays, 30)), num_steps=5)
    with pytest.raises(ValueError, match="needs a second .meta. batch"):
        _fit(tmp_path / "e", _batches(arrays, 30), num_steps=2, weighting="auto_lambda")
    with pytest.raises(contract.ContractError, match="shared"):
        jmtl.fit(
            Model(),
            TASKS,
            arrays,
            validation=arrays,
            test=arrays,
            workdir=tmp_path / "f",
            batch_size=30,
            num_steps=2,
            weighting="pcgrad",
            input_key="x",
            progress_bar=False,
        )  # no `shared` subtree
    with pytest.raises(TypeError, match=r"pass an instance: fit\(Model\(\)"):
        jmtl.fit(
            Model, TASKS, arrays, validation=arrays, test=arrays, workdir=tmp_path / "h", batch_size=30, num_steps=2
        )
    with pytest.raises(ValueError, match="no field.*learnig_rate"):
        jmtl.fit(
            Model(),
            TASKS,
            arrays,
            validation=arrays,
            test=arrays,
            workdir=tmp_path / "i",
            batch_size=30,
            num_steps=2,
            optimizer={"learnig_rate": 1e-2},
            step_config=STEP,
        )
    bad = dict(arrays, kind=arrays["kind"] + 1)  # class id 3 with 3 classes
    with pytest.raises(Exception, match="class id 3|span"):
        _fit(tmp_path / "g", bad, num_steps=2, batch_size=30)


def test_resume_on_other_data_is_refused(tmp_path):
    _fit(tmp_path / "run", _split(0, 60), num_steps=2, batch_size=30)
    with pytest.raises(workdir_lib.ResumeConfigError, match="fingerprint"):
        _fit(tmp_path / "run", _split(9, 60), num_steps=4, batch_size=30)


def test_replay_iterator_state_round_trip():
    factory = lambda seed, epoch: [{"i": np.array([seed, epoch, j])} for j in range(3)]
    it = ReplayIterator(factory, seed=5)
    seen = [next(it)["i"].tolist() for _ in range(4)]
    state = it.get_state()
    again = ReplayIterator(factory, seed=5)
    again.set_state(state)
    assert seen[-1] == [5, 1, 0] and next(again)["i"].tolist() == next(it)["i"].tolist() == [5, 1, 1]

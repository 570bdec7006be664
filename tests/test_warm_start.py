"""Warm starts and transfer to new tasks (``init_from``): params from a checkpoint or a file, the
shared part or all of it, frozen or fine-tuned, for ``jmtl.fit`` and config runs.

Truth: the source run's own checkpointed params (read back by orbax / numpy), bitwise equality of
frozen params after training steps, and the list of mismatching params written by hand.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import toy_config

import jmtl
from jmtl.tasks import Task
from jmtl.training import loop, warm_start


class Shared(nn.Module):
    width: int = 6

    @nn.compact
    def __call__(self, x):
        return nn.tanh(nn.Dense(5, name="l2")(nn.tanh(nn.Dense(self.width, name="l1")(x))))


class TwoPart(nn.Module):
    """Params ``{'shared': {...}, <task>: {...}}``: the default shared selector."""

    tasks: tuple = ("a",)
    width: int = 6

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = Shared(self.width, name="shared")(x)
        return {t: nn.Dense(1, name=t)(h)[:, 0] for t in self.tasks}


def _data(seed, n=48):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "a": (x[:, 0] * x[:, 1]).astype(np.float32), "b": np.sin(x[:, 2] + x[:, 3]).astype(np.float32)}


def _fit(model, tasks, workdir, steps=4, **kw):
    return jmtl.fit(
        model,
        [Task(t, "regression", 1) for t in tasks],
        _data(0),
        validation=_data(1, 16),
        test=_data(2, 16),
        workdir=workdir,
        batch_size=16,
        num_steps=steps,
        optimizer=optax.adam(1e-2),
        input_key="x",
        progress_bar=False,
        eval_every_steps=steps,
        **kw,
    )


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained run on task ``a`` (4 steps) and its checkpointed params."""
    wd = tmp_path_factory.mktemp("source") / "run"
    _fit(TwoPart(("a",)), ("a",), wd)
    return wd, warm_start.load_params(wd)


def test_frozen_shared_params_stay_bitwise_and_new_head_trains(source_run, tmp_path):
    wd, source = source_run
    _, state = _fit(TwoPart(("b",)), ("b",), tmp_path / "t", init_from=dict(path=str(wd), part="shared", freeze=True))
    for got, want in zip(jax.tree.leaves(state.params["shared"]), jax.tree.leaves(source["shared"])):
        np.testing.assert_array_equal(np.asarray(got), want)
    fresh = jmtl.init_state(TwoPart(("b",)), jmtl.weighting.get("equal"), optax.adam(1e-2), _data(0)["x"][:1], 1, 0)
    moved = [
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params["b"]), jax.tree.leaves(fresh.params["b"]))
    ]
    assert all(moved)  # the new task's head trained


def test_fine_tuned_start_equals_the_source_then_moves(source_run, tmp_path):
    wd, source = source_run
    spec = warm_start.InitFrom(str(wd), part="all")
    model = TwoPart(("a", "b"))  # the old task's head is loaded too; b's is new
    warm = warm_start.prepare(spec, model, _data(0)["x"][:1])
    assert warm.fresh == ("['b']['bias']", "['b']['kernel']")
    state = jmtl.init_state(model, jmtl.weighting.get("equal"), optax.adam(1e-2), _data(0)["x"][:1], 2, 0)
    state = warm_start.warm_state(state, warm, optax.adam(1e-2))
    for part in ("shared", "a"):
        for got, want in zip(jax.tree.leaves(state.params[part]), jax.tree.leaves(source[part])):
            np.testing.assert_array_equal(np.asarray(got), want)
    _, trained = _fit(TwoPart(("b",)), ("b",), tmp_path / "ft", init_from=str(wd))  # part='shared', not frozen
    assert not np.array_equal(np.asarray(trained.params["shared"]["l1"]["kernel"]), source["shared"]["l1"]["kernel"])


@pytest.mark.parametrize("suffix", [".npz", ".msgpack"])
def test_params_files_round_trip_exactly(source_run, tmp_path, suffix):
    _, source = source_run
    path = warm_start.save_params(tmp_path / f"p{suffix}", source)
    back = warm_start.load_params(path)
    assert jax.tree.structure(back) == jax.tree.structure(source)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(source)):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype


def test_shape_mismatches_are_refused_naming_every_param(source_run):
    wd, _ = source_run
    with pytest.raises(warm_start.WarmStartError) as e:
        warm_start.prepare(warm_start.InitFrom(str(wd)), TwoPart(("b",), width=7), _data(0)["x"][:1])
    msg = str(e.value)
    # l1's kernel [4, 7] and bias [7], and l2's kernel [7, 5]: three mismatches; l2's bias matches
    for name in (
        "['shared']['l1']['kernel']: run (4, 7) vs source (4, 6)",
        "['shared']['l1']['bias']: run (7,) vs source (6,)",
        "['shared']['l2']['kernel']: run (7, 5) vs source (6, 5)",
    ):
        assert name in msg
    assert "3 param(s) differ" in msg and "l2']['bias']:" not in msg and "Fix:" in msg


def test_missing_shared_params_and_bad_specs_are_refused(tmp_path):
    target = {
        "shared": {"l1": {"bias": np.zeros(6), "kernel": np.zeros((4, 6))}, "l3": {"bias": np.zeros(5)}},
        "b": {"bias": np.zeros(1)},
    }
    source = {"shared": {"l1": {"bias": np.ones(6), "kernel": np.ones((4, 6))}}, "a": {"bias": np.ones(1)}}
    with pytest.raises(
        warm_start.WarmStartError, match=r"no param at 1 shared path.*\['shared'\]\['l3'\]\['bias'\].*Fix"
    ):
        warm_start.plan(warm_start.InitFrom("src"), target, source_params=source)
    with pytest.raises(warm_start.WarmStartError, match="no param of this run is in the source"):
        warm_start.plan(warm_start.InitFrom("src", part="all"), {"b": {"bias": np.zeros(1)}}, source_params=source)
    with pytest.raises(ValueError, match="part must be one of"):
        warm_start.InitFrom("p", part="encoder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        warm_start.load_params(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown field"):
        warm_start.InitFrom.parse({"path": "p", "frozen": True})


def test_a_config_run_warm_starts_from_a_params_file_with_a_new_task(tmp_path):
    """Config runs: config.init_from (an .npz of a built model's params), part='all', frozen."""
    src_dir = tmp_path / "src"
    c = toy_config(tmp_path, num_steps=4, eval_every_steps=4)
    _, src = loop.train(c, str(src_dir))
    params = jax.device_get(src.params)
    path = warm_start.save_params(tmp_path / "src.npz", params)
    c2 = toy_config(tmp_path, num_steps=4, eval_every_steps=4)
    first_label = list(
        jmtl.data.load(c2.dataset.name, cache_dir=c2.dataset.cache_dir, **c2.dataset.kwargs).spec.labels
    )[0]
    c2.tasks = {"new_task": {"label": first_label}}
    c2.init_from = dict(path=str(path), part="all", freeze=True)
    _, state = loop.train(c2, str(tmp_path / "dst"))
    flat_src = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    flat_dst = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    loaded = [k for k in flat_dst if k in flat_src]
    assert any("shared" in k for k in loaded) and any("new_task" in k for k in flat_dst if k not in flat_src)
    for k in loaded:
        np.testing.assert_array_equal(np.asarray(flat_dst[k]), np.asarray(flat_src[k]), err_msg=k)


def test_config_validation_names_a_bad_part(tmp_path):
    c = toy_config(tmp_path)
    c.init_from.part = "encoder"
    with pytest.raises(ValueError, match="init_from.part must be 'shared' or 'all'"):
        jmtl.training.config_schema.validate_config(c)

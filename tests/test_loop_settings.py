"""The loop's typed settings (jmtl/training/settings.py), the one config schema every shipped config
derives from, and the loop's cadences as periodic actions (jmtl/training/loop.py)."""

from __future__ import annotations

import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, toy_config

from jmtl.models import mtl
from jmtl.runs.workdir import ResumeConfigError, check_resume
from jmtl.tasks import Task
from jmtl.training import builders, config_schema, loop
from jmtl.training.settings import LoopSettings

CONFIG_DIR = ROOT / "experiments" / "configs"


def _leaves(node, prefix: str = "") -> set[str]:
    """Dotted field names; a free-form subtree (another component's kwargs) counts as one field."""
    out = set()
    for key in node.keys():
        dotted = prefix + str(key)
        if dotted in config_schema.FREE_FORM or not hasattr(node[key], "keys"):
            out.add(dotted)
        else:
            out |= _leaves(node[key], dotted + ".")
    return out


def _without(config, dotted: str):
    c = config.copy_and_resolve_references()
    *parents, leaf = dotted.split(".")
    node = c
    for part in parents:
        node = node[part]
    del node[leaf]
    return c


# ---------------------------------------------------------------------------- settings


def test_a_missing_field_reads_as_the_schema_default():
    """Every field left out of a config is read as default_config()'s: the schema is the one source of
    the defaults (the loop's old fallbacks had progress_bar False and AdamW's weight_decay 1e-4 where
    the schema says True and 0.0)."""
    default = config_schema.default_config()
    want = LoopSettings.from_config(default)
    for dotted in sorted(_leaves(default)):
        got = LoopSettings.from_config(_without(default, dotted))
        assert got == want, dotted
    assert want.progress_bar is True and want.optimizer.weight_decay == 0.0
    # Whole subtrees too (a hand-written config with only a few fields).
    bare = config_schema.default_config()
    for key in ("optimizer", "nonfinite", "init_from", "progress_bar", "writers", "num_seeds", "seeds_mode"):
        del bare[key]
    assert LoopSettings.from_config(bare) == want


def test_adamw_without_weight_decay_trains_as_the_schema_default():
    """builders.optimizer reads the same defaults: AdamW from ``{name: adamw}`` updates params exactly
    as AdamW with the schema's weight_decay (0.0), not a private default."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.1, 0.2, -0.3])}
    full = config_schema.default_config().optimizer
    full.name = "adamw"
    updates = []
    for cfg in ({"name": "adamw"}, full):
        tx = builders.optimizer(cfg, steps_per_epoch=10)
        u, _ = tx.update(grads, tx.init(params), params)
        updates.append(np.asarray(u["w"]))
    np.testing.assert_array_equal(updates[0], updates[1])
    # With weight decay 1e-4 (the old fallback) the update differs: the comparison above can fail.
    tx = builders.optimizer({"name": "adamw", "weight_decay": 1e-4}, steps_per_epoch=10)
    u, _ = tx.update(grads, tx.init(params), params)
    assert not np.array_equal(np.asarray(u["w"]), updates[0])


def test_settings_are_frozen_and_typed():
    s = LoopSettings.from_config(config_schema.default_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.batch_size = 1  # type: ignore[misc]
    assert isinstance(s.writers, tuple) and isinstance(s.checkpoint_every_minutes, float)
    assert s.total_steps(7) == 70 and s.eval_every(7) == 7 and s.checkpoint_every(7) == 0
    assert s.checkpoint_every(7, process_count=2) == 7  # processes agree on steps, not clocks


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "nonfinite.policy",
            "ignore",
            "unknown nonfinite.policy 'ignore'; valid: raise, skip. Fix: --config.nonfinite",
        ),
        ("parallel", "dp", "unknown parallel driver 'dp'; valid: shard_map, pmap, single. Fix: --config.parallel="),
        ("seeds_mode", "loop", "unknown seeds mode 'loop'; valid: vmap, map. Fix: --config.seeds_mode="),
        ("batch_size", 0, "config.batch_size must be >= 1, got 0. Fix: e.g. --config.batch_size="),
    ],
)
def test_a_bad_value_is_named_with_its_fix(field, value, message):
    c = config_schema.default_config()
    *parents, leaf = field.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ValueError) as e:
        LoopSettings.from_config(c)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unknown_optimizer_field_is_refused():
    with pytest.raises(ValueError, match=r"optimizer has no field\(s\) \['weight_decy'\]"):
        builders.optimizer({"name": "adamw", "weight_decy": 0.1}, steps_per_epoch=1)


# ---------------------------------------------------------------------------- one schema


def _shipped_configs():
    for path in sorted(CONFIG_DIR.glob("*.py")):
        module = importlib.import_module(f"experiments.configs.{path.stem}")
        if hasattr(module, "get_config"):
            yield path.stem, module.get_config()


def test_every_shipped_config_derives_from_the_default_schema():
    """Every field of the default config is in every shipped config (a field added to the default
    reaches all of them), and a config's other fields are declared (the taggers': their model and
    TAGGING_FIELDS). The taggers' model subtree is HierarchicalTagger's, replacing the in-memory models'."""
    default = _leaves(config_schema.default_config())
    names = []
    for name, config in _shipped_configs():
        names.append(name)
        fields = _leaves(config)
        tagging = "variants" in config
        wanted = {f for f in default if not (tagging and f.startswith("model."))}
        assert wanted <= fields, (name, sorted(wanted - fields))
        assert config_schema.unknown_fields(config) == [], name
        LoopSettings.from_config(config)  # valid as shipped
    assert {"hierarchical_sg", "hierarchical_jmt", "hierarchical_conll03", "gradnorm_toy"} <= set(names)


def test_a_field_added_to_the_default_reaches_the_tagging_configs(monkeypatch):
    from experiments.configs import hierarchical_sg

    original = config_schema.default_config

    def with_new_field():
        c = original()
        c.new_field = 3
        return c

    monkeypatch.setattr(config_schema, "default_config", with_new_field)
    assert hierarchical_sg.get_config().new_field == 3


# ---------------------------------------------------------------------------- periodic actions


def _old_firing(total, log_every, eval_every, ckpt_every, start, stop_at, seconds, clock_at):
    """The steps at which the loop fired each cadence before they were periodic actions (the rules
    copied from the loop of commit 7a745a7): log / eval / checkpoint."""
    fired = {"log": [], "evaluate": [], "checkpoint": [], "relation": []}
    last_save = clock_at(start)
    for step in range(start + 1, total + 1):
        stop = stop_at is not None and step >= stop_at
        if step % log_every == 0 or step == total or step % eval_every == 0 or stop:
            fired["log"].append(step)
            fired["relation"].append(step)
        if step % eval_every == 0 or step == total:
            fired["evaluate"].append(step)
        due = step % ckpt_every == 0 if ckpt_every > 0 else clock_at(step) - last_save >= seconds
        if due or step == total or stop:
            fired["checkpoint"].append(step)
            last_save = clock_at(step)
        if stop:
            break
    return fired


@pytest.mark.parametrize(
    "total, log_every, eval_every, ckpt_every, start, stop_at",
    [
        (60, 7, 25, 20, 0, None),
        (60, 7, 25, 20, 30, None),  # resumed at step 30
        (50, 20, 10, -1, 0, None),  # checkpoints by time
        (50, 20, 10, -1, 17, 33),  # resumed, then stopped by a signal
        (13, 1, 13, 5, 0, None),
        (40, 50, 7, 0, 3, 40),  # stop request at the last step
    ],
)
def test_the_cadences_fire_where_the_old_loop_did(total, log_every, eval_every, ckpt_every, start, stop_at):
    seconds = 2.5
    clock_at = lambda step: 0.7 * step  # a fake clock: 0.7 s per step  # noqa: E731
    want = _old_firing(total, log_every, eval_every, ckpt_every, start, stop_at, seconds, clock_at)
    fired = {k: [] for k in ("log", "evaluate", "checkpoint", "relation", "plots")}
    now = {"step": start}
    record = lambda name: lambda step, state, out: fired[name].append(step)  # noqa: E731
    actions = loop.cadence_actions(
        total_steps=total,
        log_every=log_every,
        eval_every=eval_every,
        checkpoint_every=ckpt_every,
        checkpoint_seconds=seconds,
        stop_requested=lambda: stop_at is not None and now["step"] >= stop_at,
        log=record("log"),
        evaluate=record("evaluate"),
        checkpoint=record("checkpoint"),
        relation=record("relation"),
        plots=record("plots"),
        started=clock_at(start),
        clock=lambda: clock_at(now["step"]),
    )
    assert [a.name for a in actions] == ["relation", "log", "evaluate", "checkpoint", "plots"]
    for step in range(start + 1, total + 1):
        now["step"] = step
        for action in actions:
            if not action.at_end and action.due(step):
                action(step, None, {})
        if stop_at is not None and step >= stop_at:
            break
    assert {k: fired[k] for k in want} == want
    assert fired["plots"] == []  # plots run after the last step, from the loop's end (at_end)


def test_the_relation_action_puts_w_in_the_train_record_of_its_step():
    """Actions of one step share ``out`` in list order: relation runs before log."""
    seen = []
    actions = loop.cadence_actions(
        total_steps=4,
        log_every=2,
        eval_every=4,
        checkpoint_every=4,
        checkpoint_seconds=0.0,
        stop_requested=lambda: False,
        log=lambda step, state, out: seen.append((step, out.get("train", {}).get("relation"))),
        evaluate=lambda *a: None,
        checkpoint=lambda *a: None,
        relation=lambda step, state, out: out.setdefault("train", {}).update(relation=[[step]]),
    )
    for step in range(1, 5):
        out = {}
        for a in actions:
            if a.due(step):
                a(step, None, out)
    assert seen == [(2, [[2]]), (4, [[4]])]


# ---------------------------------------------------------------------------- the relation accessor


def test_relation_matrix_is_the_models_w_or_none():
    tasks = [Task("a", "regression", 1), Task("b", "regression", 1)]
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs={"features": (4,)}, head_kwargs={"hidden": 4}, relation=True)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((2, 3)), train=False)["params"]
    np.testing.assert_array_equal(np.asarray(mtl.relation_matrix(params)), np.eye(2))  # W, identity at init
    assert mtl.relation_matrix({k: v for k, v in params.items() if k != mtl.RELATION}) is None


def test_steps_per_epoch_of_a_config_driven_scheme_comes_from_the_data():
    """DWA, STCH and FORUM count epochs in steps: a config leaves ``steps_per_epoch`` unset and the run
    fills it from its data (once it was filled with the factory's default, 100, whatever the data:
    STCH on School's full-batch steps never left its warm-up and trained as ``si``). A value set in the
    config still wins. Checked by behaviour: DWA's and STCH's weights over 12 steps equal those of
    the transform built with the data's value, and differ from the default's."""
    from jmtl import weighting

    tasks = tuple(Task(f"t{i}", "regression", 1) for i in range(3))

    def weights_over_steps(transform):
        state, rng, out = weighting.base.init_state(transform, 3), np.random.default_rng(0), []
        for step in range(12):
            losses = jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32)
            w, state = weighting.update_from(
                transform, losses, state, step=jnp.int32(step), key=jax.random.PRNGKey(step)
            )
            out.append(np.asarray(w.weights))
        return np.stack(out)

    for name in ("dwa", "stch", "forum"):
        assert config_schema.method_config(name).hparams.steps_per_epoch is None, name
    for name, kw in (("dwa", {}), ("stch", {"warmup_epochs": 1})):
        cfg = config_schema.method_config(name)
        cfg.hparams.update(kw)
        built = builders.weighting(name, cfg.hparams.to_dict(), tasks, steps_per_epoch=2)
        expected = weights_over_steps(weighting.get(name, steps_per_epoch=2, **kw))
        np.testing.assert_array_equal(weights_over_steps(built), expected, err_msg=name)
        assert not np.allclose(weights_over_steps(weighting.get(name, **kw)), expected), name  # the test has power
        cfg.hparams.steps_per_epoch = 3  # set in the config (or on the command line): it wins
        built = builders.weighting(name, cfg.hparams.to_dict(), tasks, steps_per_epoch=2)
        np.testing.assert_array_equal(
            weights_over_steps(built), weights_over_steps(weighting.get(name, steps_per_epoch=3, **kw)), err_msg=name
        )


def test_a_workdir_trained_with_the_old_default_steps_per_epoch_refuses_to_resume(tmp_path):
    """Runs started before ``steps_per_epoch`` came from the data saved the factory's 100 in their
    config; resuming one under today's config (which leaves it to the data) would switch DWA's epoch
    length mid-run. The resume check refuses, naming the field and both values."""
    new = toy_config(tmp_path)
    new.weighting = config_schema.method_config("dwa")
    saved = json.loads(new.to_json_best_effort())
    saved["weighting"]["hparams"]["steps_per_epoch"] = 100  # what config.json held before the fix
    with pytest.raises(ResumeConfigError, match=r"weighting\.hparams\.steps_per_epoch: 100 -> None"):
        check_resume(saved, new)
    assert check_resume(json.loads(new.to_json_best_effort()), new) == []  # today's config resumes itself

"""The one registry helper (``jmtl.registry.Registry``) behind the four registries (issue 22 §3-4):
duplicate names refused, unknown names answered with the valid ones and the closest, and each
registry's messages as before."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jmtl.errors import DataError
from jmtl.registry import Registry, closest


def test_registry_register_lookup_names():
    r = Registry("widget", {"beta": 2, "alpha": 1})
    assert r.names() == ["alpha", "beta"] and r.lookup("alpha") == 1
    assert r.register("gamma", 3) == 3 and r["gamma"] == 3
    with pytest.raises(
        ValueError, match=r"widget 'gamma' is already registered\. Fix: choose another name, or pass overwrite=True"
    ):
        r.register("gamma", 4)
    r.register("gamma", 4, overwrite=True)
    assert r.lookup("gamma") == 4
    with pytest.raises(ValueError, match="non-empty string"):
        r.register("", 5)
    with pytest.raises(
        ValueError, match=r"^unknown widget 'alpah'; valid widgets: alpha, beta, gamma\. Did you mean 'alpha'\?$"
    ):
        r.lookup("alpah")
    with pytest.raises(
        ValueError, match=r"^unknown widget 'zzz'; valid widgets: alpha, beta, gamma\.$"
    ):  # nothing close
        r.lookup("zzz")
    ordered = Registry("arch", {"b": 1, "a": 2}, valid_label="valid", sort_names=False, error=DataError)
    assert ordered.names() == ["b", "a"]
    with pytest.raises(DataError, match="unknown arch 'c'; valid: b, a"):
        ordered.lookup("c")
    fixed = Registry("scheme", {"x": 1}, allow_overwrite=False)
    with pytest.raises(ValueError, match=r"already registered\. Fix: choose another name$"):
        fixed.register("x", 2)
    with pytest.raises(ValueError, match="cannot be replaced"):
        fixed.register("x", 2, overwrite=True)


def test_one_did_you_mean_rule():
    from jmtl.training import cli

    assert closest("pcgard", ["pcgrad", "mgda"]) == "pcgrad" and closest("zzz", ["pcgrad"]) is None
    assert cli.suggest("incme", ["income", "marital"]) == " (did you mean 'income'?)"  # the command lines' form
    assert cli.suggest("zzz", ["income"]) == ""


def test_the_four_registries_use_it():
    from jmtl import weighting
    from jmtl.data import pipeline
    from jmtl.models import architectures, encoders

    assert isinstance(weighting.registry._REGISTRY, Registry)
    assert isinstance(encoders.ENCODERS, Registry) and isinstance(architectures.ARCHITECTURES, Registry)
    assert isinstance(pipeline._REGISTRY, Registry)
    with pytest.raises(
        ValueError, match=r"unknown weighting scheme 'pcgard'; valid schemes: .*Did you mean 'pcgrad'\?"
    ):
        weighting.get("pcgard")
    with pytest.raises(ValueError, match=r"unknown encoder 'mpl'; valid encoders: .*Did you mean 'mlp'\?"):
        encoders.get("mpl")
    with pytest.raises(
        ValueError, match=r"unknown arch 'hsp'; valid: hps, independent, soft_sharing.*Did you mean 'hps'\?"
    ):
        architectures.build("hsp", encoder=encoders.MLP(), heads=None)
    with pytest.raises(
        DataError, match=r"unknown dataset 'gradnorm_tyo'; valid names: .*Did you mean 'gradnorm_toy'\?"
    ):
        pipeline.load("gradnorm_tyo")
    with pytest.raises(
        DataError, match="'multi_mnist' is already registered. Fix: choose another name, or pass overwrite=True"
    ):
        pipeline.register("multi_mnist", lambda: None)
    with pytest.raises(ValueError, match="built-in encoder"):
        encoders.register("mlp", encoders.MLP, overwrite=True)


def test_registry_module_imports_nothing_from_jmtl_but_errors():
    tree = ast.parse((Path(__file__).resolve().parents[1] / "jmtl" / "registry.py").read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in mods if m.split(".")[0] == "jmtl"} <= {"jmtl.errors"}

"""A typo never destroys or misstates results (issue 23, sections 2 and 5).

* Fields set in a config FILE are checked against the schema (``config_schema.check_fields``) as the
  command line checks ``--config.`` overrides; a value of the wrong type in a config file is one line
  naming the file, the line and the fix.
* Experiment scripts check every option before any work and never replace a results file with one
  holding fewer cells without ``--allow_fewer_cells`` (``experiments.script_checks``).
* The README renderer's headers say how many seeds a row averages, and a missing file / column /
  marker is one line.
* Checksum mismatches reach the user whole, and ``verify_checksums`` is settable from the command
  line for MultiMNIST, MultiFashion and CoNLL.

Every case is in results/reliability.md, "Round 3: typos and scripts".
"""

import csv
import glob
import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from conftest import ROOT, run_script
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl

from experiments import readme_tables as rt
from experiments import script_checks
from jmtl.runs import workdir as workdir_lib
from jmtl.training import config_schema

RESULTS = ROOT / "results"


def _results_hash() -> str:
    """One digest of every file under results/ (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(RESULTS.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


# ---------------------------------------------------------------------------- config files


CONFIG_DIR = ROOT / "experiments" / "configs"


# The vision protocols' configs take ``:VARIANT[,METHOD]`` (experiments/configs/vision_common.py).
VISION_VARIANTS = {
    "nyuv2": ("mtan", "segnet", "deeplab", "stl_depth"),
    "cityscapes": ("mtan", "segnet", "deeplab", "stl_segmentation"),
    "celeba": ("cnn", "stl_smiling"),
    "office": ("office31", "office_home", "stl_amazon"),
}


def _shipped_configs() -> list[str]:
    """``path:arg`` of every shipped config and every variant / weighting argument it takes."""
    from experiments.configs import census_common, school_tasks
    from jmtl import weighting

    specs = []
    for path in sorted(glob.glob(str(CONFIG_DIR / "*.py"))):
        name = Path(path).stem
        module = importlib.import_module(f"experiments.configs.{name}")
        if not hasattr(module, "get_config"):
            continue  # common.py, census_common.py, hierarchical_common.py: shared code
        specs.append(path)
        if name == "school_tasks":
            specs += [f"{path}:{v}" for v in school_tasks.VARIANTS] + [f"{path}:hps_linear,pcgrad"]
        elif name.startswith("hierarchical_"):
            specs += [f"{path}:{v}" for v in module.get_config().variants] + [f"{path}:hier,mgda"]
        elif name in VISION_VARIANTS:  # `:VARIANT[,METHOD]`, and the single-task baselines
            variants = VISION_VARIANTS[name]
            specs += [f"{path}:{v}" for v in variants] + [f"{path}:{variants[0]},{m}" for m in weighting.names()]
        else:
            specs += [f"{path}:{m}" for m in weighting.names()]
    assert census_common.GROUPS and len(specs) > 100
    return specs


def test_every_shipped_config_and_variant_loads_and_validates():
    """Through ml_collections' config-file parser (what --config runs), then the schema check: no
    shipped config sets a field no code reads."""
    parser = config_flags_impl.ConfigFileFlagParser("config")
    specs = _shipped_configs()
    for spec in specs:
        config = parser.parse(spec)
        assert config_schema.unknown_fields(config) == [], spec
        config_schema.validate_config(config)
    assert any(s.endswith("hierarchical_conll03.py:single") for s in specs)
    assert any(s.endswith("school_tasks.py:mtrl") for s in specs)


def _typo_config(**fields) -> ml_collections.ConfigDict:
    from experiments.configs import gradnorm_toy

    c = gradnorm_toy.get_config()
    for dotted, value in fields.items():
        node = c
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_unknown_fields_set_in_a_config_are_refused_naming_each_and_the_closest_name():
    c = _typo_config(num_epoch=1, optimizer__learnig_rate=0.5)
    with pytest.raises(ValueError) as info:
        config_schema.validate_config(c)
    msg = str(info.value)
    assert "config.num_epoch (did you mean 'num_epochs'?)" in msg
    assert "config.optimizer.learnig_rate (did you mean 'learning_rate'?)" in msg
    assert "Fix:" in msg and "\n" not in msg
    # Declared on purpose: accepted.
    c.extra_fields = ("num_epoch", "optimizer.learnig_rate")
    config_schema.validate_config(c)
    # Keyword-argument subtrees are their receivers' to check (a loader refuses an unknown keyword).
    config_schema.validate_config(_typo_config(dataset__kwargs=dict(num_tasks=2, anything=1)))


def test_tagging_configs_have_their_own_fields_and_refuse_typos():
    from experiments.configs import hierarchical_sg

    c = hierarchical_sg.get_config()
    config_schema.validate_config(c)
    c.model.num_layer = 2
    with pytest.raises(ValueError, match=r"config.model.num_layer \(did you mean 'num_layers'\?\)"):
        config_schema.validate_config(c)
    # An in-memory config may not use the tagging fields.
    with pytest.raises(ValueError, match="config.select_on"):
        config_schema.validate_config(_typo_config(select_on="chunk"))


def test_config_file_error_names_a_float_field_and_keeps_other_errors(tmp_path):
    from jmtl.training import cli

    def load(body: str):
        path = tmp_path / "c.py"
        path.write_text(
            "from experiments.configs import gradnorm_toy\n\n\ndef get_config(arg=None):\n"
            f"    c = gradnorm_toy.get_config(arg)\n    {body}\n    return c\n"
        )
        try:
            config_flags_impl.ConfigFileFlagParser("config").parse(str(path))
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("no error")

    line = cli.config_file_error(load('c.optimizer.learning_rate = "1e-3"'))
    assert "config.optimizer.learning_rate must be a number" in line and "write 1e-3 without quotes" in line
    line = cli.config_file_error(load('c.batch_size = "many"'))
    assert "config.batch_size must be an int" in line and "give config.batch_size an int" in line
    assert cli.config_file_error(load("c.batch_size = 1 // 0")) is None  # a bug keeps its traceback


# ---------------------------------------------------------------------------- checksum messages


def test_checksum_mismatch_reaches_the_user_whole_with_the_command_line_fix(tmp_path):
    from jmtl.data import fingerprint

    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not the published file")
    with pytest.raises(ValueError) as info:
        fingerprint.check_family_files("mnist", {bad.name: bad})
    assert str(info.value).splitlines()[0].endswith(":")  # the message the handler used to cut there
    line = workdir_lib.format_fatal(info.value)
    assert "\n" not in line
    assert str(bad) in line and "expected f7ae60f92e00" in line
    assert "Fix: point the data dir" in line and "--config.dataset.kwargs.verify_checksums=False" in line
    # verify=False accepts the file (the changed-on-purpose route).
    assert fingerprint.check_family_files("mnist", {bad.name: bad}, verify=False)[0].path == str(bad)
    # Other libraries' multi-line messages keep their first line.
    assert workdir_lib.format_fatal(TypeError("first\nsecond")) == "TypeError: first"


@pytest.mark.parametrize(
    "config",
    ["multimnist.py", "multifashion.py", "hierarchical_sg.py", "hierarchical_jmt.py", "hierarchical_conll03.py"],
)
def test_verify_checksums_is_settable_from_the_command_line(config):
    argv = ["prog", f"--config={CONFIG_DIR / config}", "--config.dataset.kwargs.verify_checksums=False"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.dataset.kwargs.verify_checksums is False
    config_schema.validate_config(fv.config)


def test_verify_checksums_keeps_tagging_records_and_resumes():
    """The new kwarg changes no tagging record id (it changes no number), and a workdir saved before
    it existed resumes (its loader verified by default)."""
    from experiments.configs import hierarchical_sg
    from jmtl.drivers import tagging
    from jmtl.training import loop

    c = hierarchical_sg.get_config()
    old = c.copy_and_resolve_references()
    del old.dataset.kwargs["verify_checksums"]
    assert tagging.fingerprint(c) == tagging.fingerprint(old)
    saved = loop._with_new_defaults(config_schema.as_dict(old), c)
    assert config_schema.differences(saved, config_schema.as_dict(c)) == []


# ---------------------------------------------------------------------------- the results writer


def _cells(record):
    return set(record["cells"])


def test_write_results_refuses_fewer_cells_and_leaves_the_file(tmp_path):
    out = tmp_path / "res"
    script_checks.write_results(out, {"cells": ["a", "b", "c"]}, ["# t"], _cells, echo=False)
    before = (tmp_path / "res.json").read_bytes(), (tmp_path / "res.md").read_bytes()
    with pytest.raises(script_checks.FewerCellsError) as info:
        script_checks.write_results(out, {"cells": ["a"]}, ["# t"], _cells, echo=False)
    msg = str(info.value)
    assert "holds 3 cells" in msg and "replace it with 1" in msg and "without 2 of them (b, c)" in msg
    assert "--allow_fewer_cells" in msg and "\n" not in msg
    assert ((tmp_path / "res.json").read_bytes(), (tmp_path / "res.md").read_bytes()) == before
    # Another cell in place of an old one is also a loss.
    with pytest.raises(script_checks.FewerCellsError):
        script_checks.write_results(out, {"cells": ["a", "b", "d"]}, ["# t"], _cells, echo=False)
    # More cells, or the explicit flag: written.
    script_checks.write_results(out, {"cells": ["a", "b", "c", "d"]}, ["# t"], _cells, echo=False)
    script_checks.write_results(out, {"cells": ["a"]}, ["# t"], _cells, allow_fewer=True, echo=False)
    assert json.loads((tmp_path / "res.json").read_text())["cells"] == ["a"]
    # A file of another layout is named, not counted as empty.
    (tmp_path / "res.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="has not the layout this script writes"):
        script_checks.check_cells(tmp_path / "res.json", {"a"}, _cells)
    (tmp_path / "res.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable results file"):
        script_checks.check_cells(tmp_path / "res.json", {"a"}, _cells)


def test_option_parsers():
    assert script_checks.int_list("--splits", "0-2,5,1", 0, 9) == [0, 1, 2, 5]
    for text, needle in (
        ("0-12", r"10, 11, 12 are out of range \(valid: 0..9\)"),
        ("3-1", "is empty"),
        ("a", "not an integer"),
        ("", "no value"),
    ):
        with pytest.raises(ValueError, match=needle):
            script_checks.int_list("--splits", text, 0, 9)
    with pytest.raises(ValueError, match=r"--methods: unknown 'equl' \(did you mean 'equal'\?\)"):
        script_checks.weighting_methods("--methods", ["equl"])
    with pytest.raises(ValueError, match="only suffix is '@rep'"):
        script_checks.weighting_methods("--methods", ["mgda@repr"])
    assert script_checks.weighting_methods("--methods", ["mgda@rep", "equal"]) == ["mgda@rep", "equal"]
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        script_checks.float_list("--alphas", "1,-2", low=0.0)


# ---------------------------------------------------------------------------- the scripts


def _qm9(tmp_path, *extra):
    return [
        "--workdir",
        str(tmp_path / "qm9_wd"),
        "--out",
        str(RESULTS / "qm9" / "qm9_gnn_cpu_subset"),
        "--data_dir",
        str(tmp_path),
        "--cache_dir",
        str(tmp_path / "cache"),
        *extra,
    ]


def test_scripts_refuse_typos_before_any_work_one_line_exit_2(tmp_path):
    """Every script's mistyped options and a config file's typos (one interpreter for all, the exit
    code being the point: tests/scripts/script_typos.py): exit 2, one line naming the option and the
    fix, results/ unchanged, no workdir created."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:gradnorm_toyy -->\nx\n<!-- /table:gradnorm_toyy -->\n")
    # The command line's refusal, for the same mistakes made in a config file.
    typo = tmp_path / "typo.py"
    typo.write_text(
        "from experiments.configs import gradnorm_toy\n\n\ndef get_config(arg=None):\n"
        "    c = gradnorm_toy.get_config(arg)\n    c.num_epoch = 1\n    c.optimizer.learnig_rate = 0.5\n"
        "    return c\n"
    )
    quoted = tmp_path / "quoted.py"
    quoted.write_text(
        "from experiments.configs import gradnorm_toy\n\n\ndef get_config(arg=None):\n"
        '    c = gradnorm_toy.get_config(arg)\n    c.batch_size = "256"\n    return c\n'
    )
    (tmp_path / "sg.json").write_text('{"variant": "hier"}')
    absl_cases = [
        (
            "train",
            ["--config", str(typo), "--workdir", str(tmp_path / "wd")],
            ["config.num_epoch (did you mean 'num_epochs'?)", "config.optimizer.learnig_rate (did you mean"],
        ),
        (
            "train",
            ["--config", str(quoted), "--workdir", str(tmp_path / "wd")],
            [
                f"{quoted}, line 6: config.batch_size must be an int",
                "'256'",
                "Fix: write 256 without quotes in the config file",
            ],
        ),
        # A malformed --results file stops the sweep before any data is read or any run starts.
        (
            "hierarchical_tagging",
            [
                "--config",
                "experiments/configs/hierarchical_sg.py:hier",
                "--workdir",
                str(tmp_path / "wd"),
                "--results",
                str(tmp_path / "sg"),
            ],
            [f"{tmp_path / 'sg.json'} holds a dict, not a list of run records"],
        ),
    ]
    cases = [
        (
            "school_relations",
            ["main", "--only", "hps_linaer"],
            ["--only: unknown 'hps_linaer'", "did you mean 'hps_linear'"],
        ),
        ("school_relations", ["main", "--splits", "0-12"], ["--splits: 10, 11, 12 are out of range (valid: 0..9)"]),
        (
            "school_relations",
            ["main", "--splits", "0", "--only", "hps_linear", "--data-dir", str(tmp_path)],
            ["relations.json holds 93 cells", "--allow_fewer_cells"],
        ),
        ("school_relations", ["main", "--alphas", "1,x"], ["--alphas: 'x' is not a number"]),
        ("school_relations", ["main", "--only", "independent"], ["--only: no row of this command trains independent"]),
        ("school_relations", ["catalogue", "--methods", "equl"], ["--methods: unknown 'equl'"]),
        ("school_relations", ["catalogue", "--split", "10"], ["--split: 10 is out of range"]),
        ("school_relations", ["steptime", "--batch-sizes", "512,x"], ["--batch-sizes: 'x' is not an integer"]),
        ("school_relations", ["main", "--data-dir", str(tmp_path / "nope")], ["--data-dir:", "is not a folder"]),
        ("qm9_gnn", _qm9(tmp_path, "--methods", "equl"), ["--methods: unknown 'equl'", "did you mean 'equal'"]),
        ("qm9_gnn", _qm9(tmp_path, "--methods", "mgda@repp"), ["the only suffix is '@rep'"]),
        ("qm9_gnn", _qm9(tmp_path, "--seeds", "0,a"), ["--seeds: 'a' is not an integer"]),
        ("qm9_gnn", _qm9(tmp_path, "--single_task", "muu"), ["--single_task: unknown 'muu'", "did you mean 'mu'"]),
        ("qm9_gnn", _qm9(tmp_path, "--single_task_seeds", "-1"), ["--single_task_seeds: -1 is out of range"]),
        ("qm9_gnn", _qm9(tmp_path, "--epochs", "0"), ["--epochs: 0 must be >= 1"]),
        ("qm9_gnn", _qm9(tmp_path, "--train_size", "-5"), ["--train_size: -5 must be >= 0"]),
        ("qm9_gnn", _qm9(tmp_path, "--eval_batch_size", "0"), ["--eval_batch_size: 0 must be >= 1"]),
        ("qm9_gnn", [*_qm9(tmp_path), "--data_dir", str(tmp_path / "nope")], ["--data_dir:", "is not a folder"]),
        (
            "qm9_gnn",
            _qm9(tmp_path, "--methods", "equal", "--single_task", ""),
            ["qm9_gnn_cpu_subset.json holds", "--allow_fewer_cells"],
        ),
        (
            "census_table",
            ["--groups", str(tmp_path / "nope"), "--out", str(tmp_path / "t")],
            ["auc.json does not exist"],
        ),
        (
            "census_table",
            ["--groups", str(RESULTS / "census" / "income_marital"), "--out", str(RESULTS / "census" / "table")],
            ["table.json holds 84 cells", "--allow_fewer_cells"],
        ),
        (
            "gradnorm_toy_study",
            ["--tasks", "2", "--workdir", str(tmp_path / "toy_wd")],
            ["gradnorm_toy.json holds 6 cells"],
        ),
        (
            "gradnorm_toy_study",
            ["--tasks", "2,x", "--workdir", str(tmp_path / "toy_wd")],
            ["--tasks: 'x' is not an integer"],
        ),
        (
            "report_runs",
            ["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
            ["summary.json does not exist"],
        ),
        (
            "report_runs",
            ["--runs", str(tmp_path), "--paper", "equal:96", "--out", str(tmp_path / "r")],
            ["--paper: 'equal:96' is not WEIGHTING=LEFT/RIGHT"],
        ),
        ("readme_tables", ["--check", "--readme", str(readme)], ["'gradnorm_toyy'", "does not know", "Fix:"]),
        ("readme_tables", ["--readme", str(tmp_path / "no_readme.md")], ["cannot read", "Fix: pass --readme"]),
    ]
    spec = tmp_path / "cases.json"
    spec.write_text(
        json.dumps(
            [
                {"name": f"{m} {' '.join(a)}", "module": f"experiments.{m}", "argv": a, "absl": True}
                for m, a, _ in absl_cases
            ]
            + [{"name": f"{m} {' '.join(a)}", "module": f"experiments.{m}", "argv": a} for m, a, _ in cases]
        )
    )
    cases = absl_cases + cases
    before = _results_hash()
    # No data there: a check that came too late would fail fast rather than train.
    got = run_script(
        "script_typos.py",
        str(spec),
        timeout=600,
        env={"JMTL_DATA_DIR": str(tmp_path / "no_data"), "JMTL_CACHE_DIR": str(tmp_path / "no_cache")},
    )
    assert _results_hash() == before
    for (module, args, needles), result in zip(cases, got):
        lines = [l for l in result["stderr"].splitlines() if l.strip()]
        assert result["code"] == 2, result
        assert len(lines) == 1, result
        for needle in needles:
            assert needle in lines[0], (result["case"], lines[0])
        if module != "readme_tables":
            assert "Fix:" in lines[0], lines[0]
    for wd in ("qm9_wd", "toy_wd", "cache", "wd"):
        assert not (tmp_path / wd).exists()
    assert (tmp_path / "sg.json").read_text() == '{"variant": "hier"}'


def test_school_relations_subset_with_resume_keeps_every_cell():
    """The planned cells of a --resume run over the committed log cover relations.json (the check
    refuses only real losses), and the render of the log passes the same check."""
    import argparse

    from experiments import school_relations as sr

    records = [json.loads(l) for l in (sr.OUT / "relations_partial.jsonl").read_text().splitlines() if l.strip()]
    script_checks.check_cells(sr.OUT / "relations.json", sr.relation_cells(records), sr.relation_cells)
    args = argparse.Namespace(alphas="", full_batch=False, controls=False)
    planned = {f"{label} / split 0" for label, _, _ in sr.planned_runs(args, 0, [0])}
    assert planned <= sr.relation_cells(records)


def test_census_grid_checks_select_on_and_out_before_any_data(tmp_path):
    from experiments import census_grid
    from experiments.configs import census_income_marital

    config = census_income_marital.get_config()
    with pytest.raises(
        ValueError, match=r"--select_on: unknown 'incme' \(did you mean 'income'\?\); valid: income, marital"
    ):
        census_grid.check_options(config, ["equal"], ["mmoe"], 3, select_on="incme")
    for kwargs, needle in (
        ({"seeds": 0}, "--seeds: 0 must be >= 1"),
        ({"seeds_per_program": -1}, "--seeds_per_program"),
        ({"methods": ["equl"]}, "unknown weighting scheme"),
        ({"archs": ["mmo"]}, "unknown architecture"),
    ):
        args = dict(methods=["equal"], archs=["mmoe"], seeds=3, seeds_per_program=0)
        args.update(kwargs)
        with pytest.raises(ValueError, match=needle):
            census_grid.check_options(config, **args)
    a_file = tmp_path / "f"
    a_file.write_text("keep")
    with pytest.raises(ValueError, match="--out .* lies under the file .*Fix: pass a folder path"):
        census_grid.check_options(config, ["equal"], ["mmoe"], 3, out=str(a_file / "sub"))
    assert census_grid.check_options(config, ["equal", "mgda@rep"], ["mmoe"], 3, select_on="income")[0] == [
        "equal",
        "mgda@rep",
    ]
    # The committed grid's auc.json against a smaller grid: refused before training.
    record = json.loads((RESULTS / "census" / "income_marital" / "auc.json").read_text())
    cells = census_grid.auc_cells(record)
    assert cells and all(" seed " in c for c in cells)
    with pytest.raises(script_checks.FewerCellsError):
        script_checks.check_cells(
            RESULTS / "census" / "income_marital" / "auc.json", set(list(cells)[:1]), census_grid.auc_cells
        )


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "is not valid JSON"),
        ('{"variant": "hier"}', "holds a dict, not a list of run records"),
        ('[{"variant": "hier", "seed": 0}]', "record 0 of"),
        ("[1]", "record 0 of"),
    ],
)
def test_malformed_tagging_results_are_named_with_the_fix(tmp_path, content, needle):
    from jmtl.drivers import tagging

    (tmp_path / "sg.json").write_text(content)
    with pytest.raises(ValueError) as info:
        tagging.read_results(str(tmp_path / "sg"))
    msg = str(info.value)
    assert needle in msg and str(tmp_path / "sg.json") in msg and "Fix:" in msg and "\n" not in msg
    assert tagging.read_results(str(tmp_path / "absent")) == []


# ---------------------------------------------------------------------------- rendered tables


@pytest.fixture()
def ablation_copy(tmp_path, monkeypatch):
    """results/ablation/multimnist_1epoch copied to a temporary results folder the renderer reads."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS / "ablation" / "multimnist_1epoch", results / "ablation" / "multimnist_1epoch")
    monkeypatch.setattr(rt, "RESULTS", results)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:multimnist_1epoch -->\n\n<!-- /table:multimnist_1epoch -->\n")
    return results / "ablation" / "multimnist_1epoch" / "results.csv", readme


def _rewrite_csv(path: Path, keep) -> None:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if keep(r)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_header_seed_count_is_checked_against_every_row(ablation_copy, capsys):
    path, readme = ablation_copy
    assert "mean of 3 seeds" in rt.multimnist_1epoch()[0]
    # Two of hps__equal's three seed rows removed: no "mean of 3 seeds" over one.
    _rewrite_csv(path, lambda r: not (r["cell"] == "hps__equal" and r["seed"] in ("1", "2")))
    original = readme.read_text()
    assert rt.main(["--readme", str(readme)]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "different numbers of seeds (3 for most; equal 1)" in err[0] and "Fix:" in err[0]
    assert readme.read_text() == original
    # One seed everywhere: the header says so.
    _rewrite_csv(path, lambda r: r["seed"] in ("0", ""))
    header = rt.multimnist_1epoch()[0]
    assert "one seed" in header and "mean of" not in header


def test_missing_file_column_and_marker_are_one_line(ablation_copy, capsys, tmp_path):
    path, readme = ablation_copy
    original = readme.read_text()
    _rewrite_csv(path, lambda r: True)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        fields = [k for k in rows[0] if k != "test.left.accuracy"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert rt.main(["--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks the column or key 'test.left.accuracy'" in err[0] and "Fix:" in err[0]
    path.unlink()
    assert rt.main(["--readme", str(readme)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.csv does not exist" in err[0] and "Fix: run the experiment" in err[0]
    assert readme.read_text() == original
    unclosed = tmp_path / "R2.md"
    unclosed.write_text("<!-- table:gradnorm_toy -->\nold\n")
    assert rt.main(["--readme", str(unclosed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without its closing <!-- /table:gradnorm_toy -->" in err[0]
    assert unclosed.read_text() == "<!-- table:gradnorm_toy -->\nold\n"


def test_school_render_counts_each_split_once(tmp_path, monkeypatch):
    """A rerun without --resume appends a second record of a cell to the log; the table keeps the
    latest, so no split counts twice in a row's mean and n."""
    from experiments import results_io as common
    from experiments import school_relations as sr

    monkeypatch.setattr(sr, "OUT", tmp_path)
    monkeypatch.setattr(sr, "ROOT", tmp_path)
    runs = [
        {"label": sr.HARD, "split": 0, "test_ev": 0.30, "wall_s": 1.0},
        {"label": sr.HARD, "split": 1, "test_ev": 0.40, "wall_s": 1.0},
        {"label": sr.HARD, "split": 0, "test_ev": 0.50, "wall_s": 1.0},
    ]
    sr.write_main(runs, common)
    row = json.loads((tmp_path / "relations.json").read_text())["table"][sr.HARD]
    assert row["n"] == 2 and row["mean"] == pytest.approx(45.0)


def test_upgrad_solver_bench_checks_its_options_and_keeps_the_committed_table(capsys):
    """A typo in --ks, or a run over fewer K values than the committed table, is one line (exit 2)
    before any work, and the results file is not touched."""
    from experiments.bench import upgrad_solver

    table = Path(upgrad_solver.common.RESULTS) / "upgrad_solver.json"
    before = table.read_bytes()
    with pytest.raises(SystemExit) as e:
        upgrad_solver.main(["--ks", "2,x"])
    assert e.value.code == 2 and "--ks: 'x' is not an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        upgrad_solver.main(["--ks", "2,3"])
    assert e.value.code == 2 and "nothing was written" in capsys.readouterr().err
    assert table.read_bytes() == before


def test_an_out_path_in_a_missing_folder_is_made_before_any_work(tmp_path):
    """The leaderboard trained 25 minutes of School cells, then could not write its report to
    ``--out /tmp/new_folder/leaderboard`` (the folder did not exist). ``output_path``, which every
    report-writing script calls before any work, now makes the folder and checks it is writable; a
    file in the way is still refused, naming the fix."""
    out = tmp_path / "new" / "deeper" / "leaderboard"
    assert script_checks.output_path("--out", out, (".json", ".md", ".png")) == out
    assert out.parent.is_dir() and not list(out.parent.iterdir())
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(ValueError, match="is a file, so .* Fix: pass another --out"):
        script_checks.output_path("--out", tmp_path / "a_file" / "sub" / "x")
    assert (tmp_path / "a_file").read_text() == "keep"

"""jmtl installs as a package and imports from any folder (issue 16: it used to import only from the
repository root, as a namespace package without __init__)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_then_import_from_another_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "jmtl", src / "jmtl", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    # --no-build-isolation: build with this venv's setuptools and wheel (requirements.txt), offline.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (target / "jmtl" / "py.typed").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import jmtl, jax.numpy as jnp; "
        "assert jmtl.__file__.startswith(%r), jmtl.__file__; "
        "print(jmtl.__version__); print(len(jmtl.weighting.names())); "
        "vg = jmtl.mtl_value_and_grad(lambda p, x: jnp.stack([jnp.sum(p['shared'] * x), jnp.sum(p['shared'] ** 2)]), 'mgda'); "
        "p = {'shared': jnp.ones(3)}; r = vg(p, vg.init(p, 2), jnp.arange(3.0)); print(r.losses.tolist())"
    ) % str(target)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    version, n_methods, losses = out.stdout.split("\n")[:3]
    assert version == __import__("jmtl").__version__
    assert int(n_methods) > 30
    assert losses == "[3.0, 3.0]"

    # The console commands work outside a checkout: the catalogue, and training from a user's own
    # config file (no `experiments` package there).
    out = subprocess.run(
        [str(target / "bin" / "jmtl-schemes")], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "| `pcgrad` | gramian, key |" in out.stdout and out.stdout.count("\n| `") == int(n_methods)
    (elsewhere / "my_config.py").write_text(
        "from jmtl.training import config_schema\n"
        "def get_config():\n"
        "    c = config_schema.default_config()\n"
        "    c.num_steps, c.eval_every_steps, c.log_every_steps, c.progress_bar = 3, 3, 1, False\n"
        "    return c\n"
    )
    args = [str(target / "bin" / "jmtl-train"), "--config", "my_config.py", "--workdir", "run"]
    out = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (elsewhere / "run" / "summary.json").exists()
    out = subprocess.run(
        [*args, "--config.num_step=4"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2 and "num_step" in out.stderr + out.stdout


def test_trainer_without_its_extra_names_the_install_command():
    """`pip install jmtl` gives the core; `jmtl.fit` / `jmtl.train` need the datasets and checkpoint
    packages. Without them the error says which extra to install, not a bare ModuleNotFoundError."""
    code = (
        "import sys; sys.modules['grain'] = None\n"  # as if grain were not installed
        "import jmtl\n"
        "try:\n    jmtl.fit\nexcept ModuleNotFoundError as e:\n    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "MSG jmtl.fit needs 'grain'" in out.stdout, out.stdout + out.stderr
    assert "pip install 'jmtl[experiments]'" in out.stdout


def test_type_checking_imports_name_exactly_the_lazy_public_api():
    """``jmtl/__init__.py`` lists the public names twice (lazy table for run time, TYPE_CHECKING imports
    for type checkers and IDEs); the two must agree, and every name must resolve."""
    import ast

    import jmtl

    tree = ast.parse(Path(jmtl.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {a.asname or a.name for imp in block.body for a in imp.names}
    assert imported == set(jmtl._ATTRIBUTES) | set(jmtl._SUBPACKAGES)
    for name in jmtl.__all__:
        assert getattr(jmtl, name) is not None


def test_requirement_files_spell_extras_in_normalised_form():
    """pip before 23.3 (Python 3.11's venv ships 23.2) compares extras literally: a requirement's
    ``pkg[quadprog_projector]`` against metadata that declares ``quadprog-projector`` silently installs
    the package without the extra. PEP 685's normalised form (lowercase, ``-``) matches every pip."""
    import re

    root = Path(__file__).resolve().parents[1]
    files = [root / "requirements.txt", *sorted(root.glob("experiments/**/requirements*.txt"))]
    assert len(files) >= 2, files
    bad = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            for extras in re.findall(r"\[([^\]]+)\]", line):
                bad += [
                    f"{path.name}: {line}"
                    for e in extras.split(",")
                    if re.sub(r"[-_.]+", "-", e.strip().lower()) != e.strip()
                ]
    assert not bad, f"extras not in normalised form (write them with '-'): {bad}"

"""The docs: the site builds with warnings as errors, every Python block runs, every command names a
module and a config that exist, and the generated catalogue is current."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, language: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(path.read_text()) if m.group(1) == language]


def test_site_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    assert "mtl_value_and_grad" in (tmp_path / "site" / "api" / "index.html").read_text()


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_every_python_block_runs(page, tmp_path):
    """A page's blocks run in order in one fresh interpreter (a session), in an empty folder."""
    code = "\n\n".join(blocks(page, "python"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "JMTL_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"{page.name}:\n{out.stderr[-4000:]}"


def _commands(text: str):
    for line in text.replace("\\\n", " ").splitlines():
        words = line.split("#")[0].split()
        if "-m" in words and words.index("-m") + 1 < len(words):
            yield words[words.index("-m") + 1], words
        elif words and words[0].startswith("jmtl-"):
            yield words[0], words


def test_every_command_names_a_module_and_files_that_exist():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    seen = 0
    for page in [*PAGES, ROOT / "README.md"]:
        for block in blocks(page, "bash"):
            for target, words in _commands(block):
                seen += 1
                if target.startswith("jmtl-"):
                    assert target in scripts, f"{page.name}: unknown command {target}"
                elif target not in ("pip", "venv", "pytest"):
                    assert importlib.util.find_spec(target) is not None, f"{page.name}: no module {target}"
                if "--config" in words:
                    config = words[words.index("--config") + 1].split(":")[0]
                    assert (ROOT / config).exists(), f"{page.name}: no config file {config}"
    assert seen >= 5


def test_generated_catalogue_is_current():
    from experiments import render_docs

    assert render_docs.main(["--check"]) == 0, "docs/schemes.md is stale. Fix: python -m experiments.render_docs"
    from jmtl import weighting

    page = (ROOT / "docs" / "schemes.md").read_text()
    block = page[page.index("<!-- catalogue -->") : page.index("<!-- /catalogue -->")]
    assert block.count("\n| `") == len(weighting.names())


def test_readme_code_is_taken_from_the_executed_quickstarts():
    """The README's Python fragments are lines of docs/quickstart.md, whose blocks run above."""
    quick = {line.strip() for block in blocks(ROOT / "docs" / "quickstart.md", "python") for line in block.splitlines()}
    for block in blocks(ROOT / "README.md", "python"):
        for line in block.splitlines():
            assert not line.strip() or line.strip() in quick, f"README line not in docs/quickstart.md: {line!r}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024, "README.md over 12 KB: move detail into docs/"


def test_readme_counts_are_the_registry_counts():
    from jmtl import weighting

    text = (ROOT / "README.md").read_text()
    n = len(weighting.names())
    assert f"and {n} loss- and gradient-balancing schemes" in text and f"| weighting schemes | {n}," in text

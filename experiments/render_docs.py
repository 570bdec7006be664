"""Rewrites the generated parts of the docs (the weighting catalogue in docs/schemes.md) from the library.

python -m experiments.render_docs            # rewrite
python -m experiments.render_docs --check    # exit 1 if a generated part is stale (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jmtl.weighting.catalogue import table

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- catalogue -->\n)(.*?)(\n<!-- /catalogue -->)", re.S)


def rendered(text: str) -> str:
    if not BLOCK.search(text):
        raise SystemExit("docs/schemes.md has no <!-- catalogue --> ... <!-- /catalogue --> block")
    return BLOCK.sub(lambda m: m.group(1) + table() + m.group(3), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    args = parser.parse_args(argv)
    path = ROOT / "docs" / "schemes.md"
    old = path.read_text()
    new = rendered(old)
    if args.check:
        if new != old:
            print(f"{path} is stale. Fix: python -m experiments.render_docs", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs experiment scripts' ``main`` with mistyped options, in one interpreter (one jax import for
all of them), and prints ``RESULT [{"case", "code", "stderr"}, ...]``.

absl scripts (``absl: true``) are parsed by ``jmtl.training.cli.parse_flags`` first; each script
exits through ``jmtl.training.cli.one_line_errors`` (``sys.exit(2)`` here: no other
threads are alive) or returns its exit code; stderr is captured per case.

    python tests/scripts/script_typos.py CASES.json
"""

import contextlib
import importlib
import io
import json
import sys


def run_case(module: str, argv: list[str], absl_flags: bool = False) -> tuple[int, str]:
    """``module.main(argv)``; with ``absl_flags``, after the absl parser the scripts run under
    (``jmtl.training.cli.parse_flags``), as ``app.run`` does."""
    main = importlib.import_module(module).main
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if absl_flags:
                from absl import flags

                from jmtl.training import cli

                flags.FLAGS.unparse_flags()
                argv = cli.parse_flags([module, *argv])
            code = main(argv) or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    if absl_flags:  # its flags go, so that a later script may define flags of the same names
        from absl import flags

        for flag in flags.FLAGS.get_flags_for_module(module):
            if flag.name not in ("config", "workdir"):
                delattr(flags.FLAGS, flag.name)
    return code, err.getvalue()


def main() -> None:
    cases = json.loads(open(sys.argv[1]).read())
    out = []
    for case in cases:
        code, stderr = run_case(case["module"], case["argv"], case.get("absl", False))
        out.append({"case": case["name"], "code": code, "stderr": stderr})
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()

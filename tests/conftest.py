import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests run on the CPU (and never download anything).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU compiler with its older (non-MLIR) fusion emitters: the suite is bound by compiling
# thousands of small programs, and these compile them faster (8 tests of
# tests/test_weighting_in_step.py 27.7 s -> 18.3 s, tests/test_architectures.py 108 s -> 84 s,
# tests/test_parallel.py + test_multihost.py 158 s -> 116 s; the whole suite's summed test time in
# two clean-clone CI runs 2,354 s -> 1,648 s). The programs are the same, only their machine code is
# generated differently (last-bit differences are possible); every test compares paths compiled
# alike, or against references with tolerances. Set before jax starts, so every test's subprocess
# inherits it (run_script and the multi-host test keep it); jax reads XLA_FLAGS once per process.
# XLA stops a process whose XLA_FLAGS names a flag it does not know: on a jax other than the pinned
# one whose XLA dropped this flag, JMTL_TESTS_XLA_FLAGS="" (or other flags) replaces it.
TEST_XLA_FLAGS = os.environ.get("JMTL_TESTS_XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")


def with_test_xla_flags(flags: str) -> str:
    """``flags`` (an XLA_FLAGS value) with the tests' flags added."""
    return flags if TEST_XLA_FLAGS in flags else f"{flags} {TEST_XLA_FLAGS}".strip()


os.environ["XLA_FLAGS"] = with_test_xla_flags(os.environ.get("XLA_FLAGS", ""))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s (still part of CI)")
    _session_compilation_cache(config)


def _session_compilation_cache(config):
    """One persistent XLA compilation cache for this pytest process (and the subprocesses its tests
    start), in a fresh temporary folder removed at the end: many tests compile the same programs
    again (a resumed run, the same config trained twice, the same step in several tests), and a
    compiled program is looked up by a hash of its HLO and compile options, so the programs, and
    every number the tests compare, are the same with or without it. A cache the user configured
    (``JAX_COMPILATION_CACHE_DIR``) is left alone.

    Under pytest-xdist every worker makes its own folder (a worker inherits the controller's
    environment, so ``JMTL_TESTS_XLA_CACHE`` tells our folder from the user's): jax writes cache
    entries without a lock or an atomic rename, so two workers sharing one folder could read each
    other's half-written entries."""
    import shutil
    import tempfile

    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if configured and configured != os.environ.get("JMTL_TESTS_XLA_CACHE"):
        return
    folder = tempfile.mkdtemp(prefix="jmtl_tests_xla_cache_")
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=folder,
        JMTL_TESTS_XLA_CACHE=folder,
        # Every program is cached, not only those that took over a second (the default) to compile.
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    import jax  # after the environment: jax reads these variables when it is imported

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.fixture(scope="module")
def xla_optimizations_off():
    """For a test file that compiles many programs and checks values, not speed
    (``pytestmark = pytest.mark.usefixtures("xla_optimizations_off")``): XLA's optimisation passes
    off (``jax_disable_most_optimizations``) for the file, restored afterwards. jax's in-memory
    caches are not keyed on that flag, so they are cleared on the way in and out: no executable
    compiled without the passes outlives the file and serves a later test."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", old)


def run_script(script: str, *args: str, devices: int = 1, timeout: int = 600, env: dict | None = None) -> dict:
    """Runs ``tests/scripts/<script>`` in a fresh interpreter with ``devices`` forced CPU devices and
    returns the JSON it prints on its ``RESULT`` line."""
    full_env = dict(os.environ)
    full_env.update(
        XLA_FLAGS=with_test_xla_flags(f"--xla_force_host_platform_device_count={devices}"),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
    )
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{script} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture
def script_runner():
    return run_script


# Every (methods, problem) group that a test compares across 8 forced CPU devices
# (tests/scripts/driver_agreement.py). They run in ONE subprocess: one interpreter start-up and jax
# import for all of them instead of one per test. Every test that reads them is in
# tests/test_parallel.py: `.ci/run`'s `--dist loadfile` keeps a file's tests in one pytest-xdist
# worker, so this session fixture runs once, not once per worker.
EIGHT_DEVICE_GROUPS = (
    ("equal,mgda,mgda@rep", "lenet"),  # Multi-LeNet, 2 tasks, param and representation Jacobians
    ("pcgrad,upgrad,nash_mtl", "mlp"),  # catalogue methods on 3 partly conflicting tasks
    ("auto_lambda,forum", "mlp"),  # bilevel
    ("mgda:c1,pcgrad:c2,mgda@rep:c2", "mlp"),  # Jacobian chunks (tests/test_jacobian_chunks.py)
)


@pytest.fixture(scope="session")
def eight_device_agreement():
    """``{(methods, problem): driver_agreement output}`` for :data:`EIGHT_DEVICE_GROUPS`, run once."""
    # The time limit the separate subprocesses had together (600 s each).
    out = run_script(
        "driver_agreement.py",
        "--groups",
        *[f"{m}@@{p}" for m, p in EIGHT_DEVICE_GROUPS],
        devices=8,
        timeout=600 * len(EIGHT_DEVICE_GROUPS),
    )
    return {(m, p): out[f"{m}@@{p}"] for m, p in EIGHT_DEVICE_GROUPS}


def toy_config(tmp_path, **overrides):
    """The gradnorm_toy experiment config with a per-test data cache, no progress bar, and
    ``overrides`` given as dotted field paths (``toy_config(tmp, **{"model.encoder": "mlp"})``)."""
    from experiments.configs import gradnorm_toy

    c = gradnorm_toy.get_config()
    c.dataset.cache_dir = str(tmp_path / "cache")
    c.progress_bar = False
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@pytest.fixture(autouse=True)
def _restore_registries():
    """Datasets and encoders that a test registers (often inside a config's get_config) must not leak
    into later tests: the registries are restored after each test."""
    from jmtl.data import pipeline
    from jmtl.models import encoders

    datasets, encs = dict(pipeline._REGISTRY), dict(encoders.ENCODERS)
    yield
    pipeline._REGISTRY.clear()
    pipeline._REGISTRY.update(datasets)
    encoders.ENCODERS.clear()
    encoders.ENCODERS.update(encs)

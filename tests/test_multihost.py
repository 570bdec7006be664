"""Multi-host data parallelism: 2 local processes (jax.distributed, gloo on 127.0.0.1), each reading its
own shard of every global batch, reproduce the 1-process run of the same config."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
from conftest import ROOT, run_script, with_test_xla_flags


def test_two_processes_match_one_process(tmp_path):
    cache = str(tmp_path / "cache")
    common = [f"dataset.cache_dir={cache}", "num_steps=30"]
    ref = run_script("train_run.py", str(tmp_path / "one"), *common, timeout=600)

    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS=with_test_xla_flags("--xla_force_host_platform_device_count=1"),
            JAX_PLATFORMS="cpu",
            PYTHONPATH=str(ROOT),
            JMTL_COORDINATOR=f"127.0.0.1:{port}",
            JMTL_NUM_PROCESSES="2",
            JMTL_PROCESS_ID=str(pid),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "tests/scripts/train_run.py"), str(tmp_path / "two"), *common],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
        )
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-4000:]
        outs.append(json.loads([l for l in stdout.splitlines() if l.startswith("RESULT ")][-1][7:]))

    assert ref["summary"]["processes"] == 1
    for out in outs:
        assert out["summary"]["processes"] == 2 and out["summary"]["devices"] == 2
        for key, ref_vals in ref["params"].items():
            np.testing.assert_allclose(out["params"][key], ref_vals, rtol=1e-5, atol=1e-6, err_msg=key)
        for task, metrics in ref["summary"]["final"]["test"].items():
            for m, v in metrics.items():
                np.testing.assert_allclose(out["summary"]["final"]["test"][task][m], v, rtol=1e-5)

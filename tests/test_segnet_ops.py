"""experiments/bench/segnet_ops.py: the conv inventory it times is SegNet's own, a setting the jaxlib
rejects is reported rather than crashing the run, and the tiny smoke writes its report."""

from __future__ import annotations

import collections
import json

import jax
import jax.numpy as jnp

from experiments.bench import segnet_ops
from experiments.bench import vision_common as vc


def _kernels_3x3(params) -> collections.Counter:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return collections.Counter(
        (leaf.shape[2], leaf.shape[3])
        for path, leaf in leaves
        if getattr(path[-1], "key", None) == "kernel" and leaf.shape[:2] == (3, 3)
    )


def test_conv_inventory_is_every_3x3_conv_of_the_full_size_model():
    """Independent truth: the 3x3 kernels in the params of the model the step benchmark trains
    (traced only, no compilation), by (Cin, Cout)."""
    tasks, _ = vc.pixel_tasks()
    model = vc.segnet_model(tasks)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 288, 384, 3))))["params"]
    shapes = segnet_ops.conv_shapes(288, 384, (64, 128, 256, 512, 512))
    from_inventory = collections.Counter()
    for s in shapes:
        from_inventory[(s["cin"], s["cout"])] += s["count"]
    assert from_inventory == _kernels_3x3(params)
    assert sum(s["count"] for s in shapes) == 26 + 3  # SegNet's 26 convs and the 3 heads' 3x3 convs
    # spatial sizes: level i runs at 288x384 / 2^i
    assert {(s["h"], s["w"]) for s in shapes} == {(288 >> i, 384 >> i) for i in range(5)}


def test_a_setting_the_jaxlib_rejects_is_reported_not_fatal():
    r = segnet_ops.run_setting("bogus", "--xla_cpu_no_such_flag_for_jmtl=1", ["--tiny"])
    assert r["exit"] != 0 and "error" in r
    assert "--xla_cpu_no_such_flag_for_jmtl=1" in r["xla_flags"]


def test_tiny_smoke_writes_the_report(tmp_path):
    out = tmp_path / "ops"
    segnet_ops.main(["--tiny", "--settings", "default", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["settings"]) == {"default"}
    r = result["settings"]["default"]
    assert len(r["convs"]) == len(result["shapes"]) and r["step"]["median_s"] > 0
    text = out.with_suffix(".md").read_text()
    assert "| equal-weighting step (1 interleaved rounds) |" in text and "| default (`no flag`) |" in text

"""Memory per checkpoint save: orbax's spec normalisation no longer calls tensorstore's leaking
``KvStore.Spec.to_json`` (``checkpoint._avoid_spec_json_leak``), and what stands in for it returns
what tensorstore returns."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import tensorstore as ts

from jmtl.runs import checkpoint


def test_stand_in_returns_what_tensorstore_returns(tmp_path):
    kv = checkpoint._KvStoreWithoutSpecJsonLeak(ts.KvStore)
    for path in (f"{tmp_path}/", f"{tmp_path}/ckpt/12/state/", f"{tmp_path}/a b/é/"):
        spec = {"driver": "file", "path": path}
        got = kv.Spec(spec)
        assert isinstance(got, checkpoint._FileSpecJson)
        assert got.to_json() == ts.KvStore.Spec(spec).to_json()
        assert got.real().to_json() == ts.KvStore.Spec(spec).to_json()  # and the real one on demand
    # Anything but a normal absolute local file path goes to tensorstore (which validates it).
    for spec in (
        {"driver": "file", "path": f"{tmp_path}/./x//y/"},
        {"driver": "file", "path": "relative/x/"},
        {"driver": "memory"},
        {"driver": "file", "path": f"{tmp_path}/", "file_io_sync": False},
    ):
        try:
            want = ts.KvStore.Spec(spec)
        except ValueError as e:
            with pytest.raises(ValueError, match=str(e)[:20]):
                kv.Spec(spec)
            continue
        got = kv.Spec(spec)
        assert not isinstance(got, checkpoint._FileSpecJson) and got.to_json() == want.to_json()


def test_saves_leak_no_python_objects_through_spec_json(tmp_path):
    from orbax.checkpoint._src.serialization import tensorstore_utils

    ck = checkpoint.Checkpointer(tmp_path / "ck")  # installs the stand-in
    assert isinstance(tensorstore_utils.ts, checkpoint._TensorstoreWithoutSpecJsonLeak)
    state = {"w": np.arange(6, dtype=np.float32), "n": np.zeros((), np.int32)}
    ck.save(0, state, {})
    restored, _ = ck.restore(state, {}, step=0)
    np.testing.assert_array_equal(restored["w"], state["w"])
    # orbax's spec builder for a step folder: before, each call leaked the returned dict's objects
    # (~220 traced bytes per call, tensorstore 0.1.86); now nothing stays behind.
    base = str(tmp_path / "ck" / "0" / "state")
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(300):
            tensorstore_utils.build_kvstore_tspec(base, use_ocdbt=True)
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            tensorstore_utils.build_kvstore_tspec(base, use_ocdbt=True)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - first
    finally:
        tracemalloc.stop()
    assert grown < 300 * 20, f"{grown} bytes kept over 300 spec builds"
    ck.close()

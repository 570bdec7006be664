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


# Counts glibc's malloc arenas (``malloc_info``'s ``<heap nr=...>`` entries), then starts 8 threads that
# allocate while all alive: glibc gives each new thread an arena of its own until its cap.
_ARENAS_AFTER_THREADS = """
import ctypes, re, threading
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
def arenas():
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    libc.malloc_info(0, f)
    libc.fclose(f)
    return len(re.findall(r"<heap nr=", ctypes.string_at(buf, size.value).decode()))
barrier = threading.Barrier(9)
def work():
    keep = [bytearray(1 << 12) for _ in range(50)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
barrier.wait()
n = arenas()
barrier.wait()
for t in threads:
    t.join()
print("ARENAS", n)
"""


def _arenas_in_subprocess(prelude: str, tmp_path) -> int:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "JMTL_MALLOC_ARENAS")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", prelude + _ARENAS_AFTER_THREADS],
        env={**env, "JAX_PLATFORMS": "cpu"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split("ARENAS")[-1])


def test_checkpointer_caps_malloc_arenas(tmp_path):
    """RSS per save came from orbax's per-save threads spreading buffers over glibc's up to 8 arenas
    per core (heap in use stayed flat): importing the checkpoint module caps them at 2, once, before
    the threads. ``JMTL_MALLOC_ARENAS=0`` leaves glibc's default: the same 8 allocating threads (and
    orbax's save threads) then get arenas of their own."""
    saves = (
        "import numpy as np\n"
        "from jmtl.runs import checkpoint\n"
        "ck = checkpoint.Checkpointer('ck')\n"
        "for i in range(2):\n"
        "    ck.save(i, {'w': np.arange(6, dtype=np.float32)}, {'i': i})\n"
        "ck.close()\n"
    )
    with_cap = _arenas_in_subprocess(
        saves
        + "cap = checkpoint.cap_malloc_arenas()\nassert cap['limited'] and cap['in_time'] and cap['arenas'] == 2, cap\n",
        tmp_path,
    )
    assert with_cap <= checkpoint.MALLOC_ARENAS, with_cap
    without = _arenas_in_subprocess(
        "import os\nos.environ['JMTL_MALLOC_ARENAS'] = '0'\n"
        + saves
        + "assert not checkpoint.MALLOC_ARENAS_LIMITED and not checkpoint.cap_malloc_arenas()['limited']\n",
        tmp_path,
    )
    assert without > checkpoint.MALLOC_ARENAS, without


def test_arena_cap_is_set_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(checkpoint, "limit_malloc_arenas", lambda n: calls.append(n) or n > 0)
    monkeypatch.setattr(checkpoint, "malloc_arena_count", lambda: 3)
    monkeypatch.setattr(checkpoint, "_ARENA_CAP", None)  # as in a fresh process
    monkeypatch.setenv("JMTL_MALLOC_ARENAS", "4")
    first = checkpoint.cap_malloc_arenas()
    monkeypatch.setenv("JMTL_MALLOC_ARENAS", "7")  # read once: a later call changes nothing
    assert checkpoint.cap_malloc_arenas() == first == dict(arenas=4, limited=True, arenas_before=3, in_time=True)
    assert calls == [4]
    monkeypatch.setattr(checkpoint, "_ARENA_CAP", None)
    monkeypatch.setenv("JMTL_MALLOC_ARENAS", "0")  # off: mallopt is not asked
    assert checkpoint.cap_malloc_arenas() == dict(arenas=0, limited=False, arenas_before=None, in_time=True)
    assert calls == [4, 0]


def test_malloc_arenas_setting_is_checked(monkeypatch):
    monkeypatch.setenv("JMTL_MALLOC_ARENAS", "two")
    with pytest.raises(ValueError, match="JMTL_MALLOC_ARENAS='two' is not an integer; set it"):
        checkpoint._arenas_from_env()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own glibc setting wins
    assert checkpoint.limit_malloc_arenas(2) is False
    assert checkpoint.limit_malloc_arenas(0) is False


def test_a_cap_that_came_too_late_is_named_with_its_fix(monkeypatch, tmp_path):
    from absl import logging as absl_logging

    seen = []
    monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: seen.append(msg % args))
    # glibc had fixed its limit (more than 8 arenas: jax had computed) before the cap
    late = dict(arenas=2, limited=True, arenas_before=12, in_time=False, warned=False)
    monkeypatch.setattr(checkpoint, "_ARENA_CAP", late)
    checkpoint.Checkpointer(tmp_path / "a")
    checkpoint.Checkpointer(tmp_path / "b")
    assert len(seen) == 1, seen  # once per process
    assert (
        "made 12 malloc arenas, too late to cap" in seen[0]
        and "Fix: start the program with MALLOC_ARENA_MAX=2" in seen[0]
    )
    in_time = dict(arenas=2, limited=True, arenas_before=3, in_time=True, warned=False)
    monkeypatch.setattr(checkpoint, "_ARENA_CAP", in_time)  # later arenas are capped: no warning
    checkpoint.Checkpointer(tmp_path / "c")
    assert len(seen) == 1


def test_a_save_leaves_no_cyclic_garbage(tmp_path):
    """A save leaves nothing for the cycle collector: the checksum record's ``json.dump(indent=1)``
    built 33 objects in reference cycles per save (the pure-Python encoder's closures). None is left
    now, orbax's part included."""
    ck = checkpoint.Checkpointer(tmp_path / "ck")
    state = {"w": np.arange(6, dtype=np.float32), "n": np.zeros((), np.int32)}
    ck.save(0, state, {"config": {"a": [1, 2]}})
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage instead of being freed
    try:
        for step in (1, 2, 3):
            ck.save(step, state, {"config": {"a": [1, 2]}, "step": step})
        gc.collect()
        found = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == [], f"{len(found)} objects in cycles over 3 saves: {sorted(set(found))}"
    assert checkpoint.verify_checksums(tmp_path / "ck" / "3") is True  # the compact record still verifies
    ck.close()

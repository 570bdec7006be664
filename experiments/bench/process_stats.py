"""What the benchmarks read about their own process on Linux: ``/proc/self/status`` fields (RSS, its
peak, OS threads), open file descriptors, and glibc's heap in use."""

from __future__ import annotations

import os


def status_field(field: str) -> int:
    """An integer field of ``/proc/self/status`` (``VmRSS``, ``VmHWM`` in kB; ``Threads``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_kib() -> int:
    return status_field("VmRSS")


def rss_mib() -> float:
    return status_field("VmRSS") / 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


_MALLINFO2 = None


def heap_in_use_kib() -> float:
    """glibc's bytes in use over all arenas (``mallinfo2().uordblks``), KiB; NaN elsewhere."""
    global _MALLINFO2
    if _MALLINFO2 is None:  # built once: a ctypes Structure class per reading would be cyclic garbage
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (n, ctypes.c_size_t)
                for n in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]

        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            fn = False
        else:
            fn.restype = MallInfo2
        _MALLINFO2 = fn
    return _MALLINFO2().uordblks / 1024 if _MALLINFO2 else float("nan")

"""Process-level allocator setting for training on the CPU."""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameter numbers (malloc.h) and the largest mmap threshold it accepts.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAX_MMAP_THRESHOLD = 32 * 2**20


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse: blocks up to 32 MiB come from the heap (not from
    mmap, whose every fresh page costs a fault on first touch) and the heap is never trimmed.
    A training step allocates the same sizes every step, so after the first one they are served
    from memory already mapped; measured ~12 % faster steps at the same peak RSS (BENCHMARKS.md).
    By default glibc trims the heap top and raises the mmap threshold only as blocks are freed,
    so tensors of a few MiB keep being mapped, faulted in and unmapped. Returns False where it
    does not apply (not Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))

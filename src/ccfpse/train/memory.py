"""Process-level memory setting for ``--checkpoint-activations``."""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 16 * 2**20


def return_large_blocks_to_os(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve CPU allocations of at least ``threshold`` bytes by mmap, so that they go back to the
    OS as soon as they are freed. By default glibc raises this threshold to the size of the
    largest block freed so far (up to 32 MiB), after which activations are carved out of a heap
    that fragments and never shrinks: at 256 px that heap alone added ~0.7 GiB to the peak
    (BENCHMARKS.md). The cost is a page fault per fresh page. Returns False where it does not
    apply (not Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1

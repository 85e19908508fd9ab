"""Process-level memory settings for training on the CPU: glibc's allocator, and the shared
libraries' pages."""

from __future__ import annotations

import ctypes
import re
import sys

# glibc's mallopt parameter numbers (malloc.h), the largest mmap threshold it accepts, and the
# defaults of both thresholds.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAX_MMAP_THRESHOLD = 32 * 2**20
_DEFAULT_THRESHOLD = 128 * 2**10
_kept = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse: blocks up to 32 MiB come from the heap (not from
    mmap, whose every fresh page costs a fault on first touch) and the heap is never trimmed.
    A training step allocates the same sizes every step, so after the first one they are served
    from memory already mapped; measured ~12 % faster steps at the same peak RSS (BENCHMARKS.md).
    By default glibc trims the heap top and raises the mmap threshold only as blocks are freed,
    so tensors of a few MiB keep being mapped, faulted in and unmapped. Returns False where it
    does not apply (not Linux with glibc)."""
    global _kept
    libc = _libc()
    if libc is None:
        return False
    _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


def release_freed_memory() -> None:
    """Undo ``keep_freed_memory`` when training ends: both thresholds back at glibc's default
    values (fixed from then on, where glibc would raise the mmap threshold as blocks are freed),
    and the kept free memory returned to the system. Otherwise the process would stay at its training
    peak, and on exit the CUDA build's libraries, which fault in ~125 MiB of their code then,
    would push an outside measurement of the peak (``/usr/bin/time``) above the training's."""
    global _kept
    libc = _libc()
    if not _kept or libc is None:
        return
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
    libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
    libc.malloc_trim(0)
    _kept = False


_MADV_DONTNEED = 4


def release_library_pages() -> int:
    """Hand back to the OS the pages of shared libraries (and other files) that the process
    mapped read-only and has not modified: what ``import torch`` faulted in of the CUDA wheel's
    libraries (cuBLASLt, nvJitLink, NVRTC, ...; never executed on the CPU) and of the CPU
    libraries' code that ran once while loading and setting up. Measured 0.13-0.27 GiB after
    ``import torch`` and another ~0.12 GiB after a training step's set-up, of which ~0.04 GiB
    (the code a step runs) faults back in during the next step. Every page reads back from its
    file, unchanged, should anything touch it again. Returns the bytes released (0 where this
    does not apply: not Linux, or /proc unreadable)."""
    libc = _libc()
    if libc is None:
        return 0
    try:
        mappings = _read_mappings()
    except OSError:
        return 0
    libc.madvise.argtypes, libc.madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return sum(m["Rss"] for m in mappings
               if _releasable(m) and libc.madvise(m["start"], m["size"], _MADV_DONTNEED) == 0)


_MAPPING = re.compile(r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) (?P<perms>\S{4}) \S+ \S+ \S+\s*(?P<path>.*)$")


def _read_mappings() -> list[dict]:
    """The process's mappings from /proc/self/smaps: start, size, perms, path and the sizes it
    lists (Rss, Private_Dirty, ...) in bytes."""
    mappings: list[dict] = []
    with open("/proc/self/smaps") as f:
        for line in f:
            head = _MAPPING.match(line)
            if head is not None:
                start, end = int(head["start"], 16), int(head["end"], 16)
                mappings.append({"start": start, "size": end - start, "perms": head["perms"], "path": head["path"]})
                continue
            key, _, value = line.partition(":")
            if mappings and value.strip().endswith("kB"):
                mappings[-1][key] = int(value.split()[0]) * 1024
    return mappings


def _releasable(mapping: dict) -> bool:
    """A private, not writable mapping of a regular file whose resident pages all come unchanged
    from the file (not a device, a memfd or a deleted file)."""
    perms, path = mapping["perms"], mapping["path"]
    return (perms[1] == "-" and perms[3] == "p" and path.startswith("/") and not path.startswith(("/dev/", "/memfd:"))
            and not path.endswith("(deleted)")
            and mapping.get("Rss", 0) > 0 and all(mapping.get(k, 1) == 0 for k in
                                                  ("Private_Dirty", "Shared_Dirty", "Anonymous", "Swap")))

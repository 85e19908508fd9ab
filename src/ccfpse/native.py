"""The package's small C library: the conditional depthwise convolution, the Winograd tile
transforms, a one-pass Adam step, BatchNorm's per-channel moments and the one-hot label
convolutions' look-ups (sources in ``ccfpse/csrc``).

Plain C without torch headers, so it builds in about a second with the system compiler (a torch
C++ extension takes ~40 s), on first use, into torch's extensions directory; loaded with ctypes,
which drops the GIL during calls. The OpenMP runtime is the one torch already loaded (same
soname). Built for the machine it runs on (``-march=native``; the CPU's feature flags are part
of the cache key, so a shared home directory on different machines keeps one build per kind).
``CCFPSE_NO_EXT=1`` disables it; without a compiler, or when the build fails, callers use their
pure-PyTorch paths (``lib()`` returns None and one warning says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

_log = logging.getLogger("ccfpse.ops")
_SOURCES = Path(__file__).with_name("csrc")
# scalar_t / SUFFIX instances of the depthwise kernel.
DEPTHWISE_TYPES = {"float32": ("float", "f32"), "float64": ("double", "f64")}

_lib: ctypes.CDLL | None | bool = None  # False once building or loading has failed


def _source() -> str:
    depthwise = (_SOURCES / "cond_depthwise.c").read_text()
    parts = [depthwise.replace("scalar_t", t).replace("SUFFIX", s) for t, s in DEPTHWISE_TYPES.values()]
    parts += [(_SOURCES / name).read_text() for name in ("winograd.c", "adam.c", "moments.c", "lookup.c")]
    return "\n".join(parts)


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what -march=native compiles for), where readable."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(sorted({line for line in f if line.startswith(("flags", "model name", "Features"))}))
    except OSError:
        return platform.processor()


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for _, s in DEPTHWISE_TYPES.values():
        getattr(lib, f"cdw_fwd_{s}").argtypes = [p, p, p] + [i64] * 8 + [i32]
        getattr(lib, f"cdw_bwd_{s}").argtypes = [p, p, p, p, p] + [i64] * 8 + [i32]
    lib.wino_input.argtypes = [p, p] + [i64] * 10 + [i32]
    lib.wino_output.argtypes = [p, p, p] + [i64] * 8 + [i32]
    lib.wino_output_t.argtypes = [p, p] + [i64] * 8 + [i32]
    lib.wino_input_t.argtypes = [p, p] + [i64] * 8 + [i32]
    f32 = ctypes.c_float
    lib.adam_step_f32.argtypes = [p, p, p, p, i64, f32, f32, f32, f32, f32, i32]
    lib.channel_moments_f32.argtypes = [p, p, p, i64, i64, i64, i32]
    lib.lookup_patterns_f32.argtypes = [p, i64, p, p] + [i64] * 4 + [i32]
    lib.lookup_gather_f32.argtypes = [p, p, p] + [i64] * 5 + [i32]
    lib.lookup_scatter_f32.argtypes = [p, p, p] + [i64] * 5 + [i32]
    lib.lookup_weight_grad_f32.argtypes = [p, p, p] + [i64] * 4 + [i32]
    return lib


def _build() -> ctypes.CDLL:
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        raise RuntimeError("no C compiler found (set CC)")
    src = _source()
    # Torch's extension cache dir (importing torch.utils.cpp_extension just for its path would log
    # CUDA warnings on CPU-only machines).
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache, "torch_extensions"),
                        "ccfpse_ops")
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # e.g. a read-only home: build for this process only
        root = tempfile.mkdtemp(prefix="ccfpse_ops_")
    base = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]
    errors = []
    # Tuned for this CPU and with OpenMP first; a compiler without either still gives correct code.
    for flags in (base + ["-march=native", "-fopenmp"], base + ["-fopenmp"], base + ["-march=native"], base):
        cpu = _cpu_signature() if "-march=native" in flags else ""
        key = "\0".join([src, *cc, platform.machine(), *flags, cpu])
        lib_path = os.path.join(root, f"ccfpse_native_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so")
        if not os.path.exists(lib_path):
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                c_path, tmp_lib = os.path.join(tmp, "k.c"), os.path.join(tmp, "k.so")
                with open(c_path, "w") as f:
                    f.write(src)
                res = subprocess.run([*cc, *flags, c_path, "-o", tmp_lib], capture_output=True, text=True)
                if res.returncode != 0:
                    errors.append(f"{' '.join(flags)}: {res.stderr.strip()[-500:]}")
                    continue
                os.replace(tmp_lib, lib_path)  # atomic, so concurrent builders never see half a file
        return _declare(ctypes.CDLL(lib_path))
    raise RuntimeError("compiling the kernels failed: " + " | ".join(errors))


def lib() -> ctypes.CDLL | None:
    """The loaded library, or None when it is disabled or unavailable."""
    global _lib
    if os.environ.get("CCFPSE_NO_EXT") == "1":
        return None
    if _lib is None:
        try:
            _lib = _build()
        except Exception as exc:  # any failure: fall back to the pure-PyTorch paths, say why once
            _log.warning("ccfpse.ops: compiled kernels unavailable, using the eager path (%s)", exc)
            _lib = False
    return _lib or None


def threads(numel: int) -> int:
    """OpenMP threads for a call on ``numel`` elements: torch's intra-op count, or 1 for small
    work (a fork/join costs more than it saves, like torch's own grain size)."""
    import torch

    return torch.get_num_threads() if numel >= 32768 else 1

"""Conditional depthwise convolution (the DepthConv of CC-FPSE).

out[n, c, y, x] = sum_{i,j} weight[n, c*9 + i*3 + j, y, x] * xpad[n, c, y+i, x+j]
(3x3 taps, zero padding 1, stride 1, no bias).

The release materialises ``F.unfold(x)`` (nine copies of the input) and autograd keeps both that
and the kernel map for backward. ``cond_depthwise_conv2d`` is a custom autograd Function that
saves only ``x`` and ``weight`` and computes both gradients itself:

- float32/float64 on CPU: a small C kernel (compiled on first use, cached, loaded with ctypes)
  that walks image rows once per pass; ``CCFPSE_NO_EXT=1`` disables it;
- everything else (GPU, MPS, half precision, no compiler): in-place multiply-adds over the nine
  shifted views, a cache-sized block of channels at a time on CPU.

``predict_and_apply_kernels`` fuses the kernel predictor (a 3x3 conv) with
``cond_depthwise_conv2d`` and works in horizontal strips of rows, so the per-pixel kernel map
never exists at full size, in forward or in backward.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "cond_depthwise_conv2d",
    "cond_depthwise_conv2d_eager",
    "cond_depthwise_conv2d_unfold",
    "predict_and_apply_kernels",
]

_log = logging.getLogger(__name__)

# Elements of one (n, channel-block) work item of the eager CPU path: just under torch's intra-op
# grain size (32768), so each of the many small ops runs inline on the calling thread. The block
# stays in L2 across the nine taps, and no op pays an OpenMP fork/join, which costs more than the
# op itself and stalls badly when other processes share the cores.
_BLOCK_ELEMS = 32767


def _check(x: Tensor, weight: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"cond_depthwise_conv2d: x must be 4-D (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    if tuple(weight.shape) != (n, c * 9, h, w):
        raise ValueError(
            f"cond_depthwise_conv2d: weight must have shape (N, C*9, H, W) = {(n, c * 9, h, w)} "
            f"for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if x.device != weight.device:
        raise ValueError(f"cond_depthwise_conv2d: x is on {x.device} but weight is on {weight.device}")
    if not (x.is_floating_point() and weight.is_floating_point()):
        raise ValueError(
            f"cond_depthwise_conv2d: expected floating-point inputs, got {x.dtype} and {weight.dtype}"
        )


def _common_dtype(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    # Under autocast the two inputs often come from different regions (e.g. a conv output in bf16
    # and a normalised activation in float32); promote like the release's plain multiply would.
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return x.to(dtype), weight.to(dtype)


def cond_depthwise_conv2d_unfold(x: Tensor, weight: Tensor) -> Tensor:
    """Reference formulation of the release: unfold, multiply, sum over the nine taps."""
    _check(x, weight)
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size=3, padding=1).view(n * c, 9, h, w)
    return (cols * weight.reshape(n * c, 9, h, w)).sum(1).view(n, c, h, w)


def _spans(d: int, size: int) -> tuple[slice, slice]:
    """(destination, source) slices along one axis for a tap offset ``d`` in {-1, 0, 1}: output
    position p reads input position p + d, and only where that lies inside the image."""
    return slice(max(0, -d), size - max(0, d)), slice(max(0, d), size + min(0, d))


def _taps(h: int, w: int):
    """For each tap k = i*3 + j: (k, output rows, output cols, input rows, input cols)."""
    out = []
    for i in range(3):
        oy, iy = _spans(i - 1, h)
        for j in range(3):
            ox, ix = _spans(j - 1, w)
            out.append((i * 3 + j, oy, ox, iy, ix))
    return out


def _blocks(x: Tensor):
    """(batch slice, channel start, channel stop) work items: on CPU blocks of at most
    ``_BLOCK_ELEMS`` elements (or one channel); elsewhere (GPU, MPS) the whole tensor, since few
    large kernels are what those want."""
    n, c, h, w = x.shape
    if x.device.type != "cpu":
        return [(slice(None), 0, c)]
    step = max(1, min(c, _BLOCK_ELEMS // max(1, h * w)))
    return [(slice(b, b + 1), c0, min(c, c0 + step)) for b in range(n) for c0 in range(0, c, step)]


def _accumulator(dst: Tensor) -> Tensor:
    """A zeroed tensor to sum nine taps into: ``dst`` itself, or a float32 one for half types
    (nine roundings to bf16 would lose far more than the release's single rounded sum)."""
    if dst.dtype in (torch.float16, torch.bfloat16):
        return torch.zeros(dst.shape, dtype=torch.float32, device=dst.device)
    return dst.zero_()


def _forward(x: Tensor, weight: Tensor) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    taps = _taps(*x.shape[2:])
    for bs, c0, c1 in _blocks(x):
        xb, wb = x[bs, c0:c1], weight[bs, c0 * 9 : c1 * 9]
        acc = _accumulator(out[bs, c0:c1])
        for k, oy, ox, iy, ix in taps:
            acc[:, :, oy, ox].addcmul_(wb[:, k::9, oy, ox], xb[:, :, iy, ix])
        if acc.dtype != out.dtype:
            out[bs, c0:c1] = acc
    return out


def _grad_x(grad: Tensor, weight: Tensor) -> Tensor:
    gx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
    taps = _taps(*grad.shape[2:])
    for bs, c0, c1 in _blocks(grad):
        gb, wb = grad[bs, c0:c1], weight[bs, c0 * 9 : c1 * 9]
        acc = _accumulator(gx[bs, c0:c1])
        for k, oy, ox, iy, ix in taps:
            # out[p] took x[p + d] * w_k[p], so x[q] receives grad[q - d] * w_k[q - d].
            acc[:, :, iy, ix].addcmul_(wb[:, k::9, oy, ox], gb[:, :, oy, ox])
        if acc.dtype != gx.dtype:
            gx[bs, c0:c1] = acc
    return gx


def _grad_weight(grad: Tensor, x: Tensor) -> Tensor:
    n, c, h, w = grad.shape
    gw = torch.empty((n, c * 9, h, w), dtype=grad.dtype, device=grad.device)
    taps = _taps(h, w)
    for bs, c0, c1 in _blocks(grad):
        gb, xb, gwb = grad[bs, c0:c1], x[bs, c0:c1], gw[bs, c0 * 9 : c1 * 9]
        for k, oy, ox, iy, ix in taps:
            dst = gwb[:, k::9]
            torch.mul(gb[:, :, oy, ox], xb[:, :, iy, ix], out=dst[:, :, oy, ox])
            # Where a tap looked past the border it multiplied zero padding: zero gradient there.
            if oy.start > 0:
                dst[:, :, : oy.start].zero_()
            if oy.stop < h:
                dst[:, :, oy.stop :].zero_()
            if ox.start > 0:
                dst[:, :, :, : ox.start].zero_()
            if ox.stop < w:
                dst[:, :, :, ox.stop :].zero_()
    return gw


# --- compiled CPU kernel ------------------------------------------------------------------------
# A plain C kernel (no torch headers, so it builds in about a second instead of the ~40 s of a
# torch C++ extension) loaded with ctypes; ctypes drops the GIL during the call and the OpenMP
# runtime is the one torch already loaded (same soname). One parallel loop over image rows per
# call, which also keeps it robust when the cores are shared. Products are added in tap order
# 0..8 without FMA contraction, as the release's multiply-then-sum does.
_C_TEMPLATE = r"""
#include <stdint.h>
#define R __restrict__

void cdw_fwd_SUFFIX(const T* R x, const T* R w, T* R out, int64_t planes, int64_t h, int64_t wd,
                    int nthreads) {
    const int64_t hw = h * wd;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < planes * h; ++r) {
        const int64_t p = r / h, y = r % h;
        T* R o = out + p * hw + y * wd;
        for (int64_t q = 0; q < wd; ++q) o[q] = 0;
        for (int i = 0; i < 3; ++i) {
            const int64_t yy = y + i - 1;
            if (yy < 0 || yy >= h) continue;
            const T* R xr = x + p * hw + yy * wd;
            for (int j = 0; j < 3; ++j) {
                const T* R wr = w + (p * 9 + i * 3 + j) * hw + y * wd;
                const int64_t d = j - 1, lo = d < 0 ? 1 : 0, hi = d > 0 ? wd - 1 : wd;
                for (int64_t q = lo; q < hi; ++q) o[q] += wr[q] * xr[q + d];
            }
        }
    }
}

/* gx and gw may be null when that gradient is not needed. */
void cdw_bwd_SUFFIX(const T* R x, const T* R w, const T* R g, T* R gx, T* R gw, int64_t planes,
                    int64_t h, int64_t wd, int nthreads) {
    const int64_t hw = h * wd;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < planes * h; ++r) {
        const int64_t p = r / h, y = r % h;
        if (gw) {
            /* gw[k][y][q] = g[y][q] * xpad[y + i - 1][q + j - 1] */
            const T* R gr = g + p * hw + y * wd;
            for (int i = 0; i < 3; ++i) {
                const int64_t yy = y + i - 1;
                for (int j = 0; j < 3; ++j) {
                    T* R o = gw + (p * 9 + i * 3 + j) * hw + y * wd;
                    if (yy < 0 || yy >= h) {
                        for (int64_t q = 0; q < wd; ++q) o[q] = 0;
                        continue;
                    }
                    const T* R xr = x + p * hw + yy * wd;
                    const int64_t d = j - 1, lo = d < 0 ? 1 : 0, hi = d > 0 ? wd - 1 : wd;
                    if (lo) o[0] = 0;
                    if (hi < wd) o[wd - 1] = 0;
                    for (int64_t q = lo; q < hi; ++q) o[q] = gr[q] * xr[q + d];
                }
            }
        }
        if (gx) {
            /* x[y][q] fed out[y - i + 1][q - j + 1] through tap k = i*3 + j. */
            T* R o = gx + p * hw + y * wd;
            for (int64_t q = 0; q < wd; ++q) o[q] = 0;
            for (int i = 0; i < 3; ++i) {
                const int64_t yo = y - i + 1;
                if (yo < 0 || yo >= h) continue;
                const T* R gr = g + p * hw + yo * wd;
                for (int j = 0; j < 3; ++j) {
                    const T* R wr = w + (p * 9 + i * 3 + j) * hw + yo * wd;
                    const int64_t d = j - 1, lo = d > 0 ? 1 : 0, hi = d < 0 ? wd - 1 : wd;
                    for (int64_t q = lo; q < hi; ++q) o[q] += wr[q - d] * gr[q - d];
                }
            }
        }
    }
}
"""
_C_TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}
_lib = None  # the loaded ctypes library, False once building or loading it has failed


def _build_kernel():
    """Compile (once per source/compiler, cached in the torch extensions dir) and load the kernel."""
    import ctypes
    import hashlib
    import platform
    import shlex
    import shutil
    import subprocess
    import tempfile

    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0]:
        raise RuntimeError("no C compiler found (set CC)")
    src = "".join(_C_TEMPLATE.replace("T*", t + "*").replace("SUFFIX", s) for t, s in _C_TYPES.values())
    # Torch's extension cache dir (importing torch.utils.cpp_extension just for its path would log
    # CUDA warnings on CPU-only machines).
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    ext_dir = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache, "torch_extensions")
    root = os.path.join(ext_dir, "ccfpse_ops")
    try:
        os.makedirs(root, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # e.g. a read-only home: build for this process only
        root = tempfile.mkdtemp(prefix="ccfpse_ops_")
    base = ["-O3", "-fPIC", "-shared", "-ffp-contract=off"]
    errors = []
    # OpenMP first; a compiler without it still gives a correct single-threaded kernel.
    for flags in (base + ["-fopenmp"], base):
        tag = hashlib.sha256("\0".join([src, *cc, platform.machine(), *flags]).encode()).hexdigest()[:16]
        lib_path = os.path.join(root, f"cond_depthwise_{tag}.so")
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
        lib = ctypes.CDLL(lib_path)
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for _, s in _C_TYPES.values():
            getattr(lib, f"cdw_fwd_{s}").argtypes = [p, p, p, i64, i64, i64, i32]
            getattr(lib, f"cdw_bwd_{s}").argtypes = [p, p, p, p, p, i64, i64, i64, i32]
        return lib
    raise RuntimeError("compiling the kernel failed: " + " | ".join(errors))


def _kernel():
    """The compiled kernel library, or None when it is disabled or unavailable (then eager is used)."""
    global _lib
    if os.environ.get("CCFPSE_NO_EXT") == "1":
        return None
    if _lib is None:
        try:
            _lib = _build_kernel()
        except Exception as exc:  # any failure: fall back to the eager path, say why once
            _log.warning("ccfpse.ops: compiled kernel unavailable, using the eager path (%s)", exc)
            _lib = False
    return _lib or None


def _kernel_for(t: Tensor):
    """The kernel library if it can take tensors like ``t`` (float32/float64 on CPU), else None."""
    if t.device.type != "cpu" or t.dtype not in _C_TYPES:
        return None
    return _kernel()


def _ptr(t: Optional[Tensor]):
    return None if t is None else t.data_ptr()


def _threads(numel: int) -> int:
    # Small maps are not worth a fork/join (like torch's own grain size for elementwise ops).
    return torch.get_num_threads() if numel >= 32768 else 1


def _forward_kernel(lib, x: Tensor, weight: Tensor) -> Tensor:
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype)
    getattr(lib, f"cdw_fwd_{_C_TYPES[x.dtype][1]}")(
        _ptr(x), _ptr(weight), _ptr(out), n * c, h, w, _threads(x.numel())
    )
    return out


def _backward_kernel(lib, grad: Tensor, x: Tensor, weight: Tensor, need_x: bool, need_w: bool):
    n, c, h, w = x.shape
    gx = torch.empty((n, c, h, w), dtype=x.dtype) if need_x else None
    gw = torch.empty((n, c * 9, h, w), dtype=x.dtype) if need_w else None
    getattr(lib, f"cdw_bwd_{_C_TYPES[x.dtype][1]}")(
        _ptr(x), _ptr(weight), _ptr(grad), _ptr(gx), _ptr(gw), n * c, h, w, _threads(x.numel())
    )
    return gx, gw


class _CondDepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, use_kernel: bool) -> Tensor:
        lib = _kernel_for(x) if use_kernel else None
        if lib is not None:
            x, weight = x.contiguous(), weight.contiguous()
        ctx.lib = lib
        ctx.save_for_backward(x, weight)
        return _forward_kernel(lib, x, weight) if lib is not None else _forward(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        if ctx.lib is not None:
            gx, gw = _backward_kernel(ctx.lib, grad.contiguous(), x, weight, need_x, need_w)
        else:
            gx = _grad_x(grad, weight) if need_x else None
            gw = _grad_weight(grad, x) if need_w else None
        return gx, gw, None


def cond_depthwise_conv2d(x: Tensor, weight: Tensor) -> Tensor:
    """Per-pixel, per-channel 3x3 convolution of ``x`` (N, C, H, W) with ``weight`` (N, C*9, H, W).

    ``weight[:, c*9 + i*3 + j]`` multiplies ``x`` shifted by (i-1, j-1); zero padding 1, stride 1.
    Differentiable w.r.t. both inputs (first order); inputs of different floating dtypes are
    promoted to a common one.
    """
    _check(x, weight)
    x, weight = _common_dtype(x, weight)
    return _CondDepthwiseConv2d.apply(x, weight, True)


def cond_depthwise_conv2d_eager(x: Tensor, weight: Tensor) -> Tensor:
    """``cond_depthwise_conv2d`` forced onto the pure-PyTorch path (what non-CPU devices, half
    precision and ``CCFPSE_NO_EXT=1`` use); for tests and benchmarks."""
    _check(x, weight)
    x, weight = _common_dtype(x, weight)
    return _CondDepthwiseConv2d.apply(x, weight, False)


# --- predicted kernels, applied strip by strip ---------------------------------------------------
# Target size in bytes of one strip's per-pixel kernel map (N, 9*C, rows, W) in
# ``predict_and_apply_kernels``; a strip has at least one row. Kept below the mmap threshold that
# --checkpoint-activations sets (16 MiB), so strips reuse heap memory instead of faulting pages in.
STRIP_BYTES = 8 * 2**20


def _check_predict(x: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    def fail(problem: str):
        shapes = f"x {tuple(x.shape)}, hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}"
        shapes += f", bias {None if bias is None else tuple(bias.shape)}"
        raise ValueError(f"predict_and_apply_kernels: {problem} (got {shapes})")

    if x.dim() != 4 or hidden.dim() != 4:
        fail("x and hidden must be 4-D (N, C, H, W) and (N, Ch, H, W)")
    n, c, h, w = x.shape
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        fail("weight must be a 3x3 conv weight of shape (9*C, Ch, 3, 3)")
    if weight.shape[0] != 9 * c:
        fail(f"weight must have 9*C = {9 * c} output channels for x with C = {c}, not {weight.shape[0]}")
    if weight.shape[1] != hidden.shape[1]:
        fail(f"weight's {weight.shape[1]} input channels differ from hidden's {hidden.shape[1]} channels")
    if hidden.shape[0] != n:
        fail(f"batch sizes of x ({n}) and hidden ({hidden.shape[0]}) differ")
    if tuple(hidden.shape[2:]) != (h, w):
        fail(f"spatial sizes of x {(h, w)} and hidden {tuple(hidden.shape[2:])} differ")
    if bias is not None and tuple(bias.shape) != (9 * c,):
        fail(f"bias must have shape (9*C,) = ({9 * c},)")
    devices = {t.device for t in (x, hidden, weight, bias) if t is not None}
    if len(devices) > 1:
        fail(f"inputs are on different devices {sorted(map(str, devices))}")


def _strip_spans(h: int, rows: int):
    """For each strip of at most ``rows`` output rows: (r0, r1, up, down, halo) where the strip is
    rows [r0, r1), ``up``/``down`` is 1 when a neighbouring row exists above/below it (0 at the
    image border) and ``halo`` the slice of rows [r0 - up, r1 + down)."""
    spans = []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        up, down = int(r0 > 0), int(r1 < h)
        spans.append((r0, r1, up, down, slice(r0 - up, r1 + down)))
    return spans


def _strip(xs: Tensor, hs: Tensor, weight: Tensor, bias: Optional[Tensor], up: int, down: int) -> Tensor:
    """Output rows of one strip from its halo rows ``xs``, ``hs`` (the strip plus ``up``/``down``
    neighbouring rows). Where the strip touches the border, zero rows stand in for the halo: the
    zero padding of both convolutions. The whole image (up = down = 0) is the plain computation."""
    if up == down:  # both halo rows present (conv pads rows with nothing) or none (pads with zeros)
        kernels = F.conv2d(hs, weight, bias, padding=(1 - up, 1))
    else:
        kernels = F.conv2d(F.pad(hs, (0, 0, 1 - up, 1 - down)), weight, bias, padding=(0, 1))
    if not (up or down):
        return cond_depthwise_conv2d(xs, kernels)
    # Zero kernels on the halo rows: their outputs are dropped, the rows serve only as x's taps.
    kernels = F.pad(kernels, (0, 0, up, down))
    out = cond_depthwise_conv2d(xs, kernels)
    return out[:, :, up : out.shape[2] - down]


def _strips_forward(x: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], rows: int) -> Tensor:
    n, c, h, w = x.shape
    if rows >= h:
        return _strip(x, hidden, weight, bias, 0, 0)
    out = None
    for r0, r1, up, down, halo in _strip_spans(h, rows):
        part = _strip(x[:, :, halo], hidden[:, :, halo], weight, bias, up, down)
        if out is None:  # dtype as computed (promoted, or under autocast)
            out = part.new_empty((n, c, h, w))
        out[:, :, r0:r1] = part
    return out


def autocast_state(device_type: str):
    """(device_type, dtype) of the autocast region we are in, else None (to recompute under it)."""
    try:
        if torch.is_autocast_enabled(device_type):
            return device_type, torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        pass
    return None


class _PredictAndApplyKernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], rows: int) -> Tensor:
        ctx.save_for_backward(x, hidden, weight, bias)
        ctx.rows = rows
        # Backward recomputes the kernels: under the same autocast state, like torch.amp.custom_bwd.
        ctx.autocast = autocast_state(x.device.type)
        return _strips_forward(x, hidden, weight, bias, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Grad mode is on in backward only with create_graph=True. (``once_differentiable`` would
        # raise only once the gradients are differentiated, and not at all when the incoming
        # gradient is a constant: then they would silently lack this op's second-order terms.)
        if torch.is_grad_enabled():
            raise RuntimeError(
                "predict_and_apply_kernels: double backward is not supported (backward ran with "
                "create_graph=True)"
            )
        x, hidden, weight, bias = ctx.saved_tensors
        need_x, need_h, need_w, need_b = ctx.needs_input_grad[:4]
        need_b = need_b and bias is not None
        h = x.shape[2]
        single = ctx.rows >= h  # one strip, no halo: the gradients are the strip's own
        gx = torch.zeros_like(x) if need_x and not single else None
        gh = torch.zeros_like(hidden) if need_h and not single else None
        gw = gb = None
        w_ = weight.detach().requires_grad_(need_w)
        b_ = bias.detach().requires_grad_(need_b) if bias is not None else None
        amp = torch.autocast(*ctx.autocast) if ctx.autocast else contextlib.nullcontext()
        spans = [(0, h, 0, 0, slice(0, h))] if single else _strip_spans(h, ctx.rows)
        for r0, r1, up, down, halo in spans:
            with torch.enable_grad(), amp:
                xs = x[:, :, halo].detach().requires_grad_(need_x)
                hs = hidden[:, :, halo].detach().requires_grad_(need_h)
                inputs = [t for t in (xs, hs, w_, b_) if t is not None and t.requires_grad]
                out = _strip(xs, hs, w_, b_, up, down)
            grads = iter(torch.autograd.grad(out, inputs, grad[:, :, r0:r1]))
            del out
            if single:
                gx = next(grads) if need_x else None
                gh = next(grads) if need_h else None
            else:  # halo rows overlap the neighbouring strips: add
                if need_x:
                    gx[:, :, halo] += next(grads)
                if need_h:
                    gh[:, :, halo] += next(grads)
            if need_w:  # one buffer: the first strip's gradient, the others added into it
                g = next(grads)
                gw = g if gw is None else gw.add_(g)
            if need_b:
                g = next(grads)
                gb = g if gb is None else gb.add_(g)
        return gx, gh, gw, gb, None


def predict_and_apply_kernels(
    x: Tensor, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], *, strip_rows: Optional[int] = None
) -> Tensor:
    """``cond_depthwise_conv2d(x, F.conv2d(hidden, weight, bias, padding=1))`` without ever holding
    the full (N, 9*C, H, W) per-pixel kernel map: computed in horizontal strips of rows, in forward
    and in backward.

    x: (N, C, H, W); hidden: (N, Ch, H, W), the kernel predictor's input; weight: (9*C, Ch, 3, 3)
    and bias: (9*C,) or None, the predictor conv's parameters (kernel channel ``c*9 + i*3 + j`` is
    tap (i, j) of channel c, as ``cond_depthwise_conv2d`` reads them).

    Output rows [r0, r1) need hidden and x rows [r0-1, r1+1) only: each strip is computed from that
    halo, with zero rows where the halo leaves the image (the zero padding of both convs). A strip
    holds ``strip_rows`` rows (default: as many as keep its kernel map near ``STRIP_BYTES``, at
    least one); when the whole map fits in one strip, the plain single-shot computation runs.

    Autograd saves only x, hidden, weight and bias; backward recomputes each strip's kernels (under
    the forward's autocast state) and back-propagates through that strip only, adding the halo rows'
    gradients into the neighbouring rows; only the gradients in ``needs_input_grad`` are computed.
    Without grad mode (or when no input requires grad) only the strip forward runs.

    Values equal the dense computation up to rounding: each strip's conv may sum in another order,
    and the weight and bias gradients are summed strip by strip. First-order only: double backward
    is not supported; a backward pass through this op with ``create_graph=True`` raises a
    RuntimeError.
    """
    _check_predict(x, hidden, weight, bias)
    if strip_rows is None:
        n, c, _, w = x.shape
        itemsize = max(t.element_size() for t in (x, hidden, weight))
        rows = max(1, STRIP_BYTES // max(1, n * 9 * c * w * itemsize))
    elif isinstance(strip_rows, bool) or not isinstance(strip_rows, int) or strip_rows < 1:
        raise ValueError(f"predict_and_apply_kernels: strip_rows must be a positive int, got {strip_rows!r}")
    else:
        rows = strip_rows
    tensors = (x, hidden, weight) if bias is None else (x, hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _PredictAndApplyKernels.apply(x, hidden, weight, bias, rows)
    return _strips_forward(x, hidden, weight, bias, rows)

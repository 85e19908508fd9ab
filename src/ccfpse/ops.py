"""Conditional depthwise convolution (the DepthConv of CC-FPSE).

out[n, c, y, x] = sum_{i,j} weight[n, c*9 + i*3 + j, y, x] * xpad[n, c, y+i, x+j]
(3x3 taps, zero padding 1, stride 1, no bias).

The release materialises ``F.unfold(x)`` (nine copies of the input) and autograd keeps both that
and the kernel map for backward. ``cond_depthwise_conv2d`` is a custom autograd Function that
saves only ``x`` and ``weight`` and computes both gradients itself:

- float32/float64 on CPU: a small C kernel (``ccfpse/csrc/cond_depthwise.c``, built by
  ``ccfpse.native``) that walks image rows once per pass; ``CCFPSE_NO_EXT=1`` disables it;
- everything else (GPU, MPS, half precision, no compiler): in-place multiply-adds over the nine
  shifted views, a cache-sized block of channels at a time on CPU.

``x`` may also be a window of rows around the output rows (``x_offset``), so that a strip of an
image is computed from its rows and the halo rows next to it, without padding copies.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ccfpse import native

__all__ = [
    "autocast_region",
    "autocast_state",
    "cond_depthwise_conv2d",
    "cond_depthwise_conv2d_eager",
    "cond_depthwise_conv2d_unfold",
]

# Elements of one (n, channel-block) work item of the eager CPU path: just under torch's intra-op
# grain size (32768), so each of the many small ops runs inline on the calling thread. The block
# stays in L2 across the nine taps, and no op pays an OpenMP fork/join, which costs more than the
# op itself and stalls badly when other processes share the cores.
_BLOCK_ELEMS = 32767
_C_TYPES = {torch.float32: "f32", torch.float64: "f64"}


def _check(x: Tensor, weight: Tensor, x_offset: int) -> None:
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"cond_depthwise_conv2d: x and weight must be 4-D, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    n, c, xh, w = x.shape
    h = weight.shape[2]
    if tuple(weight.shape) != (n, c * 9, h, w):
        raise ValueError(
            f"cond_depthwise_conv2d: weight must have shape (N, C*9, H, W) = {(n, c * 9, h, w)} "
            f"for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    if isinstance(x_offset, bool) or x_offset not in (0, 1) or not h <= xh <= h + 2 or xh - h - x_offset not in (0, 1):
        raise ValueError(
            f"cond_depthwise_conv2d: x ({xh} rows) must cover the {h} output rows, with at most one "
            f"halo row above (x_offset={x_offset}) and below"
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
    _check(x, weight, 0)
    if x.shape[2] != weight.shape[2]:
        raise ValueError("cond_depthwise_conv2d_unfold: x and weight must have the same number of rows")
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size=3, padding=1).view(n * c, 9, h, w)
    return (cols * weight.reshape(n * c, 9, h, w)).sum(1).view(n, c, h, w)


def _spans(d: int, size: int, src_size: int, offset: int) -> tuple[slice, slice]:
    """(destination, source) slices along one axis: output position p reads source position
    p + offset + d (d in {-1, 0, 1}), only where that lies inside the source."""
    lo, hi = max(0, -(offset + d)), min(size, src_size - offset - d)
    return slice(lo, hi), slice(lo + offset + d, hi + offset + d)


def _taps(h: int, w: int, xh: int, x_offset: int):
    """For each tap k = i*3 + j: (k, output rows, output cols, input rows, input cols)."""
    out = []
    for i in range(3):
        oy, iy = _spans(i - 1, h, xh, x_offset)
        for j in range(3):
            ox, ix = _spans(j - 1, w, w, 0)
            out.append((i * 3 + j, oy, ox, iy, ix))
    return out


def _blocks(t: Tensor):
    """(batch slice, channel start, channel stop) work items: on CPU blocks of at most
    ``_BLOCK_ELEMS`` elements (or one channel); elsewhere (GPU, MPS) the whole tensor, since few
    large kernels are what those want."""
    n, c, h, w = t.shape
    if t.device.type != "cpu":
        return [(slice(None), 0, c)]
    step = max(1, min(c, _BLOCK_ELEMS // max(1, h * w)))
    return [(slice(b, b + 1), c0, min(c, c0 + step)) for b in range(n) for c0 in range(0, c, step)]


def _accumulator(dst: Tensor) -> Tensor:
    """A zeroed tensor to sum nine taps into: ``dst`` itself, or a float32 one for half types
    (nine roundings to bf16 would lose far more than the release's single rounded sum)."""
    if dst.dtype in (torch.float16, torch.bfloat16):
        return torch.zeros(dst.shape, dtype=torch.float32, device=dst.device)
    return dst.zero_()


def _forward(x: Tensor, weight: Tensor, x_offset: int) -> Tensor:
    n, c, h, w = weight.shape[0], x.shape[1], weight.shape[2], x.shape[3]
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    taps = _taps(h, w, x.shape[2], x_offset)
    for bs, c0, c1 in _blocks(out):
        xb, wb = x[bs, c0:c1], weight[bs, c0 * 9 : c1 * 9]
        acc = _accumulator(out[bs, c0:c1])
        for k, oy, ox, iy, ix in taps:
            acc[:, :, oy, ox].addcmul_(wb[:, k::9, oy, ox], xb[:, :, iy, ix])
        if acc.dtype != out.dtype:
            out[bs, c0:c1] = acc
    return out


def _grad_x(grad: Tensor, weight: Tensor, x_shape: torch.Size, x_offset: int) -> Tensor:
    gx = torch.zeros(x_shape, dtype=grad.dtype, device=grad.device)
    taps = _taps(grad.shape[2], grad.shape[3], x_shape[2], x_offset)
    for bs, c0, c1 in _blocks(grad):
        gb, wb = grad[bs, c0:c1], weight[bs, c0 * 9 : c1 * 9]
        acc = _accumulator(gx[bs, c0:c1])
        for k, oy, ox, iy, ix in taps:
            # out[p] took x[p + d] * w_k[p], so x[q] receives grad[q - d] * w_k[q - d].
            acc[:, :, iy, ix].addcmul_(wb[:, k::9, oy, ox], gb[:, :, oy, ox])
        if acc.dtype != gx.dtype:
            gx[bs, c0:c1] = acc
    return gx


def _grad_weight(grad: Tensor, x: Tensor, x_offset: int) -> Tensor:
    n, c, h, w = grad.shape
    gw = torch.empty((n, c * 9, h, w), dtype=grad.dtype, device=grad.device)
    taps = _taps(h, w, x.shape[2], x_offset)
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


def _kernel_for(t: Tensor):
    """The compiled library if it can take tensors like ``t`` (float32/float64 on CPU), else None."""
    if t.device.type != "cpu" or t.dtype not in _C_TYPES:
        return None
    return native.lib()


def _rows_contiguous(x: Tensor) -> Tensor:
    """``x`` itself when its rows are contiguous and W apart (e.g. a window of rows of an NCHW
    tensor), else a contiguous copy."""
    w = x.shape[3]
    if x.stride(3) == 1 and (x.stride(2) == w or x.shape[2] == 1):
        return x
    return x.contiguous()


def _x_args(x: Tensor, x_offset: int) -> tuple:
    n, c, xh, w = x.shape
    return xh, x_offset, x.stride(0), x.stride(1)


def _forward_kernel(lib, x: Tensor, weight: Tensor, x_offset: int) -> Tensor:
    n, c, _, w = x.shape
    h = weight.shape[2]
    out = torch.empty((n, c, h, w), dtype=x.dtype)
    getattr(lib, f"cdw_fwd_{_C_TYPES[x.dtype]}")(
        x.data_ptr(), weight.data_ptr(), out.data_ptr(), n, c, h, w, *_x_args(x, x_offset),
        native.threads(out.numel()),
    )
    return out


def _backward_kernel(lib, grad: Tensor, x: Tensor, weight: Tensor, x_offset: int, need_x: bool, need_w: bool):
    n, c, xh, w = x.shape
    h = weight.shape[2]
    gx = torch.empty((n, c, xh, w), dtype=x.dtype) if need_x else None
    gw = torch.empty((n, c * 9, h, w), dtype=x.dtype) if need_w else None
    getattr(lib, f"cdw_bwd_{_C_TYPES[x.dtype]}")(
        x.data_ptr(), weight.data_ptr(), grad.data_ptr(), gx.data_ptr() if need_x else None,
        gw.data_ptr() if need_w else None, n, c, h, w, *_x_args(x, x_offset), native.threads(grad.numel()),
    )
    return gx, gw


class _CondDepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, x_offset: int, use_kernel: bool) -> Tensor:
        lib = _kernel_for(x) if use_kernel else None
        if lib is not None:
            x, weight = _rows_contiguous(x), weight.contiguous()
        ctx.lib, ctx.x_offset = lib, x_offset
        ctx.save_for_backward(x, weight)
        return _forward_kernel(lib, x, weight, x_offset) if lib is not None else _forward(x, weight, x_offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        if ctx.lib is not None:
            gx, gw = _backward_kernel(ctx.lib, grad.contiguous(), x, weight, ctx.x_offset, need_x, need_w)
        else:
            gx = _grad_x(grad, weight, x.shape, ctx.x_offset) if need_x else None
            gw = _grad_weight(grad, x, ctx.x_offset) if need_w else None
        return gx, gw, None, None


def cond_depthwise_conv2d(x: Tensor, weight: Tensor, x_offset: int = 0) -> Tensor:
    """Per-pixel, per-channel 3x3 convolution of ``x`` (N, C, H, W) with ``weight`` (N, C*9, H, W).

    ``weight[:, c*9 + i*3 + j]`` multiplies ``x`` shifted by (i-1, j-1); zero padding 1, stride 1.
    Differentiable w.r.t. both inputs (first order); inputs of different floating dtypes are
    promoted to a common one.

    For a strip of rows: ``x`` may have up to two more rows than ``weight``, its rows starting
    ``x_offset`` (0 or 1) rows above the output rows; output row y reads x rows
    y + x_offset - 1 .. y + x_offset + 1, zero where those are outside ``x``.
    """
    _check(x, weight, x_offset)
    x, weight = _common_dtype(x, weight)
    return _CondDepthwiseConv2d.apply(x, weight, x_offset, True)


def cond_depthwise_conv2d_eager(x: Tensor, weight: Tensor, x_offset: int = 0) -> Tensor:
    """``cond_depthwise_conv2d`` forced onto the pure-PyTorch path (what non-CPU devices, half
    precision and ``CCFPSE_NO_EXT=1`` use); for tests and benchmarks."""
    _check(x, weight, x_offset)
    x, weight = _common_dtype(x, weight)
    return _CondDepthwiseConv2d.apply(x, weight, x_offset, False)


def autocast_state(device_type: str):
    """(device_type, dtype) of the autocast region we are in, else None (to recompute under it)."""
    try:
        if torch.is_autocast_enabled(device_type):
            return device_type, torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        pass
    return None


def autocast_region(state):
    """The autocast region ``autocast_state`` described (a recomputation runs under it), or a
    context that changes nothing when it was None."""
    return torch.autocast(*state) if state else contextlib.nullcontext()

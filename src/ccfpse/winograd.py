"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) on the CPU.

Most of CC-FPSE's arithmetic is 3x3, stride-1 convolutions with 128 or more input channels (the
kernel predictors, their gates, SPADE's gamma and beta). Winograd's algorithm computes each 4x4
block of outputs from a 6x6 block of inputs with 36 channel products instead of 144 (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): transform the input tiles
(``V = B^T d B``) and the filters (``U = G g G^T``), multiply them channel-wise at each of the 36
positions (36 matrix products, ``torch.bmm``), transform back (``Y = A^T M A``). The same
convolution in exact arithmetic; in float32 the error is about ten times that of a direct
convolution (measured relative RMS error 2.4e-6, maximum 1.1e-5 of the largest output, against
2.2e-7 and 3e-7 for oneDNN's direct convolution; tests/test_winograd.py). Gradients are the
transposed transforms with the same products.

The tile transforms are C (``ccfpse/csrc/winograd.c``, built by ``ccfpse.native``); the work is
cut into chunks of tile rows so that the transformed tensors stay small (``CHUNK_BYTES``).
``conv3x3`` uses this path for float32 on CPU when the map and the channel counts are large
enough to profit (``MIN_PIXELS``, ``MIN_CHANNELS``, ``MIN_FILTERS``) and otherwise ``F.conv2d`` (GPUs: cuDNN picks its own algorithms, Winograd
among them). ``CCFPSE_NO_EXT=1`` turns it off with the other compiled kernels.

Maps too small for Winograd but convolved with many filters (the kernel predictors of the coarse
blocks: 4608 filters on 4 x 4 to 16 x 16 maps) take one matrix product per image over the
unfolded input instead (``GEMM_MIN_FILTERS``): the same sums as a direct convolution, and on
2-core x86 1.3-2.5x faster forward + backward than oneDNN's direct convolution on those shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ccfpse import native
from ccfpse.ops import autocast_state

# Filter transform G (6 x 3) of F(4x4, 3x3) for the interpolation points 0, 1, -1, 2, -2, inf;
# the input and output transforms are spelt out in the C source.
_G = torch.tensor(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    dtype=torch.float64,
)
# Where the Winograd path is faster than oneDNN's direct convolution on 2-core x86
# (bench/bench_winograd.py --force): maps of at least MIN_PIXELS output pixels (N * rows * W;
# smaller ones are dominated by the transforms), at least MIN_CHANNELS input and MIN_FILTERS
# output channels (with fewer, the products are too thin to gain on the transforms). On the
# Intel Xeon VM the shapes at these limits gained 1.3-2x (fwd+bwd); on the Zen 4 VM, where the
# limits were first set at 4096 / 64 / 128, the shapes between were about even.
MIN_PIXELS = 2048
MIN_CHANNELS = 32
MIN_FILTERS = 64
# Tiles (of 4 x 4 output pixels) per chunk: enough for efficient matrix products.
CHUNK_TILES = 256
# Bytes of a transformed tensor of one chunk (36 x channels x tiles), above which the tiles or
# the output channels are cut into smaller pieces: it should stay in the cache between the
# product that writes it and the transform that reads it.
CHUNK_BYTES = 8 * 2**20


# Below MIN_PIXELS: convolutions to at least this many filters, from at least MIN_CHANNELS
# channels, run as matrix products over the unfolded input (``_UnfoldedConv3x3``). Measured on the
# Intel Xeon VM, forward + backward against F.conv2d, 2 x 128 channels: 4 x 4 maps to 4608
# filters 2.5x, 8 x 8 1.34x, 16 x 16 1.63x (2304 filters 1.54x), 16 x 16 to 512 1.19x, but to
# 256 0.91x.
GEMM_MIN_FILTERS = 512

_GG = torch.kron(_G, _G)  # (36, 9): row a*6+b, column i*3+j holds G[a, i] * G[b, j]


def winograd_weight(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) filters -> (36, K, C): ``G g G^T`` of every filter, position-major (one
    matrix product; differentiable)."""
    k, c = weight.shape[:2]
    gg = _GG.to(dtype=weight.dtype, device=weight.device)
    return torch.mm(gg, weight.reshape(k * c, 9).t()).view(36, k, c)


def _weight_grad(grad_u: Tensor, k: int, c: int) -> Tensor:
    """The gradient of ``winograd_weight`` (its transpose): (36, K, C) -> (K, C, 3, 3)."""
    gg = _GG.to(dtype=grad_u.dtype, device=grad_u.device)
    return torch.mm(grad_u.reshape(36, k * c).t(), gg).view(k, c, 3, 3)


def _geometry(x: Tensor, out_rows: int) -> tuple[int, int]:
    """(tile rows, tile columns) of the output."""
    return (out_rows + 3) // 4, (x.shape[3] + 3) // 4


def _chunks(th: int, tw: int, n: int, c: int) -> list[tuple[int, int]]:
    """(first tile row, tile rows) of each chunk: about ``CHUNK_TILES`` tiles, fewer when the
    transformed input (36 x C x tiles) would exceed ``CHUNK_BYTES``."""
    per_row = n * tw
    rows = max(1, min(th, -(-CHUNK_TILES // per_row), CHUNK_BYTES // max(1, 36 * c * per_row * 4)))
    return [(t0, min(rows, th - t0)) for t0 in range(0, th, rows)]


def _blocks(k: int, tiles: int) -> list[tuple[int, int]]:
    """Output-channel blocks [k0, k1) whose transformed products (36 x block x tiles) stay
    within ``CHUNK_BYTES``: the product is written by the matrix product and read back by the
    output transform while it is still in cache."""
    step = max(1, min(k, CHUNK_BYTES // max(1, 36 * tiles * 4)))
    return [(k0, min(k, k0 + step)) for k0 in range(0, k, step)]


def _transformed(channels: int, tiles: int) -> Tensor:
    """A (36, channels, tiles) buffer, the layout of the C transforms and of the products."""
    return torch.empty((36, channels, tiles), dtype=torch.float32)


def _input_transform(lib, x: Tensor, pad_top: int, t0: int, nty: int, tw: int) -> Tensor:
    n, c, h, w = x.shape
    v = _transformed(c, n * nty * tw)
    lib.wino_input(x.data_ptr(), v.data_ptr(), n, c, h, w, x.stride(0), x.stride(1), pad_top, t0, nty, tw,
                   native.threads(v.numel()))
    return v


class _Filters:
    """The transformed filters of a (K, C, 3, 3) or already transformed (36, K, C) weight, by
    blocks of output channels. With one tile chunk each block is transformed as it is used, so
    the transformed weights (4x the filters: 42 MB for the 2304 kernels of a 32 x 32 block) never
    exist at once; with several chunks they are transformed once for all of them."""

    def __init__(self, weight: Tensor, num_chunks: int) -> None:
        self.blockwise = weight.dim() == 4 and num_chunks == 1
        self.u = weight if weight.dim() == 3 or self.blockwise else winograd_weight(weight)
        self.k = weight.shape[0] if weight.dim() == 4 else weight.shape[1]

    def block(self, k0: int, k1: int) -> Tensor:
        """(36, k1 - k0, C): the transformed filters k0 .. k1 - 1."""
        return winograd_weight(self.u[k0:k1]) if self.blockwise else self.u[:, k0:k1]


def _forward(lib, x: Tensor, weight: Tensor, bias: Tensor | None, pad_top: int, out_rows: int) -> Tensor:
    n, c, _, w = x.shape
    th, tw = _geometry(x, out_rows)
    chunks = _chunks(th, tw, n, c)
    filters = _Filters(weight, len(chunks))
    k = filters.k
    y = torch.empty((n, k, out_rows, w), dtype=torch.float32)
    for t0, nty in chunks:
        tiles = n * nty * tw
        v = _input_transform(lib, x, pad_top, t0, nty, tw)
        for k0, k1 in _blocks(k, tiles):
            m = _transformed(k1 - k0, tiles)
            torch.bmm(filters.block(k0, k1), v, out=m)
            lib.wino_output(m.data_ptr(), y[:, k0:k1].data_ptr(), None if bias is None else bias[k0:k1].data_ptr(),
                            n, k1 - k0, k, out_rows, w, t0, nty, tw, native.threads(m.numel()))
    return y


def _backward(lib, x: Tensor, weight: Tensor, gy: Tensor, pad_top: int, need_x: bool, need_w: bool):
    """(grad of x, grad of ``weight`` in its own layout, (K, C, 3, 3) or transformed)."""
    n, c, h, w = x.shape
    out_rows = gy.shape[2]
    th, tw = _geometry(x, out_rows)
    chunks = _chunks(th, tw, n, c)
    filters = _Filters(weight, len(chunks))
    k, blockwise = filters.k, filters.blockwise
    gx = torch.zeros((n, c, h, w), dtype=torch.float32) if need_x else None
    gu = None
    if need_w:
        gu = torch.empty_like(weight) if blockwise else torch.zeros_like(filters.u)
    for t0, nty in chunks:
        tiles = n * nty * tw
        v = _input_transform(lib, x, pad_top, t0, nty, tw).transpose(1, 2) if need_w else None
        gv = _transformed(c, tiles) if need_x else None
        for i, (k0, k1) in enumerate(_blocks(k, tiles)):
            gm = _transformed(k1 - k0, tiles)
            lib.wino_output_t(gy[:, k0:k1].data_ptr(), gm.data_ptr(), n, k1 - k0, k, out_rows, w, t0, nty, tw,
                              native.threads(gm.numel()))
            if need_w:
                if blockwise:
                    gu[k0:k1] = _weight_grad(torch.bmm(gm, v), k1 - k0, c)
                else:
                    gu[:, k0:k1].baddbmm_(gm, v)
            if need_x:
                ut = filters.block(k0, k1).transpose(1, 2)
                if i == 0:
                    torch.bmm(ut, gm, out=gv)
                else:
                    gv.baddbmm_(ut, gm)
        if need_x:
            lib.wino_input_t(gv.data_ptr(), gx.data_ptr(), n, c, h, w, pad_top, t0, nty, tw, native.threads(gv.numel()))
    if need_w and weight.dim() == 4 and not blockwise:
        gu = _weight_grad(gu, *weight.shape[:2])
    return gx, gu


def _first_order(ctx, path: str) -> tuple:
    """x and the weight saved by a conv3x3 Function, and whether x, the weight and the bias need
    gradients; its backward is not differentiable itself."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"conv3x3 ({path} path): double backward is not supported")
    return (*ctx.saved_tensors, *ctx.needs_input_grad[:3])


class _WinogradConv3x3(torch.autograd.Function):
    """``weight`` is either (K, C, 3, 3) (transformed here, and again in backward, so nothing
    larger than the filters is saved) or already transformed (36, K, C)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, pad_top: int, out_rows: int, lib) -> Tensor:
        ctx.lib, ctx.pad_top = lib, pad_top
        ctx.save_for_backward(x, weight)
        return _forward(lib, x, weight.contiguous(), None if bias is None else bias.contiguous(), pad_top, out_rows)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, weight, need_x, need_w, need_b = _first_order(ctx, "Winograd")
        gx, gw = _backward(ctx.lib, x, weight.contiguous(), gy.contiguous(), ctx.pad_top, need_x, need_w)
        gb = gy.sum((0, 2, 3)) if need_b else None
        return gx, gw, gb, None, None, None


class _UnfoldedConv3x3(torch.autograd.Function):
    """A 3x3 convolution (padding ``pad_rows`` above and below, 1 left and right) as one matrix
    product per image: weight (K, 9C) times the unfolded input (9C, pixels). Only x and the
    weight are saved; backward unfolds x again (cheap next to the products) and folds the input
    gradient back."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, pad_rows: int) -> Tensor:
        ctx.pad_rows = pad_rows
        ctx.save_for_backward(x, weight)
        n, _, h, w = x.shape
        k = weight.shape[0]
        cols = F.unfold(x, 3, padding=(pad_rows, 1))
        wm = weight.reshape(1, k, -1).expand(n, -1, -1)
        y = torch.bmm(wm, cols) if bias is None else torch.baddbmm(bias.view(1, k, 1), wm, cols)
        return y.view(n, k, h + 2 * pad_rows - 2, w)

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, weight, need_x, need_w, need_b = _first_order(ctx, "unfolded")
        n, c, h, w = x.shape
        k = weight.shape[0]
        g = gy.reshape(n, k, -1)
        gx = gw = gb = None
        if need_w:
            cols = F.unfold(x, 3, padding=(ctx.pad_rows, 1))
            # One product over all images, (K, N*L) times (N*L, 9C); for one image both are views.
            gw = torch.mm(g.transpose(0, 1).reshape(k, -1), cols.transpose(1, 2).reshape(-1, 9 * c)).view_as(weight)
        if need_x:
            gcols = torch.bmm(weight.reshape(1, k, -1).expand(n, -1, -1).transpose(1, 2), g)
            gx = F.fold(gcols, (h, w), 3, padding=(ctx.pad_rows, 1))
        if need_b:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None


def _float32_on_cpu(*tensors: Tensor) -> bool:
    """What both CPU paths need: float32 tensors on the CPU, outside an autocast region."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and autocast_state("cpu") is None


def _unfolded_pays(x: Tensor, weight: Tensor, out_rows: int) -> bool:
    """Whether a (K, C, 3, 3) convolution the Winograd path does not take runs as matrix
    products (``_UnfoldedConv3x3``) instead of ``F.conv2d``."""
    return (x.shape[0] * out_rows * x.shape[3] < MIN_PIXELS and weight.shape[1] >= MIN_CHANNELS
            and weight.shape[0] >= GEMM_MIN_FILTERS and _float32_on_cpu(x, weight))


def winograd_pays(pixels: int, in_channels: int, out_channels: int, like: Tensor) -> bool:
    """Whether a 3x3 convolution of ``in_channels`` -> ``out_channels`` over ``pixels`` output
    pixels (N * rows * W) of tensors like ``like`` runs on the Winograd path, and gains there."""
    return (pixels >= MIN_PIXELS and in_channels >= MIN_CHANNELS and out_channels >= MIN_FILTERS
            and _float32_on_cpu(like) and native.lib() is not None)


def _winograd_lib(x: Tensor, weight: Tensor, out_rows: int):
    """The compiled library when the Winograd path applies (and, unless the weight comes
    transformed, pays off) here, else None."""
    if weight.dim() == 3:  # the caller transformed it for this path
        return native.lib() if _float32_on_cpu(x, weight) else None
    if weight.dtype != torch.float32:
        return None
    ok = winograd_pays(x.shape[0] * out_rows * x.shape[3], weight.shape[1], weight.shape[0], x)
    return native.lib() if ok else None


def _check(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    def fail(problem: str):
        raise ValueError(f"conv3x3: {problem} (x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {None if bias is None else tuple(bias.shape)})")

    if x.dim() != 4:
        fail("x must be 4-D (N, C, H, W)")
    if weight.dim() == 4:
        if tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
            fail(f"weight must be (K, {x.shape[1]}, 3, 3)")
    elif weight.dim() == 3:
        if weight.shape[0] != 36 or weight.shape[2] != x.shape[1]:
            fail(f"a Winograd-transformed weight must be (36, K, {x.shape[1]})")
    else:
        fail("weight must be (K, C, 3, 3) or Winograd-transformed (36, K, C)")
    k = weight.shape[0] if weight.dim() == 4 else weight.shape[1]
    if bias is not None and (tuple(bias.shape) != (k,) or bias.dtype != x.dtype or bias.device != x.device):
        fail(f"bias must be a ({k},) tensor of x's dtype and device")


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, pad_top: int = 1,
            out_rows: int | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` (3x3, stride 1), generalised to strips of rows:
    ``pad_top`` zero rows (0 or 1) above ``x`` and ``out_rows`` output rows (default: as many as
    ``x`` has, i.e. one zero row below too when ``pad_top`` is 1); rows below ``x`` that the
    output needs are zero. Columns are always padded by one.

    ``weight`` (K, C, 3, 3), or already Winograd-transformed (36, K, C) by ``winograd_weight``
    (to transform once for many strips; then the Winograd path is taken whatever the size, and
    is the only one possible).
    """
    _check(x, weight, bias)
    h = x.shape[2]
    out_rows = h + 2 * pad_top - 2 if out_rows is None else out_rows
    pad_bottom = out_rows + 2 - pad_top - h
    if not (pad_top in (0, 1) and pad_bottom in (0, 1) and out_rows > 0):
        raise ValueError(
            f"conv3x3: {out_rows} output rows cannot come from {h} input rows with {pad_top} padding rows "
            "above (each output row needs its row and the rows next to it, at most one zero row each side)"
        )
    lib = _winograd_lib(x, weight, out_rows)
    if weight.dim() == 3:
        if lib is None:
            raise ValueError("conv3x3: Winograd-transformed weights need the Winograd path (float32 on CPU)")
        return _WinogradConv3x3.apply(x, weight, bias, pad_top, out_rows, lib)
    if lib is None:
        if pad_top != pad_bottom:
            x = F.pad(x, (0, 0, pad_top, pad_bottom))
            pad_top = 0
        if _unfolded_pays(x, weight, out_rows):
            return _UnfoldedConv3x3.apply(x, weight, bias, pad_top)
        return F.conv2d(x, weight, bias, padding=(pad_top, 1))
    if x.stride(3) != 1 or (x.stride(2) != x.shape[3] and h > 1):
        x = x.contiguous()
    return _WinogradConv3x3.apply(x, weight, bias, pad_top, out_rows, lib)


def uses_winograd(x: Tensor, weight: Tensor, pad_top: int = 1, out_rows: int | None = None) -> bool:
    """Whether ``conv3x3(x, weight, bias, pad_top, out_rows)`` takes the Winograd path."""
    out_rows = x.shape[2] + 2 * pad_top - 2 if out_rows is None else out_rows
    return _winograd_lib(x, weight, out_rows) is not None

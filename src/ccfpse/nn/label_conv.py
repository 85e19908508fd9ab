"""Convolutions of one-hot label maps as table look-ups.

Every conditional block of the generator (its weight predictors and SPADE shortcut), the first
layer of the label pyramid and the discriminator's label embedding convolve the one-hot label map
(150-183 channels). At each pixel such a k x k convolution is the sum, over the k*k taps, of the
weight column of the class under that tap: no multiply-adds at all. Pixels whose k x k
neighbourhood holds the same classes get the same value, and a segmentation has few distinct
neighbourhoods, so the sums are computed once per distinct neighbourhood ("pattern") and gathered
per pixel. The weight gradient is the matching scatter. Labels need no gradient.

Same parameters and values as the dense convolution (only the order of additions differs);
channels after the one-hot ones (instance edges) and non-one-hot inputs take the dense path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ccfpse import native
from ccfpse.winograd import conv3x3

_CODE_LIMIT = 2**62


class LabelMap:
    """A conditioning map (N, C, H, W) whose first ``num_classes`` channels may be one-hot.

    ``index`` holds the class of every pixel (N, H, W) when those channels are exactly one-hot,
    else None (then only the dense map is used); ``extra`` are the channels after them. Built
    from a dense map (``LabelMap(semantics, num_classes)``, which detects one-hot channels) or
    from class indices (``LabelMap.from_index``, which never builds the one-hot map unless a
    dense path asks for ``dense``)."""

    def __init__(self, semantics: Tensor | None, num_classes: int, index: Tensor | None = None,
                 check: bool = True, extra: Tensor | None = None) -> None:
        self._dense, self.num_classes = semantics, num_classes
        if index is None and check and semantics is not None:
            index = onehot_index(semantics[:, :num_classes])
        self.index = index
        self._extra = extra
        if semantics is None and (index is None or extra is None):
            raise ValueError("LabelMap needs the dense map, or the class indices and the extra channels")
        self._patterns: dict[int, tuple[Tensor, Tensor]] = {}
        self._lookup_indices: dict[int, tuple[Tensor, Tensor]] = {}
        self._resized: dict[tuple[int, int], LabelMap] = {}

    @classmethod
    def from_index(cls, index: Tensor, num_classes: int, extra: Tensor | None = None) -> "LabelMap":
        """From class indices (N, H, W) and the channels that follow the one-hot ones (N, E, H, W)."""
        if extra is None:
            extra = torch.zeros((index.shape[0], 0, *index.shape[1:]), device=index.device)
        return cls(None, num_classes, index=index.long(), extra=extra)

    @property
    def _held(self) -> Tensor:
        """The tensor this map holds for sure: the class indices, else the dense map."""
        return self.index if self.index is not None else self._dense

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._held.shape[-2:])

    @property
    def batch_size(self) -> int:
        return self._held.shape[0]

    @property
    def device(self) -> torch.device:
        return self._held.device

    @property
    def num_channels(self) -> int:
        return self.num_classes + self.extra.shape[1]

    @property
    def extra(self) -> Tensor:
        if self._extra is None:
            self._extra = self._dense[:, self.num_classes:]
        return self._extra

    @property
    def dense(self) -> Tensor:
        """The (N, C, H, W) map (one-hot classes, then the extra channels), built on first use."""
        if self._dense is None:
            onehot = F.one_hot(self.index, self.num_classes).permute(0, 3, 1, 2).to(self.extra.dtype)
            self._dense = torch.cat([onehot, self.extra], 1).contiguous()
        return self._dense

    def repeat(self, times: int) -> "LabelMap":
        """The batch repeated ``times`` times (as ``torch.cat([semantics] * times)``)."""
        if self.index is None:
            return LabelMap(torch.cat([self._dense] * times), self.num_classes, check=False)
        return LabelMap(None, self.num_classes, index=torch.cat([self.index] * times),
                        extra=torch.cat([self.extra] * times))

    def resized(self, size: tuple[int, int]) -> "LabelMap":
        """The map at another size, as ``F.interpolate(..., mode="nearest")`` would give it
        (kept, with its neighbourhood patterns, for the next call)."""
        size = tuple(size)
        if size == self.shape:
            return self
        if size not in self._resized:
            self._resized[size] = self._resize(size)
        return self._resized[size]

    def _resize(self, size: tuple[int, int]) -> "LabelMap":
        if self.index is None:
            return LabelMap(F.interpolate(self._dense, size=size, mode="nearest"), self.num_classes, check=False)
        # Nearest resizing picks the same source pixels for the index map (exact below 2**24).
        index = F.interpolate(self.index[:, None].float(), size=size, mode="nearest")[:, 0].long()
        extra = F.interpolate(self.extra, size=size, mode="nearest") if self.extra.shape[1] else \
            self.extra.new_zeros((self.extra.shape[0], 0, *size))
        return LabelMap(None, self.num_classes, index=index, extra=extra)

    def patterns(self, k: int) -> tuple[Tensor, Tensor]:
        """(bags, inverse): ``bags`` (U, k*k) rows of the (k*k*(S+1), out) weight table of every
        distinct k x k neighbourhood (row tap*(S+1) + S is zero, used outside the image), and
        ``inverse`` (N, H*W) the neighbourhood number of every pixel."""
        if k not in self._patterns:
            self._patterns[k] = _patterns(self.index, self.num_classes, k)
        return self._patterns[k]

    def lookup_indices(self, k: int) -> tuple[Tensor, Tensor]:
        """The same as ``patterns`` for the compiled look-ups, as int32: (U, k*k) the class under
        each tap of each neighbourhood (``num_classes`` outside the image), and (N, H*W) ``inverse``."""
        if k not in self._lookup_indices:
            bags, inverse = self.patterns(k)
            offsets = torch.arange(k * k, device=bags.device) * (self.num_classes + 1)
            self._lookup_indices[k] = ((bags - offsets).int().contiguous(), inverse.int().contiguous())
        return self._lookup_indices[k]


def as_label_map(semantics: Tensor | LabelMap, num_classes: int) -> LabelMap:
    return semantics if isinstance(semantics, LabelMap) else LabelMap(semantics, num_classes)


def onehot_index(onehot: Tensor) -> Tensor | None:
    """Class indices (N, H, W) if every pixel is exactly one-hot, else None."""
    if onehot.shape[1] == 0 or onehot.requires_grad:
        return None
    values, index = onehot.max(dim=1)
    if bool((values == 1).all()) and bool((onehot.sum(dim=1) == 1).all()):
        return index
    return None


def _patterns(index: Tensor, num_classes: int, k: int) -> tuple[Tensor, Tensor]:
    n, h, w = index.shape
    symbols = num_classes + 1
    r = k // 2
    padded = F.pad(index, (r, r, r, r), value=num_classes)
    taps = [padded[:, i : i + h, j : j + w].reshape(-1) for i in range(k) for j in range(k)]
    # One integer code per neighbourhood, renumbered densely whenever it could overflow.
    code, bound = torch.zeros_like(taps[0]), 1
    for tap in taps:
        if bound * symbols >= _CODE_LIMIT:
            uniques, code = torch.unique(code, return_inverse=True)
            bound = len(uniques)
        code, bound = code * symbols + tap, bound * symbols
    uniques, inverse = torch.unique(code, return_inverse=True)
    first = torch.zeros(len(uniques), dtype=torch.long, device=index.device)
    first.scatter_(0, inverse, torch.arange(len(inverse), device=index.device))
    offsets = torch.arange(k * k, device=index.device) * symbols
    bags = torch.stack(taps, dim=1)[first] + offsets
    return bags, inverse.view(n, h * w)


def _lookup_lib(weight: Tensor):
    """The compiled look-ups for float32 weights on the CPU, else None (the PyTorch path)."""
    return native.lib() if weight.device.type == "cpu" and weight.dtype == torch.float32 else None


class _LookupConv(torch.autograd.Function):
    """Output rows [a, b) of a one-hot convolution with ``weight`` (out, classes, k, k): each
    neighbourhood pattern's output (a weighted sum of k*k weight columns), gathered per pixel.
    The weight gradient is the reverse: per-pixel gradients summed per pattern, then added
    into the weight columns of its taps."""

    @staticmethod
    def forward(ctx, weight: Tensor, labels: LabelMap, rows: tuple[int, int]) -> Tensor:
        out_ch, classes, k = weight.shape[0], weight.shape[1], weight.shape[2]
        w = labels.shape[1]
        a, b = rows
        ctx.labels, ctx.rows, ctx.weight_shape = labels, rows, weight.shape
        lib = _lookup_lib(weight)
        n = labels.batch_size
        out = weight.new_empty(n, out_ch, b - a, w)
        if lib is not None:
            cls, inverse = labels.lookup_indices(k)
            if weight.stride()[1:] != (k * k, k, 1):
                weight = weight.contiguous()
            per_pattern = weight.new_empty(out_ch, cls.shape[0])
            lib.lookup_patterns_f32(weight.data_ptr(), weight.stride(0), cls.data_ptr(), per_pattern.data_ptr(),
                                    out_ch, cls.shape[0], k * k, classes, native.threads(per_pattern.numel() * k * k))
            inv = inverse[:, a * w : b * w]
            lib.lookup_gather_f32(per_pattern.data_ptr(), inv.data_ptr(), out.data_ptr(), n, out_ch, cls.shape[0],
                                  inv.shape[1], inv.stride(0), native.threads(out.numel()))
            return out
        bags, inverse = labels.patterns(k)
        table = F.pad(weight.permute(2, 3, 1, 0), (0, 0, 0, 1)).reshape(k * k * (classes + 1), out_ch)
        per_pattern = F.embedding_bag(bags, table, mode="sum").t().contiguous()  # (out, U)
        for i in range(n):  # written straight into NCHW order
            torch.index_select(per_pattern, 1, inverse[i, a * w : b * w], out=out[i].view(out_ch, -1))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        labels, (a, b) = ctx.labels, ctx.rows
        out_ch, classes, k = ctx.weight_shape[:3]
        w = labels.shape[1]
        n, p = grad.shape[0], (b - a) * w
        grad = grad.contiguous()
        lib = _lookup_lib(grad)
        if lib is not None:
            cls, inverse = labels.lookup_indices(k)
            inv = inverse[:, a * w : b * w]
            per_pattern = grad.new_zeros(out_ch, cls.shape[0])
            lib.lookup_scatter_f32(grad.data_ptr(), inv.data_ptr(), per_pattern.data_ptr(), n, out_ch,
                                   cls.shape[0], p, inv.stride(0), native.threads(grad.numel()))
            g_weight = grad.new_zeros(ctx.weight_shape)
            lib.lookup_weight_grad_f32(per_pattern.data_ptr(), cls.data_ptr(), g_weight.data_ptr(), out_ch,
                                       cls.shape[0], k * k, classes, native.threads(per_pattern.numel() * k * k))
            return g_weight, None, None
        bags, inverse = labels.patterns(k)
        grad = grad.view(n, out_ch, p)
        per_pattern = grad.new_zeros(out_ch, bags.shape[0])
        for i in range(n):
            per_pattern.scatter_add_(1, inverse[i, a * w : b * w].expand(out_ch, p), grad[i])
        # Each pattern's gradient goes to the weight columns of its k*k taps: one index_add per tap.
        table = grad.new_zeros(k * k, classes + 1, out_ch)
        per_pattern = per_pattern.t()
        for tap in range(k * k):
            table[tap].index_add_(0, bags[:, tap] - tap * (classes + 1), per_pattern)
        g_weight = table.view(k, k, classes + 1, out_ch)[:, :, :classes].permute(3, 2, 0, 1)
        return g_weight, None, None


class Rows:
    """Rows [start, start + t.shape[2]) of a map that is ``height`` rows tall (a strip of it, or
    the whole map), indexed by absolute row numbers."""

    def __init__(self, t: Tensor, start: int = 0, height: int | None = None) -> None:
        self.t, self.start = t, start
        self.height = start + t.shape[2] if height is None else height

    def rows(self, a: int, b: int) -> Tensor:
        if a < self.start or b > self.start + self.t.shape[2]:
            raise IndexError(f"rows [{a}, {b}) are outside the strip [{self.start}, {self.start + self.t.shape[2]})")
        return self.t[:, :, a - self.start : b - self.start]

    @property
    def channels(self) -> int:
        return self.t.shape[1]


def halo(rows: tuple[int, int], height: int) -> tuple[int, int]:
    """The rows a 3x3 convolution reads for output rows [a, b): one more on each side, within
    the map."""
    return max(0, rows[0] - 1), min(height, rows[1] + 1)


def conv_rows(x: Rows, weight: Tensor, bias: Tensor | None, rows: tuple[int, int]) -> Tensor:
    """Output rows [a, b) of ``F.conv2d(x, weight, bias, padding=k // 2)`` (stride 1, k = 1 or
    3; or a Winograd-transformed 3x3 weight) over the whole map, reading only the rows of ``x``
    they need."""
    a, b = rows
    k = 3 if weight.dim() == 3 else weight.shape[-1]
    if k == 1:
        return F.conv2d(x.rows(a, b), weight, bias)
    if k != 3:
        raise ValueError(f"conv_rows: 1x1 or 3x3 kernels only, got {k}x{k}")
    return conv3x3(x.rows(*halo(rows, x.height)), weight, bias, pad_top=1 if a == 0 else 0, out_rows=b - a)


def label_conv(weight: Tensor, bias: Tensor | None, labels: LabelMap, feats: Tensor | Rows | None = None,
               rows: tuple[int, int] | None = None) -> Tensor:
    """``F.conv2d(cat([labels.dense, feats]), weight, bias, padding=k // 2)`` (stride 1, k = 1 or
    3), or only its output rows [a, b) when ``rows`` is given (``feats`` may then be a strip of
    rows holding those that are needed); the one-hot channels are looked up when
    ``labels.index`` is known."""
    h, w = labels.shape
    a, b = rows if rows is not None else (0, h)
    if isinstance(feats, Tensor):
        feats = Rows(feats)
    s = labels.num_classes
    if labels.index is None:
        dense = Rows(labels.dense)
        if feats is not None:  # the rows this needs, as one map
            lo, hi = halo((a, b), h) if weight.shape[-1] == 3 else (a, b)
            dense = Rows(torch.cat([dense.rows(lo, hi), feats.rows(lo, hi)], 1), lo, h)
        return conv_rows(dense, weight, bias, (a, b))
    out = _LookupConv.apply(weight[:, :s], labels, (a, b))
    extra = labels.extra
    for start, part in ((s, Rows(extra) if extra.shape[1] else None), (s + extra.shape[1], feats)):
        if part is not None and part.channels:
            out = out.add_(conv_rows(part, weight[:, start : start + part.channels], None, (a, b)))
    return out.add_(bias.view(1, -1, 1, 1)) if bias is not None else out

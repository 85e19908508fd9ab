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

_CODE_LIMIT = 2**62


class LabelMap:
    """A conditioning map (N, C, H, W) whose first ``num_classes`` channels may be one-hot.

    ``index`` holds the class of every pixel (N, H, W) when those channels are exactly one-hot,
    else None (then only the dense map is used); ``extra`` are the channels after them."""

    def __init__(self, semantics: Tensor, num_classes: int, index: Tensor | None = None,
                 check: bool = True) -> None:
        self.dense, self.num_classes = semantics, num_classes
        self.index = index if index is not None or not check else onehot_index(semantics[:, :num_classes])
        self._patterns: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.dense.shape[2:])

    @property
    def extra(self) -> Tensor:
        return self.dense[:, self.num_classes:]

    def resized(self, size: tuple[int, int]) -> "LabelMap":
        """The map at another size, as ``F.interpolate(..., mode="nearest")`` would give it."""
        dense = F.interpolate(self.dense, size=size, mode="nearest")
        if self.index is None:
            return LabelMap(dense, self.num_classes, check=False)
        # Nearest resizing picks the same source pixels for the index map (exact below 2**24).
        index = F.interpolate(self.index[:, None].float(), size=size, mode="nearest")[:, 0].long()
        return LabelMap(dense, self.num_classes, index=index)

    def patterns(self, k: int) -> tuple[Tensor, Tensor]:
        """(bags, inverse): ``bags`` (U, k*k) rows of the (k*k*(S+1), out) weight table of every
        distinct k x k neighbourhood (row tap*(S+1) + S is zero, used outside the image), and
        ``inverse`` (N, H*W) the neighbourhood number of every pixel."""
        if k not in self._patterns:
            self._patterns[k] = _patterns(self.index, self.num_classes, k)
        return self._patterns[k]


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


class _LookupConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, bags: Tensor, inverse: Tensor, size: tuple[int, int]) -> Tensor:
        out_ch, classes, k = weight.shape[0], weight.shape[1], weight.shape[2]
        table = F.pad(weight.permute(2, 3, 1, 0), (0, 0, 0, 1)).reshape(k * k * (classes + 1), out_ch)
        per_pattern = F.embedding_bag(bags, table, mode="sum").t().contiguous()  # (out, U)
        n = inverse.shape[0]
        out = weight.new_empty(n, out_ch, inverse.shape[1])
        for i in range(n):  # written straight into NCHW order
            torch.index_select(per_pattern, 1, inverse[i], out=out[i])
        ctx.save_for_backward(bags, inverse)
        ctx.weight_shape = weight.shape
        return out.view(n, out_ch, *size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        bags, inverse = ctx.saved_tensors
        out_ch, classes, k = ctx.weight_shape[:3]
        n, p = inverse.shape
        grad = grad.reshape(n, out_ch, p)
        per_pattern = grad.new_zeros(out_ch, bags.shape[0])
        for i in range(n):
            per_pattern.scatter_add_(1, inverse[i].expand(out_ch, p), grad[i])
        table = grad.new_zeros(k * k * (classes + 1), out_ch)
        table.index_add_(0, bags.reshape(-1), per_pattern.t().repeat_interleave(k * k, dim=0))
        g_weight = table.view(k, k, classes + 1, out_ch)[:, :, :classes].permute(3, 2, 0, 1)
        return g_weight, None, None, None


def label_conv(weight: Tensor, bias: Tensor | None, labels: LabelMap, feats: Tensor | None = None) -> Tensor:
    """``F.conv2d(cat([labels.dense, feats]), weight, bias, padding=k // 2)`` (stride 1, odd k),
    with the one-hot channels looked up when ``labels.index`` is known."""
    k = weight.shape[-1]
    parts = [labels.dense] + ([feats] if feats is not None else [])
    if labels.index is None:
        return F.conv2d(torch.cat(parts, 1) if len(parts) > 1 else parts[0], weight, bias, padding=k // 2)
    s = labels.num_classes
    bags, inverse = labels.patterns(k)
    out = _LookupConv.apply(weight[:, :s], bags, inverse, labels.shape)
    rest = [t for t in (labels.extra, feats) if t is not None and t.shape[1]]
    if rest:
        dense_in = torch.cat(rest, 1) if len(rest) > 1 else rest[0]
        return F.conv2d(dense_in, weight[:, s:], bias, padding=k // 2).add_(out)
    return out + bias.view(1, -1, 1, 1) if bias is not None else out

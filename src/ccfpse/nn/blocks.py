"""Building blocks of CC-FPSE: normalised conv units, SPADE, and the conditional convolution block."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ccfpse.nn.label_conv import LabelMap, Rows, conv_rows, halo, label_conv
from ccfpse.nn.norm import batch_norm_affine
from ccfpse.ops import autocast_region, autocast_state, cond_depthwise_conv2d
from ccfpse.winograd import conv3x3

LRELU_SLOPE = 0.2


class ConvUnit(nn.Module):
    """Spectral-norm conv (no bias) -> BatchNorm or InstanceNorm -> optional leaky ReLU.

    The unit every pyramid, discriminator and encoder stage of the release is made of.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str = "batch",
        activation: bool = True,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.conv = spectral_norm(conv)
        if norm == "batch":
            self.norm: nn.Module = nn.BatchNorm2d(out_ch, affine=True)
        elif norm == "instance":
            self.norm = nn.InstanceNorm2d(out_ch, affine=False)
        else:
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, update_stats: bool | None = None
                ) -> torch.Tensor:
        """``weight``: the conv's (spectral-normalised) weight if already read, and
        ``update_stats`` given: a recomputable pass (see ``normalize``)."""
        conv = self.conv
        weight = conv.weight if weight is None else weight
        if conv.kernel_size == (3, 3) and conv.stride == (1, 1):
            x = conv3x3(x, weight)
        else:
            x = F.conv2d(x, weight, None, conv.stride, conv.padding)
        x = self.normalize(x, update_stats)
        # In place: the norms' backward reads their input, not their output (one map less saved).
        return F.leaky_relu_(x, LRELU_SLOPE) if self.activation else x

    def normalize(self, x: torch.Tensor, update_stats: bool | None = None) -> torch.Tensor:
        """The norm; with ``update_stats`` given, BatchNorm as ``batch_norm_affine`` (the same
        result in a first pass and its recomputation, which leaves the running statistics alone)."""
        if update_stats is None or not isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            return self.norm(x)
        scale, shift = batch_norm_affine(self.norm, x, update_stats)
        return x * scale + shift


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: parameter-free BatchNorm, then a per-pixel affine
    transform predicted from the conditioning map."""

    def __init__(self, norm_nc: int, cond_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.shared = nn.Conv2d(cond_nc, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def modulation(self, labels: LabelMap, feats: Rows, rows: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) for output rows [a, b), conditioned on concat(labels, feats)."""
        lo, hi = halo(rows, labels.shape[0])
        actv = Rows(label_conv(self.shared.weight, self.shared.bias, labels, feats, (lo, hi)).relu_(), lo, labels.shape[0])
        return (conv_rows(actv, self.gamma.weight, self.gamma.bias, rows),
                conv_rows(actv, self.beta.weight, self.beta.bias, rows))

    def forward(self, x: torch.Tensor, labels: LabelMap, feats: torch.Tensor | None = None) -> torch.Tensor:
        scale, shift = batch_norm_affine(self.param_free_norm, x)
        gamma, beta = self.modulation(labels, Rows(feats) if feats is not None else None, (0, x.shape[2]))
        return (x * scale + shift) * (1 + gamma) + beta


# Target bytes of one strip's per-pixel kernel map (N, 9 * C, rows, W) under checkpointing; the
# other per-strip tensors are smaller. Large enough for efficient convolutions (the Winograd
# path wants thousands of pixels per call), small enough to stay a small part of the memory.
STRIP_BYTES = 16 * 2**20
# ... and at least this many pixels (N * rows * W): thin strips make thin matrix products.
MIN_STRIP_PIXELS = 4096
# Under checkpointing, a block whose kernel map is smaller than this keeps its graph: the coarse
# maps' blocks cost the most recomputation time per byte they would save (their predictors have
# thousands of filters per pixel), and their graphs are small.
RECOMPUTE_MIN_BYTES = 32 * 2**20


class CondConvBlock(nn.Module):
    """The conditional block of CC-FPSE (fin -> fout).

    Per-pixel depthwise kernels and channel gates are predicted from the conditioning map. The
    four predictors' first layers read the same input; their weights are stored as one
    convolution with 4 * hidden outputs (the official checkpoint's four convs, concatenated on
    import), which each half reads in slices.

    The block runs in two halves, each row-local given per-channel statistics: the first
    (kernels 1 and gate 1) up to the input of norm_2, the second to the output. Each half can be
    computed strip by strip of rows from the strip and one halo row on each side. With
    ``checkpoint`` set, maps whose kernels would take ``RECOMPUTE_MIN_BYTES`` or more are
    computed in strips (``STRIP_BYTES``): no such per-pixel kernel map ever exists at full size,
    and in training only the block's input and the small map between the halves are kept for
    backward, which recomputes each strip in turn.
    """

    def __init__(self, fin: int, fout: int, cond_nc: int, hidden: int = 128) -> None:
        super().__init__()
        fmiddle = min(fin, fout)
        self.fin, self.fout, self.fmiddle, self.hidden = fin, fout, fmiddle, hidden
        # Predictors, in order: kernels of conv 1, kernels of conv 2, gate 1, gate 2.
        self.predictor_in = nn.Conv2d(cond_nc, 4 * hidden, 3, padding=1)
        self.kernels_1 = nn.Conv2d(hidden, fin * 9, 3, padding=1)
        self.kernels_2 = nn.Conv2d(hidden, fout * 9, 3, padding=1)
        self.gate_1 = nn.Conv2d(hidden, fmiddle, 3, padding=1)
        self.gate_2 = nn.Conv2d(hidden, fout, 3, padding=1)

        self.norm_1 = nn.BatchNorm2d(fin)
        self.conv_1 = nn.Conv2d(fin, fmiddle, 1)
        self.norm_2 = nn.BatchNorm2d(fmiddle)
        self.conv_3 = nn.Conv2d(fmiddle, fout, 1)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, cond_nc, hidden)
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        self.checkpoint = False

    def recomputes(self, x: torch.Tensor) -> bool:
        """Whether this input is computed in strips and, in training, recomputed in backward:
        with ``checkpoint`` set and a kernel map of at least ``RECOMPUTE_MIN_BYTES``."""
        return self.checkpoint and self._kernel_map_bytes(x) >= RECOMPUTE_MIN_BYTES

    def _kernel_map_bytes(self, x: torch.Tensor) -> int:
        return x.shape[0] * 9 * self.fin * x.shape[2] * x.shape[3] * x.element_size()

    def strips(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """Row ranges [a, b) the block computes at a time: the whole map, or if it ``recomputes``
        strips of about ``STRIP_BYTES`` of kernels (a multiple of 4 rows, the Winograd tile)."""
        h = x.shape[2]
        if not self.recomputes(x):
            return [(0, h)]
        row_bytes = self._kernel_map_bytes(x) // h
        rows = max(1, STRIP_BYTES // max(1, row_bytes), -(-MIN_STRIP_PIXELS // (x.shape[0] * x.shape[3])))
        if rows >= 4:
            rows -= rows % 4
        return [(a, min(h, a + rows)) for a in range(0, h, rows)]

    def forward(self, x: torch.Tensor, labels: LabelMap, feats: torch.Tensor) -> torch.Tensor:
        """Conditioned on concat(labels, feats): the label map and the pyramid's features."""
        # Read once per forward: each read of a spectral-norm weight runs a power iteration.
        shortcut_weight = self.conv_s.weight if self.learned_shortcut else None
        strips = self.strips(x)
        if torch.is_grad_enabled() and self.recomputes(x):
            return _RecomputedBlock.apply(self, labels, strips, x, feats, shortcut_weight, *self._plain_parameters())
        h = x.shape[2]
        shared = self._shared(x, update_stats=True)
        x, feats = Rows(x), Rows(feats)
        mid = _cat_rows([self._first_half(shared, x, labels, feats, r) for r in strips])
        norm_2 = batch_norm_affine(self.norm_2, mid)
        mid = Rows(mid)
        out = _cat_rows([self._second_half(shared, norm_2, x, mid, labels, feats, shortcut_weight, r) for r in strips])
        assert out.shape[2] == h
        return out

    # -- the pieces: what all strips share, and the two halves of one strip

    def _shared(self, x: torch.Tensor, update_stats: bool) -> dict[str, torch.Tensor]:
        """What every strip uses: the BatchNorm affine maps of x. (Predictor weights are not
        Winograd-transformed once for all strips: the same speed, measured, but the transformed
        weights, 4x the filters, and their gradients would live through the block's backward.)"""
        t = {}
        t["norm_1_scale"], t["norm_1_shift"] = batch_norm_affine(self.norm_1, x, update_stats)
        if self.learned_shortcut:
            t["norm_s_scale"], t["norm_s_shift"] = batch_norm_affine(self.norm_s.param_free_norm, x, update_stats)
        return t

    def _predict(self, shared: dict, half: int, labels: LabelMap, feats: Rows, rows: tuple[int, int]):
        """(per-pixel kernels, gate) of one half for output rows [a, b). Each predictor's first
        layer is its slice of ``predictor_in`` (channels: kernels 1, kernels 2, gate 1, gate 2)."""
        lo, hi = halo(rows, labels.shape[0])
        out = []
        for name, part in ((f"kernels_{half}", half - 1), (f"gate_{half}", half + 1)):
            conv = getattr(self, name)
            k = slice(part * self.hidden, (part + 1) * self.hidden)
            hidden = label_conv(self.predictor_in.weight[k], self.predictor_in.bias[k], labels, feats, (lo, hi))
            out.append(conv_rows(Rows(hidden.relu_(), lo, labels.shape[0]), conv.weight, conv.bias, rows))
        return out[0], torch.sigmoid(out[1])

    def _first_half(self, shared: dict, x: Rows, labels: LabelMap, feats: Rows, rows: tuple[int, int]) -> torch.Tensor:
        """Rows [a, b) of the input of norm_2."""
        lo, hi = halo(rows, x.height)
        kernels, gate = self._predict(shared, 1, labels, feats, rows)
        xn = x.rows(lo, hi) * shared["norm_1_scale"] + shared["norm_1_shift"]
        dx = cond_depthwise_conv2d(xn, kernels, x_offset=rows[0] - lo)
        return F.leaky_relu_(self.conv_1(dx) * gate, LRELU_SLOPE)

    def _second_half(self, shared: dict, norm_2: tuple, x: Rows, mid: Rows, labels: LabelMap, feats: Rows,
                     shortcut_weight: torch.Tensor | None, rows: tuple[int, int]) -> torch.Tensor:
        """Rows [a, b) of the block's output; ``mid`` is the input of norm_2, ``norm_2`` its
        affine map."""
        lo, hi = halo(rows, x.height)
        kernels, gate = self._predict(shared, 2, labels, feats, rows)
        mn = mid.rows(lo, hi) * norm_2[0] + norm_2[1]
        dx = F.leaky_relu_(self.conv_3(cond_depthwise_conv2d(mn, kernels, x_offset=rows[0] - lo)) * gate, LRELU_SLOPE)
        if not self.learned_shortcut:
            return x.rows(*rows) + dx
        gamma, beta = self.norm_s.modulation(labels, feats, rows)
        xs = x.rows(*rows) * shared["norm_s_scale"] + shared["norm_s_shift"]
        return F.conv2d(xs * (1 + gamma) + beta, shortcut_weight) + dx

    def _plain_parameters(self) -> list[nn.Parameter]:
        """Every parameter the block reads directly (conv_s's comes in as its normalised weight)."""
        return [p for name, p in self.named_parameters() if not name.startswith("conv_s.")]


def _cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


class _RecomputedBlock(torch.autograd.Function):
    """A CondConvBlock computed strip by strip without a graph, and again strip by strip in
    backward: only x, feats and the map between the halves are saved.

    Backward rebuilds the small shared tensors (the BatchNorm affine maps) with a
    graph, then back-propagates through one strip at a time with those tensors as leaves,
    adding up their gradients, which finally go through the small graph: second halves, then
    norm_2's statistics, then first halves. The parameters are inputs, so their gradients reach
    them through the ordinary graph (DDP's hooks and the optimiser's per-parameter hooks see
    them as usual). (torch.utils.checkpoint would import torch._dynamo and Triton, ~150 MB
    resident, and recomputes a function as a whole.)"""

    @staticmethod
    def forward(ctx, block: CondConvBlock, labels: LabelMap, strips: list, x: torch.Tensor, feats: torch.Tensor,
                shortcut_weight: torch.Tensor | None, *params):
        ctx.block, ctx.labels, ctx.strips = block, labels, strips
        ctx.autocast = autocast_state(x.device.type)
        shared = block._shared(x, update_stats=True)
        xr, fr = Rows(x), Rows(feats)
        mid = _cat_rows([block._first_half(shared, xr, labels, fr, r) for r in strips])
        norm_2 = batch_norm_affine(block.norm_2, mid)
        out = _cat_rows([block._second_half(shared, norm_2, xr, Rows(mid), labels, fr, shortcut_weight, r)
                         for r in strips])
        ctx.save_for_backward(x, feats, shortcut_weight, mid)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("checkpointed CondConvBlock: double backward is not supported")
        block, labels, strips = ctx.block, ctx.labels, ctx.strips
        x, feats, shortcut_weight, mid = ctx.saved_tensors
        # (the Function's parameter inputs, in order; frozen ones get no gradient)
        all_params = block._plain_parameters()
        trainable = [i for i, p in enumerate(all_params) if p.requires_grad]
        params = [all_params[i] for i in trainable]
        h = x.shape[2]
        amp = autocast_region(ctx.autocast)
        with torch.enable_grad(), amp:  # the small graph: the statistics
            x_graph, mid_graph = x.detach().requires_grad_(), mid.detach().requires_grad_()
            shared = block._shared(x_graph, update_stats=False)
            norm_2 = batch_norm_affine(block.norm_2, mid_graph, update_stats=False)
        leaves = {k: v.detach().requires_grad_() for k, v in shared.items()}
        norm_2_leaves = tuple(t.detach().requires_grad_() for t in norm_2)
        sw = shortcut_weight.detach().requires_grad_() if shortcut_weight is not None else None
        g_x, g_feats, g_mid = torch.zeros_like(x), torch.zeros_like(feats), torch.zeros_like(mid)
        g_params: list = [None] * len(params)
        g_small = {}

        def add(acc, key, g):
            if g is not None:
                acc[key] = g if acc.get(key) is None else acc[key].add_(g)

        def add_params(grads) -> None:
            for i, g in enumerate(grads):
                if g is not None:
                    g_params[i] = g if g_params[i] is None else g_params[i].add_(g)

        def strip_backward(half: int, r: tuple[int, int], g_out: torch.Tensor) -> None:
            lo, hi = halo(r, h)
            f0, f1 = max(0, r[0] - 2), min(h, r[1] + 2)  # the features' rows for the nested 3x3s
            with torch.enable_grad(), amp:
                xw = x[:, :, lo:hi].detach().requires_grad_()
                fw = feats[:, :, f0:f1].detach().requires_grad_()
                windows = [xw, fw]
                if half == 1:
                    out = block._first_half(leaves, Rows(xw, lo, h), labels, Rows(fw, f0, h), r)
                else:
                    mw = mid[:, :, lo:hi].detach().requires_grad_()
                    windows.append(mw)
                    out = block._second_half(leaves, norm_2_leaves, Rows(xw, lo, h), Rows(mw, lo, h), labels,
                                             Rows(fw, f0, h), sw, r)
            small = dict(leaves)  # the small tensors this strip reads, by their key in g_small
            if half == 2:
                small.update(norm_2_scale=norm_2_leaves[0], norm_2_shift=norm_2_leaves[1])
                if sw is not None:
                    small["shortcut_weight"] = sw
            grads = torch.autograd.grad(out, windows + list(small.values()) + params, g_out, allow_unused=True)
            for dst, g in zip((g_x[:, :, lo:hi], g_feats[:, :, f0:f1]), grads[:2]):
                if g is not None:
                    dst += g
            if half == 2 and grads[2] is not None:
                g_mid[:, :, lo:hi] += grads[2]
            n_w = len(windows)
            for key, g in zip(small, grads[n_w : n_w + len(small)]):
                add(g_small, key, g)
            add_params(grads[n_w + len(small):])

        for r in strips:
            strip_backward(2, r, grad[:, :, r[0] : r[1]])
        # norm_2's statistics depend on every row of mid (and on norm_2's affine parameters)
        pairs = [(t, g_small.pop(k)) for t, k in zip(norm_2, ("norm_2_scale", "norm_2_shift")) if k in g_small]
        if pairs:
            res = torch.autograd.grad([t for t, _ in pairs], [mid_graph] + params, [g for _, g in pairs],
                                      allow_unused=True)
            if res[0] is not None:
                g_mid += res[0]
            add_params(res[1:])
        for r in strips:
            strip_backward(1, r, g_mid[:, :, r[0] : r[1]])
        g_sw = g_small.pop("shortcut_weight", None)
        keys = [k for k in shared if k in g_small]
        if keys:
            small_grads = torch.autograd.grad([shared[k] for k in keys], [x_graph] + params,
                                              [g_small[k] for k in keys], allow_unused=True)
            if small_grads[0] is not None:
                g_x += small_grads[0]
            add_params(small_grads[1:])
        need_x, need_f, need_sw = ctx.needs_input_grad[3:6]
        param_grads: list = [None] * len(all_params)
        for i, g in zip(trainable, g_params):
            param_grads[i] = g
        return (None, None, None, g_x if need_x else None, g_feats if need_f else None,
                g_sw if need_sw else None, *param_grads)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The release's initialisation: xavier-normal(gain) for conv/linear weights, zero biases,
    BatchNorm weights ~ N(1, gain)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                nn.init.normal_(m.weight, 1.0, gain)
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral = getattr(getattr(m, "parametrizations", None), "weight", None)
            if spectral is None:
                nn.init.xavier_normal_(m.weight, gain=gain)
            else:
                nn.init.xavier_normal_(spectral.original, gain=gain)
                # u, v were estimated for the weights before re-initialisation; without a fresh
                # estimate an untrained model in eval mode divides by a meaningless sigma.
                with torch.no_grad():
                    sn = spectral[0]
                    sn._power_method(sn._reshape_weight_to_matrix(spectral.original), 15)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

"""Building blocks of CC-FPSE: normalised conv units, SPADE, and the conditional convolution block."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from ccfpse.nn.label_conv import LabelMap, label_conv
from ccfpse.ops import autocast_state, cond_depthwise_conv2d, predict_and_apply_kernels

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, LRELU_SLOPE) if self.activation else x


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: parameter-free BatchNorm, then a per-pixel affine
    transform predicted from the conditioning map."""

    def __init__(self, norm_nc: int, cond_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.shared = nn.Conv2d(cond_nc, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, labels: LabelMap, feats: torch.Tensor | None = None,
                recomputing: bool = False) -> torch.Tensor:
        """Conditioned on concat(labels, feats)."""
        actv = F.relu(label_conv(self.shared.weight, self.shared.bias, labels, feats))
        return _batch_norm(self.param_free_norm, x, recomputing) * (1 + self.gamma(actv)) + self.beta(actv)


class CondConvBlock(nn.Module):
    """The conditional block of CC-FPSE (fin -> fout).

    Per-pixel depthwise kernels and channel gates are predicted from the conditioning map. The
    four predictors' first layers read the same input, so they run as one convolution with
    4 * hidden outputs (the official checkpoint's four convs are concatenated on import).
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
        # Memory saving for large crops: recompute the residual branch in backward, and never
        # hold a whole per-pixel kernel map (see ``forward``).
        self.checkpoint = False

    def _apply_kernels(self, predictor: nn.Conv2d, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.checkpoint:
            return predict_and_apply_kernels(x, hidden, predictor.weight, predictor.bias)
        return cond_depthwise_conv2d(x, predictor(hidden))

    def _body(self, x: torch.Tensor, labels: LabelMap, feats: torch.Tensor, shortcut_weight: torch.Tensor | None,
              recomputing: bool) -> torch.Tensor:
        """shortcut + residual; ``shortcut_weight`` is conv_s's spectrally normalised weight."""
        if self.learned_shortcut:
            shortcut = F.conv2d(self.norm_s(x, labels, feats, recomputing), shortcut_weight)
        else:
            shortcut = x
        hidden = label_conv(self.predictor_in.weight, self.predictor_in.bias, labels, feats).relu_()
        h_kernels_1, h_kernels_2, h_gate_1, h_gate_2 = hidden.chunk(4, dim=1)
        dx = self._apply_kernels(self.kernels_1, _batch_norm(self.norm_1, x, recomputing), h_kernels_1)
        dx = F.leaky_relu(self.conv_1(dx) * torch.sigmoid(self.gate_1(h_gate_1)), LRELU_SLOPE)
        dx = self._apply_kernels(self.kernels_2, _batch_norm(self.norm_2, dx, recomputing), h_kernels_2)
        return shortcut + F.leaky_relu(self.conv_3(dx) * torch.sigmoid(self.gate_2(h_gate_2)), LRELU_SLOPE)

    def forward(self, x: torch.Tensor, labels: LabelMap, feats: torch.Tensor) -> torch.Tensor:
        """Conditioned on concat(labels, feats): the label map and the pyramid's features."""
        # Read once per forward: each read of a spectral-norm weight runs a power iteration.
        shortcut_weight = self.conv_s.weight if self.learned_shortcut else None
        if not (self.checkpoint and torch.is_grad_enabled()):
            return self._body(x, labels, feats, shortcut_weight, recomputing=False)
        return _RecomputedBlock.apply(self, labels, x, feats, shortcut_weight, *self._plain_parameters())

    def _plain_parameters(self) -> list[nn.Parameter]:
        """Every parameter the body reads directly (conv_s's comes in as shortcut_weight)."""
        return [p for name, p in self.named_parameters() if not name.startswith("conv_s.")]


class _RecomputedBlock(torch.autograd.Function):
    """A CondConvBlock run without a graph and recomputed in backward.

    (torch.utils.checkpoint would do the same, but it imports torch._dynamo and Triton, ~150 MB
    resident, on first use.) The parameters are inputs, so their gradients reach them through the
    ordinary graph (DDP's hooks and the optimiser's per-parameter hooks see them as usual)."""

    @staticmethod
    def forward(ctx, block: CondConvBlock, labels: LabelMap, x: torch.Tensor, feats: torch.Tensor,
                shortcut_weight: torch.Tensor | None, *params):
        ctx.block, ctx.labels = block, labels
        ctx.autocast = autocast_state(x.device.type)
        ctx.save_for_backward(x, feats, shortcut_weight)
        return block._body(x, labels, feats, shortcut_weight, recomputing=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("checkpointed CondConvBlock: double backward is not supported")
        x, feats, shortcut_weight = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        amp = torch.autocast(*ctx.autocast) if ctx.autocast else contextlib.nullcontext()
        with torch.enable_grad(), amp:
            inputs = [t.detach().requires_grad_(n) if t is not None else None
                      for t, n in zip((x, feats, shortcut_weight), need)]
            out = ctx.block._body(inputs[0], ctx.labels, inputs[1], inputs[2], recomputing=True)
        wanted = [t for t, n in zip(inputs + ctx.block._plain_parameters(), need) if n]
        grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, None) + tuple(next(grads) if n else None for n in need)


def _batch_norm(norm: nn.Module, x: torch.Tensor, recomputing: bool) -> torch.Tensor:
    """``norm(x)``; when recomputing a checkpointed forward, without updating the running
    statistics a second time (momentum 0 leaves them as they are; works for SyncBatchNorm too)."""
    if not recomputing or not norm.training:
        return norm(x)
    momentum, tracked = norm.momentum, norm.num_batches_tracked.clone()
    norm.momentum = 0.0
    try:
        return norm(x)
    finally:
        norm.momentum = momentum
        norm.num_batches_tracked.copy_(tracked)


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

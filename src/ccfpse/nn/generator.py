"""The CC-FPSE generator: a label feature pyramid predicts per-pixel conv kernels for seven
conditional blocks that turn a latent (or a downsampled label map) into an image."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfpse.config import ModelConfig, latent_grid
from ccfpse.nn.blocks import LRELU_SLOPE, CondConvBlock, ConvUnit, init_weights
from ccfpse.nn.label_conv import LabelMap, as_label_map, label_conv
from ccfpse.nn.recompute import recompute

# Channel multipliers of ngf for the seven blocks' inputs and outputs:
# head_0, G_middle_0, G_middle_1, up_0, up_1, up_2, up_3.
BLOCK_CHANNELS = (16, 16, 16, 16, 8, 4, 2, 1)
BLOCK_NAMES = ("head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3")
# For each block: the pyramid level (0 = coarsest) it is conditioned on and whether x is
# upsampled 2x before it. "normal" runs both middle blocks at 1/16; "more" upsamples before each.
BLOCK_SCHEDULE = {
    "normal": ((0, False), (1, True), (1, False), (2, True), (3, True), (4, True), (5, True)),
    "more": ((0, False), (1, True), (2, True), (3, True), (4, True), (5, True), (6, True)),
}


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class LabelPyramid(nn.Module):
    """Weight-prediction network: a bottom-up encoder of the label map and a top-down path with
    lateral connections (an FPN). Returns features coarse to fine, one per resolution."""

    def __init__(self, semantic_nc: int, nf: int, num_levels: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            [ConvUnit(semantic_nc, nf, 3, stride=1)]
            + [ConvUnit(nf, nf, 3, stride=2) for _ in range(num_levels - 1)]
        )
        self.lateral = nn.ModuleList([ConvUnit(nf, nf, 1) for _ in range(num_levels - 1)])
        self.decode = nn.ModuleList([ConvUnit(nf, nf, 3) for _ in range(num_levels - 1)])
        # Recompute in backward instead of keeping the activations (held through the blocks' backward).
        self.checkpoint = False

    def forward(self, labels: LabelMap) -> list[torch.Tensor]:
        # Each read of a spectral-norm weight is a power iteration: once per pass, also when
        # the pass is recomputed in backward.
        weights = [unit.conv.weight for unit in (*self.down, *self.lateral, *self.decode)]
        if not (self.checkpoint and torch.is_grad_enabled()):
            return self._run(labels, weights)
        plain = [p for name, p in self.named_parameters() if ".parametrizations." not in name]
        return list(recompute(lambda *w, recomputing: self._run(labels, w, update_stats=not recomputing),
                              weights, plain))

    def _run(self, labels: LabelMap, weights, update_stats: bool | None = None) -> list[torch.Tensor]:
        """``weights``: the units' conv weights, down then lateral then decode."""
        n, m = len(self.down), len(self.lateral)
        down_w, lateral_w, decode_w = weights[:n], weights[n : n + m], weights[n + m :]
        first = self.down[0]
        h = first.normalize(label_conv(down_w[0], None, labels), update_stats)
        bottom_up = [F.leaky_relu_(h, LRELU_SLOPE)]
        for layer, weight in zip(self.down[1:], down_w[1:]):
            bottom_up.append(layer(bottom_up[-1], weight, update_stats))
        top_down = [bottom_up[-1]]
        for lateral, decode, skip, lw, dw in zip(self.lateral, self.decode, reversed(bottom_up[:-1]), lateral_w, decode_w):
            top_down.append(decode(upsample2x(top_down[-1]) + lateral(skip, lw, update_stats), dw, update_stats))
        return top_down


class CCFPSEGenerator(nn.Module):
    def __init__(
        self,
        semantic_nc: int,
        ngf: int = 64,
        crop_size: int = 256,
        aspect_ratio: float = 1.0,
        use_vae: bool = True,
        z_dim: int = 256,
        num_upsampling_layers: str = "normal",
        predictor_hidden: int = 128,
        label_channels: int | None = None,
    ) -> None:
        """``label_channels``: how many leading channels of the input are a one-hot label map
        (the rest, e.g. instance edges, are not); default all."""
        super().__init__()
        self.semantic_nc, self.ngf, self.use_vae, self.z_dim = semantic_nc, ngf, use_vae, z_dim
        self.label_channels = semantic_nc if label_channels is None else label_channels
        self.latent_size = latent_grid(crop_size, aspect_ratio, num_upsampling_layers)
        sh, sw = self.latent_size
        if use_vae:
            self.fc: nn.Module = nn.Linear(z_dim, BLOCK_CHANNELS[0] * ngf * sh * sw)
        else:
            self.fc = nn.Conv2d(semantic_nc, BLOCK_CHANNELS[0] * ngf, 3, padding=1)
        self.schedule = BLOCK_SCHEDULE[num_upsampling_layers]
        self.pyramid = LabelPyramid(semantic_nc, ngf, num_levels=1 + max(level for level, _ in self.schedule))
        self.blocks = nn.ModuleList(
            CondConvBlock(cin * ngf, cout * ngf, semantic_nc + ngf, predictor_hidden)
            for cin, cout in zip(BLOCK_CHANNELS[:-1], BLOCK_CHANNELS[1:])
        )
        self.conv_img = nn.Conv2d(ngf, 3, 3, padding=1)
        init_weights(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "CCFPSEGenerator":
        return cls(
            cfg.semantic_nc, cfg.ngf, cfg.crop_size, cfg.aspect_ratio, cfg.use_vae, cfg.z_dim,
            cfg.num_upsampling_layers, cfg.predictor_hidden, cfg.num_label_channels,
        )

    def set_checkpointing(self, enabled: bool) -> None:
        """Recompute the label pyramid and the large blocks' per-pixel kernels in backward
        (saves most activation memory; see ``blocks.RECOMPUTE_MIN_BYTES``)."""
        for block in self.blocks:
            block.checkpoint = enabled
        self.pyramid.checkpoint = enabled

    def forward(self, semantics: torch.Tensor | LabelMap, z: torch.Tensor | None = None) -> torch.Tensor:
        """semantics: (N, semantic_nc, H, W) one-hot [+ instance edges], or a ``LabelMap`` of
        them; z: (N, z_dim) or None."""
        if isinstance(semantics, LabelMap):
            shape = (semantics.batch_size, semantics.num_channels, *semantics.shape)
        else:
            shape = tuple(semantics.shape)
        if len(shape) != 4 or shape[1] != self.semantic_nc:
            raise ValueError(f"generator expects semantics of shape (N, {self.semantic_nc}, H, W), got {shape}")
        full = as_label_map(semantics, self.label_channels)
        sh, sw = self.latent_size
        dtype = self.conv_img.weight.dtype if isinstance(semantics, LabelMap) else semantics.dtype
        if self.use_vae:
            if z is None:
                z = torch.randn(full.batch_size, self.z_dim, device=full.device)
            x = self.fc(z.to(dtype)).view(-1, BLOCK_CHANNELS[0] * self.ngf, sh, sw)
        else:
            x = self.fc(full.resized((sh, sw)).dense.to(dtype))

        pyramid = self.pyramid(full)
        labels = {full.shape: full}  # the label map at each block's size
        for block, (level, upsample) in zip(self.blocks, self.schedule):
            if upsample:
                x = upsample2x(x)
            size = tuple(x.shape[2:])
            if size not in labels:
                labels[size] = full.resized(size)
            x = block(x, labels[size], pyramid[level])
        return torch.tanh(self.conv_img(F.leaky_relu_(x, LRELU_SLOPE)))  # x is not needed after

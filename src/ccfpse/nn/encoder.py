"""The VAE image encoder: six stride-2 conv units on a 256 x 256 resize, then mu and logvar."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfpse.nn.blocks import LRELU_SLOPE, ConvUnit, init_weights
from ccfpse.nn.recompute import recompute

LAYER_CHANNELS = (1, 2, 4, 8, 8, 8)  # multipliers of ngf
INPUT_SIZE = 256


class ConvEncoder(nn.Module):
    def __init__(self, ngf: int = 64, z_dim: int = 256, image_nc: int = 3) -> None:
        super().__init__()
        widths = [image_nc] + [m * ngf for m in LAYER_CHANNELS]
        # Always six layers: the input is resized to 256 whatever the crop, so the release's
        # "layer6 only if crop_size >= 256" would leave an 8x8 map that fc_mu cannot take.
        self.layers = nn.ModuleList(
            ConvUnit(cin, cout, 3, stride=2, norm="instance", activation=False)
            for cin, cout in zip(widths[:-1], widths[1:])
        )
        final_size = INPUT_SIZE // 2 ** len(self.layers)
        self.fc_mu = nn.Linear(widths[-1] * final_size**2, z_dim)
        self.fc_var = nn.Linear(widths[-1] * final_size**2, z_dim)
        self.checkpoint = False
        init_weights(self)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (N, 3, H, W) in [-1, 1] -> (mu, logvar), each (N, z_dim)."""
        if image.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            image = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        weights = [layer.conv.weight for layer in self.layers]  # read once: each read is a power iteration
        if not (self.checkpoint and torch.is_grad_enabled()):
            return self._run(image, weights)
        plain = [*self.fc_mu.parameters(), *self.fc_var.parameters()]
        mu, logvar = recompute(lambda x, *w, recomputing: self._run(x, w), [image, *weights], plain)
        return mu, logvar

    def set_checkpointing(self, enabled: bool) -> None:
        """Recompute the encoder's activations in backward instead of keeping them (in the
        generator's step they would be held through the generator's whole backward pass)."""
        self.checkpoint = enabled

    def _run(self, image: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor]:
        h = image
        for i, (layer, weight) in enumerate(zip(self.layers, weights)):
            # (in place: instance norm's backward does not read its output)
            h = layer(h if i == 0 else F.leaky_relu_(h, LRELU_SLOPE), weight)
        h = F.leaky_relu_(h, LRELU_SLOPE).flatten(1)
        return self.fc_mu(h), self.fc_var(h)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    std = torch.exp(0.5 * logvar)
    return mu + torch.randn_like(std) * std

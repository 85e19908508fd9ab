"""The losses of the release: hinge GAN over the FPSE scales, discriminator feature matching,
VGG19 perceptual loss and the VAE's KL divergence."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfpse.errors import WeightsError, unreadable_reason
from ccfpse.metrics.weights import load_state_dict_strict, read_state_dict


def d_hinge_loss(pred_real: list[torch.Tensor], pred_fake: list[torch.Tensor]) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), each averaged over the scales."""
    real = sum(F.relu(1 - p).mean() for p in pred_real) / len(pred_real)
    fake = sum(F.relu(1 + p).mean() for p in pred_fake) / len(pred_fake)
    return real + fake


def g_hinge_loss(pred_fake: list[torch.Tensor]) -> torch.Tensor:
    return -sum(p.mean() for p in pred_fake) / len(pred_fake)


def feature_matching_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the discriminator features of L1(fake, real); real features carry no gradient."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(feats_fake, feats_real)) / len(feats_fake)


def kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, I)), summed over batch and dimensions as in the release."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# torchvision vgg19 `features` slices ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
VGG_WHAT = "a torchvision VGG19 state dict"


def load_vgg19_features(weights_path: str | None = None) -> nn.Sequential:
    """VGG19 ``features[:30]`` with ImageNet weights: from ``weights_path`` (a torchvision vgg19
    state dict) or through torchvision's own download-and-cache mechanism."""
    from torchvision.models import VGG19_Weights, vgg19

    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsError(f"{path}: VGG19 weights file not found (--vgg-weights)")
        # The project's weight-file reader and strict loader, as for every other network; built on
        # the meta device, since the file's tensors replace every parameter anyway.
        state = read_state_dict(path, VGG_WHAT)
        with torch.device("meta"):
            model = vgg19(weights=None)
        load_state_dict_strict(model, state, VGG_WHAT, path)
    else:
        try:
            model = vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
        except Exception as e:  # no network, proxy errors, a truncated download
            raise WeightsError(
                "the VGG19 ImageNet weights for the perceptual loss could not be loaded through "
                f"torchvision ({unreadable_reason(e)}); pass --vgg-weights PATH to a torchvision "
                "vgg19 state dict, or train without it with --no-vgg-loss"
            ) from None
    return model.features[:30].eval().requires_grad_(False)


class VGGLoss(nn.Module):
    """Weighted L1 between VGG19 activations of fake and real; images in [-1, 1] go in as they
    are, as in the release."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG_SLICES)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        loss = fake.new_zeros(())
        h_fake, h_real = fake, real
        for weight, layers in zip(VGG_LAYER_WEIGHTS, self.slices):
            h_fake = layers(h_fake)
            with torch.no_grad():
                h_real = layers(h_real)
            loss = loss + weight * F.l1_loss(h_fake, h_real)
        return loss

"""The Feature-Pyramid Semantics-Embedding (FPSE) discriminator."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ccfpse.nn.blocks import ConvUnit, init_weights
from ccfpse.nn.label_conv import LabelMap, as_label_map, label_conv

ENCODER_CHANNELS = (1, 2, 4, 8, 8)  # multipliers of ndf for enc1..enc5


def upsample2x_bilinear(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FPSEDiscriminator(nn.Module):
    """Bottom-up encoder, top-down pathway with laterals, and at 1/4, 1/8 and 1/16 a score =
    real/fake logit + inner product of a label-map embedding with projected image features."""

    def __init__(self, semantic_nc: int, ndf: int = 64, image_nc: int = 3, label_channels: int | None = None) -> None:
        """``label_channels``: how many leading channels of the label input are one-hot (default all)."""
        super().__init__()
        self.label_channels = semantic_nc if label_channels is None else label_channels
        widths = [image_nc] + [m * ndf for m in ENCODER_CHANNELS]
        self.down = nn.ModuleList(
            ConvUnit(cin, cout, 3, stride=2, norm="instance") for cin, cout in zip(widths[:-1], widths[1:])
        )
        # Laterals for f2..f5 and output units for t2..t4.
        self.lateral = nn.ModuleList(ConvUnit(c, 4 * ndf, 1, norm="instance") for c in widths[2:])
        self.final = nn.ModuleList(ConvUnit(4 * ndf, 2 * ndf, 3, norm="instance") for _ in range(3))
        self.real_fake = nn.Conv2d(2 * ndf, 1, 1)
        self.seg = nn.Conv2d(2 * ndf, 2 * ndf, 1)
        self.embedding = nn.Conv2d(semantic_nc, 2 * ndf, 1)
        init_weights(self)

    def forward(
        self, image: torch.Tensor, semantics: torch.Tensor | LabelMap
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (features f2..f5 for feature matching, score maps at 1/4, 1/8, 1/16)."""
        features = []
        h = image
        for layer in self.down:
            h = layer(h)
            features.append(h)
        f2, f3, f4, f5 = features[1:]
        lat2, lat3, lat4, lat5 = self.lateral
        t5 = lat5(f5)
        t4 = upsample2x_bilinear(t5) + lat4(f4)
        t3 = upsample2x_bilinear(t4) + lat3(f3)
        t2 = upsample2x_bilinear(t3) + lat2(f2)

        labels = as_label_map(semantics, self.label_channels)
        embedding = label_conv(self.embedding.weight, self.embedding.bias, labels)
        embeddings = []
        for _ in range(4):  # 1/2, 1/4, 1/8, 1/16
            embedding = F.avg_pool2d(embedding, kernel_size=2, stride=2)
            embeddings.append(embedding)

        predictions = []
        for final, t, emb in zip(self.final, (t2, t3, t4), embeddings[1:]):
            h = final(t)
            predictions.append(self.real_fake(h) + (emb * self.seg(h)).sum(dim=1, keepdim=True))
        return features[1:], predictions

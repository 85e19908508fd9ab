"""Turn label (and instance) maps into the networks' input: one-hot classes [+ instance edges].

Runs on the batch's device (GPU when training there), never in data-loader workers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """(N, H, W) instance ids -> (N, 1, H, W) float edges.

    A pixel is an edge where its id differs from its left, right, upper or lower neighbour;
    both pixels of a differing pair are marked (as in SPADE).
    """
    t = instance
    edge = torch.zeros_like(t, dtype=torch.bool)
    dx = t[:, :, 1:] != t[:, :, :-1]
    dy = t[:, 1:, :] != t[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge.unsqueeze(1).float()


def make_label_map(label: torch.Tensor, num_label_channels: int, instance: torch.Tensor | None = None):
    """``make_semantics`` as a ``LabelMap``: class indices and instance edges, without the dense
    one-hot map (the networks look the one-hot channels up; see ``ccfpse.nn.label_conv``)."""
    from ccfpse.nn.label_conv import LabelMap

    label = _checked_label(label, num_label_channels)
    extra = None if instance is None else _edges(instance)
    return LabelMap.from_index(label, num_label_channels, extra)


def _edges(instance: torch.Tensor) -> torch.Tensor:
    """Instance edges of an (N, H, W) or (N, 1, H, W) instance map."""
    return instance_edges(instance[:, 0] if instance.dim() == 4 else instance)


def _checked_label(label: torch.Tensor, num_label_channels: int) -> torch.Tensor:
    if label.dim() == 4 and label.shape[1] == 1:
        label = label[:, 0]
    label = label.long()
    lo, hi = int(label.min()), int(label.max())
    if lo < 0 or hi >= num_label_channels:
        raise ValueError(
            f"label values must lie in [0, {num_label_channels - 1}], found [{lo}, {hi}]; "
            "check label_nc / contain_dontcare_label"
        )
    return label


def make_semantics(
    label: torch.Tensor,
    num_label_channels: int,
    instance: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-hot encode ``label`` (N, H, W) with values in [0, num_label_channels) and append the
    instance edges of ``instance`` (N, H, W) as the last channel when it is given."""
    label = _checked_label(label, num_label_channels)
    # contiguous: the permuted one-hot is channels-last in memory, which sends every later
    # interpolate/conv down slow layout-converting paths.
    one_hot = F.one_hot(label, num_label_channels).permute(0, 3, 1, 2).float().contiguous()
    if instance is None:
        return one_hot
    return torch.cat([one_hot, _edges(instance)], dim=1)

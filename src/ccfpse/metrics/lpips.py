"""LPIPS diversity: mean pairwise LPIPS distance between K samples drawn for the same layout.

Uses the ``lpips`` package (v0.1 linear calibration layers, shipped inside the package). Its
ImageNet backbone (AlexNet by default, or VGG16) normally comes from torchvision's download;
here the package builds a randomly initialised backbone and we load torchvision's ImageNet
weights ourselves: ``--lpips-backbone-weights PATH``, the cache, torchvision's own cache, or a
checksummed download.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
import torchvision

from ccfpse.errors import CCFPSEError, WeightsError
from ccfpse.metrics.weights import WeightSpec, load_state_dict_strict, read_state_dict, resolve_weights


def _torchvision_spec(what: str, url: str) -> WeightSpec:
    filename = url.rsplit("/", 1)[-1]
    # torchvision's files are named <model>-<first 8 hex digits of their sha256>.pth.
    return WeightSpec(
        what=what,
        filename=filename,
        url=url,
        sha256=filename.rsplit("-", 1)[-1].split(".")[0],
        option="--lpips-backbone-weights",
    )


BACKBONES = {
    "alex": _torchvision_spec(
        "AlexNet ImageNet weights (torchvision)", torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    ),
    "vgg": _torchvision_spec(
        "VGG16 ImageNet weights (torchvision)", torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    ),
}


def _backbone_keys(net: torch.nn.Module) -> dict[str, str]:
    """lpips names backbone layers ``sliceK.i`` with ``i`` the index in torchvision's ``features``."""
    mapping = {}
    for name in net.state_dict():
        _, index, param = name.split(".")
        mapping[f"features.{index}.{param}"] = name
    return mapping


class LPIPSMetric:
    """LPIPS distance (lower = more similar) on images in [-1, 1]."""

    def __init__(
        self, net: str = "alex", backbone_weights: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> None:
        if net not in BACKBONES:
            raise CCFPSEError(f"unknown LPIPS backbone {net!r}; choose one of {', '.join(BACKBONES)}")
        import lpips

        spec = BACKBONES[net]
        resolved = resolve_weights(spec, backbone_weights)
        self.backbone_path = resolved.path
        self.backbone_sha256 = resolved.sha256
        with warnings.catch_warnings():  # the package still passes torchvision's old `pretrained=`
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        rename = _backbone_keys(model.net)
        file_state = read_state_dict(resolved.path, spec.what)
        missing = sorted(set(rename) - set(file_state))
        if missing:  # named as in torchvision's file, which is what the user holds
            raise WeightsError(
                f"file {resolved.path} is not {spec.what}: missing keys {', '.join(missing[:5])}"
                + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
            )
        # The classifier is not used by LPIPS; any other backbone layer must match (checked below).
        features = {k: v for k, v in file_state.items() if k.startswith("features.")}
        state = {rename.get(k, k): v for k, v in features.items()}
        load_state_dict_strict(model.net, state, spec.what, resolved.path)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.net = net

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N,) LPIPS distances between two (N, 3, H, W) batches in [-1, 1]."""
        d = self.model(a.to(self.device).float(), b.to(self.device).float(), normalize=False)
        return d.reshape(-1)

    @torch.no_grad()
    def pairwise_per_layout(self, samples: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) mean over the K(K-1)/2 pairs i < j of the K samples of each of N layouts.

        ``samples``: a (K, N, 3, H, W) tensor or a list of K (N, 3, H, W) tensors.
        """
        k = len(samples)
        if k < 2:
            raise CCFPSEError(f"LPIPS diversity needs at least 2 samples per layout, got {k}")
        pairs = [self.distance(samples[i], samples[j]) for i in range(k) for j in range(i + 1, k)]
        return torch.stack(pairs).mean(0).cpu()

    def mean_pairwise(self, samples: torch.Tensor | Sequence[torch.Tensor]) -> float:
        return float(self.pairwise_per_layout(samples).double().mean())


def mean_pairwise_lpips(samples: torch.Tensor | Sequence[torch.Tensor], metric: LPIPSMetric | None = None) -> float:
    """Mean over layouts of the mean pairwise LPIPS of each layout's K samples."""
    return (metric or LPIPSMetric()).mean_pairwise(samples)

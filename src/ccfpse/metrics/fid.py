"""Fréchet Inception Distance with pytorch-fid's network and weights.

Features: ``pytorch_fid.inception.InceptionV3`` (block 3 = the 2048-d final average pool, the
TensorFlow-ported FID Inception with ``use_fid_inception=True``, bilinear resize to 299,
inputs scaled from [0, 1] to [-1, 1] by the network as pytorch-fid does). Its constructor would
download the weights; we build it without the download and load the weights ourselves, from a
local file or from pytorch-fid's release URL via the checksummed cache (``weights.py``).

Statistics: mean and unbiased covariance (``np.cov(..., rowvar=False)``) in float64, accumulated
over batches. Distance: ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` with
``scipy.linalg.sqrtm``, with pytorch-fid's handling of singular products and of the tiny
imaginary parts sqrtm can return.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable
from unittest import mock

import numpy as np
import torch
from scipy import linalg

from ccfpse.errors import DataError
from ccfpse.metrics.weights import WeightSpec, load_state_dict_strict, read_state_dict, resolve_weights

# pytorch-fid's FID_WEIGHTS_URL; the file name carries the torch.hub sha256 prefix 6726825d.
FID_WEIGHTS = WeightSpec(
    what="Inception FID weights",
    filename="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d",
    option="--inception-weights",
)
FEATURE_DIM = 2048


def _build_fid_inception() -> tuple[torch.nn.Module, dict[str, str]]:
    """pytorch-fid's ``InceptionV3([3])`` with freshly initialised weights and no download.

    Returns the network and a map from the names of the torchvision-style Inception's children
    (the key prefixes of pytorch-fid's weight file) to their names inside ``InceptionV3``.
    """
    import pytorch_fid.inception as pfi

    built: list[torch.nn.Module] = []
    make_trunk = pfi._inception_v3

    def capture_trunk(*args, **kwargs):
        trunk = make_trunk(*args, **kwargs)
        built.append(trunk)
        return trunk

    def keep_fresh_weights(url, *args, **kwargs):
        # Stands in for the download inside pytorch-fid's builder: the trunk loads its own
        # state, and the real weights are loaded (and checked) by the caller afterwards.
        return built[-1].state_dict()

    with mock.patch.object(pfi, "_inception_v3", capture_trunk), mock.patch.object(
        pfi, "load_state_dict_from_url", keep_fresh_weights
    ):
        net = pfi.InceptionV3(
            output_blocks=[pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
            resize_input=True,
            normalize_input=True,
            use_fid_inception=True,
        )
    owner = {id(m): name for name, m in net.named_modules()}
    rename = {child: owner[id(m)] for child, m in built[-1].named_children() if id(m) in owner}
    return net, rename


def _to_wrapper_keys(state: dict[str, torch.Tensor], rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """pytorch-fid's weight file names the torchvision-style Inception (``Mixed_5b.…``, ``fc.…``);
    ``InceptionV3`` holds the same modules under ``blocks.i.j``. Keys already in that form pass."""
    if any(k.startswith("blocks.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        child, _, rest = key.partition(".")
        if child == "fc":  # the classifier is not part of the pool features
            continue
        out[f"{rename[child]}.{rest}" if child in rename else key] = value
    return out


class FIDFeatureExtractor:
    """2048-d pool features of pytorch-fid's FID Inception.

    ``weights``: a local file (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, or a saved
    ``InceptionV3().state_dict()``); ``None`` uses the cache or downloads it once.
    """

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        resolved = resolve_weights(FID_WEIGHTS, weights)
        self.weights_path = resolved.path
        self.weights_sha256 = resolved.sha256
        self.device = torch.device(device)
        with torch.device("meta"):  # no init work: every tensor is replaced by the file's
            net, rename = _build_fid_inception()
        state = _to_wrapper_keys(read_state_dict(resolved.path, FID_WEIGHTS.what), rename)
        load_state_dict_strict(net, state, FID_WEIGHTS.what, resolved.path)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def features(self, images: torch.Tensor, quantize: bool = True) -> np.ndarray:
        """(N, 3, H, W) images in [-1, 1] -> (N, 2048) float64 features.

        ``quantize`` rounds to 8-bit levels first, as the images are when saved to PNG and read
        back by pytorch-fid (the SPADE-family protocol computes FID on saved images).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        x = ((images.float() + 1) / 2).clamp(0, 1)
        if quantize:
            x = torch.round(x * 255) / 255
        feats = self.net(x.to(self.device))[0]
        return feats.reshape(feats.shape[0], -1).double().cpu().numpy()


class FeatureStatistics:
    """Streaming mean and covariance of feature vectors, in float64."""

    def __init__(self, dim: int = FEATURE_DIM) -> None:
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats: np.ndarray | torch.Tensor) -> None:
        f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {f.shape}")
        self.count += f.shape[0]
        self._sum += f.sum(axis=0)
        self._outer += f.T @ f

    def mean(self) -> np.ndarray:
        return self._sum / max(self.count, 1)

    def cov(self) -> np.ndarray:
        """Unbiased covariance, as ``np.cov(feats, rowvar=False)``."""
        if self.count < 2:
            raise DataError(f"FID needs at least 2 images per set, got {self.count}")
        mu = self.mean()
        return (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean(), self.cov()


def feature_statistics(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features."""
    f = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    stats = FeatureStatistics(f.shape[1])
    stats.update(f)
    return stats.statistics()


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    tr sqrt(sigma1 sigma2) is computed as the sum of the square roots of the eigenvalues of the
    symmetric sigma1^1/2 sigma2 sigma1^1/2 (the same eigenvalues): two symmetric eigen-
    decompositions take seconds at 2048 dimensions where scipy's general ``sqrtm`` takes minutes,
    and the result is exact also for the singular covariances of small sets. ``eps`` is kept for
    the signature of pytorch-fid's function; no regularisation is needed.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    diff = mu1 - mu2
    w, v = linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root1 @ s2 @ root1
    trace_covmean = float(np.sqrt(np.clip(linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_covmean)


def fid_from_features(feats1: np.ndarray | torch.Tensor, feats2: np.ndarray | torch.Tensor) -> float:
    return frechet_distance(*feature_statistics(feats1), *feature_statistics(feats2))


def fid_from_statistics(stats1: FeatureStatistics, stats2: FeatureStatistics) -> float:
    return frechet_distance(*stats1.statistics(), *stats2.statistics())


def accumulate_features(
    extractor: FIDFeatureExtractor, batches: Iterable[torch.Tensor], stats: FeatureStatistics | None = None
) -> FeatureStatistics:
    """Add the features of every image batch (in [-1, 1]) to ``stats`` (a new one by default)."""
    stats = stats or FeatureStatistics()
    for images in batches:
        stats.update(extractor.features(images))
    return stats

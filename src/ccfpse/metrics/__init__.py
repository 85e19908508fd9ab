"""Evaluation metrics: FID, mIoU / pixel accuracy with segmenters, LPIPS diversity.

Names are imported lazily, so that ``import ccfpse.metrics`` (done by the CLI at start-up) does not
pull in scipy, pytorch-fid or lpips until a metric is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FIDFeatureExtractor": "fid",
    "FeatureStatistics": "fid",
    "accumulate_features": "fid",
    "feature_statistics": "fid",
    "fid_from_features": "fid",
    "fid_from_statistics": "fid",
    "frechet_distance": "fid",
    "ConfusionMatrix": "miou",
    "LPIPSMetric": "lpips",
    "mean_pairwise_lpips": "lpips",
    "Segmenter": "segmenters",
    "SEGMENTERS": "segmenters",
    "TorchScriptSegmenter": "segmenters",
    "build_segmenter": "segmenters",
    "SmallSegmenter": "small_segmenter",
    "evaluate_segmenter": "small_segmenter",
    "load_small_segmenter": "small_segmenter",
    "train_small_segmenter": "small_segmenter",
    "WeightSpec": "weights",
    "cache_dir": "weights",
    "resolve_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ccfpse.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ccfpse.metrics.{_EXPORTS[name]}"), name)

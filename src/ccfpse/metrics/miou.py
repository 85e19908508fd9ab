"""Confusion matrix over a split: mean IoU and pixel accuracy of a segmenter's predictions.

Rows are ground-truth classes, columns predicted classes; pixels whose target equals
``ignore_index`` (dontcare) are left out of every figure.

- IoU of class c = TP / (TP + FP + FN) = M[c, c] / (row_c + col_c - M[c, c]).
- mIoU = mean IoU over the classes with a non-empty union, i.e. classes that occur in the
  ground truth or in the predictions of the split; classes absent from both are skipped (this
  is ``np.nanmean`` of the per-class IoU, as the DeepLab, CSAIL and DRN evaluation codes do).
- pixel accuracy = correctly labelled pixels / all counted pixels.

Figures are fractions in [0, 1]; the paper prints them as percentages.
"""

from __future__ import annotations

import torch

from ccfpse.errors import DataError


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: ``pred`` and ``target`` of the same shape (e.g. (N, H, W)), integer class ids."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        n = self.num_classes
        if int(target.min()) < 0 or int(target.max()) >= n:
            raise DataError(
                f"ground-truth labels must lie in [0, {n - 1}] or equal the ignore index "
                f"{self.ignore_index}; found values in [{int(target.min())}, {int(target.max())}]"
            )
        if int(pred.min()) < 0 or int(pred.max()) >= n:
            raise ValueError(f"predictions must lie in [0, {n - 1}], found [{int(pred.min())}, {int(pred.max())}]")
        # bincount runs on the batch's device; only the n x n result travels to the CPU.
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.matrix += counts.reshape(n, n).cpu()

    def per_class_iou(self) -> torch.Tensor:
        """(num_classes,) float64 IoU, NaN for classes with an empty union."""
        m = self.matrix.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        iou = self.per_class_iou()
        valid = ~torch.isnan(iou)
        return float(iou[valid].mean()) if bool(valid.any()) else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")

    @property
    def num_pixels(self) -> int:
        return int(self.matrix.sum())

import math

import pytest
import torch

from ccfpse.errors import DataError
from ccfpse.metrics.miou import ConfusionMatrix

# 8 pixels, the last two are dontcare (255). Counted pairs (target, pred):
# (0,0) (0,0) (0,1) (1,1) (1,3) (2,2)  -> rows = target, cols = pred:
#   [[2, 1, 0, 0],
#    [0, 1, 0, 1],
#    [0, 0, 1, 0],
#    [0, 0, 0, 0]]
# IoU0 = 2/(3+2-2) = 2/3, IoU1 = 1/(2+2-1) = 1/3, IoU2 = 1/1, IoU3 = 0/(0+1-0) = 0 (predicted only)
# mIoU = (2/3 + 1/3 + 1 + 0) / 4 = 0.5; pixel accuracy = 4/6.
TARGET = torch.tensor([[0, 0, 0, 1], [1, 2, 255, 255]])
PRED = torch.tensor([[0, 0, 1, 1], [3, 2, 0, 3]])


def test_hand_computed_values():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(PRED[None], TARGET[None])
    expected = torch.tensor([[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.matrix, expected)
    iou = cm.per_class_iou()
    assert torch.allclose(iou, torch.tensor([2 / 3, 1 / 3, 1.0, 0.0], dtype=torch.float64))
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    assert cm.num_pixels == 6


def test_classes_absent_from_target_and_prediction_are_skipped():
    cm = ConfusionMatrix(6, ignore_index=255)
    cm.update(PRED, TARGET)
    iou = cm.per_class_iou()
    assert math.isnan(iou[4]) and math.isnan(iou[5])
    assert cm.miou() == pytest.approx(0.5)


def test_accumulation_over_batches_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (6, 7, 9), generator=g)
    target = torch.randint(0, 6, (6, 7, 9), generator=g)  # 5 acts as the ignore index
    whole = ConfusionMatrix(5, ignore_index=5)
    whole.update(pred, target)
    parts = ConfusionMatrix(5, ignore_index=5)
    for i in range(6):
        parts.update(pred[i : i + 1], target[i : i + 1])
    assert torch.equal(whole.matrix, parts.matrix)
    keep = target != 5
    assert whole.pixel_accuracy() == pytest.approx((pred[keep] == target[keep]).double().mean().item())


def test_perfect_prediction():
    target = torch.tensor([[0, 1], [2, 2]])
    cm = ConfusionMatrix(3)
    cm.update(target.clone(), target)
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0
    cm.reset()
    assert cm.num_pixels == 0 and math.isnan(cm.miou())


def test_invalid_inputs_are_reported():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(DataError, match="ground-truth labels"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="predictions"):
        cm.update(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long))

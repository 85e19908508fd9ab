import json

import pytest
import torch
from torch.utils.data import Dataset

from ccfpse.errors import DataError, WeightsError
from ccfpse.metrics.segmenters import build_segmenter
from ccfpse.metrics.small_segmenter import evaluate_segmenter, load_small_segmenter, train_small_segmenter

PALETTE = torch.tensor([[-0.8, -0.8, -0.8], [0.9, -0.5, -0.5], [-0.5, 0.9, -0.5], [-0.5, -0.5, 0.9]])


class Rectangles(Dataset):
    """Coloured rectangles on a coloured background, with a little noise; some dontcare pixels."""

    def __init__(self, n: int, seed: int, size: int = 32, dontcare: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            label = torch.full((size, size), int(torch.randint(0, 4, (1,), generator=g)))
            for _ in range(2):
                y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
                h, w = torch.randint(6, size // 2, (2,), generator=g).tolist()
                label[y : y + h, x : x + w] = int(torch.randint(0, 4, (1,), generator=g))
            image = PALETTE[label].permute(2, 0, 1) + 0.1 * torch.randn(3, size, size, generator=g)
            if dontcare:
                label[:2] = 255
            self.items.append({"image": image.clamp(-1, 1), "label": label})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_train_evaluate_save_and_reload(tmp_path):
    out = tmp_path / "seg"
    result = train_small_segmenter(
        Rectangles(32, seed=0, dontcare=True), Rectangles(8, seed=1, dontcare=True), num_classes=4,
        ignore_index=255, steps=16, batch_size=8, lr=5e-3, device="cpu", out_path=out, width=8,
    )
    losses = result["losses"]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["acc"] <= 1.0

    meta = json.loads((out / "segmenter.json").read_text())
    assert meta["num_classes"] == 4 and meta["ignore_index"] == 255 and meta["width"] == 8
    assert meta["metrics"]["miou"] == pytest.approx(result["miou"])

    seg = build_segmenter(f"small:{out}")
    assert seg.num_classes == 4 and seg.ignore_index == 255
    again = evaluate_segmenter(seg, Rectangles(8, seed=1, dontcare=True))
    assert again["miou"] == pytest.approx(result["miou"]) and again["acc"] == pytest.approx(result["acc"])
    same = load_small_segmenter(out / "model.safetensors")
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    assert torch.equal(same.predict(x), seg.predict(x)) and seg.predict(x).shape == (2, 20, 28)


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="labels go up to"):
        train_small_segmenter(
            Rectangles(4, seed=0), Rectangles(2, seed=1), num_classes=2, ignore_index=None,
            steps=1, batch_size=4, lr=1e-3, device="cpu", out_path=tmp_path / "x", width=4,
        )
    with pytest.raises(WeightsError, match="not a small-segmenter checkpoint"):
        load_small_segmenter(tmp_path)
    (tmp_path / "segmenter.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="does not describe"):
        load_small_segmenter(tmp_path)

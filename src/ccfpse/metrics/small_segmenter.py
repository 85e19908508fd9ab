"""A small segmentation net to measure mIoU where no public segmenter exists (custom data, landscapes).

``train_small_segmenter`` trains a small U-Net from random init on the real images of a data set
and saves a self-describing checkpoint folder:

    OUT/model.safetensors   the weights
    OUT/segmenter.json      {"format": "ccfpse-small-segmenter", "arch": "small_unet", "width",
                             "num_classes", "ignore_index", "mean", "std", "metrics", ...}

``build_segmenter("small:OUT")`` (or ``load_small_segmenter``) loads it. ``mean``/``std`` are
applied to RGB in [0, 1], as for the other segmenters; the trainer stores 0.5/0.5, i.e. the net
sees the data set's [-1, 1] images unchanged.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ccfpse.errors import CCFPSEError, DataError, WeightsError
from ccfpse.metrics.miou import ConfusionMatrix
from ccfpse.metrics.segmenters import _argmax_at, _normalise, _rgb01
from ccfpse.metrics.weights import load_state_dict_strict, sha256_file

FORMAT = "ccfpse-small-segmenter"
ARCH = "small_unet"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "segmenter.json"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """Three 2x downsamplings, skip connections, bilinear upsampling (0.49M parameters at width 16)."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.down = nn.ModuleList([_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.bottom = _block(4 * w, 8 * w)
        self.up = nn.ModuleList([_block(8 * w + 4 * w, 4 * w), _block(4 * w + 2 * w, 2 * w), _block(2 * w + w, w)])
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


class SmallSegmenter:
    """``Segmenter`` around a ``SmallUNet``; labels are already in its classes."""

    def __init__(
        self,
        net: SmallUNet,
        num_classes: int,
        ignore_index: int | None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        weights_used: dict[str, str] | None = None,
    ) -> None:
        self.net = net
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mean, self.std = tuple(mean), tuple(std)
        self.weights_used = weights_used or {}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_normalise(_rgb01(images).to(self.device), self.mean, self.std))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        was_training = self.net.training
        self.net.eval()
        try:
            return _argmax_at(self.logits(images), tuple(images.shape[-2:]))
        finally:
            self.net.train(was_training)

    def label_to_target(self, label: torch.Tensor) -> torch.Tensor:
        return label.long()


def save_small_segmenter(segmenter: SmallSegmenter, out_dir: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in segmenter.net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {
        "format": FORMAT,
        "version": 1,
        "arch": ARCH,
        "width": segmenter.net.head.in_channels,
        "num_classes": segmenter.num_classes,
        "ignore_index": segmenter.ignore_index,
        "mean": list(segmenter.mean),
        "std": list(segmenter.std),
        "input": "RGB images in [-1, 1]; mean/std apply to RGB in [0, 1]",
        **(extra or {}),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_small_segmenter(path: str | Path, device: str | torch.device = "cpu") -> SmallSegmenter:
    """Load a checkpoint folder written by ``train_small_segmenter`` (the folder, or a file in it)."""
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise WeightsError(f"{path} is not a small-segmenter checkpoint: expected {META_FILE} and {WEIGHTS_FILE} in {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("arch") != ARCH:
        raise WeightsError(f"{meta_path} does not describe a {ARCH} small segmenter (format {FORMAT})")
    try:
        num_classes, width = int(meta["num_classes"]), int(meta["width"])
        mean, std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{meta_path} lacks a valid field: {e}") from None
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # noqa: BLE001 - one clear line for a damaged file
        raise WeightsError(f"{weights_path} is not a readable safetensors file: {e}") from None
    with torch.device("meta"):
        net = SmallUNet(num_classes, width)
    load_state_dict_strict(net, state, f"a {ARCH} with {num_classes} classes (width {width})", weights_path)
    net = net.to(device).eval().requires_grad_(False)
    return SmallSegmenter(net, num_classes, meta.get("ignore_index"), mean, std, {str(weights_path): sha256_file(weights_path)})


def _loader(dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
    if len(dataset) == 0:
        raise DataError("the data set for the segmenter is empty")
    drop_last = shuffle and len(dataset) >= batch_size
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=0)


def _batch(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        raise DataError("the segmenter's data set must yield dicts with 'image' and 'label'")
    label = batch["label"]
    if label.dim() == 4:  # (N, 1, H, W)
        label = label[:, 0]
    return batch["image"].to(device).float(), label.to(device).long()


@torch.no_grad()
def evaluate_segmenter(segmenter, dataset: Dataset, batch_size: int = 16) -> dict:
    """mIoU and pixel accuracy of any ``Segmenter`` on the real images of ``dataset``."""
    cm = ConfusionMatrix(segmenter.num_classes, segmenter.ignore_index)
    for batch in _loader(dataset, batch_size, shuffle=False):
        images, label = _batch(batch, torch.device("cpu"))
        cm.update(segmenter.predict(images), segmenter.label_to_target(label))
    return {"miou": cm.miou(), "acc": cm.pixel_accuracy(), "num_images": len(dataset)}


def train_small_segmenter(
    dataset_train: Dataset,
    dataset_val: Dataset,
    num_classes: int,
    ignore_index: int | None,
    steps: int,
    batch_size: int,
    lr: float,
    device: str | torch.device,
    out_path: str | Path,
    width: int = 16,
    seed: int = 0,
) -> dict:
    """Train a ``SmallUNet`` on real (image, label) pairs, evaluate it on ``dataset_val`` and save
    it to the folder ``out_path``. Returns ``{"miou", "acc", "losses", "seconds", "path"}``.

    AdamW with a cosine decay of ``lr`` to zero over ``steps``; random horizontal flips;
    cross-entropy that skips ``ignore_index`` pixels.
    """
    if steps < 1 or batch_size < 1:
        raise CCFPSEError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    device = torch.device(device)
    torch.manual_seed(seed)
    net = SmallUNet(num_classes, width).to(device)
    segmenter = SmallSegmenter(net, num_classes, ignore_index)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    batches = itertools.chain.from_iterable(itertools.repeat(_loader(dataset_train, batch_size, shuffle=True)))
    losses: list[float] = []
    start = time.time()
    net.train()
    for _ in range(steps):
        images, label = _batch(next(batches), device)
        if int(label.max()) >= num_classes and (ignore_index is None or int(label.max()) != ignore_index):
            raise DataError(f"labels go up to {int(label.max())} but num_classes is {num_classes}")
        flip = torch.rand(images.shape[0], device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        label = torch.where(flip[:, None, None], label.flip(-1), label)
        logits = segmenter.logits(images)
        loss = F.cross_entropy(logits, label, ignore_index=-100 if ignore_index is None else ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.time() - start
    net.eval()
    metrics = evaluate_segmenter(segmenter, dataset_val, batch_size)
    out = save_small_segmenter(
        segmenter,
        out_path,
        extra={"metrics": {"miou": metrics["miou"], "acc": metrics["acc"], "val_images": metrics["num_images"]},
               "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}},
    )
    return {"miou": metrics["miou"], "acc": metrics["acc"], "losses": losses, "seconds": seconds, "path": str(out)}

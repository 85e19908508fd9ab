"""SPADE-style preprocessing: one random crop/flip drawn per sample, applied to label, instance
and image alike (labels and instances NEAREST, images BICUBIC).

Modes (``cfg.data.preprocess_mode``), with (W, H) the network size ``cfg.model.image_size``:
- ``resize_and_crop``: resize to load_size x round(load_size / aspect), random (W, H) crop.
- ``fixed``: resize to (W, H).
- ``scale_width``: width to load_size, height keeps the aspect ratio (no crop: sizes vary).
- ``scale_width_and_crop``: as scale_width, then a random (W, H) crop.
- ``none``: sides rounded to multiples of 32 (as SPADE), no crop.
Training adds a random horizontal flip unless ``no_flip``. Test preprocessing uses the crop size
as load size (so resize_and_crop becomes a plain resize to (W, H)), centre crops, never flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PREPROCESS_MODES = ("resize_and_crop", "fixed", "scale_width", "scale_width_and_crop", "none")


@dataclass(frozen=True)
class Params:
    """What to do to one sample: resize to ``size`` (W, H), crop ``box`` (or None), flip."""

    size: tuple[int, int]
    box: tuple[int, int, int, int] | None
    flip: bool


@dataclass(frozen=True)
class Preprocess:
    mode: str
    load_size: int
    crop_w: int
    crop_h: int
    train: bool
    flip: bool

    @classmethod
    def from_config(cls, cfg, train: bool) -> "Preprocess":
        from ccfpse.config import ConfigError

        mode = cfg.data.preprocess_mode
        if mode not in PREPROCESS_MODES:
            raise ConfigError(
                f"data.preprocess_mode must be one of {', '.join(PREPROCESS_MODES)}, got {mode!r}"
            )
        crop_h, crop_w = cfg.model.image_size
        load = cfg.data.load_size if train else crop_w
        if load < 1:
            raise ConfigError(f"data.load_size must be >= 1, got {load}")
        return cls(mode, load, crop_w, crop_h, train, train and not cfg.data.no_flip)

    def get_params(self, size: tuple[int, int]) -> Params:
        """Draw the resize/crop/flip of one sample whose images are ``size`` = (W, H).

        Uses torch's RNG, which the DataLoader seeds per worker (and the trainer's seed fixes).
        """
        w, h = size
        mode = self.mode
        if mode == "fixed":
            new = (self.crop_w, self.crop_h)
        elif mode == "resize_and_crop":
            new = (self.load_size, max(1, round(self.load_size * self.crop_h / self.crop_w)))
        elif mode in ("scale_width", "scale_width_and_crop"):
            new_w = self.load_size
            new_h = max(1, int(new_w * h / w))
            if mode == "scale_width_and_crop" and new_h < self.crop_h:
                # Very wide image: grow it so that the crop stays inside (no zero padding,
                # which would invent class-0 pixels in the label).
                new_h = self.crop_h
                new_w = max(new_w, int(round(self.crop_h * w / h)))
            new = (new_w, new_h)
        else:  # none
            new = (_round_to(w, 32), _round_to(h, 32))

        box = None
        if mode in ("resize_and_crop", "scale_width_and_crop"):
            cw, ch = min(self.crop_w, new[0]), min(self.crop_h, new[1])
            if self.train:
                x = int(torch.randint(0, new[0] - cw + 1, (1,)).item())
                y = int(torch.randint(0, new[1] - ch + 1, (1,)).item())
            else:
                x, y = (new[0] - cw) // 2, (new[1] - ch) // 2
            box = (x, y, x + cw, y + ch)
        flip = self.flip and bool(torch.rand(1).item() < 0.5)
        return Params(new, box, flip)

    @staticmethod
    def apply(img: Image.Image, params: Params, resample: int) -> Image.Image:
        if img.size != params.size:
            img = img.resize(params.size, resample)
        if params.box is not None and params.box != (0, 0) + img.size:
            img = img.crop(params.box)
        if params.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


def _round_to(x: int, base: int) -> int:
    return max(base, int(round(x / base) * base))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
    # numpy, not torch ops: in the main process torch's intra-op threads make these tiny
    # element-wise ops several times slower on a busy CPU.
    arr = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32)
    arr /= 127.5
    arr -= 1.0
    return torch.from_numpy(arr)

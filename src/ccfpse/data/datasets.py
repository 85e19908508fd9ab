"""Paired label/image(/instance) data sets in the layouts of ADE20K, Cityscapes, COCO-Stuff and
custom folders, with SPADE preprocessing and label remapping.

Every sample is a dict: ``label`` LongTensor (H, W) with values in 0..label_nc-1 (plus the
dontcare index label_nc when ``contain_dontcare_label``), ``instance`` LongTensor (H, W) only when
``use_instance``, ``image`` FloatTensor (3, H, W) in [-1, 1] when the data set has images,
``path`` (the image path, or the label path when there is no image) and ``label_path``.

Files are paired when the data set is built (unpaired files raise a DataError listing them);
decoding problems (truncated files, out-of-range labels, size mismatches) raise a
``SampleError`` from ``__getitem__`` that names the file, also from DataLoader workers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ccfpse.config import Config, ConfigError
from ccfpse.data.labels import DONTCARE_NAME, Palette, class_names, get_palette, label_colormap, load_palette
from ccfpse.data.transforms import Preprocess, image_to_tensor
from ccfpse.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Labels must be lossless, so no JPEG.
LABEL_EXTS = (".png", ".bmp", ".tif", ".tiff")
DATASET_MODES = ("ade20k", "cityscapes", "coco_stuff", "custom")
# SPADE's convention for "unlabeled" in every layout but ADE20K (which uses raw 0).
DEFAULT_DONTCARE_RAW = 255
_MAX_LISTED = 10


class SampleError(DataError):
    """A DataError raised while loading one sample.

    When a DataLoader worker raises it, PyTorch re-creates it in the main process with the
    worker's whole traceback as the message; this keeps only our own one-line message, so the
    CLI still prints one clear line.
    """

    def __init__(self, message: str = "") -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Decoding


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode ``path`` (PIL decodes lazily, so truncation shows only here)."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
        return img
    except FileNotFoundError:
        raise SampleError(f"{path}: {what} file does not exist") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise SampleError(
            f"{path}: cannot decode the {what} file ({type(e).__name__}: {e}); it is truncated or "
            "corrupt - re-export it or remove it from the data set"
        ) from None


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(W, H) from the file header only (fast; does not detect truncation)."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise SampleError(f"{path}: {what} file does not exist") from None
    except Exception as e:
        raise SampleError(f"{path}: cannot read the {what} file ({type(e).__name__}: {e})") from None


def load_rgb(path: str | Path) -> Image.Image:
    img = open_image(path, "image")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_label_image(path: str | Path, palette: Palette | None) -> Image.Image:
    """Decode a label file into a PIL image of mode L or I (class indices) or RGB (colours to be
    mapped with ``palette`` after resizing; NEAREST keeps colours exact)."""
    img = open_image(path, "label")
    mode = img.mode
    if mode in ("L", "I"):
        return img
    if mode.startswith("I;16"):
        return img.convert("I")
    if mode in ("1", "LA"):
        return img.convert("L")
    if mode in ("P", "PA"):
        # With a palette file the colours are authoritative; without, the indices are the ids.
        return img.convert("RGB") if palette is not None else img.convert("L") if mode == "PA" else img
    if mode in ("RGB", "RGBA"):
        img = img.convert("RGB") if mode == "RGBA" else img
        if palette is not None:
            return img
        arr = np.asarray(img)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return img.getchannel(0)  # a grey index map saved as RGB
        raise SampleError(
            f"{path}: the label is an RGB colour-coded mask but no palette was given; pass "
            "--palette FILE (JSON or CSV mapping each colour to a class id and name) or save the "
            "labels as single-channel index PNGs"
        )
    raise SampleError(f"{path}: unsupported label image mode {mode!r}; use 8- or 16-bit index PNGs")


def label_ids(img: Image.Image, palette: Palette | None, path: str | Path) -> np.ndarray:
    """Raw class ids (H, W) of a label image returned by ``load_label_image``."""
    arr = np.asarray(img)
    if arr.ndim == 3:
        if palette is None:  # P without palette never gets here; keep the guard explicit
            raise SampleError(f"{path}: colour label mask needs --palette")
        return palette.colors_to_ids(arr, path)
    return arr


def read_raw_label(path: str | Path, palette: Palette | None) -> np.ndarray:
    """Full-resolution raw class ids of a label file (for scans and label_nc inference)."""
    return label_ids(load_label_image(path, palette), palette, path)


def load_instance_image(path: str | Path) -> Image.Image:
    img = open_image(path, "instance")
    if img.mode.startswith("I;16"):
        return img.convert("I")
    if img.mode in ("1", "LA", "PA"):
        return img.convert("L")
    if img.mode == "RGBA":
        return img.convert("RGB")
    return img


def instance_ids(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3:  # colour-coded instances: only identity matters for the edges
        arr = (arr[..., 0].astype(np.int64) << 16) | (arr[..., 1].astype(np.int64) << 8) | arr[..., 2]
    return arr.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Label remapping


@dataclass(frozen=True)
class LabelRemap:
    """Raw file values -> network indices.

    ``shift`` (ADE20K): raw 0 is the dontcare value, raw k becomes k-1. Otherwise values are kept
    and ``dontcare_raw`` (255 by default, ``data.ignore_label`` for custom data) marks unlabeled
    pixels. Dontcare pixels become index ``label_nc`` when ``contain_dontcare``; any other value
    outside 0..label_nc-1 is an error.
    """

    label_nc: int
    contain_dontcare: bool
    shift: bool = False
    dontcare_raw: int | None = DEFAULT_DONTCARE_RAW

    @property
    def raw_dontcare(self) -> int | None:
        return 0 if self.shift else self.dontcare_raw

    def map_values(self, raw: np.ndarray) -> np.ndarray:
        """Targets for raw values; -1 where the value is not allowed."""
        raw = np.asarray(raw, dtype=np.int64)
        out = raw - 1 if self.shift else raw.copy()
        bad = (out < 0) | (out >= self.label_nc)
        if self.raw_dontcare is not None:
            dc = raw == self.raw_dontcare
            if self.contain_dontcare:
                out[dc] = self.label_nc
                bad &= ~dc
            else:
                bad |= dc
        out[bad] = -1
        return out

    @functools.cached_property
    def _lut8(self) -> np.ndarray:
        return self.map_values(np.arange(256))

    def __call__(self, raw: np.ndarray, path: str | Path) -> np.ndarray:
        if raw.dtype == np.uint8:
            out = self._lut8[raw]
        else:
            lo = int(raw.min()) if raw.size else 0
            if lo < 0:
                raise SampleError(self.describe(np.unique(raw[raw < 0]), path))
            out = self.map_values(np.arange(int(raw.max()) + 1 if raw.size else 1))[raw]
        if (out < 0).any():
            raise SampleError(self.describe(np.unique(raw[out < 0]), path))
        return out

    def describe(self, bad_values, path: str | Path) -> str:
        """One-line error for raw values ``bad_values`` found in ``path``, with the fix."""
        bad = [int(v) for v in bad_values]
        shown = ", ".join(map(str, bad[:12])) + (f", ... ({len(bad)} values)" if len(bad) > 12 else "")
        allowed = f"0..{self.label_nc - 1}" if not self.shift else f"1..{self.label_nc}"
        if self.raw_dontcare is not None and self.contain_dontcare:
            allowed += f" and {self.raw_dontcare} (dontcare)"
        fixes = []
        real = [v for v in bad if v != self.raw_dontcare and v >= 0]
        if real:
            need = max(real) + (0 if self.shift else 1)
            fixes.append(f"--label-nc {need} if they are real classes")
        if self.raw_dontcare in bad and not self.contain_dontcare:
            fixes.append(f"--contain-dontcare-label if {self.raw_dontcare} marks unlabeled pixels")
        fixes.append("a --palette file for colour-coded masks")
        return (
            f"{path}: label values {shown} are outside the allowed raw values {allowed} "
            f"(label_nc={self.label_nc}, contain_dontcare_label={self.contain_dontcare}); "
            f"fix: pass {', or '.join(fixes)}"
        )


def make_remap(cfg: Config) -> LabelRemap:
    mode = cfg.data.dataset_mode
    m = cfg.model
    if mode == "ade20k":
        return LabelRemap(m.label_nc, m.contain_dontcare_label, shift=True)
    raw = cfg.data.ignore_label if cfg.data.ignore_label is not None else DEFAULT_DONTCARE_RAW
    if cfg.data.ignore_label is not None and not m.contain_dontcare_label:
        raise ConfigError(
            f"data.ignore_label={cfg.data.ignore_label} needs model.contain_dontcare_label "
            "(--contain-dontcare-label): ignored pixels become the dontcare class"
        )
    return LabelRemap(m.label_nc, m.contain_dontcare_label, shift=False, dontcare_raw=raw)


# --------------------------------------------------------------------------------------------
# File discovery and pairing


@dataclass(frozen=True)
class SampleFiles:
    label: str
    image: str | None = None
    instance: str | None = None


def _list_files(folder: Path, exts: tuple[str, ...], recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def _keyed(files: list[Path], key: Callable[[Path], str | None], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        k = key(p)
        if k is None:
            continue
        if k in out:
            raise DataError(f"two {what} files for the same sample {k!r}: {out[k]} and {p}; keep one")
        out[k] = p
    return out


def _require_dir(path: Path | None, what: str, hint: str = "") -> Path:
    if path is None or not path.is_dir():
        raise DataError(f"{what} directory {path} does not exist{hint}")
    return path


def pair_files(
    labels: dict[str, Path],
    images: dict[str, Path] | None,
    instances: dict[str, Path] | None,
    images_required: bool,
    where: str,
) -> tuple[list[SampleFiles], list[str]]:
    """Pair by key. Returns (samples, problems naming each unpaired file)."""
    if not labels:
        raise DataError(f"no label files ({', '.join(LABEL_EXTS)}) found in {where}")
    unpaired: list[str] = []
    keys = sorted(labels)
    use_images = images is not None and (images_required or all(k in images for k in keys))
    if use_images:
        assert images is not None
        unpaired += [f"label {labels[k]} has no image" for k in keys if k not in images]
        unpaired += [f"image {images[k]} has no label" for k in sorted(images) if k not in labels]
    elif images_required:
        raise DataError(f"no image directory for the labels in {where}")
    if instances is not None:
        unpaired += [f"label {labels[k]} has no instance map" for k in keys if k not in instances]
        unpaired += [f"instance map {instances[k]} has no label" for k in sorted(instances) if k not in labels]
    samples = [
        SampleFiles(
            str(labels[k]),
            str(images[k]) if use_images and images is not None and k in images else None,
            str(instances[k]) if instances is not None and k in instances else None,
        )
        for k in keys
        if (not use_images or (images is not None and k in images))
        and (instances is None or k in instances)
    ]
    return samples, unpaired


def unpaired_message(unpaired: list[str], where: str) -> str:
    shown = "; ".join(unpaired[:_MAX_LISTED])
    more = f"; ... and {len(unpaired) - _MAX_LISTED} more" if len(unpaired) > _MAX_LISTED else ""
    return (
        f"{len(unpaired)} unpaired file(s) in {where}: {shown}{more} "
        "(files are paired by name; add the missing files or remove the extra ones)"
    )


# --------------------------------------------------------------------------------------------
# Data sets


class PairedDataset(Dataset):
    """Base class: a list of ``SampleFiles`` plus preprocessing and remapping from the config."""

    dataset_mode = "custom"

    def __init__(
        self,
        cfg: Config,
        split: str = "train",
        train: bool | None = None,
        *,
        images_required: bool = True,
        allow_unpaired: bool = False,
    ) -> None:
        self.cfg = cfg
        self.split = split
        self.train = split == "train" if train is None else train
        self.label_nc = cfg.model.label_nc
        self.contain_dontcare = cfg.model.contain_dontcare_label
        self.use_instance = cfg.model.use_instance
        self.preprocess = Preprocess.from_config(cfg, self.train)
        self.remap = make_remap(cfg)
        self.palette: Palette | None = self._find_palette(cfg)
        samples, unpaired, where = self.find_files(cfg, split, images_required)
        self.where = where
        if unpaired and not allow_unpaired:
            raise DataError(unpaired_message(unpaired, where))
        if not samples:
            raise DataError(unpaired_message(unpaired, where) if unpaired else f"no complete samples found in {where}")
        self.samples: list[SampleFiles] = samples
        self.unpaired: list[str] = unpaired
        self.has_images = all(s.image is not None for s in samples)

    # Subclasses: return (samples, unpaired problems, description of the location).
    def find_files(self, cfg: Config, split: str, images_required: bool) -> tuple[list[SampleFiles], list[str], str]:
        raise NotImplementedError

    def _find_palette(self, cfg: Config) -> Palette | None:
        return load_palette(cfg.data.palette) if cfg.data.palette else None

    @property
    def num_label_channels(self) -> int:
        return self.label_nc + int(self.contain_dontcare)

    @property
    def class_names(self) -> list[str]:
        """Names of the one-hot channels (dontcare last when present)."""
        return channel_names(self.dataset_mode, self.palette, self.label_nc, self.contain_dontcare)

    @property
    def colors(self) -> np.ndarray:
        """(num_label_channels, 3) uint8 colours for ``colorize``."""
        if self.palette is not None:
            base = self.palette.as_array()
        else:
            try:
                base = get_palette(self.dataset_mode, dontcare=False)
            except DataError:
                base = label_colormap(self.label_nc + 1)[1:]
        out = np.zeros((self.num_label_channels, 3), np.uint8)
        n = min(len(base), self.label_nc)
        out[:n] = base[:n]
        if n < self.label_nc:
            out[n:self.label_nc] = label_colormap(self.label_nc + 1)[1:][n:]
        return out  # dontcare stays black

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        label_img = load_label_image(s.label, self.palette)
        image = load_rgb(s.image) if self.has_images and s.image is not None else None
        if image is not None and image.size != label_img.size:
            raise SampleError(
                f"label {s.label} is {_wh(label_img.size)} but image {s.image} is {_wh(image.size)}; "
                "a label and its image must have the same size"
            )
        instance = None
        if self.use_instance:
            if s.instance is None:
                raise SampleError(f"{s.label}: no instance map (use_instance is on)")
            instance = load_instance_image(s.instance)
            if instance.size != label_img.size:
                raise SampleError(
                    f"label {s.label} is {_wh(label_img.size)} but instance map {s.instance} is "
                    f"{_wh(instance.size)}; they must have the same size"
                )

        params = self.preprocess.get_params(label_img.size)
        nearest = Image.Resampling.NEAREST
        raw = label_ids(self.preprocess.apply(label_img, params, nearest), self.palette, s.label)
        out: dict = {"label": torch.from_numpy(np.ascontiguousarray(self.remap(raw, s.label)))}
        if instance is not None:
            inst = instance_ids(self.preprocess.apply(instance, params, nearest))
            out["instance"] = torch.from_numpy(np.ascontiguousarray(inst))
        if image is not None:
            out["image"] = image_to_tensor(self.preprocess.apply(image, params, Image.Resampling.BICUBIC))
        out["path"] = s.image if image is not None else s.label
        out["label_path"] = s.label
        return out


def channel_names(mode: str, palette: Palette | None, label_nc: int, contain_dontcare: bool) -> list[str]:
    """Class names of indices 0..label_nc-1 (from the palette file, else the built-in table,
    else ``class_<i>``), plus "dontcare" when the dontcare channel exists."""
    if palette is not None:
        by_id = palette.names()
    else:
        try:
            by_id = dict(enumerate(class_names(mode)))
        except DataError:
            by_id = {}
    names = [by_id.get(i, f"class_{i}") for i in range(label_nc)]
    return names + ([DONTCARE_NAME] if contain_dontcare else [])


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _root(cfg: Config) -> Path:
    if not cfg.data.dataroot:
        raise DataError(f"dataset_mode {cfg.data.dataset_mode} needs --dataroot")
    root = Path(cfg.data.dataroot).expanduser()
    return _require_dir(root, "dataroot")


class ADE20KDataset(PairedDataset):
    """``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png``; ``dataroot`` may be that folder or its parent."""

    dataset_mode = "ade20k"
    SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def find_files(self, cfg, split, images_required):
        root = _root(cfg)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        if split not in self.SPLITS:
            raise DataError(f"ADE20K has splits train and val, not {split!r}")
        sub = self.SPLITS[split]
        label_dir = _require_dir(root / "annotations" / sub, "ADE20K label", " (expected ADEChallengeData2016/annotations/...)")
        labels = _keyed(_list_files(label_dir, LABEL_EXTS), lambda p: p.stem, "label")
        image_dir = root / "images" / sub
        images = None
        if images_required or image_dir.is_dir():
            images = _keyed(_list_files(_require_dir(image_dir, "ADE20K image"), IMAGE_EXTS), lambda p: p.stem, "image")
        samples, unpaired = pair_files(labels, images, None, images_required, str(root))
        return samples, unpaired, f"{label_dir} + {image_dir}"


class CocoStuffDataset(PairedDataset):
    """SPADE layout: ``{split}_img/*.jpg``, ``{split}_label/*.png``, ``{split}_inst/*.png``."""

    dataset_mode = "coco_stuff"

    def find_files(self, cfg, split, images_required):
        root = _root(cfg)
        label_dir = _require_dir(root / f"{split}_label", "COCO-Stuff label", f" (expected {split}_label, {split}_img, {split}_inst)")
        labels = _keyed(_list_files(label_dir, LABEL_EXTS), lambda p: p.stem, "label")
        image_dir = root / f"{split}_img"
        images = None
        if images_required or image_dir.is_dir():
            images = _keyed(_list_files(_require_dir(image_dir, "COCO-Stuff image"), IMAGE_EXTS), lambda p: p.stem, "image")
        instances = None
        if self.use_instance:
            inst_dir = _require_dir(root / f"{split}_inst", "COCO-Stuff instance", " (or turn use_instance off)")
            instances = _keyed(_list_files(inst_dir, LABEL_EXTS), lambda p: p.stem, "instance")
        samples, unpaired = pair_files(labels, images, instances, images_required, str(root))
        return samples, unpaired, str(root)


class CityscapesDataset(PairedDataset):
    """``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` with ``gtFine/{split}/<city>/`` label ids
    (``*_gtFine_labelIds.png``) and instance ids (``*_gtFine_instanceIds.png``)."""

    dataset_mode = "cityscapes"

    @staticmethod
    def _key(suffix: str, base: Path) -> Callable[[Path], str | None]:
        def key(p: Path) -> str | None:
            if not p.name.endswith(suffix):
                return None
            return str(p.relative_to(base).parent / p.name[: -len(suffix)])

        return key

    def find_files(self, cfg, split, images_required):
        root = _root(cfg)
        label_dir = _require_dir(root / "gtFine" / split, "Cityscapes label", " (expected gtFine/<split>/<city>/)")
        gt_files = _list_files(label_dir, (".png",), recursive=True)
        labels = _keyed(gt_files, self._key("_gtFine_labelIds.png", label_dir), "label")
        image_dir = root / "leftImg8bit" / split
        images = None
        if images_required or image_dir.is_dir():
            files = _list_files(_require_dir(image_dir, "Cityscapes image"), (".png",), recursive=True)
            images = _keyed(files, self._key("_leftImg8bit.png", image_dir), "image")
        instances = None
        if self.use_instance:
            instances = _keyed(gt_files, self._key("_gtFine_instanceIds.png", label_dir), "instance")
        samples, unpaired = pair_files(labels, images, instances, images_required, str(root))
        return samples, unpaired, str(root)


class CustomDataset(PairedDataset):
    """Folders paired by file stem.

    With ``dataroot``: ``ROOT/{split}/images``, ``ROOT/{split}/labels``, optional
    ``ROOT/{split}/instances`` (or the same folders directly under ROOT when ROOT/{split} does not
    exist), palette ``ROOT/palette.json`` (or ``.csv``/``.txt``) when present. Explicit
    ``image_dir``/``label_dir``/``instance_dir``/``palette`` override these.
    """

    dataset_mode = "custom"

    def _split_root(self, cfg: Config, split: str) -> Path | None:
        if not cfg.data.dataroot:
            return None
        root = _require_dir(Path(cfg.data.dataroot).expanduser(), "dataroot")
        if (root / split).is_dir():
            return root / split
        return root

    def _find_palette(self, cfg):
        if cfg.data.palette:
            return load_palette(cfg.data.palette)
        if cfg.data.dataroot:
            for name in ("palette.json", "palette.csv", "palette.txt"):
                path = Path(cfg.data.dataroot).expanduser() / name
                if path.is_file():
                    return load_palette(path)
        return None

    def find_files(self, cfg, split, images_required):
        base = self._split_root(cfg, split)
        if cfg.data.label_dir:
            label_dir = Path(cfg.data.label_dir).expanduser()
        elif base is not None:
            label_dir = base / "labels"
        else:
            raise DataError("custom data needs --dataroot or --label-dir (and --image-dir)")
        _require_dir(label_dir, "label")
        image_dir = Path(cfg.data.image_dir).expanduser() if cfg.data.image_dir else (base / "images" if base else None)
        labels = _keyed(_list_files(label_dir, LABEL_EXTS), lambda p: p.stem, "label")
        images = None
        if images_required or (image_dir is not None and image_dir.is_dir()):
            _require_dir(image_dir, "image", " (pass --image-dir)")
            assert image_dir is not None
            images = _keyed(_list_files(image_dir, IMAGE_EXTS), lambda p: p.stem, "image")
        instances = None
        if self.use_instance:
            inst_dir = Path(cfg.data.instance_dir).expanduser() if cfg.data.instance_dir else (base / "instances" if base else None)
            _require_dir(inst_dir, "instance", " (pass --instance-dir or turn use_instance off)")
            assert inst_dir is not None
            instances = _keyed(_list_files(inst_dir, LABEL_EXTS), lambda p: p.stem, "instance")
        where = f"{label_dir}" + (f" + {image_dir}" if images is not None else "")
        samples, unpaired = pair_files(labels, images, instances, images_required, where)
        return samples, unpaired, where


DATASETS: dict[str, type[PairedDataset]] = {
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "coco_stuff": CocoStuffDataset,
    "custom": CustomDataset,
}


def dataset_class(mode: str) -> type[PairedDataset]:
    if mode not in DATASETS:
        raise ConfigError(f"data.dataset_mode must be one of {', '.join(DATASETS)}, got {mode!r}")
    return DATASETS[mode]


def build_dataset(
    cfg: Config,
    split: str = "train",
    train: bool | None = None,
    *,
    images_required: bool = True,
    allow_unpaired: bool = False,
) -> PairedDataset:
    """The data set of ``cfg.data.dataset_mode`` for ``split``.

    ``train`` (default: split == "train") selects random crop/flip vs resize-to-crop.
    ``images_required=False`` loads a folder of labels alone (samples then have no "image" when
    some label has no image). ``allow_unpaired`` records unpaired files in ``.unpaired`` instead
    of raising (used by ``data check``).
    """
    cls = dataset_class(cfg.data.dataset_mode)
    return cls(cfg, split, train, images_required=images_required, allow_unpaired=allow_unpaired)


class LabelFolder(CustomDataset):
    """Label maps alone (e.g. for synthesis): every label file of ``label_dir`` (optional
    ``instance_dir``), remapped with the conventions of ``cfg.data.dataset_mode`` (so raw ADE20K
    or COCO-Stuff label files work), test preprocessing by default. Samples have no "image"."""

    def __init__(self, cfg: Config, label_dir: str | Path, instance_dir: str | Path | None = None, train: bool = False) -> None:
        import copy

        local = copy.deepcopy(cfg)
        local.data.label_dir = str(label_dir)
        local.data.image_dir = None
        local.data.dataroot = None
        local.data.instance_dir = str(instance_dir) if instance_dir is not None else cfg.data.instance_dir
        self.dataset_mode = cfg.data.dataset_mode
        super().__init__(local, "test", train, images_required=False)

    def find_files(self, cfg, split, images_required):
        samples, unpaired, where = super().find_files(cfg, split, images_required)
        return [SampleFiles(s.label, None, s.instance) for s in samples], unpaired, where

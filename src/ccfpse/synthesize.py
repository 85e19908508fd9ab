"""Synthesis from label maps: the ``Synthesizer`` API and the ``ccfpse synthesize`` command.

Conventions (shared by the API and the command):
- Label maps are resized NEAREST to the model's image size ``cfg.model.image_size`` (H, W) =
  (crop_size / aspect_ratio, crop_size); images come out at that size. Instance maps likewise.
- Files are read as the model's training data was: raw values are remapped with the conventions
  of ``data.dataset_mode`` (ADE20K: raw 0 is dontcare, k -> k-1; COCO-Stuff and others: 255 is
  dontcare), colour-coded masks through a palette file. The API takes network indices directly.
- Randomness: the z of sample k of a layout is the k-th draw of a random stream keyed by
  (seed, layout key); the key is the file stem in the command and the position in the batch in
  the API (or ``keys=``). So a seed gives the same image for a layout whatever the batch size,
  the order or the other files, and sample 0 of ``--num-samples K`` is the single sample.
- Exemplar style (``style_image`` / ``--style``): the encoder's (mu, logvar) of the photo, resized
  to the model's image size first, as in training. One sample uses z = mu (the exemplar's style
  itself, independent of the seed); K > 1 samples draw z = mu + eps * std from the seeded stream.
- Models without the VAE (``use_vae`` off) are deterministic: one image per layout, no style.
"""

from __future__ import annotations

import copy
import hashlib
import html
import itertools
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ccfpse.config import Config
from ccfpse.data.semantics import make_semantics
from ccfpse.devices import pick_device
from ccfpse.errors import CheckpointError, DataError

Style = tuple[torch.Tensor, torch.Tensor]


def random_stream(seed: int, key: Any) -> torch.Generator:
    """A CPU generator for one layout, independent of batch composition and device."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8 numpy."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return arr.movedim(-3, -1).numpy()


class Synthesizer:
    """A generator (and its encoder) ready to turn label maps into images.

    >>> synth = Synthesizer.from_checkpoint("runs/landscapes")
    >>> images = synth.synthesize(label, num_samples=3, seed=0)  # (1, 3, H, W, 3) uint8
    """

    def __init__(self, cfg: Config, G: torch.nn.Module, E: torch.nn.Module | None = None,
                 device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.source = "the model"  # named in error messages; from_checkpoint sets the path
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.G = G.to(self.device).eval()
        self.E = E.to(self.device).eval() if E is not None else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None,
                        use_ema: bool = True) -> "Synthesizer":
        """From a model directory, a training checkpoint (.pt) or a run directory (its newest
        checkpoint); the EMA generator is used when the checkpoint has one and ``use_ema``."""
        from ccfpse.model_io import load_for_inference

        dev = pick_device(device) if not isinstance(device, torch.device) else device
        cfg, G, E = load_for_inference(path, dev, use_ema=use_ema)
        synth = cls(cfg, G, E, dev)
        synth.source = str(path)
        return synth

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the generated images (and of the label maps the generator takes)."""
        return self.cfg.model.image_size

    @property
    def num_label_channels(self) -> int:
        return self.cfg.model.num_label_channels

    # -- inputs
    def _as_maps(self, maps: Any, what: str) -> torch.Tensor:
        if isinstance(maps, torch.Tensor):
            t = maps.detach().cpu()
        else:
            arr = np.array(maps)  # a copy: PIL-backed arrays are read-only
            t = torch.from_numpy(arr.astype(np.int64) if arr.dtype.kind in "uib" else arr)
        if t.dim() == 2:
            t = t[None]
        if t.dim() == 4 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() != 3 or t.is_floating_point() and not torch.equal(t, t.round()):
            raise DataError(f"{what} maps must be integer (H, W) or (N, H, W) arrays, got shape {tuple(t.shape)}")
        t = t.long()
        if tuple(t.shape[1:]) != self.image_size:
            # "nearest-exact" samples pixel centres, like PIL's NEAREST used for files.
            t = F.interpolate(t[:, None].double(), size=self.image_size, mode="nearest-exact")[:, 0].long()
        return t

    def prepare(self, label: Any, instance: Any = None) -> torch.Tensor:
        """Network input (N, semantic_nc, H, W) on the device from label indices (and instances)."""
        lab = self._as_maps(label, "label")
        lo, hi = int(lab.min()), int(lab.max())
        n = self.num_label_channels
        if lo < 0 or hi >= n:
            raise DataError(
                f"label values must lie in 0..{n - 1} for {self.source} (label_nc="
                f"{self.cfg.model.label_nc}, contain_dontcare_label={self.cfg.model.contain_dontcare_label}), "
                f"found {lo}..{hi}"
            )
        inst = None
        if self.cfg.model.use_instance:
            if instance is None:
                raise DataError(f"{self.source} was trained with instance maps (use_instance): pass instance maps too")
            inst = self._as_maps(instance, "instance")
            if inst.shape[0] != lab.shape[0]:
                raise DataError(f"{inst.shape[0]} instance maps for {lab.shape[0]} label maps")
            inst = inst.to(self.device)
        elif instance is not None:
            raise DataError(f"{self.source} does not use instance maps (use_instance is off); drop them")
        return make_semantics(lab.to(self.device), n, inst)

    @torch.inference_mode()
    def style_from_image(self, image: Any) -> Style:
        """(mu, logvar), each (1, z_dim), of an exemplar photo: a path, a PIL image, a uint8
        (H, W, 3) array or a (3, H, W) tensor in [-1, 1]."""
        if not self.cfg.model.use_vae:
            raise CheckpointError(f"{self.source} has no image encoder (use_vae is off): exemplar style is not available")
        if self.E is None:
            raise CheckpointError(f"{self.source} holds no encoder weights (E): exemplar style is not available")
        h, w = self.image_size
        if isinstance(image, torch.Tensor):
            t = image.float()[None] if image.dim() == 3 else image.float()
            if tuple(t.shape[2:]) != (h, w):
                t = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
        else:
            from ccfpse.data.datasets import load_rgb
            from ccfpse.data.transforms import image_to_tensor
            from ccfpse.gallery import to_uint8_image

            if isinstance(image, (str, Path)):
                pil = load_rgb(image)
            else:
                pil = Image.fromarray(to_uint8_image(image))
            if pil.size != (w, h):  # as the training data's test-mode preprocessing
                pil = pil.resize((w, h), Image.Resampling.BICUBIC)
            t = image_to_tensor(pil)[None]
        mu, logvar = self.E(t.to(self.device))
        return mu, logvar

    def latents(self, n: int, num_samples: int = 1, seed: int | None = None,
                style: Style | None = None, keys: Sequence[Any] | None = None) -> torch.Tensor | None:
        """z of shape (n, num_samples, z_dim) on the device (None for non-VAE models)."""
        if not self.cfg.model.use_vae:
            return None
        if seed is None:  # follows torch.manual_seed, as notebooks expect
            seed = int(torch.randint(0, 2**62, (1,)).item())
        keys = list(range(n)) if keys is None else list(keys)
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} layouts")
        z_dim = self.cfg.model.z_dim
        if style is not None and num_samples == 1:
            return style[0].reshape(1, 1, z_dim).expand(n, 1, z_dim).to(self.device)
        # One draw after another, so sample k does not depend on how many samples are asked for.
        eps = torch.stack([
            torch.stack([torch.randn(z_dim, generator=g) for _ in range(num_samples)])
            for g in (random_stream(seed, key) for key in keys)
        ]).to(self.device)
        if style is None:
            return eps
        mu, logvar = (s.reshape(1, 1, z_dim).to(self.device) for s in style)
        return mu + eps * torch.exp(0.5 * logvar)

    # -- synthesis
    @torch.inference_mode()
    def generate(self, label: Any, instance: Any = None, num_samples: int = 1,
                 style_image: Any = None, seed: int | None = None,
                 keys: Sequence[Any] | None = None) -> torch.Tensor:
        """Images (N, K, 3, H, W) in [-1, 1] on the device, K = ``num_samples``.

        ``style_image`` is an exemplar photo (see ``style_from_image``) or its (mu, logvar);
        ``keys`` name the layouts' random streams (default: their positions).
        """
        if num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        if not self.cfg.model.use_vae:
            if num_samples > 1:
                raise CheckpointError(
                    f"{self.source} has no VAE (use_vae is off) and gives one deterministic image per "
                    "layout; use num_samples=1"
                )
            if style_image is not None:
                self.style_from_image(style_image)  # raises the clear error
        semantics = self.prepare(label, instance)
        style = None
        if style_image is not None:
            style = tuple(style_image) if isinstance(style_image, tuple) else self.style_from_image(style_image)
        z = self.latents(semantics.shape[0], num_samples, seed, style, keys)
        outs = torch.stack([self.G(semantics, z=None if z is None else z[:, k]) for k in range(num_samples)], dim=1)
        if not torch.isfinite(outs).all():  # would otherwise be written as black images
            raise CheckpointError(
                f"{self.source}: the generator produced NaN/inf values; the weights are broken "
                "(or untrained: fresh spectral-norm estimates can overflow in eval mode)"
            )
        return outs

    def synthesize(self, label: Any, instance: Any = None, num_samples: int = 1,
                   style_image: Any = None, seed: int | None = None,
                   keys: Sequence[Any] | None = None) -> np.ndarray:
        """Images as uint8 (N, K, H, W, 3) numpy; a single (H, W) label map gives N = 1.

        ``label``: class indices 0..label_nc-1 (plus the dontcare index label_nc when the model
        has one), (H, W) or (N, H, W), resized NEAREST to ``image_size`` when needed.
        ``instance``: instance ids of the same shape, required by models with use_instance.
        """
        return to_uint8(self.generate(label, instance, num_samples, style_image, seed, keys))


# ---------------------------------------------------------------------------------------------
# Reading label files for the command


@dataclass
class _Item:
    stem: str
    label: np.ndarray  # (H, W) network indices at the model's image size
    instance: np.ndarray | None
    real: Any  # (3, H, W) tensor in [-1, 1] or None


def _config_for_data(cfg: Config, args) -> Config:
    """The checkpoint's config with the data conventions asked for on the command line."""
    from ccfpse.config import preset

    cfg = copy.deepcopy(cfg)
    if args.preset:
        dataroot = cfg.data.dataroot
        cfg.data = preset(args.preset).data
        cfg.data.dataroot = dataroot
    if args.dataset_mode:
        cfg.data.dataset_mode = args.dataset_mode
    if args.dataroot:
        cfg.data.dataroot = args.dataroot
    if args.palette:
        cfg.data.palette = args.palette
    return cfg


def _palette(cfg: Config, explicit: bool):
    from ccfpse.data.labels import load_palette

    if not cfg.data.palette:
        return None
    # The training config may name a palette that is not on this machine; then colour-coded
    # labels ask for --palette, and index labels need none.
    if explicit or Path(cfg.data.palette).expanduser().is_file():
        return load_palette(Path(cfg.data.palette).expanduser())
    return None


def _label_colors(cfg: Config, palette) -> np.ndarray:
    """(num_label_channels, 3) display colours: the data set's palette, dontcare black."""
    from ccfpse.data.labels import get_palette, label_colormap

    n = cfg.model.label_nc
    out = np.zeros((cfg.model.num_label_channels, 3), np.uint8)
    out[:n] = label_colormap(n + 1)[1:]
    try:
        name = "landscapes" if cfg.preset == "landscapes" else cfg.data.dataset_mode
        known = palette.as_array() if palette is not None else get_palette(name, dontcare=False)
    except DataError:  # custom data without a palette, or cityscapesscripts not installed
        known = out[:0]
    m = min(len(known), n)
    out[:m] = known[:m]
    return out


def _remap(raw: np.ndarray, remap, path: Path) -> np.ndarray:
    values, inverse = np.unique(raw, return_inverse=True)
    mapped = remap.map_values(values)
    bad = values[mapped < 0]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:12]) + (", ..." if bad.size > 12 else "")
        if remap.shift:
            allowed = f"1..{remap.label_nc}"
        else:
            allowed = f"0..{remap.label_nc - 1}"
        if remap.contain_dontcare and remap.raw_dontcare is not None:
            allowed += f" and {remap.raw_dontcare} (dontcare)"
        raise DataError(
            f"{path}: label values {shown} are out of range for this model (label_nc="
            f"{remap.label_nc}; raw values allowed by its data conventions: {allowed})"
        )
    return mapped[inverse].reshape(raw.shape)


def _read_label(path: Path, cfg: Config, palette, remap) -> np.ndarray:
    from ccfpse.data.datasets import label_ids, load_label_image

    img = load_label_image(path, palette)
    h, w = cfg.model.image_size
    if img.size != (w, h):  # NEAREST before mapping colours keeps them exact
        img = img.resize((w, h), Image.Resampling.NEAREST)
    return _remap(np.asarray(label_ids(img, palette, path)), remap, path)


def _read_instance(path: Path, cfg: Config) -> np.ndarray:
    from ccfpse.data.datasets import instance_ids, load_instance_image

    img = load_instance_image(path)
    h, w = cfg.model.image_size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.NEAREST)
    return instance_ids(img)


def _label_files(labels: Path, instances: Path | None, use_instance: bool) -> list[tuple[Path, Path | None]]:
    from ccfpse.data.datasets import LABEL_EXTS

    if not labels.exists():
        raise DataError(f"{labels}: no such label file or folder")
    if use_instance and instances is None:
        raise DataError(
            f"{labels}: the model uses instance maps (use_instance); pass --instances DIR (or FILE)"
        )
    if not use_instance and instances is not None:
        raise DataError(f"{instances}: the model does not use instance maps (use_instance is off); drop --instances")
    if instances is not None and not instances.exists():
        raise DataError(f"{instances}: no such instance file or folder")
    if labels.is_file():
        files = [labels]
    else:
        files = sorted(p for p in labels.iterdir()
                       if p.is_file() and p.suffix.lower() in LABEL_EXTS and not p.name.startswith("."))
        if not files:
            raise DataError(f"{labels}: no label files ({', '.join(LABEL_EXTS)}) in this folder")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DataError(f"{p}: same name as {stems[p.stem]}; outputs are named by stem, keep one")
        stems[p.stem] = p
    if instances is None:
        return [(p, None) for p in files]
    if instances.is_file():
        if len(files) != 1:
            raise DataError(f"{instances}: one instance file for a folder of labels; pass an instance folder")
        return [(files[0], instances)]
    pairs = []
    for p in files:
        found = [q for q in (instances / (p.stem + ext) for ext in LABEL_EXTS) if q.is_file()]
        if not found:
            raise DataError(f"{p}: no instance map {p.stem}.png in {instances}")
        pairs.append((p, found[0]))
    return pairs


def _file_items(pairs: list[tuple[Path, Path | None]], cfg: Config, palette) -> Iterator[_Item]:
    from ccfpse.data.datasets import make_remap

    remap = make_remap(cfg)
    for label_path, inst_path in pairs:
        label = _read_label(label_path, cfg, palette, remap)
        inst = _read_instance(inst_path, cfg) if inst_path is not None else None
        yield _Item(label_path.stem, label, inst, None)


def _dataset_items(dataset, cfg: Config) -> Iterator[_Item]:
    h, w = cfg.model.image_size
    for i in range(len(dataset)):
        s = dataset[i]
        label, inst = s["label"], s.get("instance")
        if tuple(label.shape) != (h, w):  # preprocess modes that keep the aspect ratio
            label = F.interpolate(label[None, None].double(), size=(h, w), mode="nearest-exact")[0, 0].long()
            if inst is not None:
                inst = F.interpolate(inst[None, None].double(), size=(h, w), mode="nearest-exact")[0, 0].long()
        yield _Item(Path(s["label_path"]).stem, label.numpy(), None if inst is None else inst.numpy(),
                    s.get("image"))


def _batches(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


# ---------------------------------------------------------------------------------------------
# The command


def output_names(stem: str, num_samples: int) -> list[str]:
    """File names of the samples of one layout: ``stem.png``, or ``stem_s0.png`` ... for K > 1."""
    if num_samples == 1:
        return [f"{stem}.png"]
    return [f"{stem}_s{k}.png" for k in range(num_samples)]


def register(subparsers) -> None:
    from ccfpse.config import PRESETS
    from ccfpse.data.datasets import DATASET_MODES

    p = subparsers.add_parser(
        "synthesize",
        help="synthesize images from label maps with a trained or converted model",
        description=(
            "Write one image per label map (same file stem, PNG, at the model's image size; label "
            "maps are resized NEAREST to it) into --out, plus an HTML gallery index.html. Label "
            "maps come from a data set split (--dataroot/--split) or from --labels (a folder of "
            "label PNGs or a single file, raw values read with the data set's conventions)."
        ),
    )
    p.add_argument("--checkpoint", "-c", required=True, metavar="PATH",
                   help="model directory, training checkpoint (.pt) or run directory")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    src = p.add_argument_group("label maps (either --labels or a data set split)")
    src.add_argument("--labels", metavar="PATH", help="a folder of label PNGs or one label file")
    src.add_argument("--instances", "--instance-dir", metavar="PATH",
                     help="instance maps for --labels (folder with the same stems, or one file); "
                          "required by models that use instance maps")
    src.add_argument("--palette", metavar="FILE",
                     help="JSON/CSV palette for colour-coded label masks (colour -> class id)")
    src.add_argument("--dataroot", metavar="DIR", help="data set root (default: the checkpoint's)")
    src.add_argument("--split", help="data set split (default: val)")
    src.add_argument("--preset", choices=PRESETS,
                     help="read the data with this preset's data conventions (default: the checkpoint's)")
    src.add_argument("--dataset-mode", choices=DATASET_MODES,
                     help="data set layout and label conventions (default: the checkpoint's)")
    p.add_argument("--num-samples", "-k", type=int, default=1, metavar="K",
                   help="diverse images per layout (different z), named STEM_s0.png ... (VAE models)")
    p.add_argument("--style", metavar="IMAGE",
                   help="exemplar photo whose encoded style is used (z = mu for one sample, "
                        "z ~ N(mu, sigma) for several)")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--batch-size", "-b", type=int,
                   help="layouts per forward pass (default: 8 on a GPU, 1 on the CPU, where batching "
                        "gains little and full-size models need about 1 GB per layout)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA copy")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N layouts")
    p.add_argument("--no-gallery", action="store_true", help="do not write index.html")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_synthesize_command)


def _synthesize_command(args) -> int:
    from tqdm import tqdm

    from ccfpse.gallery import GalleryRow, save_image, write_gallery

    if args.num_samples < 1:
        raise DataError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.labels and (args.dataroot or args.split):
        raise DataError("give either --labels or a data set split (--dataroot/--split), not both")
    if args.instances and not args.labels:
        raise DataError("--instances goes with --labels; a data set split brings its own instance maps")
    if not args.labels and not (args.dataroot or args.split):
        raise DataError("no label maps: pass --labels PATH or a data set split with --dataroot/--split")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be >= 1, got {args.limit}")

    synth = Synthesizer.from_checkpoint(args.checkpoint, args.device, use_ema=not args.no_ema)
    batch_size = args.batch_size or (1 if synth.device.type == "cpu" else 8)
    model = synth.cfg.model
    if not model.use_vae and args.num_samples > 1:
        raise CheckpointError(
            f"{args.checkpoint}: this model has no VAE (use_vae is off), so it gives one deterministic "
            "image per layout; drop --num-samples"
        )
    style = synth.style_from_image(args.style) if args.style else None
    cfg = _config_for_data(synth.cfg, args)

    if args.labels:
        palette = _palette(cfg, explicit=bool(args.palette))
        pairs = _label_files(Path(args.labels), Path(args.instances) if args.instances else None,
                             model.use_instance)
        total, colors = len(pairs), _label_colors(cfg, palette)
        items = _file_items(pairs, cfg, palette)
    else:
        from ccfpse.data.datasets import build_dataset

        dataset = build_dataset(cfg, args.split or "val", train=False, images_required=False)
        stems = [Path(s.label).stem for s in dataset.samples]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise DataError(f"{dataset.where}: two label files named {dup!r}; outputs are named by stem")
        total, colors = len(dataset), dataset.colors
        items = _dataset_items(dataset, cfg)
    if args.limit is not None:
        total = min(total, args.limit)
        items = itertools.islice(items, args.limit)

    # torch's global generator starts from the same state in every process: not a random seed.
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = Path(args.out)
    if args.labels:
        label_dir = Path(args.labels) if Path(args.labels).is_dir() else Path(args.labels).parent
        if out.resolve() == label_dir.resolve():
            raise DataError(f"{out}: the output folder is the label folder; outputs would overwrite the labels")
    # The outermost folder this command creates: removed again if it fails before writing a file.
    created = next((p for p in (*reversed(out.parents), out) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    from ccfpse.data.labels import colorize

    rows: list[GalleryRow] = []
    any_real = False
    written = 0
    bar = tqdm(total=total, unit="layout", desc="synthesize", disable=args.quiet, file=sys.stderr)
    try:
        for batch in _batches(items, batch_size):
            label = np.stack([it.label for it in batch])
            inst = np.stack([it.instance for it in batch]) if model.use_instance else None
            images = synth.synthesize(label, inst, args.num_samples, style, seed, keys=[it.stem for it in batch])
            for it, samples in zip(batch, images):
                names = output_names(it.stem, args.num_samples)
                for name, img in zip(names, samples):
                    save_image(out / name, img)
                written += len(names)
                if args.no_gallery:
                    continue
                label_png = f"gallery/{it.stem}_label.png"
                save_image(out / label_png, colorize(it.label, colors))
                real_png = None
                if it.real is not None:
                    real_png = f"gallery/{it.stem}_real.png"
                    save_image(out / real_png, it.real)
                    any_real = True
                rows.append(GalleryRow(it.stem, [label_png, *names] + ([real_png] if real_png else [])))
            bar.update(len(batch))
    except BaseException:
        if created is not None and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created)
        raise
    finally:
        bar.close()  # before the error is printed, so that it starts a line of its own

    if not args.no_gallery:
        sample_cols = ["sample"] if args.num_samples == 1 else [f"sample {k}" for k in range(args.num_samples)]
        columns = ["label", *sample_cols] + (["real"] if any_real else [])
        header = [f"checkpoint <code>{html.escape(str(args.checkpoint))}</code>",
                  f"image size {model.image_size[1]}x{model.image_size[0]}"]
        if model.use_vae:
            header.append(f"seed {seed}")
        if args.style:
            from ccfpse.data.datasets import load_rgb

            save_image(out / "gallery" / "style.png", load_rgb(args.style))
            header.append(f'style exemplar <code>{html.escape(Path(args.style).name)}</code> '
                          '<img src="gallery/style.png" alt="style exemplar" style="display:inline;width:96px">')
        write_gallery(out, rows, title=f"ccfpse synthesize: {out.name}", columns=columns,
                      extra_header_html="<p>" + "; ".join(header) + "</p>")
    where = f"{out}" + ("" if args.no_gallery else f" (gallery {out / 'index.html'})")
    seed_note = f", seed {seed}" if model.use_vae else ""
    print(f"wrote {written} image(s) for {total} layout(s) to {where}{seed_note}")
    return 0

"""``ccfpse evaluate``: FID, mIoU / pixel accuracy and LPIPS diversity of a generator on a data
set split (the SPADE-family protocol), or FID between two folders of images.

Protocol: label maps and real images of the split with test-mode preprocessing (resized to the
generator's size, no flip); one generated image per layout for FID and segmentation; for LPIPS,
K samples per layout and the mean pairwise distance. Dontcare pixels are ignored by mIoU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ccfpse.atomic import atomic_write_text
from ccfpse.errors import CCFPSEError, DataError


@dataclass
class Evaluator:
    """The metric networks, loaded once (training evaluates every N steps with the same ones)."""

    fid: Any = None  # FIDFeatureExtractor
    segmenter: Any = None  # Segmenter
    lpips: Any = None  # LPIPSMetric
    lpips_samples: int = 0
    _real_stats: dict = field(default_factory=dict)

    @classmethod
    def build(cls, device: torch.device, inception_weights: str | None = None, fid: bool = True,
              segmenter: str | None = None, segmenter_weights: str | None = None,
              lpips_samples: int = 0, lpips_weights: str | None = None) -> "Evaluator":
        from ccfpse.metrics.fid import FIDFeatureExtractor
        from ccfpse.metrics.lpips import LPIPSMetric
        from ccfpse.metrics.segmenters import build_segmenter

        if lpips_samples == 1 or lpips_samples < 0:
            raise CCFPSEError(f"--lpips-samples must be 0 (off) or at least 2, got {lpips_samples}")
        return cls(
            fid=FIDFeatureExtractor(inception_weights, device) if fid else None,
            segmenter=build_segmenter(segmenter, segmenter_weights, device) if segmenter else None,
            lpips=LPIPSMetric(backbone_weights=lpips_weights, device=device) if lpips_samples else None,
            lpips_samples=lpips_samples,
        )

    def weights_used(self) -> dict[str, str]:
        used = {}
        if self.fid is not None:
            used[str(self.fid.weights_path)] = self.fid.weights_sha256
        if self.segmenter is not None:
            used.update(self.segmenter.weights_used)
        if self.lpips is not None:
            used[str(self.lpips.backbone_path)] = self.lpips.backbone_sha256
        return used

    @torch.no_grad()
    def evaluate(self, synth, dataset, batch_size: int = 8, num_images: int | None = None,
                 seed: int = 0, progress: bool = False) -> dict[str, Any]:
        """Metrics of ``synth`` (a ``Synthesizer``) on ``dataset`` (test preprocessing)."""
        from ccfpse.metrics.fid import FeatureStatistics, fid_from_statistics
        from ccfpse.metrics.miou import ConfusionMatrix

        if len(dataset) == 0:
            raise DataError("the evaluation split has no samples")
        if num_images is not None:
            dataset = Subset(dataset, range(min(num_images, len(dataset))))
        key = (id(dataset.dataset) if isinstance(dataset, Subset) else id(dataset), len(dataset))
        real_stats = self._real_stats.get(key)
        fake_stats = FeatureStatistics() if self.fid is not None else None
        new_real = FeatureStatistics() if self.fid is not None and real_stats is None else None
        cm = ConfusionMatrix(self.segmenter.num_classes, self.segmenter.ignore_index) if self.segmenter else None
        lpips_per_layout: list[torch.Tensor] = []
        use_instance = synth.cfg.model.use_instance
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc="evaluate", unit="batch")
        count = 0
        for batch in loader:
            label, instance = batch["label"], batch["instance"] if use_instance else None
            if "image" not in batch and (self.fid is not None):
                raise DataError(f"{batch['label_path'][0]}: FID needs the real images of the split")
            keys = [Path(p).stem for p in batch["label_path"]]
            fake = synth.generate(label, instance, num_samples=1, seed=seed, keys=keys)[:, 0]
            count += len(fake)
            if fake_stats is not None:
                fake_stats.update(self.fid.features(fake))
                if new_real is not None:
                    new_real.update(self.fid.features(batch["image"]))
            if cm is not None:
                cm.update(self.segmenter.predict(fake), self.segmenter.label_to_target(label.to(fake.device)))
            if self.lpips is not None:
                samples = synth.generate(label, instance, num_samples=self.lpips_samples, seed=seed, keys=keys)
                lpips_per_layout.append(self.lpips.pairwise_per_layout(samples.transpose(0, 1)))
        if new_real is not None:
            real_stats = self._real_stats[key] = new_real
        result: dict[str, Any] = {"num_images": count}
        if fake_stats is not None:
            result["fid"] = fid_from_statistics(fake_stats, real_stats)
        if cm is not None:
            result["miou"] = 100 * cm.miou()
            result["accuracy"] = 100 * cm.pixel_accuracy()
        if lpips_per_layout:
            result["lpips_diversity"] = float(torch.cat(lpips_per_layout).double().mean())
            result["lpips_samples"] = self.lpips_samples
        return result


def fid_between_folders(real_dir: Path, fake_dir: Path, extractor, batch_size: int = 16,
                        size: tuple[int, int] | None = None) -> dict[str, Any]:
    """FID between every image of two folders (not recursive), resized to ``size`` (H, W) if given."""
    from PIL import Image

    from ccfpse.metrics.fid import FeatureStatistics, fid_from_statistics

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
    stats = []
    for folder in (real_dir, fake_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)
        if len(files) < 2:
            raise DataError(f"{folder}: FID needs at least 2 images, found {len(files)}")
        s = FeatureStatistics()
        for i in range(0, len(files), batch_size):
            batch = []
            for path in files[i : i + batch_size]:
                try:
                    img = Image.open(path).convert("RGB")
                    img.load()
                except OSError as e:
                    raise DataError(f"{path}: unreadable image ({e})") from None
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BICUBIC)
                elif size is None and batch and img.size != batch[0].shape[1:][::-1]:
                    img = img.resize(batch[0].shape[1:][::-1], Image.BICUBIC)
                arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                batch.append(arr)
            s.update(extractor.features(torch.stack(batch)))
        stats.append(s)
    return {"fid": fid_from_statistics(stats[1], stats[0]), "num_images": stats[1].count,
            "num_real_images": stats[0].count}


def markdown_table(result: dict[str, Any], title: str) -> str:
    cols = [("FID", "fid", "{:.2f}"), ("mIoU", "miou", "{:.1f}"), ("acc", "accuracy", "{:.1f}"),
            ("LPIPS", "lpips_diversity", "{:.3f}")]
    present = [(name, key, fmt) for name, key, fmt in cols if key in result]
    lines = [f"### {title}", "", "| " + " | ".join(n for n, _, _ in present) + " |",
             "|" + "---|" * len(present), "| " + " | ".join(fmt.format(result[k]) for _, k, fmt in present) + " |", "",
             f"{result['num_images']} generated images."]
    if "lpips_samples" in result:
        lines.append(f"LPIPS: mean pairwise distance of {result['lpips_samples']} samples per layout.")
    for path, digest in result.get("weights", {}).items():
        lines.append(f"- weights `{path}` sha256 `{digest}`")
    return "\n".join(lines) + "\n"


def register(subparsers) -> None:
    from ccfpse.metrics.segmenters import SEGMENTERS

    p = subparsers.add_parser(
        "evaluate", help="FID, mIoU/accuracy and LPIPS diversity of a model on a data set split",
        description="Evaluate a checkpoint on a data set split (generated vs real validation images, "
        "SPADE protocol), or compute FID between two folders (--real-dir/--fake-dir).",
    )
    p.add_argument("-c", "--checkpoint", help="model directory, training checkpoint or run directory")
    p.add_argument("--preset", choices=("ade20k", "coco_stuff", "cityscapes", "landscapes"),
                   help="data conventions (default: those stored in the checkpoint)")
    p.add_argument("--dataset-mode", help="ade20k | cityscapes | coco_stuff | custom")
    p.add_argument("--dataroot", help="data set root (default: the one stored in the checkpoint)")
    p.add_argument("--split", default="val", help="split to evaluate on (default: val)")
    p.add_argument("--real-dir", help="folder of real images (FID between folders)")
    p.add_argument("--fake-dir", help="folder of generated images (FID between folders)")
    p.add_argument("--num-images", type=int, help="evaluate on the first N layouts only")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--inception-weights", help="pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--segmenter", help=f"segmenter for mIoU: {', '.join(SEGMENTERS)}")
    p.add_argument("--segmenter-weights", help="weight file of the segmenter")
    p.add_argument("--lpips-samples", type=int, default=0, help="K >= 2 samples per layout for LPIPS diversity")
    p.add_argument("--lpips-backbone-weights", help="torchvision AlexNet weights for the LPIPS backbone")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator, not its EMA copy")
    p.add_argument("--out", help="folder for metrics.json and metrics.md (default: print only)")
    p.set_defaults(func=_evaluate_command)


def _evaluate_command(args) -> int:
    from ccfpse.devices import pick_device
    from ccfpse.synthesize import Synthesizer

    device = pick_device(args.device)
    if args.real_dir or args.fake_dir:
        if not (args.real_dir and args.fake_dir):
            raise CCFPSEError("--real-dir and --fake-dir go together")
        from ccfpse.metrics.fid import FIDFeatureExtractor

        extractor = FIDFeatureExtractor(args.inception_weights, device)
        result = fid_between_folders(Path(args.real_dir), Path(args.fake_dir), extractor, args.batch_size)
        result["weights"] = {str(extractor.weights_path): extractor.weights_sha256}
        title = f"FID: {args.fake_dir} vs {args.real_dir}"
    else:
        if not args.checkpoint:
            raise CCFPSEError("give --checkpoint (with a data set split) or --real-dir and --fake-dir")
        if args.no_fid and not args.segmenter and not args.lpips_samples:
            raise CCFPSEError("nothing to compute: FID is off and neither --segmenter nor --lpips-samples is given")
        synth = Synthesizer.from_checkpoint(args.checkpoint, device, use_ema=not args.no_ema)
        dataset = split_dataset(synth.cfg, args.preset, args.dataset_mode, args.dataroot, args.split)
        evaluator = Evaluator.build(device, args.inception_weights, not args.no_fid, args.segmenter,
                                    args.segmenter_weights, args.lpips_samples, args.lpips_backbone_weights)
        result = evaluator.evaluate(synth, dataset, args.batch_size, args.num_images, args.seed, progress=True)
        result["weights"] = evaluator.weights_used()
        result.update(checkpoint=str(args.checkpoint), split=args.split)
        title = f"{args.checkpoint} on {args.split}"
    table = markdown_table(result, title)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out / "metrics.md", table)
        print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0


def split_dataset(cfg, preset_name: str | None, dataset_mode: str | None, dataroot: str | None, split: str):
    """The ``split`` of the data set a model was trained on (or the one named), test preprocessing."""
    import copy

    from ccfpse.config import preset
    from ccfpse.data import build_dataset

    cfg = copy.deepcopy(cfg)
    if preset_name:
        cfg.data = preset(preset_name).data
    if dataset_mode:
        cfg.data.dataset_mode = dataset_mode
    if dataroot:
        cfg.data.dataroot = dataroot
        if not dataset_mode and not preset_name and cfg.data.dataset_mode == "custom":
            cfg.data.image_dir = cfg.data.label_dir = cfg.data.instance_dir = None
    if not cfg.data.dataroot and not cfg.data.label_dir:
        raise CCFPSEError("no data set: give --dataroot (the checkpoint does not name one)")
    return build_dataset(cfg, split, train=False)

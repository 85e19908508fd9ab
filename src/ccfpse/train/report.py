"""What users watch during training: a progress bar, a JSONL loss log, TensorBoard scalars and
image grids, and an HTML gallery of samples from fixed inputs that is updated every epoch.
Only rank 0 reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ccfpse.atomic import atomic_write_text, remove_leftovers
from ccfpse.config import Config
from ccfpse.data.semantics import make_semantics
from ccfpse.gallery import GalleryRow, save_image, write_gallery
from ccfpse.train.distributed import DistInfo

NUM_GALLERY_SAMPLES = 8


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def log_lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of a JSONL log whose step is at most ``step``. A line that does not parse (the
    last one, when a disk filled up or the machine went down while it was written) is dropped."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    return kept


def palette_for(cfg: Config):
    """What ``colorize`` takes for this data set: a palette file, a built-in name, or None."""
    from ccfpse.data.labels import load_palette

    if cfg.data.palette:
        return load_palette(cfg.data.palette)
    if cfg.data.dataset_mode in ("ade20k", "coco_stuff", "cityscapes"):
        return cfg.data.dataset_mode
    if cfg.preset == "landscapes":
        return "landscapes"
    return None


class Reporter:
    def __init__(self, cfg: Config, run_dir: Path, dist_info: DistInfo, total_steps: int,
                 start_step: int, progress: bool, device: torch.device) -> None:
        self.cfg, self.run_dir, self.active = cfg, run_dir, dist_info.is_main
        self.total_steps, self.start_step, self.progress = total_steps, start_step, progress
        self.device = device
        self.bar = self.tb = self.log = None
        self.fixed: dict | None = None
        self.history: list[int] = []
        self.last_log_time = time.perf_counter()

    # -- set-up
    def start(self, dataset_size: int, device: torch.device, resumed_from: Path | None) -> None:
        if not self.active:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.run_dir)  # of a run killed while it wrote a file; only our folders
        remove_leftovers(self.run_dir / "gallery", recursive=True)
        self.cfg.save(self.run_dir / "config.json")
        log_path = self.run_dir / "log.jsonl"
        if log_path.exists():  # a killed run: drop lines past the checkpoint we resume from
            atomic_write_text(log_path, "".join(line + "\n" for line in log_lines_up_to(log_path, self.start_step)))
            gallery = self.run_dir / "gallery"
            self.history = sorted(int(p.name.split("_")[1]) for p in gallery.glob("step_*")
                                  if int(p.name.split("_")[1]) <= self.start_step)
        self.log = log_path.open("a")
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.start_step or None)
        what = f"resuming from {resumed_from} at step {self.start_step}" if resumed_from else "starting"
        self.message(
            f"ccfpse train: {what}; {dataset_size} training images, {self.total_steps} steps, "
            f"batch {self.cfg.train.batch_size}, device {device}, run directory {self.run_dir}"
        )
        if self.progress:
            self.bar = tqdm(total=self.total_steps, initial=self.start_step, unit="step",
                            dynamic_ncols=True, smoothing=0.1)

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # -- per step
    def step(self, step: int, losses: dict[str, float], lr_g: float, lr_d: float, step_time: float) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        if step % self.cfg.train.log_every and step != self.total_steps:
            return
        record = {"step": step, "time": time.time(), "step_time": round(step_time, 4),
                  "lr_G": lr_g, "lr_D": lr_d, **{k: round(v, 6) for k, v in losses.items()}}
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        for key, value in losses.items():
            self.tb.add_scalar(f"loss/{key}", value, step)
        self.tb.add_scalar("lr/G", lr_g, step)
        self.tb.add_scalar("lr/D", lr_d, step)
        self.tb.add_scalar("time/step_seconds", step_time, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.active:
            self.tb.add_scalar(tag, value, step)
            self.log.write(json.dumps({"step": step, tag: value}) + "\n")
            self.log.flush()

    # -- samples
    def _fixed_inputs(self) -> dict:
        """A fixed set of validation layouts (training layouts if there is no validation split),
        test-mode preprocessing, and fixed z, so that galleries are comparable across steps."""
        from ccfpse.data.datasets import build_dataset
        from ccfpse.data.labels import colorize
        from ccfpse.errors import DataError

        try:
            dataset = build_dataset(self.cfg, "val", train=False)
        except DataError:
            dataset = build_dataset(self.cfg, "train", train=False)
        items = [dataset[i] for i in range(min(NUM_GALLERY_SAMPLES, len(dataset)))]
        label = torch.stack([it["label"] for it in items])
        instance = torch.stack([it["instance"] for it in items]) if self.cfg.model.use_instance else None
        palette = palette_for(self.cfg)
        gallery = self.run_dir / "gallery"
        (gallery / "inputs").mkdir(parents=True, exist_ok=True)
        names, label_rgb = [], []
        for i, it in enumerate(items):
            rgb = colorize(it["label"], palette)
            label_rgb.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1)
            save_image(gallery / "inputs" / f"{i}_label.png", rgb)
            save_image(gallery / "inputs" / f"{i}_real.png", to_uint8(it["image"][None])[0])
            names.append(Path(it["path"]).name)
        g = torch.Generator().manual_seed(1234)
        return {
            "semantics": make_semantics(label, self.cfg.model.num_label_channels, instance),
            "real": torch.stack([it["image"] for it in items]),
            "z": torch.randn(len(items), self.cfg.model.z_dim, generator=g),
            "names": names,
            "label_rgb": torch.stack(label_rgb),
        }

    @torch.no_grad()
    def samples(self, step: int, G: nn.Module, E: nn.Module | None) -> None:
        if not self.active:
            return
        if self.fixed is None:
            self.fixed = self._fixed_inputs()
        was_training = G.training
        G.eval()
        semantics = self.fixed["semantics"].to(self.device)
        z = self.fixed["z"].to(self.device) if self.cfg.model.use_vae else None
        fake = G(semantics, z=z)
        G.train(was_training)
        out_dir = self.run_dir / "gallery" / f"step_{step:09d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(to_uint8(fake)):
            save_image(out_dir / f"{i}.png", img)
        if step not in self.history:
            self.history.append(step)
        self._write_gallery()
        from torchvision.utils import make_grid

        rows = torch.cat([self.fixed["label_rgb"], fake.float().cpu(), self.fixed["real"]], dim=3)
        self.tb.add_image("samples/label_fake_real", make_grid(rows, nrow=1, normalize=True, value_range=(-1, 1)), step)

    def _write_gallery(self) -> None:
        gallery = self.run_dir / "gallery"
        n = len(self.fixed["names"])
        rows = [GalleryRow(title="input", images=[f"inputs/{i}_label.png" for i in range(n)]),
                GalleryRow(title="real", images=[f"inputs/{i}_real.png" for i in range(n)])]
        for step in sorted(self.history, reverse=True):
            rows.append(GalleryRow(title=f"step {step}", images=[f"step_{step:09d}/{i}.png" for i in range(n)]))
        write_gallery(gallery, rows, title=f"ccfpse training samples: {self.run_dir.name}",
                      columns=self.fixed["names"])

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.log is not None:
            self.log.close()

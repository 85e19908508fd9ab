"""Data-loading throughput (samples/s) on an ADE20K-style tree of 256 px JPEG + PNG pairs, with
the ade20k preset's training preprocessing (resize 286, random crop 256, flip) and the default
collate, for several DataLoader worker counts; optionally the landscapes generation time.

    python bench/bench_loader.py [--num 128] [--workers 0 2] [--landscapes 1000]

The tree is written to a temporary directory (scenes from the landscapes generator, so JPEG and
PNG decoding costs are those of natural-looking content) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ccfpse.config import preset
from ccfpse.data import build_dataset, landscapes


def make_ade_tree(root: Path, num: int, size: int) -> None:
    base = root / "ADEChallengeData2016"
    (base / "images" / "training").mkdir(parents=True)
    (base / "annotations" / "training").mkdir(parents=True)
    for i in range(num):
        label, image = landscapes.sample(i, size, seed=123)
        # ADE raw ids: 0 is "other", classes from 1; spread over 1..150 to use the full range.
        raw = np.where(label == 0, 0, label.astype(np.int64) * 15).astype(np.uint8)
        Image.fromarray(raw).save(base / "annotations" / "training" / f"ADE_train_{i:08d}.png")
        Image.fromarray(image).save(base / "images" / "training" / f"ADE_train_{i:08d}.jpg", quality=90)


def measure(ds, workers: int, batch_size: int, epochs: int) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # start-up (worker spawn) is not throughput
    count, start = 0, time.perf_counter()
    for batch in it:
        count += batch["label"].shape[0]
    for _ in range(epochs - 1):
        for batch in loader:
            count += batch["label"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=128, help="pairs in the synthetic tree")
    p.add_argument("--size", type=int, default=256, help="side of the stored images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--landscapes", type=int, default=0, help="also time generating N landscapes at 128 px")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the main process")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.threads:
        # The default collate's torch.stack runs on torch's intra-op threads in the main process.
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_ade_tree(Path(tmp), args.num, args.size)
        print(f"wrote {args.num} ADE20K-style {args.size} px pairs in {time.perf_counter() - t:.1f} s")
        cfg = preset("ade20k")
        cfg.data.dataroot = tmp
        ds = build_dataset(cfg, "train")
        t = time.perf_counter()
        for i in range(min(len(ds), 32)):
            ds[i]
        print(f"single sample __getitem__: {(time.perf_counter() - t) / min(len(ds), 32) * 1000:.1f} ms")
        for w in args.workers:
            rate = measure(ds, w, args.batch_size, args.epochs)
            print(f"num_workers={w}: {rate:.0f} samples/s (batch {args.batch_size}, 286 -> crop 256 + flip)")
        if args.landscapes:
            t = time.perf_counter()
            landscapes.generate(Path(tmp) / "land", args.landscapes, 128, seed=0)
            print(f"landscapes: {args.landscapes} images at 128 px generated in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()

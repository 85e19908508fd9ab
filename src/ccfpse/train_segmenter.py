"""``ccfpse train-segmenter``: a small segmentation net trained on the real images of a data set,
so that mIoU can be measured where no public segmenter exists (custom data, landscapes)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-segmenter", help="train a small segmenter on a data set's real images (for mIoU)",
        description="Train a small U-Net on the real (image, label) pairs of a data set and save it; "
        "then `ccfpse evaluate --segmenter small:DIR` measures mIoU of generated images with it.",
    )
    p.add_argument("--preset", choices=("ade20k", "coco_stuff", "cityscapes", "landscapes"), default=None,
                   help="data conventions and image size (default: landscapes, or those of --checkpoint)")
    p.add_argument("-c", "--checkpoint", help="take data conventions and image size from this model instead")
    p.add_argument("--dataroot", help="data set root (for landscapes: a folder made by make-landscapes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", required=True, help="output folder of the segmenter")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16, help="channels of the U-Net's first stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    from ccfpse.config import apply_overrides, preset
    from ccfpse.data import build_dataset
    from ccfpse.errors import CCFPSEError
    from ccfpse.metrics.small_segmenter import train_small_segmenter
    from ccfpse.devices import pick_device

    if args.checkpoint:
        from ccfpse.model_io import load_for_inference

        cfg = load_for_inference(args.checkpoint)[0]
    else:
        cfg = preset(args.preset or "landscapes")
    cfg = apply_overrides(cfg, args.set)
    if args.dataroot:
        cfg.data.dataroot = args.dataroot
    if not cfg.data.dataroot and not cfg.data.label_dir:
        raise CCFPSEError("give --dataroot: the folder of the data set to train the segmenter on")
    train_set = build_dataset(cfg, "train", train=True)
    val_set = build_dataset(cfg, "val", train=False)
    m = cfg.model
    ignore = m.label_nc if m.contain_dontcare_label else None
    result = train_small_segmenter(train_set, val_set, m.label_nc, ignore, args.steps, args.batch_size, args.lr,
                                   pick_device(args.device), Path(args.out), width=args.width, seed=args.seed)
    print(f"segmenter saved to {result['path']}: mIoU {100 * result['miou']:.1f}, pixel accuracy "
          f"{100 * result['acc']:.1f} on {len(val_set)} real validation images "
          f"({args.steps} steps, {result['seconds']:.0f} s); use --segmenter small:{result['path']}")
    return 0

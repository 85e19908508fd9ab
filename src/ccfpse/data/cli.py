"""``ccfpse data check`` (scan a data set, report problems) and ``ccfpse data make-landscapes``."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from ccfpse.config import PRESETS, Config, preset
from ccfpse.data.datasets import DATASET_MODES
from ccfpse.errors import DataError


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check a data set; generate the built-in landscapes data")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)

    check = sub.add_parser(
        "check",
        help="scan a data set: pairs, sizes, label values, inferred label_nc, problems",
        description="Scan every sample and report pairs found, unpaired files, image sizes, the "
        "label values present, the label_nc they imply, and every problem (non-zero exit).",
    )
    check.add_argument("root", nargs="?", help="data set root (same as --dataroot)")
    check.add_argument("--preset", choices=PRESETS, help="take label_nc/dontcare/instance/layout from a preset")
    check.add_argument("--dataset-mode", choices=DATASET_MODES, help="file layout (default: the preset's, else custom)")
    check.add_argument("--dataroot", help="data set root")
    check.add_argument("--image-dir", help="custom layout: folder of images")
    check.add_argument("--label-dir", help="custom layout: folder of label maps")
    check.add_argument("--instance-dir", help="custom layout: folder of instance maps")
    check.add_argument("--palette", help="JSON/CSV palette (colour -> class id, name) for colour-coded masks")
    check.add_argument("--label-nc", type=int, help="number of classes (custom data: inferred when omitted)")
    check.add_argument(
        "--contain-dontcare-label", action=argparse.BooleanOptionalAction, default=None,
        help="the unlabeled value (255, or --ignore-label; raw 0 for ADE20K) becomes class label_nc",
    )
    check.add_argument("--ignore-label", type=int, help="raw label value of unlabeled pixels in custom data")
    check.add_argument(
        "--use-instance", action=argparse.BooleanOptionalAction, default=None,
        help="require instance maps (default: the preset's; custom: when an instance folder exists)",
    )
    check.add_argument("--split", default="train", help="split to scan (train, val, ...)")
    check.add_argument(
        "--decode-images", action=argparse.BooleanOptionalAction, default=True,
        help="fully decode images to find truncated files (default on; --no-decode-images reads headers only)",
    )
    check.add_argument("--threads", type=int, default=None, help="decoding threads (default: 2 x CPUs, at most 8)")
    check.set_defaults(func=run_check)

    make = sub.add_parser(
        "make-landscapes",
        help="generate the built-in procedural landscapes data set (custom layout)",
        description="Write ROOT/{train,val}/{images,labels}, ROOT/palette.json and ROOT/landscapes.json.",
    )
    make.add_argument("--out", required=True, help="output directory (ROOT)")
    make.add_argument("--num", type=int, default=2000, help="number of samples (default 2000)")
    make.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--val-fraction", type=float, default=0.1, help="share of samples in val (default 0.1)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    make.set_defaults(func=run_make_landscapes)


def config_from_args(args: argparse.Namespace) -> tuple[Config, bool]:
    """The Config that ``data check`` validates, and whether label_nc must be inferred."""
    from ccfpse.data.validate import FIXED_LABEL_NC

    if args.root:
        if args.dataroot and args.dataroot != args.root:
            raise DataError(f"two data set roots given: {args.root} and --dataroot {args.dataroot}")
        args.dataroot = args.root
    name = args.preset or (args.dataset_mode if args.dataset_mode in FIXED_LABEL_NC else None)
    cfg = preset(name) if name else Config()
    if args.dataset_mode:
        cfg.data.dataset_mode = args.dataset_mode
    for key in ("dataroot", "image_dir", "label_dir", "instance_dir", "palette", "ignore_label"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg.data, key, value)
    if args.label_nc is not None:
        if args.label_nc < 1:
            raise DataError(f"--label-nc must be >= 1, got {args.label_nc}")
        cfg.model.label_nc = args.label_nc
    if args.contain_dontcare_label is not None:
        cfg.model.contain_dontcare_label = args.contain_dontcare_label
    elif args.ignore_label is not None:
        cfg.model.contain_dontcare_label = True  # ignored pixels need the dontcare class
    if args.use_instance is not None:
        cfg.model.use_instance = args.use_instance
    elif name is None and cfg.data.dataset_mode == "custom":
        root = Path(cfg.data.dataroot) if cfg.data.dataroot else None
        found = root is not None and ((root / args.split / "instances").is_dir() or (root / "instances").is_dir())
        cfg.model.use_instance = bool(args.instance_dir) or found
    infer = args.label_nc is None and name is None and cfg.data.dataset_mode == "custom"
    return cfg, infer


def run_check(args: argparse.Namespace) -> int:
    from ccfpse.data.validate import validate_dataset

    cfg, infer = config_from_args(args)
    report = validate_dataset(
        cfg, args.split, infer_label_nc=infer, decode_images=args.decode_images, num_threads=args.threads
    )
    print(report.format())
    return 0 if report.ok else 1


def run_make_landscapes(args: argparse.Namespace) -> int:
    from ccfpse.data import landscapes

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise DataError(f"{out} is not empty; choose a new --out directory or pass --overwrite")
        for name in ("train", "val"):
            shutil.rmtree(out / name, ignore_errors=True)
    start = time.perf_counter()
    meta = landscapes.generate(out, args.num, args.size, seed=args.seed, val_fraction=args.val_fraction)
    took = time.perf_counter() - start
    print(
        f"wrote {meta['num_train']} train + {meta['num_val']} val landscapes of {args.size}x{args.size} px "
        f"to {out} in {took:.1f} s (label_nc {meta['label_nc']}: {', '.join(meta['classes'])})"
    )
    print(f"check it with: ccfpse data check --dataroot {out}")
    return 0

"""``ccfpse train``: resolve the config (preset < YAML < flags < --set), pick the data, run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ccfpse.config import Config, ConfigError, apply_overrides, preset, set_value

# Flags that map one-to-one to a config field: (flag, dotted key, type, help).
FIELD_FLAGS = (
    ("--dataroot", "data.dataroot", str, "root folder of the data set"),
    ("--dataset-mode", "data.dataset_mode", str, "ade20k | cityscapes | coco_stuff | custom"),
    ("--image-dir", "data.image_dir", str, "custom data: folder of images"),
    ("--label-dir", "data.label_dir", str, "custom data: folder of label maps (index or colour PNGs)"),
    ("--instance-dir", "data.instance_dir", str, "custom data: folder of instance maps"),
    ("--palette", "data.palette", str, "custom data: JSON/CSV palette for colour-coded labels"),
    ("--label-nc", "model.label_nc", int, "number of classes (inferred for custom data if omitted)"),
    ("--num-workers", "data.num_workers", int, "data-loader worker processes"),
    ("--batch-size", "train.batch_size", int, "batch size per process"),
    ("--max-steps", "train.max_steps", int, "stop after this many steps (default: the preset's epochs)"),
    ("--lr", "train.lr", float, "base learning rate (TTUR: G/E lr/2, D lr*2)"),
    ("--ema-decay", "train.ema_decay", float, "decay of the generator's EMA copy"),
    ("--precision", "train.precision", str, "fp32 | bf16 | fp16 (fp16 uses a grad scaler)"),
    ("--vgg-weights", "train.vgg_weights", str, "torchvision VGG19 state dict for the perceptual loss"),
    ("--save-every", "train.save_every", int, "write a checkpoint every N steps"),
    ("--keep-last", "train.keep_last", int, "keep the newest N step checkpoints"),
    ("--seed", "train.seed", int, "random seed"),
    ("--eval-every", "train.eval_every", int, "compute FID (and mIoU) every N steps; keeps best.pt"),
    ("--inception-weights", "train.inception_weights", str, "pytorch-fid Inception weights for --eval-every"),
    ("--segmenter", "train.segmenter", str, "segmenter for mIoU during --eval-every (see ccfpse evaluate)"),
    ("--segmenter-weights", "train.segmenter_weights", str, "weight file of --segmenter"),
)
SWITCH_FLAGS = (
    ("--contain-dontcare-label", "model.contain_dontcare_label", True, "labels have a dontcare class"),
    ("--no-instance", "model.use_instance", False, "do not use instance maps"),
    ("--no-vgg-loss", "train.no_vgg_loss", True, "train without the VGG19 perceptual loss"),
    ("--no-ema", "train.use_ema", False, "do not keep an EMA copy of the generator"),
    ("--checkpoint-activations", "train.checkpoint_activations", True,
     "trade compute for memory (large crops): generator blocks with kernel maps of 32 MiB or "
     "more in strips of rows, recomputed in backward, as are the label pyramid and the encoder"),
    ("--compile", "train.compile", True,
     "torch.compile the discriminator and the encoder (static shapes; minutes of compilation on "
     "a CPU); the generator stays eager"),
    ("--deterministic", "train.deterministic", True, "deterministic algorithms only"),
    ("--no-flip", "data.no_flip", True, "no random horizontal flips"),
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train CC-FPSE (default: the built-in landscapes data, offline)",
        description="Train CC-FPSE. Without a data set it trains the small 'landscapes' preset on "
        "procedurally generated scenes (made once into a cache folder), which shows visible learning "
        "within minutes on a CPU. Runs under torchrun for multi-GPU / multi-node data parallelism. "
        "A run directory that already holds checkpoints is resumed.",
    )
    p.add_argument("--preset", choices=("ade20k", "coco_stuff", "cityscapes", "landscapes"),
                   help="paper configuration (default: landscapes, or custom data when --dataroot/--label-dir is given)")
    p.add_argument("--config", help="YAML/JSON config applied on top of the preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. model.ngf=32 (repeatable)")
    p.add_argument("--name", help="run name; the run directory is runs/NAME (default: the preset)")
    p.add_argument("--out", help="run directory (overrides --name)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint file "
                   "(default: the newest checkpoint of the run directory, if any)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    for flag, key, typ, help_text in FIELD_FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, metavar=key.split(".")[1].upper(), help=help_text)
    for flag, key, value, help_text in SWITCH_FLAGS:
        p.add_argument(flag, dest=key, action="store_const", const=value, default=None, help=help_text)
    p.set_defaults(func=run)


def landscapes_cache_dir() -> Path:
    base = os.environ.get("CCFPSE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ccfpse")
    return Path(base)


def read_config_file(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: not valid YAML/JSON ({e})") from None
    unknown = set(data) - {"preset", "model", "data", "train"} if isinstance(data, dict) else {"<not a mapping>"}
    if unknown:
        raise ConfigError(f"{file}: unknown top-level keys {sorted(unknown)}; expected preset, model, data, train")
    return data


def resolve_config(args: argparse.Namespace) -> tuple[Config, bool]:
    """preset < config file < flags < --set. Without a preset or data: the landscapes preset;
    custom data without a preset starts from the full-size model defaults. Also says whether
    label_nc was given explicitly (otherwise it is inferred for custom data)."""
    file_data = read_config_file(args.config) if args.config else {}
    has_custom_data = any(getattr(args, k, None) for k in ("data.dataroot", "data.label_dir"))
    name = args.preset or file_data.get("preset") or (None if has_custom_data else "landscapes")
    cfg = preset(name) if name else Config()
    for section in ("model", "data", "train"):
        for key, value in (file_data.get(section) or {}).items():
            set_value(cfg, f"{section}.{key}", value)
    for _, key, _, _ in FIELD_FLAGS + SWITCH_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            set_value(cfg, key, value)
    label_nc_given = (
        getattr(args, "model.label_nc", None) is not None
        or "label_nc" in (file_data.get("model") or {})
        or any(item.split("=", 1)[0].strip() == "model.label_nc" for item in args.set)
    )
    return apply_overrides(cfg, args.set), label_nc_given


def run(args: argparse.Namespace) -> int:
    from ccfpse.devices import pick_device
    from ccfpse.train.loop import train

    cfg, label_nc_given = resolve_config(args)
    builtin = cfg.preset == "landscapes" and not cfg.data.dataroot and not cfg.data.label_dir
    if builtin:
        from ccfpse.data.landscapes import ensure_landscapes
        from ccfpse.train.distributed import barrier, init_distributed

        info = init_distributed(pick_device(args.device).type)
        root = landscapes_cache_dir() / f"landscapes-{cfg.data.landscapes_size}px-{cfg.data.landscapes_num}"
        if info.is_main:
            print(f"ccfpse train: no data set given; using the built-in 'landscapes' data in {root} "
                  "(procedural scenes, generated once). Samples should look like scenes within "
                  "~10 minutes on a 2-core CPU.", flush=True)
            ensure_landscapes(root, num=cfg.data.landscapes_num, size=cfg.data.landscapes_size, seed=0)
        barrier(info)
        cfg.data.dataroot = str(root)
        cfg.data.palette = str(root / "palette.json") if (root / "palette.json").exists() else None
        cfg.data.dataset_mode = "custom"
    elif cfg.data.dataset_mode == "custom" and not label_nc_given:
        from ccfpse.data import infer_label_nc

        cfg.model.label_nc = infer_label_nc(cfg)
        print(f"ccfpse train: inferred label_nc={cfg.model.label_nc} from the labels", flush=True)
    run_dir = Path(args.out) if args.out else Path("runs") / (args.name or cfg.preset or "custom")
    saved = run_dir / "config.json"
    if saved.exists() and not args.resume:
        try:
            previous = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{saved}: cannot read this run directory's saved config ({e}); "
                              "repair or remove it, or use another --name/--out") from None
        if previous.get("model") != cfg.to_dict()["model"]:
            diff = [k for k in previous.get("model", {}) if previous["model"][k] != cfg.to_dict()["model"].get(k)]
            raise ConfigError(
                f"{saved}: this run directory was trained with a different model config "
                f"({', '.join('model.' + k for k in diff)}); use another --name/--out"
            )
    result = train(cfg, run_dir, device=args.device, progress=not args.no_progress, resume_from=args.resume)
    if result.interrupted:
        return 130
    if result.is_main:
        print(f"ccfpse train: finished at step {result.step}; checkpoint {result.last_checkpoint}; "
              f"gallery {run_dir / 'gallery' / 'index.html'}; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0

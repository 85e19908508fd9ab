"""``ccfpse`` command line: train | synthesize | evaluate | data | convert | train-segmenter.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``, which
adds its parser and sets ``func``; this file only wires them together and turns user errors
into one clear line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with a ``register(subparsers)`` function, in help order.
COMMANDS = (
    "ccfpse.train.cli",
    "ccfpse.synthesize",
    "ccfpse.evaluate",
    "ccfpse.train_segmenter",
    "ccfpse.data.cli",
    "ccfpse.compat",
)


def build_parser() -> argparse.ArgumentParser:
    from ccfpse import __version__

    parser = argparse.ArgumentParser(
        prog="ccfpse",
        description="CC-FPSE semantic image synthesis: train, synthesize, evaluate, convert.",
    )
    parser.add_argument("--version", action="version", version=f"ccfpse {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ccfpse.errors import CCFPSEError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CCFPSEError as e:
        print(f"ccfpse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ccfpse {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

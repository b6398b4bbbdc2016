"""``napari-textdiff`` console script.

Each command group lives in its own module exposing ``register(subparsers)``; modules import
torch and the models only inside their handlers so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules under napari_textdiff.cli that contribute commands (missing ones are skipped so a
# partial install still gives a working --help)
COMMAND_MODULES = ["evaluate", "info", "textdiff", "segment", "finetune", "calibrate", "mgcc",
                   "diffusion", "benchmark", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from napari_textdiff import __version__

    p = argparse.ArgumentParser(
        prog="napari-textdiff",
        description="Text-guided, label-efficient segmentation of medical images "
                    "(TextDiff + MGCC). Models, training and evaluation without napari.")
    p.add_argument("--version", action="version", version=f"napari-textdiff {__version__}")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=None,
                   help="GPU precision: auto (bf16 on compute capability >= 8.0, fp16 with loss "
                        "scaling on 7.x, else fp32) or forced; also NAPARI_TEXTDIFF_PRECISION")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"napari_textdiff.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"napari_textdiff.cli.{name}":
                continue
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "precision", None):
        from napari_textdiff.core.device import set_precision
        set_precision(args.precision)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        # clear one-line message for user errors; tracebacks with NAPARI_TEXTDIFF_DEBUG=1
        import os
        if os.environ.get("NAPARI_TEXTDIFF_DEBUG"):
            raise
        print(f"napari-textdiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

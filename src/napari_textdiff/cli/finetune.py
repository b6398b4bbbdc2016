"""``napari-textdiff finetune MODEL DATA --out NEW``: continue a model on corrected masks.

DATA is any dataset layout the project reads (``core.datasets.discover``), including a folder
of images beside their corrected ``NAME_mask`` / ``NAME_labels`` files (what ``segment`` and
napari's "Save labels…" write, descriptions from the labels' sidecars). The model's own
``finetune()`` runs with the library's defaults (``core.finetune_defaults``, the numbers the
Fine-tune panel shows) unless ``--epochs`` / ``--lr`` say otherwise. ``--out`` is checked
before any work (a ``.safetensors`` name, none of the training images or masks) and written
atomically; Ctrl-C saves the model as far as it got, to ``--out``, or beside it as
``NAME.interrupted.safetensors`` when ``--out`` is MODEL itself (the original stays whole).
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("finetune", help="continue a model (any kind) on corrected masks")
    p.add_argument("model", help="model file to start from (.safetensors)")
    p.add_argument("data", help="images with corrected masks: any supported dataset layout, "
                                "or images beside NAME_mask / NAME_labels files")
    p.add_argument("--out", required=True,
                   help="model file to write (.safetensors; may be MODEL itself: Ctrl-C then "
                        "leaves MODEL whole and saves NAME.interrupted.safetensors beside it)")
    p.add_argument("--split", default=None, help="dataset split where the layout has splits")
    p.add_argument("--names", default=None, help="comma-separated image names to use "
                                                 "(default: every image with a mask)")
    p.add_argument("--describe-classes", action="store_true",
                   help="describe BUSI images by their class sentence (as `textdiff fit`)")
    p.add_argument("--epochs", type=int, default=None,
                   help="default: the library's fine-tune default for the model's kind")
    p.add_argument("--lr", type=float, default=None, help="default: as --epochs")
    p.add_argument("--part", default=None,
                   choices=("output", "norm", "auto", "head", "decoder", "all"),
                   help="MGCC only: the weights to train (default output: the 1x1 output layer). "
                        "norm: every BatchNorm scale and shift + the output layer, for images "
                        "from another scanner or setting, with its own defaults (Adam 2e-3 x 20 "
                        "epochs; BUSI under a contrast change: +10.0 Dice from 10 cases, but "
                        "-4.5 on images like the training ones). auto (experimental): norm when "
                        "the images' BatchNorm statistics differ from the training ones, else "
                        "output")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    from napari_textdiff.cli._common import add_model_location_args

    add_model_location_args(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from napari_textdiff.cli._common import (load_model, output_file, run_keeping_work,
                                             writable_file)
    from napari_textdiff.core.bundle import same_file
    from napari_textdiff.core.datasets import labelled_samples
    from napari_textdiff.core.finetune_defaults import MGCC_PART_DEFAULTS, finetune_defaults

    given = {k: getattr(args, k) for k in ("epochs", "lr") if getattr(args, k) is not None}
    bad = [f"--{k} {v}" for k, v in given.items() if not v > 0]
    if args.part is not None:
        given["train"] = args.part
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be > 0")
    # before any work: a bad --out must not cost a run
    out = Path(output_file(args.out, "--out", (".safetensors",), allowed=[args.model]))
    samples = labelled_samples(args.data, args.split, args.describe_classes)
    output_file(out, "--out", (".safetensors",), allowed=[args.model],
                inputs=[f for s in samples for f in (s.image_path, *s.mask_paths)])
    original = None
    if same_file(out, args.model):         # Ctrl-C must not replace the model with half a run
        original = out
        out_on_stop = Path(writable_file(out.with_name(f"{out.stem}.interrupted{out.suffix}")))
    else:
        out_on_stop = out
    if args.names:
        wanted = [n.strip() for n in args.names.split(",") if n.strip()]
        missing = sorted(set(wanted) - {s.name for s in samples})
        if missing:
            raise ValueError(f"no image with a mask named {', '.join(missing)} in {args.data}")
        samples = [s for s in samples if s.name in wanted]
    if not samples:
        raise ValueError(f"{args.data}: no images with a mask")
    model = load_model(args)
    if args.part is not None and model.kind != "mgcc":
        raise ValueError(f"--part applies to MGCC models; {args.model} is a {model.kind} model")
    if getattr(model, "uses_text", False):
        bare = [s.name for s in samples if not s.text]
        if bare:
            print(f"warning: {len(bare)} image(s) have no description ({', '.join(bare[:3])}"
                  f"{' ...' if len(bare) > 3 else ''}); this model reads the text",
                  file=sys.stderr)
    examples = [s.load(channels=model.channels) for s in samples]
    part = (args.part if args.part in MGCC_PART_DEFAULTS or args.part == "auto"
            else None)                     # those with own defaults (auto: the chosen part's)
    settings = {**finetune_defaults(model.kind, part), **given}
    print(f"fine-tuning {args.model} ({model.kind}) on {len(examples)} image(s): "
          f"{', '.join(f'{k} {v}' for k, v in settings.items())}", file=sys.stderr)
    log = model.meta.setdefault("finetunes", [])
    before = len(log)
    record = {"images": [s.name for s in samples], "data": str(args.data), **settings}
    log.append(record)                     # in the file an interrupted run saves
    hist = run_keeping_work(model, model.finetune(examples, **given), out_on_stop, record,
                            "the model as far as it got", original=original)
    log[:] = [e for e in log if e is not record]
    if len(log) > before:                  # the job logged itself: add what the CLI knows
        log[-1].update(record)
    else:
        log.append(record)
    model.save(out)
    losses = hist if isinstance(hist, list) else (hist or {}).get("loss", [])
    print(json.dumps({"model": str(out), "kind": model.kind, "images": len(examples),
                      "settings": settings, "final_loss": losses[-1] if losses else None},
                     indent=2))
    return 0

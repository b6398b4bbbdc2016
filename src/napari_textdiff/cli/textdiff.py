"""``napari-textdiff textdiff fit DATA --shots K --out BUNDLE``: train a TextDiff head.

torch/diffusers/transformers are imported inside the handler only (``--help`` stays instant).
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from napari_textdiff.core.textdiff.config import PRESETS   # torch-free

    p = sub.add_parser("textdiff", help="TextDiff: fit a text-guided diffusion-feature head")
    tsub = p.add_subparsers(dest="textdiff_command", metavar="ACTION")
    f = tsub.add_parser("fit", help="fit a TextDiff head on K labelled images of a dataset")
    f.add_argument("data", help="dataset folder (MoNuSeg/LViT, BUSI, chest X-ray or "
                                "images/+masks/[+descriptions.csv])")
    f.add_argument("--out", required=True, help="model file to write (.safetensors)")
    f.add_argument("--shots", type=int, default=None,
                   help="number of labelled training images drawn (seeded); default: all")
    f.add_argument("--seed", type=int, default=0, help="seed for the draw, head init, order")
    f.add_argument("--split", default=None,
                   help="dataset split to draw from where the layout has splits (e.g. train)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--val", default=None, help="validation dataset folder (early stopping)")
    g.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of the drawn images for early stopping")
    f.add_argument("--val-split", default=None, help="split of --val (e.g. val)")
    f.add_argument("--describe-classes", action="store_true",
                   help="BUSI has no text: describe each image by its class folder "
                        "(core.datasets.BUSI_DESCRIPTIONS)")
    b = f.add_mutually_exclusive_group()
    b.add_argument("--backbone", default=None,
                   help="diffusion backbone: UNet2DModel.save_pretrained directory (or hub id); "
                        "default: the bundled one")
    b.add_argument("--random-backbone", default=None, metavar="PRESET",
                   help="baseline: a randomly initialised backbone of this preset, saved next "
                        "to the model as OUT.backbone/")
    f.add_argument("--preset", default="cpu", choices=list(PRESETS),
                   help="head preset (cpu: 64-d head; light: 84 k-parameter head trained on "
                        "crops, converges in CPU-minutes; paper: 768-d, ~10 M params; "
                        "histology / xray: the light head with the bundled model's geometry "
                        "and stain handling)")
    f.add_argument("--text-encoder", default=None,
                   help="BERT-family directory or hub id (default: offline all-MiniLM-L6-v2)")
    f.add_argument("--text-mode", choices=["cross_attention", "none", "concat"], default=None)
    f.add_argument("--max-length", type=int, default=None, help="text tokens kept (default 64)")
    f.add_argument("--taps", default=None,
                   help="comma-separated decoder taps, e.g. up_blocks.1.resnets.2 or block:6")
    f.add_argument("--steps", default=None, help="comma-separated noise steps (default 50,150,250)")
    f.add_argument("--resize-to", type=int, default=None,
                   help="paper protocol: resize whole images to N x N")
    f.add_argument("--scale", type=float, default=None,
                   help="rescale images by this factor before tiling (default 1)")
    f.add_argument("--working-size", type=int, default=None, help="tile side (default 256)")
    f.add_argument("--epochs", type=int, default=None)
    f.add_argument("--lr", type=float, default=None)
    f.add_argument("--batch-size", type=int, default=None)
    f.add_argument("--max-tiles-per-image", type=int, default=None,
                   help="cap the training tiles per image (foreground tiles first)")
    f.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    f.add_argument("--calibrate", action="store_true",
                   help="after training, pick the probability threshold on the validation "
                        "images (as `napari-textdiff calibrate`) and store it in the model")
    f.set_defaults(func=_fit)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _fit(args) -> int:
    from pathlib import Path

    from napari_textdiff.cli._common import run_keeping_work, writable_file
    from napari_textdiff.core.datasets import kshot, labelled_samples
    from napari_textdiff.core.progress import print_progress, run
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel

    if args.calibrate and not (args.val or args.val_fraction > 0):
        raise ValueError("--calibrate picks the threshold on validation images: give --val or "
                         "--val-fraction")
    writable_file(args.out)          # before any work: a bad --out must not cost a training
    samples = labelled_samples(args.data, args.split, args.describe_classes)
    if not samples:
        raise ValueError(f"{args.data}: no labelled images")
    if args.shots:
        samples = kshot(samples, args.shots, seed=args.seed)
    over = {"seed": args.seed}
    for k in ("text_mode", "max_length", "resize_to", "scale", "working_size", "epochs", "lr",
              "batch_size"):
        v = getattr(args, k)
        if v is not None:
            over[k] = v
    if args.taps:
        over["taps"] = [t.strip() for t in args.taps.split(",") if t.strip()]
    if args.steps:
        over["steps"] = [int(s) for s in args.steps.split(",")]
    config = TextDiffConfig.preset(args.preset, **over)
    out = Path(args.out)
    backbone = args.backbone
    if args.random_backbone:
        from napari_textdiff.core.textdiff.features import random_backbone

        backbone = out.with_name(out.stem + ".backbone")
        random_backbone(args.random_backbone, in_channels=3, seed=args.seed) \
            .save_pretrained(backbone)
        print(f"random {args.random_backbone} backbone saved to {backbone}", file=sys.stderr)
    if backbone is None and config.features != "classic":
        from napari_textdiff.core.defaults import default_backbone_dir

        backbone = default_backbone_dir()
        if backbone is None:
            raise ValueError("no --backbone given and no bundled backbone found: give "
                             "--backbone FOLDER (a UNet2DModel.save_pretrained directory)")
        print(f"no --backbone: using the bundled backbone {backbone}", file=sys.stderr)
    model = TextDiffModel.create(config, backbone=backbone, text_encoder=args.text_encoder,
                                 device=args.device)
    train = [s.load(channels=model.channels) for s in samples]
    val = None
    if args.val:
        val = [s.load(channels=model.channels)
               for s in labelled_samples(args.val, args.val_split, args.describe_classes)]
    print(f"fitting on {len(train)} images ({', '.join(s.name for s in samples)}); head "
          f"{model.num_parameters:,} params, taps {model.features.taps}", file=sys.stderr)
    record = model.meta.setdefault("training", {})    # what an interrupted fit saves
    record["images"] = [s.name for s in samples]
    validated = bool(val) or args.val_fraction > 0
    hist = run_keeping_work(
        model, model.fit(train, val, val_fraction=args.val_fraction,
                         max_tiles_per_image=args.max_tiles_per_image), out, record,
        "the best validated head (the latest before the first validation)" if validated
        else "the latest head")
    model.meta["training"]["images"] = [s.name for s in samples]
    model.save(out)               # the trained head is kept whatever calibration does
    tuning = None
    if args.calibrate:
        from napari_textdiff.core.calibration import tune_threshold

        val_examples = val if val else [train[i] for i in hist.get("val_index") or []]
        if not val_examples:
            print("warning: --calibrate skipped: training used no validation images (too few "
                  "training images to split off any?); the threshold stays "
                  f"{model.config.threshold}", file=sys.stderr)
        else:
            tuning = run(tune_threshold(model, val_examples), callback=print_progress(every=2.0))
            model.save(out)
    summary = {k: hist.get(k) for k in ("epochs_run", "best_epoch", "best_val_dice", "tiles",
                                         "feature_seconds", "seconds")}
    if tuning is not None:
        summary["threshold"] = tuning["threshold"]
    summary["final_loss"] = hist["loss"][-1] if hist["loss"] else None
    print(json.dumps({"model": str(out), **summary}, indent=2))
    return 0

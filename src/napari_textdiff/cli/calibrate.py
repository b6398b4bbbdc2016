"""``napari-textdiff calibrate DATA --model M``: pick the model's probability threshold on
labelled validation images (best mean per-image Dice over a grid) and save it in the model.

Use images the model was not trained on: its own validation split (``--names``) or a held-out
folder (``--split``). The weights are not touched; the choice and its Dice curve go into the
model's header (``napari-textdiff info``).
"""
from __future__ import annotations

import json
import sys

from napari_textdiff.cli._common import add_model_location_args


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="pick a model's probability threshold on validation "
                                         "images and store it in the model")
    p.add_argument("data", help="dataset folder with masks (any supported layout)")
    p.add_argument("--model", required=True, help="model file (.safetensors)")
    p.add_argument("--split", default=None, help="MoNuSeg split (train/val/test)")
    p.add_argument("--names", default=None,
                   help="comma-separated image names to use (default: the validation images "
                        "the model recorded at training, else every labelled image)")
    p.add_argument("--describe-classes", action="store_true",
                   help="describe BUSI images by their class sentence (as `textdiff fit`)")
    p.add_argument("--resize", action="store_true",
                   help="predict on the whole image resized (paper protocol) instead of tiles")
    p.add_argument("--grid", default=None,
                   help="comma-separated thresholds to try (default 0.10, 0.15, ..., 0.95)")
    p.add_argument("--out", default=None, help="where to save (default: overwrite --model)")
    p.add_argument("--dry-run", action="store_true", help="report the choice, save nothing")
    add_model_location_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run)


def _select(samples, names: str | None):
    if not names:
        return samples
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    by_name = {s.name: s for s in samples}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ValueError(f"no labelled image named {', '.join(missing)} in the dataset")
    return [by_name[n] for n in wanted]


def _run(args) -> int:
    from pathlib import Path

    from napari_textdiff.cli._common import load_model, probability, writable_file
    from napari_textdiff.core.calibration import DEFAULT_GRID, tune_threshold
    from napari_textdiff.core.datasets import labelled_samples
    from napari_textdiff.core.progress import print_progress, run

    try:
        grid = DEFAULT_GRID if not args.grid else [probability(t) for t in args.grid.split(",")]
    except Exception as e:
        raise ValueError(f"--grid {args.grid}: {e}") from None
    if not args.dry_run:             # before any prediction: the choice must not be lost
        writable_file(args.out or args.model, "--out" if args.out else "--model")
    model = load_model(args)
    training = (getattr(model, "meta", None) or {}).get("training") or {}
    val_names = list(training.get("val_names") or [])
    names = args.names
    if names is None and args.split is None and val_names:
        names = ",".join(val_names)
        print(f"using the model's {len(val_names)} recorded validation image(s)", file=sys.stderr)
    samples = _select(labelled_samples(args.data, args.split, args.describe_classes), names)
    if not samples:
        raise ValueError(f"{args.data}: no labelled images")
    seen = set(training.get("images") or []) - set(val_names)
    overlap = [s.name for s in samples if s.name in seen]
    if overlap:
        print(f"warning: {len(overlap)} of these images trained the model "
              f"({', '.join(overlap[:3])}{' ...' if len(overlap) > 3 else ''}): the threshold "
              "will suit its training data, not new images", file=sys.stderr)
    examples = [s.load(channels=model.channels) for s in samples]
    rec = run(tune_threshold(model, examples, grid, tiled=not args.resize,
                             apply=not args.dry_run), callback=print_progress(every=2.0))
    out = None
    if not args.dry_run:
        out = Path(args.out or args.model)
        try:
            model.save(out)
        except OSError as e:         # still say what was found
            raise OSError(f"{e}; the threshold picked was {rec['threshold']} (store it with "
                          f"`napari-textdiff calibrate ... --grid {rec['threshold']}`)") from e
    print(json.dumps({"model": str(out) if out else None, **{
        k: rec[k] for k in ("threshold", "previous", "dice", "dice_at_previous", "n_images")},
        "dice_by_threshold": {f"{t:g}": round(d, 4) for t, d in
                              zip(rec["grid"], rec["dice_by_threshold"])}}, indent=2))
    return 0

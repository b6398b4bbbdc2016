"""``napari-textdiff evaluate PRED GT``: score a folder of predicted masks against a dataset.

Predictions are matched to ground-truth images by stem (``NAME.png``, ``NAME.tif``, also
``NAME_pred``/``NAME_mask``/``NAME_prediction``); per-image Dice, IoU, precision, recall, F1
(and AJI with ``--aji``) use the papers' conventions (:mod:`napari_textdiff.core.metrics`).
No torch is imported.
"""
from __future__ import annotations

import csv
import io as io_
import json
import sys
from pathlib import Path

from napari_textdiff.cli._common import finite, json_safe

PRED_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
PRED_TAILS = ("", "_pred", "_prediction", "_mask", "_seg")


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score predicted masks against ground truth (Dice, IoU, ...)",
        description="Compare a folder of predicted masks (.tif/.tiff/.png, matched by image "
                    "stem) with a dataset folder (MoNuSeg/LViT, BUSI, chest X-ray, images/+"
                    "masks/) or a plain folder of ground-truth masks. Prints a per-image table "
                    "and the mean ± std over images.")
    p.add_argument("pred", help="folder of predicted masks (binary, labels or probabilities)")
    p.add_argument("gt", help="dataset folder or folder of ground-truth masks")
    p.add_argument("--layout", default="auto",
                   choices=["auto", "monuseg", "busi", "xray", "folder", "masks"],
                   help="ground-truth layout (default: detect)")
    p.add_argument("--split", default=None, help="MoNuSeg split (train/val/test)")
    p.add_argument("--target", default="lesion",
                   help="X-ray target: lesion, lungs or a template name (default lesion)")
    p.add_argument("--threshold", type=finite, default=None,
                   help="foreground = prediction > THRESHOLD (default: nonzero for integer "
                        "masks, > 0.5 for probability maps in [0, 1])")
    p.add_argument("--aji", action="store_true",
                   help="also compute the Aggregated Jaccard Index (binary masks are split "
                        "into objects by watershed)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip ground-truth images without a prediction instead of failing")
    p.add_argument("--csv", type=Path, default=None, help="write per-image scores to a CSV")
    p.add_argument("--json", type=Path, default=None, help="write scores and means to JSON")
    p.add_argument("--quiet", action="store_true", help="print only the means")
    p.set_defaults(func=_run)


def _pred_index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {folder}")
    index: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in PRED_SUFFIXES and not f.name.startswith("."):
            if f.stem in index:
                raise ValueError(f"{folder}: two predictions for {f.stem!r}: "
                                 f"{index[f.stem].name} and {f.name}")
            index[f.stem] = f
    if not index:
        raise ValueError(f"{folder}: no predicted masks (.tif/.tiff/.png) found")
    return index


def _gt_items(gt: Path, layout: str, split, target) -> list[tuple[str, object]]:
    """(name, loader) pairs; the loader returns the binary ground truth."""
    from napari_textdiff.core import datasets, io

    def masks_folder() -> list:
        files = [f for f in sorted(gt.iterdir()) if io.is_image_file(f)]
        if not files:
            raise ValueError(f"{gt}: no ground-truth masks found")
        return [(f.stem[:-5] if f.stem.endswith("_mask") else f.stem,
                 (lambda f=f: io.read_mask(f))) for f in files]

    if not gt.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt}")
    if layout == "masks":
        return masks_folder()
    try:
        samples = datasets.discover(gt, layout=layout, split=split, target=target)
    except ValueError:
        if layout == "auto" and any(io.is_image_file(f) for f in gt.iterdir()):
            return masks_folder()
        raise
    labeled = [s for s in samples if s.has_mask]
    if not labeled:
        raise ValueError(f"{gt}: the dataset holds no ground-truth masks")
    return [(s.name, s.load_mask) for s in labeled]


def _find_pred(index: dict[str, Path], name: str) -> Path | None:
    for tail in PRED_TAILS:
        if name + tail in index:
            return index[name + tail]
    return None


def evaluate_folders(pred: Path, gt: Path, layout: str = "auto", split=None, target="lesion",
                     threshold=None, with_aji: bool = False, allow_missing: bool = False,
                     ) -> tuple[list[dict], dict, list[str]]:
    """(per-image rows, means, names without prediction) — the CLI's work, reusable."""
    from napari_textdiff.core import io, metrics
    from napari_textdiff.core.instances import binary_to_instances

    index = _pred_index(Path(pred))
    items = _gt_items(Path(gt), layout, split, target)
    missing = [n for n, _ in items if _find_pred(index, n) is None]
    if missing and (not allow_missing or len(missing) == len(items)):
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5
                                          else "")
        raise ValueError(f"no prediction in {pred} for {len(missing)} of {len(items)} "
                         f"ground-truth images: {shown}"
                         + ("" if len(missing) == len(items) else
                            " (use --allow-missing to score the others)"))
    rows = []
    for name, load_gt in items:
        pf = _find_pred(index, name)
        if pf is None:
            continue
        g = load_gt()
        p = io.read_mask(pf, threshold=threshold)
        if p.shape != g.shape:
            raise ValueError(f"prediction {pf.name} is {p.shape[0]}x{p.shape[1]} but the ground "
                             f"truth of {name} is {g.shape[0]}x{g.shape[1]} (H x W)")
        row = {"name": name, **metrics.binary_metrics(p, g)}
        if with_aji:
            # labels are kept as they are; binary masks and probability maps (thresholded
            # above into ``p``) are split into objects
            raw = io.read_image(pf)
            labels = threshold is None and raw.dtype.kind in "biu"
            pl = io.read_mask(pf, instances=True) if labels else None
            if pl is None or pl.max() <= 1:
                pl = binary_to_instances(p)
            row["aji"] = metrics.aji(pl, binary_to_instances(g))
        rows.append(row)
    return rows, metrics.mean_metrics(rows), missing


def _input_files(pred, gt) -> list[Path]:
    """Every file of the prediction folder and the ground-truth folder tree (images, masks and
    the dataset's own tables such as ``descriptions.csv``): outputs must not overwrite them."""
    files = []
    for root, deep in ((Path(pred), False), (Path(gt), True)):
        if root.is_dir():
            files += [f for f in (root.rglob("*") if deep else root.iterdir()) if f.is_file()]
    return files


def _csv_bytes(rows, means, keys) -> bytes:
    buf = io_.StringIO()
    w = csv.writer(buf)
    w.writerow(["name"] + keys)
    for r in rows:
        w.writerow([r["name"]] + [f"{r[k]:.6f}" for k in keys])
    w.writerow(["mean"] + [f"{means[k]:.6f}" for k in keys])
    w.writerow(["std"] + [f"{means[k + '_std']:.6f}" for k in keys])
    return buf.getvalue().encode()


def _run(args) -> int:
    from napari_textdiff.cli._common import output_file
    from napari_textdiff.core.bundle import atomic_write_bytes

    inputs = _input_files(args.pred, args.gt) if args.csv or args.json else []
    for opt, path, suffix in (("--csv", args.csv, ".csv"), ("--json", args.json, ".json")):
        if path is not None:           # before any scoring: a bad path fails at once
            output_file(path, opt, (suffix,), inputs=inputs)
    rows, means, missing = evaluate_folders(
        args.pred, args.gt, layout=args.layout, split=args.split, target=args.target,
        threshold=args.threshold, with_aji=args.aji, allow_missing=args.allow_missing)
    keys = [k for k in ("dice", "iou", "precision", "recall", "f1", "aji") if k in means]
    width = max([len(r["name"]) for r in rows] + [4])
    if not args.quiet:
        print(f"{'name':<{width}}  " + "  ".join(f"{k:>9}" for k in keys))
        for r in rows:
            print(f"{r['name']:<{width}}  " + "  ".join(f"{r[k]:9.4f}" for k in keys))
        print()
    print(f"mean over {means['n']} images: " + "  ".join(
        f"{k} {means[k]:.4f} ± {means[k + '_std']:.4f}" for k in keys))
    if missing:
        print(f"skipped {len(missing)} images without a prediction", file=sys.stderr)
    # atomic: a full disk or a kill leaves the previous file whole, never a row cut in half
    if args.csv:
        atomic_write_bytes(args.csv, _csv_bytes(rows, means, keys))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(json_safe(
            {"pred": str(args.pred), "gt": str(args.gt), "per_image": rows, "mean": means,
             "missing": missing}), indent=2, allow_nan=False).encode())
    return 0

"""``napari-textdiff segment IMAGE... --model BUNDLE --out DIR``: masks for any model kind.

The model is loaded with ``core.models.load_model`` (TextDiff, MGCC, ...); a description is
passed only to models that use text. Writes ``DIR/STEM_mask.tif`` (or .png) and prints one line
of timings per image plus a JSON summary. Inputs whose stems clash get names from their paths
(``_common.output_stems``), so no input's result overwrites another's; the output folder is
checked before the model is loaded.

``--modality`` uses the bundled model of that modality (its stored threshold, scale and
instance splitting); folders are expanded to their images. Slides (pyramidal TIFF, SVS,
NDPI, OME-TIFF) and ``--region X,Y,W,H`` go through the streamed whole-slide path
(``core.wsi``): mask at level 0 (a tiled pyramidal TIFF when large), ``--geojson`` for QuPath.
"""
from __future__ import annotations

import argparse
import json
import sys

from napari_textdiff.cli._common import add_model_location_args, probability


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment images with a model file (any model kind)")
    p.add_argument("images", nargs="+", help="image files, folders of images, or slides")
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="model file (.safetensors)")
    m.add_argument("--modality", choices=["histology", "xray", "ultrasound"],
                   help="use the bundled model of this modality (its threshold, scale and "
                        "instance splitting)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--text", default=None, help="description used for every image")
    t.add_argument("--texts-from", default=None, metavar="DATASET",
                   help="take each image's description from this dataset folder (by name)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=probability, default=None,
                   help="probability threshold (default: the model's, else 0.5)")
    p.add_argument("--instances", action=argparse.BooleanOptionalAction, default=None,
                   help="write instance labels (touching objects split) instead of binary "
                        "(default: off, or the modality's setting with --modality)")
    p.add_argument("--region", default=None, metavar="X,Y,W,H",
                   help="segment only this rectangle (level-0 pixels); the mask covers it")
    p.add_argument("--geojson", nargs="?", const="", default=None, metavar="OUT.geojson",
                   help="also write the objects as QuPath GeoJSON (level-0 slide coordinates; "
                        "default OUT/STEM.geojson) — slides and --region")
    p.add_argument("--level", type=int, default=None,
                   help="slide pyramid level to read (default: closest to the model's scale)")
    p.add_argument("--block", type=int, default=2048,
                   help="slides: block side in level pixels streamed at a time (memory)")
    p.add_argument("--tissue", action="store_true",
                   help="slides: skip blocks without tissue (background glass)")
    p.add_argument("--resize", action="store_true",
                   help="resize the whole image to the model's working size (paper protocol) "
                        "instead of tiling")
    p.add_argument("--format", choices=["tif", "png"], default="tif")
    p.add_argument("--save-proba", action="store_true", help="also write the probability map")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="do not print tiles done/total while an image is predicted")
    p.add_argument("--plane", type=int, default=None,
                   help="plane (page, Z/T slice, frame) to segment in multi-plane files")
    add_model_location_args(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run)


def _texts_from(path) -> dict[str, str]:
    from pathlib import Path

    from napari_textdiff.core.datasets import discover

    out = {}
    for s in discover(path):
        out.setdefault(s.name, s.text)
        out.setdefault(Path(s.image_path).stem, s.text)
        out.setdefault(Path(s.image_path).name, s.text)
    return out


def _run(args) -> int:
    import time
    from pathlib import Path

    import numpy as np

    from napari_textdiff.cli._common import load_model, output_stems, writable_folder
    from napari_textdiff.core import io
    from napari_textdiff.core.calibration import get_threshold
    from napari_textdiff.core.prediction import binary_mask, iter_predict
    from napari_textdiff.core.progress import print_progress, run

    from napari_textdiff.cli._inputs import expand_inputs, segment_slide

    out = writable_folder(args.out)
    if args.modality:
        from napari_textdiff.core.defaults import (default_model_path, missing_model_message,
                                                   modality_defaults)

        args.model = default_model_path(args.modality)
        if args.model is None:
            raise ValueError(missing_model_message(args.modality))
        if args.instances is None:
            args.instances = modality_defaults(args.modality).split_instances
    args.instances = bool(args.instances)
    images, seen = [], set()
    for f in expand_inputs(args.images):   # the same file twice is segmented once
        key = Path(f).resolve()
        if key in seen:
            print(f"note: {f} given twice; segmented once", file=sys.stderr)
            continue
        seen.add(key)
        images.append(Path(f))
    stems = output_stems(images)
    for p, stem in zip(images, stems):
        if stem != p.stem:
            print(f"note: {p} is written as {stem}_mask.{args.format} (another input has "
                  f"the stem {p.stem!r})", file=sys.stderr)
    t0 = time.monotonic()
    model = load_model(args)
    t_load = time.monotonic() - t0
    texts = _texts_from(args.texts_from) if args.texts_from else {}
    thr = args.threshold if args.threshold is not None else get_threshold(model)
    if args.geojson and len(images) > 1:
        raise ValueError("--geojson PATH names one file: with several inputs give --geojson "
                         "alone (each input gets OUT/STEM.geojson)")
    from napari_textdiff.core.slides import is_slide

    rows = []
    for p, stem in zip(images, stems):
        text = None
        if model.uses_text:
            text = args.text if args.text is not None else \
                texts.get(p.stem, texts.get(p.name))
            if text is None:
                if args.texts_from:
                    raise ValueError(f"{p}: no description for this image in {args.texts_from}")
                text = ""
        if args.region or args.geojson is not None or is_slide(p):
            rows.append(segment_slide(p, stem, model, text, args, out, thr, args.instances))
            continue
        t1 = time.monotonic()
        # lazy: the file stays in its stored dtype (memory-mapped where it can); tiles are
        # normalised as the model reads them (core.largeimage)
        img = io.load_lazy(p, channels=model.channels, plane=args.plane)
        h, w = int(img.shape[0]), int(img.shape[1])
        t2 = time.monotonic()
        prob = run(iter_predict(model, img, text, tiled=not args.resize, name=p.name),
                   callback=print_progress(every=2.0) if args.progress else None)
        del img
        t3 = time.monotonic()
        mask = binary_mask(model, prob, thr)                 # bool: 1 byte a pixel
        if args.save_proba:
            io.write_image(out / f"{stem}_proba.tif", prob)
        del prob
        fg = np.count_nonzero(mask) / mask.size
        if args.instances:
            from napari_textdiff.core.instances import binary_to_instances
            mask = binary_to_instances(mask)
        dst = io.write_mask(out / f"{stem}_mask.{args.format}", mask)
        t4 = time.monotonic()
        row = {"image": str(p), "mask": str(dst), "height": h, "width": w,
               "foreground": float(fg), "read_s": round(t2 - t1, 3),
               "predict_s": round(t3 - t2, 3), "write_s": round(t4 - t3, 3)}
        if args.instances:
            row["instances"] = int(mask.max())
        rows.append(row)
        print(f"{p.name}: {w}x{h} predict {t3 - t2:.2f}s "
              f"-> {dst}", file=sys.stderr)
    total = sum(r["predict_s"] for r in rows)
    print(json.dumps({"model": str(args.model), "kind": model.kind, "threshold": thr,
                      **({"modality": args.modality} if args.modality else {}),
                      "load_s": round(t_load, 3), "predict_total_s": round(total, 3),
                      "predict_mean_s": round(total / max(1, len(rows)), 3),
                      "images": rows}, indent=2))
    return 0

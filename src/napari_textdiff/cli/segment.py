"""``napari-textdiff segment IMAGE... --model BUNDLE --out DIR``: masks for any model kind.

The model is loaded with ``core.models.load_model`` (TextDiff, MGCC, ...); a description is
passed only to models that use text. Writes ``DIR/STEM_mask.tif`` (or .png) and prints one line
of timings per image plus a JSON summary. Inputs whose stems clash get names from their paths
(``_common.output_stems``), so no input's result overwrites another's; the output folder is
checked before the model is loaded.

``--modality`` uses the bundled model of that modality (its stored threshold, scale and
instance splitting); folders are expanded to their images. Slides (pyramidal TIFF, SVS,
NDPI, OME-TIFF) and ``--region X,Y,W,H`` go through the streamed whole-slide path
(``core.wsi``): mask at level 0 (a tiled pyramidal TIFF when large), ``--geojson`` for QuPath
(one detection per object, classified by modality).

Every output (the folder, ``--geojson PATH``) is checked before the model is loaded. An input
that cannot be segmented (an unreadable file, no description in ``--texts-from``) does not stop
the batch: the others are written, the failures are listed at the end (stderr and the JSON
summary's ``failed``) and the exit status is 1.
"""
from __future__ import annotations

import argparse
import json
import sys

from napari_textdiff.cli._common import add_model_location_args, positive_int, probability


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
                   help="also write the objects as QuPath GeoJSON, one detection per object "
                        "(binary masks: per connected component), classified by modality "
                        "(level-0 slide coordinates; default OUT/STEM.geojson; a PATH must "
                        "end in .geojson or .json)")
    p.add_argument("--level", type=int, default=None,
                   help="slide pyramid level to read (default: closest to the model's scale)")
    p.add_argument("--block", type=positive_int, default=2048,
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


def _check_outputs(args, images) -> None:
    """``--region``, ``--geojson PATH`` and ``--plane``, before the model is loaded: a region
    that parses; one GeoJSON file for one input, named .geojson/.json, none of the inputs,
    writable; no plane of a pyramid."""
    from pathlib import Path

    from napari_textdiff.cli._common import output_file
    from napari_textdiff.core.slides import is_slide

    if args.region:
        from napari_textdiff.core.wsi import parse_region

        parse_region(args.region)        # malformed: refused before any work
    if args.geojson:
        if len(images) > 1:
            raise ValueError("--geojson PATH names one file: with several inputs give "
                             "--geojson alone (each input gets OUT/STEM.geojson)")
        inputs = [*images, args.model, *(Path(f"{p}.json") for p in images)]
        if args.texts_from and Path(args.texts_from).is_dir():
            inputs += [f for f in Path(args.texts_from).rglob("*") if f.is_file()]
        output_file(args.geojson, "--geojson", (".geojson", ".json"), inputs=inputs)
    if args.plane is not None:
        slides = [str(p) for p in images if p.is_file() and is_slide(p)]
        if slides:
            raise ValueError(f"{slides[0]} is a pyramidal slide: it has no planes to choose "
                             "(--plane is for multi-page TIFFs, Z/T stacks and DICOM frames); "
                             "drop --plane, or use --level for a pyramid level")


def _descriptions(model, images, args, texts, failed: list) -> dict:
    """Each image's description, found before any image is segmented. Images without one in
    ``--texts-from`` go to ``failed`` (all of them: refused); a text-reading model given no
    description at all is warned about."""
    if not model.uses_text:
        return {}
    if args.text is not None:
        return {p: args.text for p in images}
    if not args.texts_from:
        print(f"warning: {args.model} reads a description and none was given: every image "
              "is segmented with an empty one (give --text or --texts-from DATASET)",
              file=sys.stderr)
        return {p: "" for p in images}
    found = {p: texts.get(p.stem, texts.get(p.name)) for p in images}
    missing = [p for p, t in found.items() if t is None]
    if missing and len(missing) == len(images):
        raise ValueError(f"none of the {len(images)} images has a description in "
                         f"{args.texts_from} (matched by file name or stem, e.g. "
                         f"{images[0].name}): check --texts-from, or give --text")
    for p in missing:
        failed.append({"image": str(p), "error": f"no description for this image in "
                       f"{args.texts_from} (add one there, or segment it with --text)"})
        print(f"warning: {p}: no description in {args.texts_from}; it is skipped",
              file=sys.stderr)
    bare = [p.name for p, t in found.items() if t == ""]
    if bare:
        print(f"warning: {len(bare)} image(s) have an empty description ({', '.join(bare[:3])}"
              f"{' ...' if len(bare) > 3 else ''}); this model reads the text", file=sys.stderr)
    return {p: t for p, t in found.items() if t is not None}


def _segment_image(p, stem, model, text, args, out, thr) -> dict:
    """One plain image: lazy read, tiled (or resized) prediction, mask file. Summary row."""
    import time

    import numpy as np

    from napari_textdiff.core import io
    from napari_textdiff.core.prediction import binary_mask, iter_predict
    from napari_textdiff.core.progress import print_progress, run

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
    print(f"{p.name}: {w}x{h} predict {t3 - t2:.2f}s -> {dst}", file=sys.stderr)
    return row


def _named(path, error) -> str:
    """``error`` with the file it is about in front, once."""
    return str(error) if str(path) in str(error) else f"{path}: {error}"


def _run(args) -> int:
    import time
    from pathlib import Path

    from napari_textdiff.cli._common import load_model, output_stems, writable_folder
    from napari_textdiff.core.bundle import WriteError
    from napari_textdiff.core.calibration import get_threshold
    from napari_textdiff.core.defaults import object_class
    from napari_textdiff.core.slides import is_slide

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
    _check_outputs(args, images)
    texts = _texts_from(args.texts_from) if args.texts_from else {}
    t0 = time.monotonic()
    model = load_model(args)
    t_load = time.monotonic() - t0
    thr = args.threshold if args.threshold is not None else get_threshold(model)
    failed: list[dict] = []
    text_of = _descriptions(model, images, args, texts, failed)
    skip = {f["image"] for f in failed}
    classification = object_class(args.modality, args.model)

    rows = []
    for p, stem in zip(images, stems):
        if str(p) in skip:
            continue
        text = text_of.get(p)
        try:
            if args.region or args.geojson is not None or is_slide(p):
                rows.append(segment_slide(p, stem, model, text, args, out, thr,
                                          args.instances, classification))
            else:
                rows.append(_segment_image(p, stem, model, text, args, out, thr))
        except WriteError:
            raise                        # an output problem stops every image alike
        except (ValueError, OSError) as e:   # this input only: go on with the others
            if len(images) == 1:
                raise                    # nothing else to do: the plain one-line error
            failed.append({"image": str(p), "error": str(e)})
            print(f"failed: {_named(p, e)} (going on with the other images)", file=sys.stderr)
    order = {str(p): i for i, p in enumerate(images)}
    failed.sort(key=lambda f: order.get(f["image"], 0))
    total = sum(r["predict_s"] for r in rows)
    print(json.dumps({"model": str(args.model), "kind": model.kind, "threshold": thr,
                      **({"modality": args.modality} if args.modality else {}),
                      "load_s": round(t_load, 3), "predict_total_s": round(total, 3),
                      "predict_mean_s": round(total / max(1, len(rows)), 3),
                      "images": rows, "failed": failed}, indent=2))
    if failed:
        print(f"segment: {len(failed)} of {len(images)} image(s) failed "
              f"({len(rows)} written):", file=sys.stderr)
        for f in failed:
            print(f"  {_named(f['image'], f['error'])}", file=sys.stderr)
        return 1
    return 0

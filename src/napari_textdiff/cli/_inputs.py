"""Inputs of ``segment``: folders expanded to their images, and slides / regions segmented
through the streamed whole-slide path (``core.wsi``).

Why here: ``segment`` takes files, folders (a dataset or any folder of images, their masks,
labels and sidecars skipped) and whole slides alike; the per-image loop stays in
``segment.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["expand_inputs", "IMAGE_SUFFIXES", "segment_slide"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom", ".npy",
                  ".svs", ".ndpi", ".btf", ".scn", ".bif")
_NOT_IMAGES = ("_mask", "_labels", "_label", "_proba", "_overlay", "_gt")


def _is_image(p: Path) -> bool:
    stem = p.name.lower()
    return (p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            and not any(t in stem for t in _NOT_IMAGES))


def expand_inputs(items) -> list[Path]:
    """Files as given; a folder becomes its images (a known dataset layout's images, else
    the image files directly inside it), never masks, labels or ``.json`` sidecars."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            out.append(p)
            continue
        from napari_textdiff.core import datasets

        try:
            datasets.detect_layout(p)
            found = [Path(s.image_path) for s in datasets.discover(p)]
        except ValueError:
            found = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f)
                           and f.parent.name.lower() not in ("masks", "labels"))
        if not found:
            raise ValueError(f"{p}: no images in this folder (looked for "
                             f"{', '.join(IMAGE_SUFFIXES)}; masks and sidecars are skipped)")
        print(f"note: {p}: {len(found)} images", file=sys.stderr)
        out += found
    return out


def _open(p: Path, plane):
    """A slide for ``p``: the pyramid when it is one, else the image as a one-level slide."""
    from napari_textdiff.core import io
    from napari_textdiff.core.slides import Slide, is_slide, open_slide

    if is_slide(p):
        return open_slide(p)
    return Slide(p, [io.read_image(p, plane=plane) if plane is not None else io.read_image(p)],
                 None, "image")


def segment_slide(p: Path, stem: str, model, text, args, out: Path, thr: float,
                  instances: bool, classification: str = "Object") -> dict:
    """Segment a slide (or ``--region`` of any image) streamed; write the mask (a tiled
    pyramidal TIFF when large), and ``--geojson``: one QuPath detection per object (binary
    masks: per connected component), classified ``classification``. Returns the summary
    row."""
    import time

    from napari_textdiff.core import io
    from napari_textdiff.core.geojson import label_features, write_geojson
    from napari_textdiff.core.labelpyramid import write_label_pyramid
    from napari_textdiff.core.progress import print_progress, run
    from napari_textdiff.core.wsi import iter_segment_slide, parse_region

    t1 = time.monotonic()
    slide = _open(p, args.plane)
    region = parse_region(args.region) if args.region else None
    t2 = time.monotonic()
    res = run(iter_segment_slide(model, slide, text, region=region, level=args.level,
                                 threshold=thr, instances=instances, block=args.block,
                                 tissue=args.tissue, name=p.name),
              callback=print_progress(every=2.0) if args.progress else None)
    t3 = time.monotonic()
    try:
        x, y, w, h = res.region
        if region is not None and (w, h) != tuple(region[2:]):
            print(f"note: {p.name}: region {args.region} reaches past the slide "
                  f"({slide.shapes[0][1]}x{slide.shapes[0][0]}); segmented {x},{y},{w},{h}",
                  file=sys.stderr)
        dst = out / f"{stem}_mask.{args.format}"
        if w * h <= 4096 * 4096:
            dst = io.write_mask(dst, res.level0())
        else:                       # never one giant array: a tiled pyramid (TIFF only)
            if dst.suffix != ".tif":
                dst = dst.with_suffix(".tif")
                print(f"note: {p.name}: {w}x{h} labels are written as a tiled pyramidal "
                      f"TIFF ({dst.name}), not PNG", file=sys.stderr)
            dst = write_label_pyramid(dst, res)
        row = {"image": str(p), "mask": str(dst), "height": h, "width": w,
               "region": [x, y, w, h], "level": res.level, "mpp": res.mpp,
               "read_s": round(t2 - t1, 3), "predict_s": round(t3 - t2, 3)}
        if args.geojson is not None:
            gj = Path(args.geojson) if args.geojson else out / f"{stem}.geojson"
            lab = res.labels if instances else run(res.component_labels())
            feats = label_features(lab, origin=res.box[:2], downsample=res.downsample,
                                   mpp=res.mpp, classification=classification)
            row["geojson"] = write_geojson(gj, feats)
        row["write_s"] = round(time.monotonic() - t3, 3)
        if instances:
            row["instances"] = res.objects
    finally:
        res.close()
    print(f"{p.name}: region {x},{y},{w},{h} level {res.level} predict {t3 - t2:.2f}s "
          f"-> {dst}", file=sys.stderr)
    return row

"""napari writers: labels as TIFF/PNG with a JSON sidecar holding the description; and all
descriptions of the selected layers as one JSON or CSV file.

The sidecar (``<file name>.json``, e.g. ``cells_labels.tif.json``: one per file, so
``a.tif`` and ``a.png`` never share one) keeps the text with the annotation, so reopening the
labels file with this plugin restores the Labels layer together with its description. The
Segment panel's "Save labels…" always uses this writer (napari's own TIFF writer, which File ›
Save may pick for ``.tif``, drops the description). Labels larger than 4096² (or
multiscale, from a slide) are written as a tiled pyramidal TIFF; ``.geojson`` writes one
QuPath detection per object in level-0 slide pixels (``_slides_io``).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_labels", "write_descriptions", "write_geojson", "sidecar_path"]

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def sidecar_path(path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """Single-layer writer for Labels: the mask file plus its description sidecar."""
    from .core.bundle import atomic_write_bytes
    from .core.io import write_mask

    p = Path(path)
    if p.suffix.lower() not in LABEL_SUFFIXES:
        p = p.with_suffix(".tif")
    meta = dict(attributes.get("metadata") or {})
    big = isinstance(data, (list, tuple)) or int(data.shape[-2]) * int(data.shape[-1]) > 4096 ** 2
    if big and p.suffix.lower() != ".png":
        from ._slides_io import write_labels_pyramid

        write_labels_pyramid(p, data, attributes)
    else:
        write_mask(p, data[0] if isinstance(data, (list, tuple)) else data)
    side = {"kind": "labels", "layer": attributes.get("name", p.stem),
            "description": str(meta.get("description", "") or ""),
            "source_image": meta.get("source_image"), "modality": meta.get("modality")}
    if meta.get("mpp"):
        side["mpp"] = meta["mpp"]
    side = {k: v for k, v in side.items() if v is not None}
    sp = sidecar_path(p)
    atomic_write_bytes(sp, json.dumps(side, indent=2, ensure_ascii=False).encode())
    return [str(p), str(sp)]


def write_geojson(path: str, data, attributes: dict) -> list[str]:
    """Single-layer writer for Labels: QuPath GeoJSON (one Polygon detection per object)."""
    from ._slides_io import write_geojson_layer

    return write_geojson_layer(path, data, attributes)


def write_descriptions(path: str, layer_data: list[tuple]) -> list[str]:
    """Multi-layer writer: every layer's description (``.json`` mapping or ``.csv`` table).

    Labels layers are listed under their image (``source_image``) when they have one.
    """
    from .core.bundle import atomic_write_bytes, atomic_write_csv

    p = Path(path)
    rows = []
    for _data, attrs, kind in layer_data:
        meta = attrs.get("metadata") or {}
        rows.append({"name": attrs.get("name", ""), "kind": kind,
                     "description": str(meta.get("description", "") or ""),
                     "modality": meta.get("modality", "") or "",
                     "source_image": meta.get("source_image", "") or ""})
    if p.suffix.lower() == ".csv":
        atomic_write_csv(p, rows, ["name", "kind", "description", "modality", "source_image"])
    else:
        if p.suffix.lower() != ".json":
            p = p.with_suffix(".json")
        out = {r["name"]: {k: v for k, v in r.items() if k != "name" and v} for r in rows}
        atomic_write_bytes(p, json.dumps(out, indent=2, ensure_ascii=False).encode())
    return [str(p)]

"""napari reader/writer pieces for whole slides and QuPath GeoJSON (used by ``_reader`` and
``_writer``).

Why apart: slides are lazy multiscale layers and GeoJSON is polygons in level-0 slide
pixels, so both need the layer's scale/translate <-> slide-pixel bookkeeping kept here, in
one place: a layer's world unit is µm when its metadata has ``mpp``, else level-0 pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["is_slide", "slide_layer", "geojson_layer", "write_geojson_layer",
           "write_labels_pyramid", "labels_geometry"]

_MAX_LABEL_PIXELS = 64_000_000       # labels made from GeoJSON: coarser level beyond this


def is_slide(p: Path) -> bool:
    from .core.slides import is_slide as _is

    return _is(p)


def slide_layer(p: Path, info: dict) -> tuple:
    """A multiscale Image (or Labels, for our own label pyramids) layer; no level-0 read."""
    from .core.slides import open_slide

    slide = open_slide(p)
    data = slide.dask_levels()
    meta = {"description": str(info.get("description", "") or ""), "source_path": str(p),
            "slide": True, "mpp": slide.mpp, "level0_shape": list(slide.shapes[0]),
            "slide_kind": slide.kind}
    for key in ("modality", "source_image"):
        if info.get(key):
            meta[key] = info[key]
    kw = {"name": info.get("layer", p.stem) if info.get("kind") == "labels" else p.stem,
          "metadata": meta, "multiscale": True}
    if slide.mpp:
        kw["scale"] = (slide.mpp, slide.mpp)
        kw["units"] = ("µm", "µm")
    if info.get("kind") == "labels":
        return data, kw, "labels"
    dt = np.dtype(data[0].dtype)
    kw["rgb"] = data[0].ndim == 3 and data[0].shape[-1] in (3, 4)
    if dt.kind == "u":
        kw["contrast_limits"] = [0, 255 if dt == np.uint8 else 65535]
    return data, kw, "image"


def _sibling_slide(p: Path):
    """The slide QuPath exported from: same stem beside the GeoJSON, or None."""
    for f in sorted(p.parent.glob(p.stem + ".*")):
        if f != p and f.suffix.lower() in (".svs", ".ndpi", ".tif", ".tiff", ".btf"):
            if is_slide(f):
                from .core.slides import open_slide

                return open_slide(f)
    return None


def geojson_layer(p: Path) -> tuple:
    """QuPath GeoJSON -> a Labels layer over the polygons' bounding box, at level 0 or a
    coarser downsample when that box is large; placed (scale/translate) in the slide's
    coordinates (µm when the slide beside it gives its pixel size)."""
    from .core.geojson import features_to_labels, read_geojson

    feats = read_geojson(p)
    if not feats:
        raise ValueError(f"{p}: no polygons in this GeoJSON file")
    xs, ys = [], []
    for f in feats:
        arr = np.asarray(_flat(f["geometry"]), np.float64)
        xs += [arr[:, 0].min(), arr[:, 0].max()]
        ys += [arr[:, 1].min(), arr[:, 1].max()]
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = math.ceil(max(xs)), math.ceil(max(ys))
    d = max(1, math.ceil(math.sqrt((x1 - x0) * (y1 - y0) / _MAX_LABEL_PIXELS)))
    x0, y0 = x0 // d * d, y0 // d * d
    shape = (max(1, math.ceil((y1 - y0) / d)), max(1, math.ceil((x1 - x0) / d)))
    lab = features_to_labels(feats, shape, origin=(y0 // d, x0 // d), downsample=(d, d))
    slide = _sibling_slide(p)
    mpp = slide.mpp if slide is not None else None
    u = mpp or 1.0
    meta = {"source_path": str(p), "geojson": True, "mpp": mpp, "downsample": d,
            "origin": [y0, x0], "objects": len(feats),
            "classifications": sorted({str((f.get("properties") or {}).get(
                "classification", {}).get("name", "")) for f in feats} - {""})}
    if slide is not None:
        meta["source_image"] = slide.path.stem
    kw = {"name": f"{p.stem}_labels", "metadata": meta, "scale": (d * u, d * u),
          "translate": ((y0 + (d - 1) / 2) * u, (x0 + (d - 1) / 2) * u)}
    if mpp:
        kw["units"] = ("µm", "µm")
    return lab, kw, "labels"


def _flat(geom) -> list:
    polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    return [pt for poly in polys for ring in poly for pt in ring]


def labels_geometry(attributes: dict) -> tuple[tuple[float, float], tuple[float, float], float | None]:
    """(origin in level pixels (row, col), downsample (dy, dx), mpp) of a labels layer from
    its scale/translate: world units are µm with ``metadata["mpp"]``, else level-0 pixels."""
    meta = attributes.get("metadata") or {}
    mpp = meta.get("mpp") or None
    u = float(mpp) if mpp else 1.0
    scale = [float(v) for v in (attributes.get("scale") or (1.0, 1.0))][-2:]
    trans = [float(v) for v in (attributes.get("translate") or (0.0, 0.0))][-2:]
    ds = (scale[0] / u, scale[1] / u)
    origin = tuple((t / u - (d - 1) / 2) / d for t, d in zip(trans, ds))
    return origin, ds, mpp


def _level0_of(data):
    if isinstance(data, (list, tuple)):
        return data[0]
    return data


def write_geojson_layer(path: str, data, attributes: dict) -> list[str]:
    """napari writer: a Labels layer -> QuPath GeoJSON, one detection per object (a binary
    layer: per connected component), in level-0 slide pixels (the layer's scale/translate
    undone), classified as the layer's GeoJSON said, else by its modality."""
    from .core.defaults import object_class
    from .core.geojson import label_features, write_geojson

    origin, ds, mpp = labels_geometry(attributes)
    lab = data
    if isinstance(data, (list, tuple)):       # a pyramid: the finest level that fits
        k = next((i for i, a in enumerate(data) if a.shape[-2] * a.shape[-1]
                  <= 4 * _MAX_LABEL_PIXELS), len(data) - 1)
        lab = data[k]
        f = data[0].shape[-2] / lab.shape[-2], data[0].shape[-1] / lab.shape[-1]
        ds = (ds[0] * f[0], ds[1] * f[1])
        origin = (origin[0] / f[0], origin[1] / f[1])
    lab = np.asarray(lab)
    if lab.ndim != 2:
        raise ValueError(f"{path}: GeoJSON export needs 2-D labels, got shape {lab.shape}")
    p = Path(path)
    if p.suffix.lower() not in (".geojson", ".json"):
        p = p.with_suffix(".geojson")
    meta = attributes.get("metadata") or {}
    named = meta.get("classifications") or []
    cls = named[0] if len(named) == 1 else object_class(meta.get("modality"))
    binary = lab.size > 0 and int(lab.max()) <= 1
    return [write_geojson(p, label_features(lab, origin=origin, downsample=ds, mpp=mpp,
                                            classification=cls, components=binary))]


def write_labels_pyramid(p: Path, data, attributes: dict) -> Path:
    """Large or multiscale labels -> a tiled pyramidal label TIFF (streamed from level 0)."""
    from .core.labelpyramid import write_label_pyramid
    from .core.wsi import SlideLabels

    lab = _level0_of(data)
    if not hasattr(lab, "__getitem__") or getattr(lab, "ndim", 2) != 2:
        lab = np.asarray(lab)
    h, w = int(lab.shape[0]), int(lab.shape[1])
    meta = attributes.get("metadata") or {}
    res = SlideLabels(lab, 0, (1.0, 1.0), (0, 0, h, w), (0, 0, w, h), 0, meta.get("mpp"))
    write_label_pyramid(p, res)
    return p

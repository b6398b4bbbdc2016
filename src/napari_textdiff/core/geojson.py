"""QuPath GeoJSON: instance labels <-> one Polygon Feature per object, in level-0 pixels
(binary masks: one per connected component).

Why: most pathologists annotate in QuPath; its GeoJSON (File > Object data > Import/Export)
is the exchange format it reads without scripts. Coordinates are full-resolution pixels with
the origin at the top-left corner of the slide (QuPath's convention), so the labels' level
and region offset are applied on export and undone on import. Outlines are traced on pixel
edges' midpoints (marching squares, diagonal pixels joined), so rasterising an exported
polygon at the same level gives the same pixels back.
"""
from __future__ import annotations

import json
import uuid
from typing import Iterable, Iterator

import numpy as np

__all__ = ["label_features", "feature_collection", "write_geojson", "read_geojson",
           "features_to_labels", "GeoJSONError"]

_COLOR = [200, 50, 50]


class GeoJSONError(ValueError):
    """A GeoJSON file could not be read as QuPath objects; the message names the file."""


def _simplify(ring: np.ndarray) -> np.ndarray:
    """Drop vertices lying on a straight line between their neighbours (exact)."""
    if len(ring) < 4:
        return ring
    pts = ring[:-1]
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - prev[:, 1]) - \
        (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - prev[:, 0])
    keep = np.abs(cross) > 1e-9
    if keep.sum() < 3:
        return ring
    pts = pts[keep]
    return np.vstack([pts, pts[:1]])


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _rings(obj: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons (outer ring + holes) of a boolean crop, in crop pixel-centre (x, y)."""
    from skimage.measure import find_contours

    cs = [c[:, ::-1] for c in find_contours(np.pad(obj, 1).astype(np.float32), 0.5,
                                            fully_connected="high") if len(c) >= 4]
    cs = [c - 1.0 for c in cs]                      # undo the padding
    if not cs:
        return []
    areas = [_area(c) for c in cs]
    big = int(np.argmax(np.abs(areas)))
    sign = np.sign(areas[big])
    outers = [c for c, a in zip(cs, areas) if np.sign(a) == sign]
    holes = [c for c, a in zip(cs, areas) if np.sign(a) != sign]
    polys = [[o] for o in outers]
    if holes:
        from matplotlib.path import Path as MPath

        for hole in holes:
            for poly in polys:
                if MPath(poly[0]).contains_point(hole[0]) or len(polys) == 1:
                    poly.append(hole)
                    break
    return polys


def label_features(labels, *, origin=(0, 0), downsample=(1.0, 1.0), mpp: float | None = None,
                   classification: str = "Object", object_type: str = "detection",
                   components: bool = False) -> Iterator[dict]:
    """One GeoJSON Feature per object of ``labels`` (int array, 0 = background).

    ``origin``: (row, col) of labels[0, 0] in its level's pixels; ``downsample``: (dy, dx)
    of that level vs level 0. Coordinates come out in level-0 pixels (corner origin).
    Properties are those QuPath reads: objectType, classification {name, color} (the
    modality's name for its objects: ``core.defaults.object_class``), measurements (area in px
    and, with ``mpp``, µm²). ``components``: the labels are a binary mask (its one id covers
    every object), so each 8-connected component is an object of its own; without it a
    binary mask would be one MultiPolygon, which QuPath counts as a single object.
    """
    from scipy import ndimage as ndi

    lab = labels
    if components:
        lab, _ = ndi.label(np.asarray(labels) != 0, structure=np.ones((3, 3), bool))
    dy, dx = (float(downsample[0]), float(downsample[1]))
    oy, ox = origin
    for k, sl in enumerate(ndi.find_objects(np.asarray(lab)), 1):
        if sl is None:
            continue
        crop = np.asarray(lab[sl]) == k
        polys = _rings(crop)
        if not polys:
            continue
        coords = []
        for poly in polys:
            rings = []
            for r in poly:
                x = (r[:, 0] + sl[1].start + ox + 0.5) * dx
                y = (r[:, 1] + sl[0].start + oy + 0.5) * dy
                ring = _simplify(np.round(np.stack([x, y], 1), 3))
                if _area(ring) * (1 if not rings else -1) < 0:   # outer CCW, holes CW
                    ring = ring[::-1]
                rings.append(ring.tolist())
            coords.append(rings)
        area_px = float(crop.sum()) * dy * dx
        meas = {"Area px": area_px, "Label": k}
        if mpp:
            meas["Area µm^2"] = area_px * mpp * mpp
        geom = ({"type": "Polygon", "coordinates": coords[0]} if len(coords) == 1 else
                {"type": "MultiPolygon", "coordinates": coords})
        yield {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geom,
               "properties": {"objectType": object_type, "isLocked": False,
                              "classification": {"name": classification, "color": _COLOR},
                              "measurements": meas}}


def feature_collection(features: Iterable[dict]) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path, features: Iterable[dict]) -> str:
    """Write a FeatureCollection atomically; returns the path."""
    from .bundle import atomic_write_bytes

    data = json.dumps(feature_collection(features), ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(path, data)
    return str(path)


def read_geojson(path) -> list[dict]:
    """Features of a QuPath GeoJSON file (a FeatureCollection, a Feature or a list of them).
    Raises :class:`GeoJSONError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise GeoJSONError(f"{path}: not a readable GeoJSON file ({e})") from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        feats = data.get("features") or []
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    elif isinstance(data, list):
        feats = data
    else:
        raise GeoJSONError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list "
                           "of Features (QuPath: File > Object data > Export as GeoJSON)")
    out = [f for f in feats if isinstance(f, dict) and isinstance(f.get("geometry"), dict)
           and f["geometry"].get("type") in ("Polygon", "MultiPolygon")]
    if feats and not out:
        raise GeoJSONError(f"{path}: none of the {len(feats)} features is a Polygon or "
                           "MultiPolygon (points and lines cannot become labels)")
    return out


def features_to_labels(features, shape, *, origin=(0, 0), downsample=(1.0, 1.0)) -> np.ndarray:
    """Rasterise polygons (level-0 pixels) into int32 labels of ``shape`` at a level whose
    pixel (0, 0) is level pixel ``origin`` (row, col); feature i gets id i + 1, holes stay 0
    and a later feature overwrites an earlier one where they overlap."""
    from skimage.draw import polygon as fill

    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.int32)
    dy, dx = float(downsample[0]), float(downsample[1])
    for i, f in enumerate(features, 1):
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        for poly in polys:
            for j, ring in enumerate(poly):
                r = np.asarray(ring, np.float64)
                if r.ndim != 2 or len(r) < 3:
                    continue
                rows = r[:, 1] / dy - 0.5 - origin[0]   # to pixel-centre coordinates
                cols = r[:, 0] / dx - 0.5 - origin[1]
                rr, cc = fill(rows, cols, shape=(h, w))
                out[rr, cc] = i if j == 0 else 0
    return out

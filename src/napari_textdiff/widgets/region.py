"""Segment part of a slide from the GUI: the visible field of view, a rectangle or polygon
drawn in a Shapes layer, or the whole slide (no Qt here: the Segment panel calls these).

Why apart from ``segment.py``: a slide layer is a lazy pyramid, so it cannot go through the
panel's "whole layer as one array" path; these helpers turn what the user sees or draws into
a level-0 region, run the streamed ``core.wsi`` job in the panel's worker, and place the
resulting labels over the slide (scale/translate, µm when the slide gives its pixel size).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from ..core.progress import Progress
from ._layers import STATE_KEY

__all__ = ["view_region", "shape_regions", "region_job", "RegionLabels",
           "labels_layer_kwargs", "add_region_labels", "resolve_area", "start_region_segmentation",
           "AREAS"]


def _level0_shape(layer) -> tuple[int, int]:
    d = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return int(d.shape[0]), int(d.shape[1])


def view_region(layer) -> tuple[int, int, int, int]:
    """(x, y, w, h) level-0 pixels of what the canvas shows of ``layer`` (its corner pixels,
    given at the displayed pyramid level for multiscale layers)."""
    c = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]     # (ndim excludes RGB)
    c[1] += 1                                    # napari's bottom-right corner is inclusive
    h0, w0 = _level0_shape(layer)
    if getattr(layer, "multiscale", False):
        lvl = layer.data[layer.data_level]
        c = c * np.array([h0 / lvl.shape[0], w0 / lvl.shape[1]])
    y0, x0 = max(0, int(c[0, 0])), max(0, int(c[0, 1]))
    y1, x1 = min(h0, math.ceil(c[1, 0])), min(w0, math.ceil(c[1, 1]))
    if y1 <= y0 or x1 <= x0:
        raise ValueError("the slide is not in view: pan or zoom to it first")
    return x0, y0, x1 - x0, y1 - y0


def shape_regions(shapes_layer, image_layer) -> list[tuple[tuple[int, int, int, int],
                                                          np.ndarray]]:
    """Each rectangle/polygon of ``shapes_layer`` as ((x, y, w, h), vertices (N, 2) as x, y)
    in ``image_layer``'s level-0 pixels (world coordinates converted both ways)."""
    h0, w0 = _level0_shape(image_layer)
    out = []
    for verts in shapes_layer.data:
        v = np.asarray(verts, float)
        world = np.array([shapes_layer.data_to_world(p) for p in v])
        data = np.array([image_layer.world_to_data(p) for p in world])[:, -2:]
        ys, xs = data[:, 0], data[:, 1]
        x0, y0 = max(0, int(xs.min())), max(0, int(ys.min()))
        x1, y1 = min(w0, math.ceil(xs.max())), min(h0, math.ceil(ys.max()))
        if x1 > x0 and y1 > y0:
            out.append(((x0, y0, x1 - x0, y1 - y0), np.stack([xs, ys], 1)))
    return out


@dataclasses.dataclass
class RegionLabels:
    """Labels of one region, ready for a Labels layer over the slide."""

    name: str
    labels: np.ndarray
    origin: tuple[float, float]          # level-0 (y, x) of labels[0, 0]'s corner
    downsample: tuple[float, float]
    objects: int
    mpp: float | None
    result: Any = None                   # the core SlideLabels (keeps a whole slide's memmap)


def region_job(get_model: Callable[[], Any], slide_path, name: str, text: str = "", *,
               region=None, polygon=None, threshold: float = 0.5, split: bool = False,
               should_stop: Callable[[], bool] | None = None, tissue: bool = True):
    """Progress generator: segment ``region`` (x, y, w, h level-0; None = the whole slide,
    streamed) and yield ``Progress("segment", 1, 1, payload=RegionLabels)``. ``polygon``
    (N, 2 x, y level-0) clears labels outside it. Returns the payload, or None if stopped."""
    from ..core.slides import open_slide
    from ..core.wsi import iter_segment_slide

    yield Progress("load", 0, 0, message="loading the model")
    model = get_model()
    slide = open_slide(slide_path)
    res = yield from iter_segment_slide(model, slide, text, region=region, threshold=threshold,
                                        instances=split, should_stop=should_stop, name=name,
                                        tissue=tissue and region is None)
    if res is None:
        return None
    dy, dx = res.downsample
    labels = res.labels
    if polygon is not None:
        from skimage.draw import polygon2mask

        rows = np.asarray(polygon)[:, 1] / dy - 0.5 - res.box[0]
        cols = np.asarray(polygon)[:, 0] / dx - 0.5 - res.box[1]
        inside = polygon2mask(labels.shape, np.stack([rows, cols], 1))
        labels = np.where(inside, labels, 0).astype(labels.dtype)
    out = RegionLabels(name, labels, (res.box[0] * dy, res.box[1] * dx), (dy, dx),
                       res.objects, res.mpp, res)
    yield Progress("segment", 1, 1, message=name, payload=out)
    return out


def labels_layer_kwargs(r: RegionLabels, image_layer, modality: str | None = None) -> dict:
    """scale/translate/metadata placing ``r`` exactly over ``image_layer`` (whose scale is
    µm or level-0 pixels) — the writers read the same keys back (``_slides_io``)."""
    u = np.asarray(image_layer.scale, float)[-2:]
    base = np.asarray(image_layer.translate, float)[-2:]
    dy, dx = r.downsample
    scale = (dy * u[0], dx * u[1])
    # napari puts data pixel i's centre at i*scale + translate
    translate = (base[0] + (r.origin[0] + (dy - 1) / 2) * u[0],
                 base[1] + (r.origin[1] + (dx - 1) / 2) * u[1])
    meta = {"source_image": image_layer.name, "mpp": r.mpp, "objects": r.objects,
            "description": image_layer.metadata.get("description", ""),
            STATE_KEY: "prediction"}         # a person's edits make it "corrected" (_layers)
    res = r.result
    if res is not None and getattr(res, "scale", None) is not None:
        # where the labels' pixels come from: Fine-tune reads the same pixels back
        meta.update(slide_level=int(res.level), slide_box=[int(v) for v in res.box],
                    slide_scale=float(res.scale))
    if modality:
        meta["modality"] = modality
    return {"name": f"{r.name}_labels", "scale": scale, "translate": translate,
            "metadata": meta}


def add_region_labels(viewer, image_layer, r: RegionLabels, modality: str | None = None):
    """Add (or replace the data of) ``<image>_labels`` for a region result: a prediction, so
    it is not offered as a correction and is replaced without asking until a person edits it."""
    kw = labels_layer_kwargs(r, image_layer, modality)
    name = kw.pop("name")
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = r.labels                  # no paint event: stays a prediction
        layer.scale, layer.translate = kw["scale"], kw["translate"]
        layer.metadata.update(kw["metadata"])
        return layer
    return viewer.add_labels(r.labels, name=name, **kw)


#: the largest region (level pixels) Fine-tune reads back whole: what is written as a plain mask
MAX_TRAINING_REGION = 4096 * 4096


def trainable_region(labels_layer) -> bool:
    """Region labels Fine-tune can train on: they know their slide pixels and fit in RAM."""
    box = labels_layer.metadata.get("slide_box")
    return box is not None and labels_layer.metadata.get("slide_scale") is not None and \
        (box[2] - box[0]) * (box[3] - box[1]) <= MAX_TRAINING_REGION


def region_training_pixels(image_layer, labels_layer):
    """(image, labels, scale) of a region of a slide for fine-tuning: the slide's pixels at
    the level and box the labels were predicted on, and the model's resize there (``at_scale``),
    so training sees exactly what prediction saw."""
    from ..core.slides import open_slide

    m = labels_layer.metadata
    y0, x0, y1, x1 = (int(v) for v in m["slide_box"])
    image = open_slide(image_layer.metadata["source_path"]).read(int(m["slide_level"]),
                                                                 y0, x0, y1, x1)
    labels = np.asarray(labels_layer.data)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"'{labels_layer.name}' is {labels.shape[1]}x{labels.shape[0]}, its "
                         f"slide region {image.shape[1]}x{image.shape[0]}: segment the region "
                         "again, correct it, then fine-tune")
    return image, labels.copy(), float(m["slide_scale"])


AREAS = ("view", "shapes", "slide")      # what the Segment panel offers for a slide layer


def resolve_area(viewer, layer, area: str):
    """(region, polygon) for ``area``: "view" = the field of view, "shapes" = the last shape
    of the selected (else topmost) Shapes layer, "slide" = the whole slide (None, None)."""
    if area == "slide":
        return None, None
    if area == "view":
        return view_region(layer), None
    if area != "shapes":
        raise ValueError(f"area must be one of {AREAS}, got {area!r}")
    from napari.layers import Shapes

    active = viewer.layers.selection.active
    shapes = active if isinstance(active, Shapes) else next(
        (ly for ly in reversed(list(viewer.layers)) if isinstance(ly, Shapes)), None)
    regions = shape_regions(shapes, layer) if shapes is not None else []
    if not regions:
        raise ValueError("draw a rectangle or polygon over the slide in a Shapes layer first")
    return regions[-1]


def start_region_segmentation(w, layer, area: str = "view", on_finish=None) -> bool:
    """Run :func:`region_job` from a JobWidget ``w`` (the Segment panel: its session's model,
    threshold and instance splitting, its progress bar and Stop); labels go to
    ``<layer>_labels`` placed over the slide."""
    from ._layers import description_of, find_labels
    from ._runner import may_replace

    viewer, session = w.viewer, w.session
    key = session.current_key()             # the job's model, whatever is chosen meanwhile
    modality = session.modality
    try:
        region, polygon = resolve_area(viewer, layer, area)
    except ValueError as e:
        w.status.setText(str(e))
        return False
    if not may_replace(w, find_labels(viewer, layer), "(Save labels… keeps a copy first.)"):
        w.status.setText("nothing segmented (corrected labels kept)")
        return False

    def on_event(ev):
        w.show_progress(w.progress, ev)
        if isinstance(ev.payload, RegionLabels) and layer in viewer.layers:
            add_region_labels(viewer, layer, ev.payload, modality)
            w.status.setText(f"{layer.name}: {ev.payload.objects} objects "
                             f"({session.label_of(key)})")

    def on_error(err):
        w.status.setText(f"error: {err}")

    return w.start_job(
        lambda: region_job(lambda: session.ensure_model(key), layer.metadata["source_path"],
                           layer.name,
                           description_of(layer), region=region, polygon=polygon,
                           threshold=session.threshold, split=session.split,
                           should_stop=w.should_stop),
        what="Slide segmentation", on_event=on_event, on_done=lambda _r: None,
        on_error=on_error, on_finish=on_finish)

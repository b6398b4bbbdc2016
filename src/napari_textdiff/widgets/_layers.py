"""Layer bookkeeping shared by the panels: pairing images with labels, undoable updates,
and what counts as a person's correction.

A prediction goes into a Labels layer named after its image (``"<image>_labels"``), created once
and afterwards changed only through ``Labels.data_setitem`` inside ``block_history`` so one
prediction is one Ctrl-Z step. "Corrected" means edited by a person with napari's tools
(brush, eraser, fill, polygon): those commit a history item and emit ``paint``; our own
prediction updates are made while :data:`_APPLYING` is set, and undo/redo emit no ``paint``.
After Ctrl-Z / redo a layer is "corrected" exactly when it matches none of our predictions into
it: undoing a prediction that replaced corrections brings the corrections *and* their
protection back; undoing a brush stroke, or a prediction back to an earlier one, leaves a
prediction. Ground-truth masks
opened from a dataset (``metadata["ground_truth"]``) are never a prediction target; they can
be picked for fine-tuning explicitly.
"""
from __future__ import annotations

import hashlib
import weakref

import numpy as np

__all__ = ["labels_name", "image_layers", "find_labels", "find_ground_truth", "apply_prediction",
           "was_edited", "is_ground_truth", "track_corrections", "to_model_input",
           "description_of", "set_description", "STATE_KEY"]

STATE_KEY = "textdiff_state"        # "prediction" or "corrected" (absent: not ours)
LABELS_SUFFIX = "_labels"
_APPLYING = [0]                     # > 0 while this plugin writes a prediction (GUI thread)
_WATCHED: "weakref.WeakSet" = weakref.WeakSet()   # Labels layers whose paint we follow
_PREDICTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # layer -> digests
_PREDICTIONS_KEPT = 32              # digests per layer: far more than the undo steps people use


def _digest(data) -> str:
    a = np.ascontiguousarray(np.asarray(data))
    h = hashlib.blake2b(f"{a.shape}{a.dtype}".encode(), digest_size=16)
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _after_history(layer) -> None:
    """After Ctrl-Z / redo: "corrected" unless the layer is back to one of our predictions."""
    ours = _PREDICTIONS.get(layer)
    if not ours or layer.metadata.get(STATE_KEY) is None:
        return
    layer.metadata[STATE_KEY] = "prediction" if _digest(layer.data) in ours else "corrected"


def labels_name(image_name: str) -> str:
    return f"{image_name}{LABELS_SUFFIX}"


def _is(layer, kind: str) -> bool:
    import napari.layers

    return isinstance(layer, getattr(napari.layers, kind))


def is_labels(layer) -> bool:
    return layer is not None and _is(layer, "Labels")


def is_2d_image(layer) -> bool:
    """Images the models can take: 2-D gray or 2-D RGB(A)."""
    if not _is(layer, "Image"):
        return False
    nd = layer.data.ndim
    return nd == 2 or (nd == 3 and bool(layer.rgb))


def image_layers(viewer) -> list:
    return [ly for ly in viewer.layers if is_2d_image(ly)]


def is_slide_layer(layer) -> bool:
    """An image layer opened by our reader from a slide file (a lazy pyramid): segmented by
    region (``widgets.region``), never read whole."""
    meta = getattr(layer, "metadata", None) or {}
    return bool(meta.get("slide")) and bool(meta.get("source_path"))


def plain_image_layers(viewer) -> list:
    """2-D images held whole (not slides): what "all images", Fine-tune and its
    re-segmentation work on."""
    return [ly for ly in image_layers(viewer) if not is_slide_layer(ly)]


def is_ground_truth(layer) -> bool:
    return bool(layer.metadata.get("ground_truth"))


def find_labels(viewer, image_layer):
    """The working Labels layer of ``image_layer`` (by name or ``source_image``): predictions
    and corrections, never a ground-truth layer."""
    name = labels_name(image_layer.name)
    labels = [ly for ly in viewer.layers if _is(ly, "Labels") and not is_ground_truth(ly)]
    for ly in labels:
        if ly.name == name:
            return ly
    for ly in labels:
        if ly.metadata.get("source_image") == image_layer.name:
            return ly
    return None


def find_ground_truth(viewer, image_layer) -> list:
    """Ground-truth Labels layers of ``image_layer`` (``source_image`` or "<image> ground truth")."""
    return [ly for ly in viewer.layers if _is(ly, "Labels") and is_ground_truth(ly)
            and (ly.metadata.get("source_image") == image_layer.name
                 or ly.name == f"{image_layer.name} ground truth")]


def was_edited(labels_layer) -> bool:
    """True if a person edited the layer since our last prediction into it. A layer this
    plugin never predicted into counts as the user's own work when it is not empty."""
    state = labels_layer.metadata.get(STATE_KEY)
    if state is None:
        return bool(np.asarray(labels_layer.data).any())
    return state == "corrected"


def track_corrections(viewer) -> None:
    """Mark Labels layers "corrected" when a person paints, fills or erases in them."""
    def watch(layer):
        if not _is(layer, "Labels") or layer in _WATCHED:
            return
        ref = weakref.ref(layer)

        def painted(event=None):
            ly = ref()
            if ly is not None and not _APPLYING[0]:
                ly.metadata[STATE_KEY] = "corrected"

        layer.events.paint.connect(painted)
        for name in ("undo", "redo"):          # napari's Ctrl-Z calls layer.undo()
            def replay(_orig=getattr(layer, name)):
                _orig()
                ly = ref()
                if ly is not None:
                    _after_history(ly)
            setattr(layer, name, replay)
        _WATCHED.add(layer)

    for ly in viewer.layers:
        watch(ly)
    viewer.layers.events.inserted.connect(lambda event: watch(event.value))


def description_of(layer) -> str:
    return str(layer.metadata.get("description", "") or "")


def set_description(viewer, image_layer, text: str) -> None:
    """Store the description on the image layer and copy it onto its labels layer."""
    image_layer.metadata["description"] = text
    lab = find_labels(viewer, image_layer) if viewer is not None else None
    if lab is not None:
        lab.metadata["description"] = text


def apply_prediction(viewer, image_layer, labels: np.ndarray, modality: str | None = None):
    """Put ``labels`` into the image's Labels layer: create it, or update it undoably in place.

    Returns the layer. An update touches only the pixels that change, recorded as a single
    undo step, so Ctrl-Z on the layer brings the previous labels back.
    """
    labels = np.asarray(labels)
    layer = find_labels(viewer, image_layer)
    meta = {"source_image": image_layer.name, "description": description_of(image_layer)}
    if modality:
        meta["modality"] = modality
    if layer is None or np.shape(layer.data) != labels.shape:
        if layer is not None:          # image size changed: a fresh layer, old one kept aside
            layer.name = layer.name + " (old)"
        data = labels.astype(np.int32, copy=True)
        meta[STATE_KEY] = "prediction"          # set before add: listeners see "not edited"
        layer = viewer.add_labels(data, name=labels_name(image_layer.name),
                                  metadata=dict(meta), scale=image_layer.scale[-2:],
                                  translate=image_layer.translate[-2:])
    else:
        cur = np.asarray(layer.data)
        new = labels.astype(cur.dtype, copy=False)
        idx = np.nonzero(cur != new)
        if idx[0].size:
            _APPLYING[0] += 1
            try:
                with layer.block_history():
                    layer.data_setitem(idx, new[idx])
            finally:
                _APPLYING[0] -= 1
        layer.metadata.update(meta)
    layer.metadata[STATE_KEY] = "prediction"
    ours = _PREDICTIONS.setdefault(layer, [])
    ours.append(_digest(layer.data))
    del ours[:-_PREDICTIONS_KEPT]
    return layer


def to_model_input(data: np.ndarray, channels: int) -> np.ndarray:
    """Raw image data (any dtype, gray or RGB) as float32 (H, W, channels) in [0, 1]."""
    from ..core.io import normalize_image

    return normalize_image(np.asarray(data), channels=channels)

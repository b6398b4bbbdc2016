"""Layer bookkeeping shared by the widgets: pairing images with their labels, undoable updates.

A prediction goes into a Labels layer named after its image (``"<image>_labels"``), created once
and afterwards changed only through ``Labels.data_setitem`` inside ``block_history`` so one
prediction is one Ctrl-Z step. The layer remembers a hash of what was last predicted: if its
data differ now, the user has corrected it and a new prediction must ask before overwriting.
"""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["labels_name", "image_layers", "find_labels", "apply_prediction", "was_edited",
           "layer_to_model_input", "to_model_input", "description_of", "set_description", "PRED_HASH_KEY"]

PRED_HASH_KEY = "textdiff_prediction_hash"
LABELS_SUFFIX = "_labels"


def labels_name(image_name: str) -> str:
    return f"{image_name}{LABELS_SUFFIX}"


def _is(layer, kind: str) -> bool:
    import napari.layers

    return isinstance(layer, getattr(napari.layers, kind))


def is_2d_image(layer) -> bool:
    """Images the models can take: 2-D gray or 2-D RGB(A)."""
    if not _is(layer, "Image"):
        return False
    nd = layer.data.ndim
    return nd == 2 or (nd == 3 and bool(layer.rgb))


def image_layers(viewer) -> list:
    return [ly for ly in viewer.layers if is_2d_image(ly)]


def find_labels(viewer, image_layer):
    """The Labels layer paired with ``image_layer`` (by name or by its ``source_image``)."""
    name = labels_name(image_layer.name)
    labels = [ly for ly in viewer.layers if _is(ly, "Labels")]
    for ly in labels:
        if ly.name == name:
            return ly
    for ly in labels:
        if ly.metadata.get("source_image") == image_layer.name:
            return ly
    return None


def _hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.blake2b(a.tobytes() + str(a.shape).encode(), digest_size=16).hexdigest()


def was_edited(labels_layer) -> bool:
    """True if the layer holds anything other than the last prediction (user corrections)."""
    h = labels_layer.metadata.get(PRED_HASH_KEY)
    data = np.asarray(labels_layer.data)
    if h is None:                      # never predicted into: anything non-empty is user work
        return bool(data.any())
    return _hash(data) != h


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
        meta[PRED_HASH_KEY] = _hash(data)       # set before add: listeners see "not edited"
        layer = viewer.add_labels(data, name=labels_name(image_layer.name),
                                  metadata=dict(meta), scale=image_layer.scale[-2:],
                                  translate=image_layer.translate[-2:])
    else:
        cur = np.asarray(layer.data)
        new = labels.astype(cur.dtype, copy=False)
        idx = np.nonzero(cur != new)
        if idx[0].size:
            with layer.block_history():
                layer.data_setitem(idx, new[idx])
        layer.metadata.update(meta)
    layer.metadata[PRED_HASH_KEY] = _hash(np.asarray(layer.data))
    return layer


def layer_to_model_input(layer, channels: int) -> np.ndarray:
    """Layer data as the models' input: float32 (H, W, channels) in [0, 1]."""
    return to_model_input(np.asarray(layer.data), channels)


def to_model_input(data: np.ndarray, channels: int) -> np.ndarray:
    """Raw image data (any dtype, gray or RGB) as float32 (H, W, channels) in [0, 1]."""
    from ..core.io import normalize_image

    return normalize_image(np.asarray(data), channels=channels)

"""Prediction of any model as one progress generator, and probabilities → label images.

The GUI worker, the CLI ``segment`` progress bar and the Python API drive the same generator:
one ``Progress("predict", tiles_done, tiles_total, message=image_name)`` per tile batch, Stop
honoured between tiles (and inside the diffusion backbone for TextDiff), ``None`` returned
when stopped so the caller keeps the labels it had.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .progress import Progress

__all__ = ["iter_predict", "predict_mask", "probability_to_labels", "binary_mask",
           "check_threshold"]


def check_threshold(threshold) -> float:
    """``threshold`` as a float after checking it is a probability in [0, 1]: 2, -1, NaN or
    inf would give an empty or a full mask without a word."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:                  # NaN fails both comparisons
        raise ValueError(f"threshold {threshold!r} is outside the valid range [0, 1]: give a "
                         "probability such as 0.5 (or None for the model's own)")
    return t


def iter_predict(model, image, text: str | None = None, *, tiled: bool = True, device=None,
                 should_stop: Callable[[], bool] | None = None, name: str = "",
                 stain_stats=None):
    """Progress generator of ``model``'s probability map (H, W) float32 (None if stopped).

    Models with ``iter_proba`` stream per tile; any other ``SegmentationModel`` is wrapped
    as one step. ``text`` is passed only to models that use it; ``stain_stats`` (a slide's
    colour statistics, ``core.wsi``) only to models that normalise stain.
    """
    text = text if getattr(model, "uses_text", False) else None
    if hasattr(model, "iter_proba"):
        kw = {"stain_stats": stain_stats} if stain_stats is not None else {}
        return (yield from model.iter_proba(image, text, tiled=tiled, device=device,
                                            should_stop=should_stop, name=name, **kw))
    yield Progress("predict", 0, 1, message=name)
    if should_stop is not None and should_stop():
        return None
    prob = model.predict_proba(image, text, tiled=tiled, device=device)
    yield Progress("predict", 1, 1, message=name)
    return np.asarray(prob, np.float32)


def predict_mask(model, image, text: str | None = None, *, threshold: float | None = None,
                 instances: bool = False, **kw) -> np.ndarray:
    """Any model's mask: ``model.predict_proba`` at ``threshold`` (default: the model's own).

    Returns a binary uint8 (H, W) mask, or int32 instance labels with ``instances=True``
    (touching objects separated). ``text`` reaches only models that use it; ``kw`` goes to
    ``predict_proba``. Both model kinds' ``predict_mask`` methods are this function.
    """
    from .calibration import get_threshold

    if text is not None and not isinstance(text, str):
        raise TypeError(f"predict_mask(image, text, *, threshold=...): the second argument is the "
                        f"description, got {type(text).__name__} {text!r}; pass a threshold as "
                        "threshold=...")
    thr = get_threshold(model) if threshold is None else check_threshold(threshold)
    text = text if getattr(model, "uses_text", False) else None
    prob = model.predict_proba(image, text, **kw)
    mask = binary_mask(model, prob, thr)
    mask = mask.astype(np.uint8)
    if instances:
        from .instances import binary_to_instances

        return binary_to_instances(mask)
    return mask


def binary_mask(model, prob: np.ndarray, threshold: float) -> np.ndarray:
    """The one way a probability map becomes a mask: ``prob >= threshold``, then the model's
    own post-processing (``config.fill_holes``: holes inside objects filled). Bool (H, W).
    ``threshold`` outside [0, 1] (or NaN) is refused (:func:`check_threshold`)."""
    mask = np.asarray(prob) >= check_threshold(threshold)
    if getattr(getattr(model, "config", None), "fill_holes", False) and mask.any():
        from scipy import ndimage as ndi

        mask = ndi.binary_fill_holes(mask)
    return mask


def probability_to_labels(prob: np.ndarray, threshold: float, split: bool,
                          model=None) -> np.ndarray:
    """int32 labels: {0, 1} or, with ``split``, one id per object (touching ones separated);
    ``model``'s post-processing applied (:func:`binary_mask`)."""
    mask = binary_mask(model, prob, threshold)
    if split:
        from .instances import binary_to_instances

        return np.asarray(binary_to_instances(mask), dtype=np.int32)
    return mask.astype(np.int32)

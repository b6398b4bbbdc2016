"""Pick a model's probability threshold on validation images.

Why: a head trained for a few epochs on a few masks is rarely calibrated at 0.5 (the bundled
heads over-segment: recall ~0.9, precision ~0.3-0.5). Choosing the threshold that maximises
mean per-image Dice on held-out images is cheap (one forward pass per image, no training) and
is what StarDist's ``optimize_thresholds`` does for its probability threshold. The choice is
only as good as the validation images, so the record keeps how many there were.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Generator, Sequence

import numpy as np

from .metrics import binary_metrics
from .models import Example
from .progress import Progress

__all__ = ["DEFAULT_GRID", "FEW_IMAGES", "dice_by_threshold", "pick_threshold",
           "get_threshold", "set_threshold", "tune_threshold"]

FEW_IMAGES = 5     # below this many validation images the pick is noisy (said in an event)
DEFAULT_GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.1, 0.951, 0.05), 2))


def dice_by_threshold(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      grid: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """Mean per-image Dice at each threshold of ``grid`` (foreground = prob >= threshold)."""
    if len(probs) != len(masks) or not probs:
        raise ValueError(f"need as many probability maps as masks (got {len(probs)} and "
                         f"{len(masks)}), and at least one")
    out = np.zeros(len(grid))
    for p, m in zip(probs, masks):
        p, m = np.asarray(p), np.asarray(m) > 0
        if p.shape != m.shape:
            raise ValueError(f"probability map {p.shape} and mask {m.shape} differ in shape")
        out += [binary_metrics(p >= t, m)["dice"] for t in grid]
    return out / len(probs)


def pick_threshold(scores: Sequence[float], grid: Sequence[float] = DEFAULT_GRID,
                   prefer: float = 0.5) -> float:
    """The grid threshold with the best score; ties go to the one nearest ``prefer``."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores.max()
    tied = [t for t, s in zip(grid, scores) if s >= best - 1e-12]
    return float(min(tied, key=lambda t: abs(t - prefer)))


def get_threshold(model) -> float:
    cfg = getattr(model, "config", None)
    thr = cfg.get("threshold") if isinstance(cfg, dict) else getattr(cfg, "threshold", None)
    if thr is None:
        thr = getattr(model, "threshold", None)
    return 0.5 if thr is None else float(thr)


def set_threshold(model, threshold: float) -> None:
    """Store ``threshold`` where the model's ``predict`` and ``save`` read it."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    cfg = getattr(model, "config", None)
    if cfg is not None and not isinstance(cfg, dict) and hasattr(cfg, "threshold"):
        cfg.threshold = float(threshold)            # TextDiff keeps it in its config
    else:
        model.threshold = float(threshold)          # MGCC keeps it on the model (its config
                                                    # dict is built from it when saving)


def tune_threshold(model, examples: Sequence[Example], grid: Sequence[float] = DEFAULT_GRID,
                   *, tiled: bool = True, apply: bool = True,
                   should_stop: Callable[[], bool] | None = None,
                   ) -> Generator[Progress, None, dict[str, Any] | None]:
    """Progress generator: predict each example once, score every threshold of ``grid``,
    and (``apply``) set the best one on the model and record it in ``model.meta``.

    Returns the record (``threshold``, ``previous``, ``grid``, ``dice``, ``images``), or None
    when stopped before the end, in which case the model is left unchanged. Fewer than
    ``FEW_IMAGES`` examples: the first event's message says the pick is noisy (every front
    end shows it).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("tune_threshold: no validation examples")
    grid = [float(t) for t in grid]
    if not grid or any(not 0.0 < t < 1.0 for t in grid):
        raise ValueError(f"threshold grid must be non-empty values in (0, 1), got {grid}")
    t0 = time.monotonic()
    if len(examples) < FEW_IMAGES:
        yield Progress("calibrate", step=0, total=len(examples),
                       message=f"warning: a threshold picked on {len(examples)} image(s) is a "
                               "noisy choice")
    probs = []
    for i, ex in enumerate(examples):
        if should_stop is not None and should_stop():
            return None
        text = ex.text if getattr(model, "uses_text", False) else None
        probs.append(model.predict_proba(ex.image, text, tiled=tiled))
        yield Progress("calibrate", step=i + 1, total=len(examples),
                       message=f"predicted {ex.name or i}", elapsed=time.monotonic() - t0)
    masks = [ex.mask for ex in examples]
    scores = dice_by_threshold(probs, masks, grid)
    previous = get_threshold(model)
    best = pick_threshold(scores, grid, prefer=previous)
    at_previous = float(dice_by_threshold(probs, masks, [previous])[0])
    record = {"threshold": best, "previous": previous, "dice": float(scores.max()),
              "dice_at_previous": at_previous, "grid": grid,
              "dice_by_threshold": [round(float(s), 5) for s in scores],
              "images": [ex.name for ex in examples], "n_images": len(examples),
              "tiled": bool(tiled and not getattr(getattr(model, "config", None), "resize_to",
                                                  None))}
    if apply:
        set_threshold(model, best)
        meta = getattr(model, "meta", None)
        if isinstance(meta, dict):
            meta["threshold_tuning"] = record
    return record

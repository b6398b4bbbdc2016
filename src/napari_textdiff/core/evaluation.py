"""Scoring a model on labelled images: the one per-image evaluation loop.

Why one loop: training validation (MGCC), the benchmarks and the scripts must score the same
way (``core.metrics.binary_metrics`` of each image at its own resolution, then the mean over
images), so a number in a model card and one in a benchmark table mean the same thing.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np

from .progress import Progress

__all__ = ["iter_evaluate", "evaluate"]


def iter_evaluate(examples: Sequence, probs: Iterable, threshold: float = 0.5):
    """Progress generator: per-image metrics of probability maps against the examples' masks.

    Args:
        examples: items with ``mask`` and ``name`` (``core.models.Example``).
        probs: the examples' probability maps (H, W), in the same order; a lazy iterable
            (e.g. ``(predict(ex) for ex in examples)``) predicts while scoring.
        threshold: foreground where ``prob >= threshold``.

    Yields:
        ``Progress("evaluate", i, n)`` per image (scoring whole slides takes minutes on a
        CPU, and a silent bar looks hung).

    Returns:
        One row per image: ``{"name": ..., "dice": ..., "iou": ..., ...}``.
    """
    from .metrics import binary_metrics

    rows = []
    t0 = time.monotonic()
    for i, (ex, prob) in enumerate(zip(examples, probs)):
        m = binary_metrics(np.asarray(prob) >= threshold, np.asarray(ex.mask) > 0)
        rows.append({"name": ex.name, **m})
        yield Progress("evaluate", step=i + 1, total=len(examples),
                       message=f"scored {ex.name}: dice {m['dice']:.3f}",
                       elapsed=time.monotonic() - t0)
    return rows


def evaluate(examples: Sequence, probs: Iterable, threshold: float = 0.5
             ) -> tuple[dict, list[dict]]:
    """:func:`iter_evaluate` drained: ``(mean over images, per-image rows)``."""
    from .metrics import mean_metrics
    from .progress import run

    rows = run(iter_evaluate(examples, probs, threshold))
    return mean_metrics(rows), rows

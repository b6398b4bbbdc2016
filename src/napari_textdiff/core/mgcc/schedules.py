"""Learning-rate and consistency-weight schedules that stay valid for any iteration.

The authors' poly schedule ``lr * (1 - it/max)^0.9`` overruns past ``max`` (a negative base to
a fractional power: complex learning rate, crash); here the progress is clamped to [0, 1].
Their Gaussian warm-up ``7 * exp(-5 (1 - min(it//150, 200)/200)^2)`` ramps over 30 000
iterations, so their 20 000-iteration runs stop at w ~ 4 of 7. We tie the ramp to the run
instead: by default the weight reaches ``w_max`` at 40 % of the iterations and stays there.
"""
from __future__ import annotations

import math

__all__ = ["poly_lr", "cosine_lr", "learning_rate", "gaussian_rampup", "consistency_weight",
           "authors_consistency_weight"]


def _progress(it: int, total: int) -> float:
    if total <= 0:
        return 1.0
    return min(max(float(it) / float(total), 0.0), 1.0)


def poly_lr(base_lr: float, it: int, total: int, power: float = 0.9, min_lr: float = 0.0) -> float:
    """Poly decay, clamped: ``min_lr + (base - min_lr) * (1 - p)^power``, ``p`` in [0, 1]."""
    return min_lr + (base_lr - min_lr) * (1.0 - _progress(it, total)) ** power


def cosine_lr(base_lr: float, it: int, total: int, min_lr: float = 0.0) -> float:
    """Half-cosine decay from ``base_lr`` to ``min_lr``, clamped past ``total``."""
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * _progress(it, total)))


def learning_rate(schedule: str, base_lr: float, it: int, total: int, **kw) -> float:
    if schedule == "poly":
        return poly_lr(base_lr, it, total, **kw)
    if schedule == "cosine":
        return cosine_lr(base_lr, it, total, **kw)
    if schedule == "constant":
        return float(base_lr)
    raise ValueError(f"unknown lr schedule {schedule!r}: use poly, cosine or constant")


def gaussian_rampup(it: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(it / length, 0, 1)``; 1.0 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    t = min(max(float(it) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_weight(it: int, w_max: float = 7.0, rampup_iters: float = 0.0) -> float:
    """Our consistency weight: ``w_max * gaussian_rampup(it, rampup_iters)``."""
    return w_max * gaussian_rampup(it, rampup_iters)


def authors_consistency_weight(it: int, w_max: float = 7.0) -> float:
    """The published code's weight, for comparison: ramps in steps of 150 over 30 000 its."""
    return w_max * math.exp(-5.0 * (1.0 - min(it // 150, 200) / 200.0) ** 2)

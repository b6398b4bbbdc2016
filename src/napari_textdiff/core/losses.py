"""The soft-Dice loss every training loop uses (TextDiff head, MGCC decoders, baselines).

Why one definition: Dice is computed on probabilities per image, then averaged over the
batch; the loops differ only in the smoothing (MGCC's tiny 1e-5 as in the authors' code,
TextDiff's 1) and in pixels to ignore (TextDiff's padding), which are arguments here.
"""
from __future__ import annotations

__all__ = ["soft_dice_loss"]


def soft_dice_loss(prob, target, valid=None, smooth: float = 1e-5):
    """``1 - mean_i (2|p_i t_i| + s) / (|p_i| + |t_i| + s)`` over the samples ``i`` of a batch.

    Args:
        prob: probabilities (B, ...) in [0, 1] (a sigmoid or softmax already applied).
        target: the masks, broadcastable to ``prob``; any dtype (cast to ``prob``'s).
        valid: optional (B, ...) weights, 0 on pixels to ignore (padding).
        smooth: added to numerator and denominator (an empty mask scores ~1, not NaN).

    Returns:
        A scalar tensor.
    """
    p = prob.flatten(1)
    t = target.to(p.dtype).flatten(1)
    if valid is not None:
        v = valid.to(p.dtype).flatten(1)
        p, t = p * v, t * v
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1 - dice.mean()

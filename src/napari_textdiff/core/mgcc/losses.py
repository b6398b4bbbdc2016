"""MGCC's losses: supervised 0.5*BCE + soft Dice (``core.losses``) over all decoders, MSE
cross-consistency.

Dice is computed on probabilities, per image, then averaged (as in the authors' BCEDiceLoss);
with the tiny default smoothing an empty mask (BUSI normals) contributes ~1 whatever the
prediction, so false positives on normals are penalised by the BCE term.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..losses import soft_dice_loss

__all__ = ["bce_dice_loss", "supervised_loss", "consistency_loss"]


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5,
                  smooth: float = 1e-5) -> torch.Tensor:
    """``bce_weight * BCEWithLogits + soft Dice`` for one decoder's logits (B,1,H,W)."""
    target = target.to(logits.dtype)
    return (bce_weight * F.binary_cross_entropy_with_logits(logits, target)
            + soft_dice_loss(torch.sigmoid(logits), target, smooth=smooth))


def supervised_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, **kw) -> torch.Tensor:
    """Mean over decoders (main + aux) of :func:`bce_dice_loss`."""
    if not outputs:
        raise ValueError("supervised_loss needs at least one decoder output")
    return sum(bce_dice_loss(o, target, **kw) for o in outputs) / len(outputs)


def consistency_loss(main: torch.Tensor, aux: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over aux decoders of ``MSE(sigmoid(main), sigmoid(aux))``.

    Gradients flow into both the main and the auxiliary decoders (no detach, as in the authors'
    code), so the main path is also pulled towards agreement.
    """
    if not aux:
        raise ValueError("consistency_loss needs at least one auxiliary output")
    pm = torch.sigmoid(main)
    return sum(F.mse_loss(pm, torch.sigmoid(a)) for a in aux) / len(aux)

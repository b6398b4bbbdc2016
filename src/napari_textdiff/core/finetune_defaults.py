"""Each model kind's fine-tune defaults, in one torch-free place.

The library's ``finetune()`` and the Fine-tune panel use the same numbers, and the panel can
show them before any model (or torch) is loaded. They were chosen by measurement
(README, "Does fine-tuning pay?"). TextDiff: ``benchmarks/finetune_shift.py`` leaves one
MoNuSeg organ out of the shipped recipe and fine-tunes on 2 of its images; 4 epochs (100 Adam
steps at 1e-4) keep the gain where the organ is new (prostate +11.9 Dice, 20 epochs +12.3)
and halve the loss where it is not (breast/kidney/liver −0.6 on average, 20 epochs −1.8),
in 13–17 s instead of 60 (``benchmarks/finetune_variants.py``). MGCC: see
``core/mgcc/finetune.py``.
"""
from __future__ import annotations

__all__ = ["FINETUNE_DEFAULTS", "finetune_defaults"]

FINETUNE_DEFAULTS: dict[str, dict] = {
    "textdiff": {"epochs": 4, "lr": 1e-4},
    # BUSI, shipped default, 10 corrected cases -> Dice on 60 others, 3 seeds: the decoder
    # (Adam 1e-4 x 20) lost 5.1 / 2.0 / 1.5 points (also with an L2-SP anchor, and under a
    # simulated scanner change); the 1x1 output layer alone held (-0.3 / 0.0 / -0.2) in 13 s.
    "mgcc": {"epochs": 60, "lr": 0.03, "batch_size": 2, "optimizer": "adam",
             "train": "output", "augment": True},
}


def finetune_defaults(kind: str | None) -> dict:
    """The defaults of model kind ``kind`` (TextDiff's for an unknown kind)."""
    return dict(FINETUNE_DEFAULTS.get(kind or "", FINETUNE_DEFAULTS["textdiff"]))

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

__all__ = ["FINETUNE_DEFAULTS", "MGCC_PART_DEFAULTS", "finetune_defaults"]

FINETUNE_DEFAULTS: dict[str, dict] = {
    "textdiff": {"epochs": 4, "lr": 1e-4},
    # BUSI, shipped default, 10 corrected cases -> Dice on 60 others, 3 seeds: the decoder
    # (Adam 1e-4 x 20) lost 5.1 / 2.0 / 1.5 points (also with an L2-SP anchor, and under a
    # simulated scanner change); the 1x1 output layer alone held (-0.3 / 0.0 / -0.2) in 13 s.
    "mgcc": {"epochs": 60, "lr": 0.03, "batch_size": 2, "optimizer": "adam",
             "train": "output", "augment": True},
}


#: MGCC's other choice: "norm" (BatchNorm scales/shifts + output layer) for images from another
#: scanner or setting. BUSI, 10 cases -> 60 others, 3 seeds (scripts/busi_finetune.py): under a
#: contrast change (image**2) +10.0 Dice in 43 s (the output layer alone: +0.0), but -4.5 on
#: images like the training ones: so a choice the user makes, not the default.
MGCC_PART_DEFAULTS: dict[str, dict] = {
    "output": {},
    "norm": {"train": "norm", "epochs": 20, "lr": 2e-3},
}


def finetune_defaults(kind: str | None, part: str | None = None) -> dict:
    """The defaults of model kind ``kind`` (TextDiff's for an unknown kind); for MGCC,
    ``part`` ("output" or "norm") picks the weights to train and their epochs / lr, and
    "auto" leaves epochs / lr to the part the fine-tune then chooses (None here)."""
    d = dict(FINETUNE_DEFAULTS.get(kind or "", FINETUNE_DEFAULTS["textdiff"]))
    if kind == "mgcc" and part == "auto":
        d.update(train="auto", epochs=None, lr=None)
    elif kind == "mgcc" and part is not None:
        d.update(MGCC_PART_DEFAULTS[part])
    return d

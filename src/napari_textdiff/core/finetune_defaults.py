"""Each model kind's fine-tune defaults, in one torch-free place.

The library's ``finetune()`` and the Fine-tune panel use the same numbers, and the panel can
show them before any model (or torch) is loaded. They were chosen by measurement
(``napari-textdiff benchmark finetune``; README, "Fine-tuning pays"): TextDiff, bundled
histology head, 3 corrected MoNuSeg images: Dice on 11 other unseen images 63.1 → 75.0 in
68 s on the 2-core CPU; MGCC: see ``core/mgcc/finetune.py``.
"""
from __future__ import annotations

__all__ = ["FINETUNE_DEFAULTS", "finetune_defaults"]

FINETUNE_DEFAULTS: dict[str, dict] = {
    "textdiff": {"epochs": 20, "lr": 1e-4},
    "mgcc": {"epochs": 20, "lr": 1e-4, "batch_size": 2, "optimizer": "adam",
             "train": "decoder", "augment": True},
}


def finetune_defaults(kind: str | None) -> dict:
    """The defaults of model kind ``kind`` (TextDiff's for an unknown kind)."""
    return dict(FINETUNE_DEFAULTS.get(kind or "", FINETUNE_DEFAULTS["textdiff"]))

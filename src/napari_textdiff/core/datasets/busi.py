"""BUSI breast ultrasound (Kaggle layout): class folders with NAME.png and NAME_mask*.png."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .sample import Sample, child, existing_dir, images_in

__all__ = ["load_busi", "BUSI_CLASSES", "BUSI_DESCRIPTIONS", "BUSI_MASK"]

BUSI_CLASSES = ("benign", "malignant", "normal")
#: BUSI has no text; ``load_busi(describe=True)`` gives each image the sentence a sonographer
#: would type for its class folder (so a TextDiff head can be trained and guided on it)
BUSI_DESCRIPTIONS = {"benign": "Benign breast lesion.",
                     "malignant": "Malignant breast lesion.",
                     "normal": "Normal breast tissue, no lesion."}
BUSI_MASK = re.compile(r"^(?P<base>.+)_mask(?:_(?P<i>\d+))?$")


def _busi_class(folder: Path, cls: str, text: str = "") -> list[Sample]:
    files = images_in(folder)
    masks: dict[str, list[Path]] = {}
    images = []
    for f in files:
        m = BUSI_MASK.match(f.stem)
        if m:
            masks.setdefault(m.group("base"), []).append(f)
        else:
            images.append(f)
    out = []
    for ip in images:
        mps = sorted(masks.pop(ip.stem, []), key=lambda p: (len(p.stem), p.stem))
        out.append(Sample(ip.stem, ip, tuple(mps), text,
                          {"dataset": "busi", "class": cls, "n_masks": len(mps)}))
    if masks:
        orphan = sorted(masks)[:3]
        raise ValueError(f"{folder}: masks without an image: {orphan}"
                         f"{' ...' if len(masks) > 3 else ''}")
    return out


def load_busi(root, include_normal: bool = True, classes: Sequence[str] | None = None,
              describe: bool = False) -> list[Sample]:
    """BUSI (Kaggle layout): ``benign/``, ``malignant/``, ``normal/`` with NAME.png,
    NAME_mask.png and extra lesions NAME_mask_1.png... (merged by union).

    ``meta["class"]`` is the folder; normal cases have an empty mask. ``root`` may also be one
    class folder. BUSI has no descriptions: ``text`` is "" unless ``describe``, which gives
    each image its class's sentence from ``BUSI_DESCRIPTIONS``.
    """
    root = existing_dir(root, "BUSI")
    wanted = tuple(classes) if classes else BUSI_CLASSES
    if not include_normal:
        wanted = tuple(c for c in wanted if c != "normal")
    found = {c: child(root, c) for c in BUSI_CLASSES}
    found = {c: d for c, d in found.items() if d is not None and d.is_dir()}
    if not found:
        if any(BUSI_MASK.match(p.stem) for p in images_in(root)):
            cls = root.name.lower()
            text = BUSI_DESCRIPTIONS.get(cls, "") if describe else ""
            return _busi_class(root, cls, text) if (include_normal or cls != "normal") else []
        raise ValueError(f"{root}: not a BUSI folder (no benign/, malignant/, normal/ and no "
                         f"*_mask.png files)")
    out = []
    for c in wanted:
        if c in found:
            out += _busi_class(found[c], c, BUSI_DESCRIPTIONS[c] if describe else "")
    return out

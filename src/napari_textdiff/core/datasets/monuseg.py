"""MoNuSeg with LViT's descriptions: ``img/``, ``labelcol/``, ``*_text.xlsx`` per split folder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .sample import Sample, child, column, existing_dir, images_in, read_table

__all__ = ["load_monuseg", "MONUSEG_SPLITS"]

MONUSEG_SPLITS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}


def _monuseg_folder(folder: Path, split: str | None) -> list[Sample]:
    img_dir = child(folder, "img")
    if img_dir is None or not img_dir.is_dir():
        raise ValueError(f"{folder}: not an LViT/MoNuSeg folder (no img/ subfolder)")
    lab_dir = child(folder, "labelcol")
    masks = {}
    if lab_dir is not None and lab_dir.is_dir():
        masks = {p.stem: p for p in images_in(lab_dir)}
    texts: dict[str, str] = {}
    for t in sorted(list(folder.glob("*_text.xlsx")) + list(folder.glob("*_text.csv"))):
        for row in read_table(t):
            key = column(row, "Image", "image", "filename")
            if key:
                texts[Path(key).stem] = column(row, "Description", "text")
    samples = []
    for ip in images_in(img_dir):
        mp = masks.get(ip.stem)
        meta = {"dataset": "monuseg", "split": split or folder.name}
        if ip.stem not in texts:
            meta["missing_text"] = True
        samples.append(Sample(ip.stem, ip, (mp,) if mp else (), texts.get(ip.stem, ""), meta))
    return samples


def load_monuseg(folder, split: str | Sequence[str] | None = None) -> list[Sample]:
    """MoNuSeg with LViT's text: ``img/``, ``labelcol/`` and ``*_text.xlsx`` (Image|Description).

    The sheet is keyed by the mask file name (same stem as the image). ``folder`` is one split
    folder, or the parent holding ``Train_Folder``/``Val_Folder``/``Test_Folder``: then ``split``
    ("train", "val", "test", a folder name, or a list) picks some; ``None`` takes all present
    (``meta["split"]`` says which). Images without a mask in ``labelcol/`` are unlabeled samples.
    """
    folder = existing_dir(folder, "MoNuSeg")
    if child(folder, "img") is not None:
        return _monuseg_folder(folder, split if isinstance(split, str) else None)
    present = {k: child(folder, v) for k, v in MONUSEG_SPLITS.items()}
    present = {k: v for k, v in present.items() if v is not None and v.is_dir()}
    if not present:
        raise ValueError(f"{folder}: no img/ folder and none of "
                         f"{', '.join(MONUSEG_SPLITS.values())}")
    wanted = list(present) if split is None else ([split] if isinstance(split, str) else split)
    out = []
    for s in wanted:
        key = next((k for k, v in MONUSEG_SPLITS.items()
                    if s.lower() in (k, v.lower())), None)
        if key is None or key not in present:
            raise ValueError(f"{folder}: split {s!r} not found (present: {sorted(present)})")
        out += _monuseg_folder(present[key], key)
    return out

"""The generic layout: ``images/`` + ``masks/`` with the same stems, optional descriptions."""
from __future__ import annotations

import json
from pathlib import Path

from .sample import Sample, child, column, existing_dir, images_in, read_table

__all__ = ["load_folder", "IMAGE_DIRS", "MASK_DIRS"]

MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "ground_truth", "annotations")
IMAGE_DIRS = ("images", "image", "imgs", "img")


def _descriptions(root: Path) -> dict[str, str]:
    j = child(root, "descriptions.json")
    c = child(root, "descriptions.csv")
    out: dict[str, str] = {}
    if c is not None:
        for r in read_table(c):
            key = column(r, "image", "filename", "name")
            if key:
                out[Path(key).stem] = column(r, "description", "text")
    if j is not None:
        try:
            data = json.loads(j.read_text(encoding="utf-8"))
        except Exception as e:
            raise ValueError(f"{j}: invalid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{j}: expected an object {{stem: description}}")
        out.update({Path(k).stem: str(v) for k, v in data.items()})
    return out


def load_folder(root) -> list[Sample]:
    """Generic layout: ``images/`` + ``masks/`` with the same stems (``NAME_mask`` also
    accepted), descriptions from ``descriptions.csv`` (image,description) or
    ``descriptions.json`` ({stem: text}). Images without a mask are unlabeled samples."""
    root = existing_dir(root, "folder")
    img_dir = next((d for n in IMAGE_DIRS if (d := child(root, n)) and d.is_dir()), None)
    if img_dir is None:
        raise ValueError(f"{root}: no images/ subfolder")
    mask_dir = next((d for n in MASK_DIRS if (d := child(root, n)) and d.is_dir()), None)
    masks: dict[str, Path] = {}
    if mask_dir is not None:
        for mp in images_in(mask_dir):
            stem = mp.stem[:-5] if mp.stem.endswith("_mask") else mp.stem
            if stem in masks and masks[stem].suffix.lower() != mp.suffix.lower():
                raise ValueError(f"{mask_dir}: two masks for {stem!r}: {masks[stem].name}, "
                                 f"{mp.name}")
            masks[stem] = mp
    texts = _descriptions(root)
    return [Sample(ip.stem, ip, (masks[ip.stem],) if ip.stem in masks else (),
                   texts.get(ip.stem, ""), {"dataset": "folder"})
            for ip in images_in(img_dir)]

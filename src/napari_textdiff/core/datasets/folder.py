"""The generic layout: ``images/`` + ``masks/`` with the same stems, or one folder of images
beside their masks (``NAME_mask.*`` as ``segment`` writes, ``NAME_labels.*`` as napari's
"Save labels…" writes); descriptions from a table or the labels' sidecar files."""
from __future__ import annotations

import json
from pathlib import Path

from .sample import Sample, child, column, existing_dir, images_in, read_table

__all__ = ["load_folder", "mask_base", "IMAGE_DIRS", "MASK_DIRS", "MASK_ENDINGS"]

MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "ground_truth", "annotations")
IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_ENDINGS = ("_mask", "_labels")


def mask_base(stem: str) -> str | None:
    """The image stem a mask file stem names (``a_mask`` / ``a_labels`` -> ``a``), else None."""
    for suffix in MASK_ENDINGS:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
    return None


def _sidecar_text(mask: Path) -> str:
    """The description napari's "Save labels…" wrote beside a mask (``NAME.tif.json``)."""
    side = mask.with_name(mask.name + ".json")
    if not side.is_file():
        return ""
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except Exception as e:
        raise ValueError(f"{side}: invalid JSON ({e})") from e
    return str(data.get("description", "") or "") if isinstance(data, dict) else ""


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
    """Generic layout: ``images/`` + ``masks/`` with the same stems (``NAME_mask`` /
    ``NAME_labels`` also accepted), or without those subfolders, images and their
    ``NAME_mask`` / ``NAME_labels`` files side by side. Descriptions from
    ``descriptions.csv`` (image,description) or ``descriptions.json`` ({stem: text}), else from
    a mask's sidecar (``NAME_labels.tif.json``). Images without a mask are unlabeled samples."""
    root = existing_dir(root, "folder")
    img_dir = next((d for n in IMAGE_DIRS if (d := child(root, n)) and d.is_dir()), None)
    if img_dir is None:
        files = images_in(root)
        images = [p for p in files if mask_base(p.stem) is None]
        if len(images) == len(files):
            raise ValueError(f"{root}: no images/ subfolder and no NAME_mask / NAME_labels "
                             "files beside the images")
        mask_dir, img_dir = root, root
    else:
        mask_dir = next((d for n in MASK_DIRS if (d := child(root, n)) and d.is_dir()), None)
        images = images_in(img_dir)
    masks: dict[str, Path] = {}
    if mask_dir is not None:
        for mp in images_in(mask_dir):
            stem = mask_base(mp.stem) or (None if mask_dir == img_dir else mp.stem)
            if stem is None:
                continue
            if stem in masks:
                # a person's correction (napari's Save labels: NAME_labels) beats the
                # model's mask (segment: NAME_mask); two of one kind is ambiguous
                old_c, new_c = (p.stem.endswith("_labels") for p in (masks[stem], mp))
                if old_c == new_c:
                    raise ValueError(f"{mask_dir}: two masks for {stem!r}: "
                                     f"{masks[stem].name}, {mp.name}; keep one")
                if old_c:
                    continue
            masks[stem] = mp
    texts = _descriptions(root)
    out = []
    for ip in images:
        mp = masks.get(ip.stem)
        text = texts.get(ip.stem) or (_sidecar_text(mp) if mp is not None else "")
        out.append(Sample(ip.stem, ip, (mp,) if mp is not None else (), text,
                          {"dataset": "folder"}))
    return out

"""Dataset layouts as their users download them, turned into one list of :class:`Sample`.

Why: TextDiff, MGCC, the widgets, the CLI and the benchmark all need (image, mask, text)
triples from MoNuSeg/LViT, BUSI, the chest X-ray collection or a plain folder; each layout has
its reader module here (``monuseg``, ``busi``, ``xray``, ``folder``), all lazy (nothing is
decoded until ``Sample.load*``); this file recognises a folder's layout (``discover``). The
conventions are in ``docs/DATA.md``.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from .. import io
from .busi import BUSI_CLASSES, BUSI_DESCRIPTIONS, BUSI_MASK, load_busi
from .folder import IMAGE_DIRS, load_folder, mask_base
from .monuseg import MONUSEG_SPLITS, load_monuseg
from .sample import Sample, child, existing_dir
from .splits import kshot, train_val_split
from .xray import XRAY_TARGETS, load_xray

__all__ = [
    "Sample", "load_monuseg", "load_busi", "load_xray", "load_folder", "discover",
    "detect_layout", "labelled_samples", "kshot", "train_val_split", "LAYOUTS", "XRAY_TARGETS", "BUSI_DESCRIPTIONS",
]

LAYOUTS: dict[str, Callable[..., list[Sample]]] = {
    "monuseg": load_monuseg, "busi": load_busi, "xray": load_xray, "folder": load_folder,
}


def detect_layout(path) -> tuple[str, Path]:
    """(layout name, folder) for a dataset folder; descends into a single wrapping subfolder."""
    p = existing_dir(path, "dataset")
    for _ in range(3):
        names = {c.name.lower() for c in p.iterdir()}
        if "structure.csv" in names and "images" in names:
            return "xray", p
        if ("img" in names and ("labelcol" in names or any(n.endswith("_text.xlsx")
                                                           for n in names))) \
                or names & {v.lower() for v in MONUSEG_SPLITS.values()}:
            return "monuseg", p
        if names & set(BUSI_CLASSES) and all((child(p, c) is None or child(p, c).is_dir())
                                             for c in BUSI_CLASSES):
            return "busi", p
        if names & set(IMAGE_DIRS):
            return "folder", p
        busi = [m for n in names if (m := BUSI_MASK.match(Path(n).stem))]
        if busi and (p.name.lower() in BUSI_CLASSES or any(m.group("i") for m in busi)):
            return "busi", p                    # one BUSI class folder (NAME_mask_1 extras)
        if busi or any(mask_base(Path(n).stem) for n in names):
            return "folder", p                  # images beside NAME_mask / NAME_labels files
        subdirs = [c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")]
        files = [c for c in p.iterdir() if c.is_file() and not c.name.startswith(".")]
        if len(subdirs) == 1 and not any(io.is_image_file(f) for f in files):
            p = subdirs[0]
            continue
        break
    content = sorted(c.name + ("/" if c.is_dir() else "") for c in Path(path).iterdir())
    shown = ", ".join(content[:8]) + (" ..." if len(content) > 8 else "") if content else "empty"
    raise ValueError(
        f"{path}: unknown dataset layout (contains: {shown}). Expected MoNuSeg/LViT "
        f"(img/ + labelcol/ + *_text.xlsx, or Train_Folder/...), BUSI (benign/ malignant/ "
        f"normal/ with *_mask.png), chest X-ray (images/ + structure.csv) or a generic folder "
        f"(images/ + masks/ [+ descriptions.csv|json], or images beside NAME_labels files)")


def discover(path, layout: str = "auto", **kw) -> list[Sample]:
    """Load any supported dataset folder. ``kw`` go to the loader that accepts them
    (e.g. ``split=`` for MoNuSeg, ``target=`` for X-ray, ``include_normal=`` for BUSI);
    a keyword no loader knows is an error."""
    known = set()
    for fn in LAYOUTS.values():
        known |= set(inspect.signature(fn).parameters)
    bad = sorted(set(kw) - known)
    if bad:
        raise TypeError(f"discover: unknown option(s) {bad}")
    if layout == "auto":
        layout, folder = detect_layout(path)
    else:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: choose auto or {sorted(LAYOUTS)}")
        folder = existing_dir(path, layout)
    fn = LAYOUTS[layout]
    params = inspect.signature(fn).parameters
    samples = fn(folder, **{k: v for k, v in kw.items() if k in params})
    if not samples:
        raise ValueError(f"{path}: the {layout} layout was recognised but holds no images")
    return samples


def labelled_samples(path, split: str | None = None, describe: bool = False) -> list[Sample]:
    """The samples with a mask of any dataset folder (``discover``): what fitting and
    calibrating read. ``split`` for layouts with splits; ``describe`` gives BUSI images their
    class sentence (``BUSI_DESCRIPTIONS``)."""
    kw: dict = {"split": split} if split else {}
    if describe:
        kw["describe"] = True
    return [s for s in discover(path, **kw) if s.has_mask]

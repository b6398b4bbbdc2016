"""Dataset layouts as their users download them, turned into one list of :class:`Sample`.

Why: TextDiff, MGCC, the widgets, the CLI and the benchmark all need (image, mask, text)
triples from MoNuSeg/LViT, BUSI, the chest X-ray collection or a plain folder; this module
reads each layout once, lazily (nothing is decoded until ``load_*``), and documents its
conventions (see ``docs/DATA.md``).
"""
from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import io

__all__ = [
    "Sample", "load_monuseg", "load_busi", "load_xray", "load_folder", "discover",
    "detect_layout", "kshot", "train_val_split", "LAYOUTS", "XRAY_TARGETS", "BUSI_DESCRIPTIONS",
]

MONUSEG_SPLITS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
BUSI_CLASSES = ("benign", "malignant", "normal")
#: BUSI has no text; ``load_busi(describe=True)`` gives each image the sentence a sonographer
#: would type for its class folder (so a TextDiff head can be trained and guided on it)
BUSI_DESCRIPTIONS = {"benign": "Benign breast lesion.",
                     "malignant": "Malignant breast lesion.",
                     "normal": "Normal breast tissue, no lesion."}
XRAY_TARGETS = {
    "lesion": ("Ground Glass Opacities", "Consolidation"),
    "lungs": ("Right Lung", "Left Lung"),
}


@dataclasses.dataclass
class Sample:
    """One image of a dataset, with its mask source and description; nothing loaded yet.

    The mask comes from ``mask_loader`` when set (layouts that compose masks, e.g. X-ray) or
    else from the union of ``mask_paths``; a sample with neither is unlabeled.
    """

    name: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    text: str = ""
    meta: dict = dataclasses.field(default_factory=dict)
    mask_loader: Callable[[], np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @property
    def has_mask(self) -> bool:
        return self.mask_loader is not None or bool(self.mask_paths)

    def load_image(self, channels: int | None = None) -> np.ndarray:
        """float32 (H, W, C) in [0, 1] (see :func:`io.normalize_image`)."""
        return io.load_image(self.image_path, channels=channels)

    def load_mask(self) -> np.ndarray:
        """Binary uint8 (H, W) mask, checked against the image's size."""
        if not self.has_mask:
            raise ValueError(f"{self.name}: this sample has no mask (unlabeled image "
                             f"{Path(self.image_path).name})")
        shape = io.image_shape(self.image_path)
        if self.mask_loader is not None:
            mask = np.asarray(self.mask_loader(), dtype=np.uint8)
            io.check_same_shape(shape, mask.shape, self.image_path, f"{self.name} (composed mask)")
            return mask
        mask = None
        for mp in self.mask_paths:
            m = io.read_mask(mp)
            io.check_same_shape(shape, m.shape, self.image_path, mp)
            mask = m if mask is None else np.maximum(mask, m)
        return mask

    def load(self, channels: int | None = None):
        """The training triple as :class:`core.models.Example`."""
        from .models import Example

        image = self.load_image(channels=channels)
        mask = self.load_mask()
        io.check_same_shape(image, mask, self.image_path, self.mask_paths[0]
                            if self.mask_paths else self.name)
        return Example(image=image, mask=mask, text=self.text, name=self.name)


# -------------------------------------------------------------------------------- helpers
def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if io.is_image_file(p)), key=lambda p: p.name)


def _dir(path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: folder not found: {p}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what}: not a folder: {p}")
    return p


def _child(folder: Path, name: str) -> Path | None:
    """Case-insensitive child lookup."""
    exact = folder / name
    if exact.exists():
        return exact
    for c in folder.iterdir():
        if c.name.lower() == name.lower():
            return c
    return None


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .xlsx (first sheet) or .csv file as dicts keyed by the header row."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl
        try:
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read spreadsheet ({e})") from e
        rows = list(wb.worksheets[0].iter_rows(values_only=True))
        wb.close()
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    if not rows:
        return []
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    return [{h: ("" if v is None else str(v).strip()) for h, v in zip(header, r)}
            for r in rows[1:] if any(v not in (None, "") for v in r)]


def _col(row: dict, *names: str) -> str:
    low = {k.lower(): v for k, v in row.items()}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    return ""


# -------------------------------------------------------------------------------- MoNuSeg
def _monuseg_folder(folder: Path, split: str | None) -> list[Sample]:
    img_dir = _child(folder, "img")
    if img_dir is None or not img_dir.is_dir():
        raise ValueError(f"{folder}: not an LViT/MoNuSeg folder (no img/ subfolder)")
    lab_dir = _child(folder, "labelcol")
    masks = {}
    if lab_dir is not None and lab_dir.is_dir():
        masks = {p.stem: p for p in _images_in(lab_dir)}
    texts: dict[str, str] = {}
    for t in sorted(list(folder.glob("*_text.xlsx")) + list(folder.glob("*_text.csv"))):
        for row in _read_table(t):
            key = _col(row, "Image", "image", "filename")
            if key:
                texts[Path(key).stem] = _col(row, "Description", "text")
    samples = []
    for ip in _images_in(img_dir):
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
    folder = _dir(folder, "MoNuSeg")
    if _child(folder, "img") is not None:
        return _monuseg_folder(folder, split if isinstance(split, str) else None)
    present = {k: _child(folder, v) for k, v in MONUSEG_SPLITS.items()}
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


# ----------------------------------------------------------------------------------- BUSI
_BUSI_MASK = re.compile(r"^(?P<base>.+)_mask(?:_(?P<i>\d+))?$")


def _busi_class(folder: Path, cls: str, text: str = "") -> list[Sample]:
    files = _images_in(folder)
    masks: dict[str, list[Path]] = {}
    images = []
    for f in files:
        m = _BUSI_MASK.match(f.stem)
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
    root = _dir(root, "BUSI")
    wanted = tuple(classes) if classes else BUSI_CLASSES
    if not include_normal:
        wanted = tuple(c for c in wanted if c != "normal")
    found = {c: _child(root, c) for c in BUSI_CLASSES}
    found = {c: d for c, d in found.items() if d is not None and d.is_dir()}
    if not found:
        if any(_BUSI_MASK.match(p.stem) for p in _images_in(root)):
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


# ---------------------------------------------------------------------------------- X-ray
def _xray_targets(target) -> tuple[str, ...]:
    if isinstance(target, str):
        return XRAY_TARGETS.get(target.lower(), (target,))
    return tuple(target)


def _compose_xray_mask(root: Path, rows: list[dict], hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    out = np.zeros((h, w), dtype=np.uint8)
    for r in rows:
        if not r["Mask"]:
            continue
        mp = root / r["Mask"]
        a = io.read_image(mp)
        red = a[..., 0] if a.ndim == 3 else a   # masks are RGBA crops, the mask in red
        top, left = int(float(r["Top"])), int(float(r["Left"]))
        bh, bw = int(float(r["Height"])), int(float(r["Width"]))
        if red.shape != (bh, bw):
            raise ValueError(f"{mp.name}: crop is {red.shape[0]}x{red.shape[1]} but "
                             f"structure.csv says {bh}x{bw} (H x W)")
        y1, x1 = min(top + bh, h), min(left + bw, w)
        if top < 0 or left < 0 or y1 <= top or x1 <= left:
            raise ValueError(f"{mp.name}: box (top={top}, left={left}) outside the "
                             f"{h}x{w} image")
        out[top:y1, left:x1] |= (red[: y1 - top, : x1 - left] > 0)
    return out


def load_xray(root, target: str | Sequence[str] = "lesion", keep_unannotated: bool = False,
              ) -> list[Sample]:
    """COVID-19 chest X-ray segmentations: ``images/``, ``structure.csv``, ``masks/``,
    ``metadata.csv``.

    Each structure.csv row is one annotation: an RGBA crop (the mask in the red channel, any
    nonzero value) pasted at (Top, Left) on an empty canvas; ``Resolution`` is "WxH" (checked
    against the real images). ``target``: "lesion" (Ground Glass Opacities ∪ Consolidation,
    the QaTa-COV19-like task), "lungs" (Right ∪ Left Lung) or template names. Text is the
    image's ``clinical_notes`` from metadata.csv (``finding`` when the note is empty).

    Images with no row of the chosen templates were not annotated for that target, which is
    not the same as "nothing there": they are dropped unless ``keep_unannotated`` (then they get
    an empty mask). Rows of a chosen template whose crop is empty do count as annotated-empty.
    """
    root = _dir(root, "X-ray")
    struct = _child(root, "structure.csv")
    img_dir = _child(root, "images")
    if struct is None or img_dir is None:
        raise ValueError(f"{root}: not an X-ray folder (needs structure.csv and images/)")
    rows = _read_table(struct)
    if rows and not {"Filename", "Template Name", "Mask", "Top", "Left"} <= set(rows[0]):
        raise ValueError(f"{struct}: missing columns (have {sorted(rows[0])})")
    templates = sorted({r["Template Name"] for r in rows})
    wanted = _xray_targets(target)
    low = {t.lower(): t for t in templates}
    unknown = [t for t in wanted if t.lower() not in low]
    if unknown:
        raise ValueError(f"unknown X-ray target {target!r}: choose 'lesion', 'lungs' or "
                         f"template names from {templates}")
    wanted_l = {t.lower() for t in wanted}
    notes: dict[str, dict] = {}
    meta_csv = _child(root, "metadata.csv")
    if meta_csv is not None:
        for r in _read_table(meta_csv):
            notes[r.get("filename", "")] = r
    by_image: dict[str, list[dict]] = {}
    res: dict[str, str] = {}
    for r in rows:
        res.setdefault(r["Filename"], r.get("Resolution", ""))
        if r["Template Name"].lower() in wanted_l:
            by_image.setdefault(r["Filename"], []).append(r)
    samples = []
    for ip in _images_in(img_dir):
        sel = by_image.get(ip.name)
        if sel is None and not keep_unannotated:
            continue
        sel = sel or []
        md = notes.get(ip.name, {})
        text = md.get("clinical_notes", "") or md.get("finding", "")
        hw = None
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", res.get(ip.name, ""))
        if m:
            hw = (int(m.group(2)), int(m.group(1)))   # Resolution is W x H

        def loader(ip=ip, sel=sel, hw=hw):
            shape = io.image_shape(ip)
            if hw is not None and hw != shape:
                raise ValueError(f"{ip.name}: structure.csv Resolution says {hw[1]}x{hw[0]} "
                                 f"(W x H) but the image is {shape[1]}x{shape[0]}")
            return _compose_xray_mask(root, sel, shape)

        meta = {"dataset": "xray", "target": list(wanted), "finding": md.get("finding", ""),
                "license": md.get("license", ""), "url": md.get("url", ""),
                "n_annotations": sum(1 for r in sel if r["Mask"]), "annotated": bool(sel)}
        samples.append(Sample(ip.stem, ip, (), text, meta, mask_loader=loader))
    return samples


# --------------------------------------------------------------------------- generic folder
_MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "ground_truth", "annotations")
_IMAGE_DIRS = ("images", "image", "imgs", "img")


def _descriptions(root: Path) -> dict[str, str]:
    j = _child(root, "descriptions.json")
    c = _child(root, "descriptions.csv")
    out: dict[str, str] = {}
    if c is not None:
        for r in _read_table(c):
            key = _col(r, "image", "filename", "name")
            if key:
                out[Path(key).stem] = _col(r, "description", "text")
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
    root = _dir(root, "folder")
    img_dir = next((d for n in _IMAGE_DIRS if (d := _child(root, n)) and d.is_dir()), None)
    if img_dir is None:
        raise ValueError(f"{root}: no images/ subfolder")
    mask_dir = next((d for n in _MASK_DIRS if (d := _child(root, n)) and d.is_dir()), None)
    masks: dict[str, Path] = {}
    if mask_dir is not None:
        for mp in _images_in(mask_dir):
            stem = mp.stem[:-5] if mp.stem.endswith("_mask") else mp.stem
            if stem in masks and masks[stem].suffix.lower() != mp.suffix.lower():
                raise ValueError(f"{mask_dir}: two masks for {stem!r}: {masks[stem].name}, "
                                 f"{mp.name}")
            masks[stem] = mp
    texts = _descriptions(root)
    return [Sample(ip.stem, ip, (masks[ip.stem],) if ip.stem in masks else (),
                   texts.get(ip.stem, ""), {"dataset": "folder"})
            for ip in _images_in(img_dir)]


# ------------------------------------------------------------------------------- discovery
LAYOUTS: dict[str, Callable[..., list[Sample]]] = {
    "monuseg": load_monuseg, "busi": load_busi, "xray": load_xray, "folder": load_folder,
}


def detect_layout(path) -> tuple[str, Path]:
    """(layout name, folder) for a dataset folder; descends into a single wrapping subfolder."""
    p = _dir(path, "dataset")
    for _ in range(3):
        names = {c.name.lower() for c in p.iterdir()}
        if "structure.csv" in names and "images" in names:
            return "xray", p
        if ("img" in names and ("labelcol" in names or any(n.endswith("_text.xlsx")
                                                           for n in names))) \
                or names & {v.lower() for v in MONUSEG_SPLITS.values()}:
            return "monuseg", p
        if names & set(BUSI_CLASSES) and all((_child(p, c) is None or _child(p, c).is_dir())
                                             for c in BUSI_CLASSES):
            return "busi", p
        if names & set(_IMAGE_DIRS):
            return "folder", p
        if any(_BUSI_MASK.match(Path(n).stem) for n in names):
            return "busi", p
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
        f"(images/ + masks/ [+ descriptions.csv|json])")


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
        folder = _dir(path, layout)
    fn = LAYOUTS[layout]
    params = inspect.signature(fn).parameters
    samples = fn(folder, **{k: v for k, v in kw.items() if k in params})
    if not samples:
        raise ValueError(f"{path}: the {layout} layout was recognised but holds no images")
    return samples


# ---------------------------------------------------------------------------------- splits
def kshot(samples: Sequence[Sample], k: int, seed: int = 0, labeled_only: bool = True,
          ) -> list[Sample]:
    """``k`` samples drawn without replacement, the same for the same seed and sample names
    (the draw is over names sorted, so the input order does not matter)."""
    pool = [s for s in samples if s.has_mask] if labeled_only else list(samples)
    if not 0 < k <= len(pool):
        raise ValueError(f"kshot: k={k} but {len(pool)} "
                         f"{'labeled ' if labeled_only else ''}samples are available")
    pool = sorted(pool, key=lambda s: s.name)
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(idx)]


def train_val_split(samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0,
                    stratify_key: str | Callable[[Sample], Any] | None = None,
                    ) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split. With ``stratify_key`` (a ``meta`` key or a function of the sample)
    each group contributes round(fraction * size) to validation. Both parts keep input order;
    when there are >= 2 samples and 0 < fraction < 1 both are non-empty."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(samples)
    if stratify_key is None:
        key = lambda s: None  # noqa: E731
    elif callable(stratify_key):
        key = stratify_key
    else:
        key = lambda s: s.meta.get(stratify_key)  # noqa: E731
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(items):
        groups.setdefault(key(s), []).append(i)
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for g in sorted(groups, key=repr):
        idx = sorted(groups[g], key=lambda i: items[i].name)
        n = int(round(val_fraction * len(idx)))
        val |= {idx[j] for j in rng.permutation(len(idx))[:n]}
    n = len(items)
    if val_fraction > 0 and n >= 2:
        order = [int(i) for i in rng.permutation(n)]
        if not val:
            val.add(order[0])
        if len(val) == n:
            val.discard(order[0])
    return ([s for i, s in enumerate(items) if i not in val],
            [s for i, s in enumerate(items) if i in val])

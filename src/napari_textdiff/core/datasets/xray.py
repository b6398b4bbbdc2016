"""COVID-19 chest X-ray segmentations: ``images/``, ``structure.csv`` (RGBA crops pasted at
boxes), ``masks/``, ``metadata.csv`` (clinical notes)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from .sample import Sample, child, existing_dir, images_in, read_table

__all__ = ["load_xray", "XRAY_TARGETS"]

XRAY_TARGETS = {
    "lesion": ("Ground Glass Opacities", "Consolidation"),
    "lungs": ("Right Lung", "Left Lung"),
}


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
    root = existing_dir(root, "X-ray")
    struct = child(root, "structure.csv")
    img_dir = child(root, "images")
    if struct is None or img_dir is None:
        raise ValueError(f"{root}: not an X-ray folder (needs structure.csv and images/)")
    rows = read_table(struct)
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
    meta_csv = child(root, "metadata.csv")
    if meta_csv is not None:
        for r in read_table(meta_csv):
            notes[r.get("filename", "")] = r
    by_image: dict[str, list[dict]] = {}
    res: dict[str, str] = {}
    for r in rows:
        res.setdefault(r["Filename"], r.get("Resolution", ""))
        if r["Template Name"].lower() in wanted_l:
            by_image.setdefault(r["Filename"], []).append(r)
    samples = []
    for ip in images_in(img_dir):
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

"""Tiny datasets in the public layouts (MoNuSeg, BUSI, chest X-ray) for benchmark tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blobs(rng, size, n=3, gray=False):
    img = rng.normal(0.35, 0.05, (size, size, 3)).clip(0, 1)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        r = rng.integers(size // 10, size // 6 + 1)
        cy, cx = rng.integers(r, size - r, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[m] = 0.85
        mask[m] = 255
    img = (img * 255).astype(np.uint8)
    return (img[..., 0] if gray else img), mask


def make_monuseg(root: Path, n_train=4, n_test=2, size=64):
    import openpyxl

    rng = np.random.default_rng(0)
    for folder, n in (("Train_Folder", n_train), ("Val_Folder", n_test)):
        (root / folder / "img").mkdir(parents=True)
        (root / folder / "labelcol").mkdir()
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(["Image", "Description"])
        for i in range(n):
            name = f"{folder[:2]}-{i}.png"
            img, mask = blobs(rng, size)
            Image.fromarray(img).save(root / folder / "img" / name)
            Image.fromarray(mask).save(root / folder / "labelcol" / name)
            ws.append([name, "the nuclei density in the upper right is high"])
        wb.save(root / folder / f"{folder}_text.xlsx")
    return root


def make_busi(root: Path, per_class=5, size=48):
    rng = np.random.default_rng(2)
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img, mask = blobs(rng, size, n=0 if cls == "normal" else 1, gray=True)
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            Image.fromarray(mask).save(root / cls / f"{cls} ({i})_mask.png")
    return root


def make_xray(root: Path, n=6, size=48):
    import csv

    rng = np.random.default_rng(4)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, meta = [], []
    for i in range(n):
        img, mask = blobs(rng, size, 1, gray=True)
        name = f"xr{i}.png"
        Image.fromarray(img).save(root / "images" / name)
        ys, xs = np.nonzero(mask)
        top, left = int(ys.min()), int(xs.min())
        crop = mask[top:ys.max() + 1, left:xs.max() + 1]
        rgba = np.zeros((*crop.shape, 4), np.uint8)
        rgba[..., 0] = crop
        rgba[..., 3] = 255
        Image.fromarray(rgba, "RGBA").save(root / "masks" / f"m{i}.png")
        rows.append({"Filename": name,
                     "Template Name": ("Consolidation", "Ground Glass Opacities")[i % 2],
                     "Mask": f"masks/m{i}.png", "Resolution": f"{size}x{size}", "Top": top,
                     "Left": left, "Width": crop.shape[1], "Height": crop.shape[0]})
        meta.append({"filename": name, "finding": "COVID-19",
                     "clinical_notes": "bilateral infection in the lower left lung"})
    for fn, data in (("structure.csv", rows), ("metadata.csv", meta)):
        with open(root / fn, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    return root

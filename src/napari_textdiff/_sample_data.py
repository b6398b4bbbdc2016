"""napari sample data: one image per modality with its description (and ground truth labels).

Files, licences and attribution: ``napari_textdiff/sample_data/README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["histology", "xray", "ultrasound", "sample_dir", "load_sample"]


def sample_dir() -> Path:
    return Path(__file__).resolve().parent / "sample_data"


def load_sample(file_name: str, with_mask: bool = True) -> list[tuple]:
    """Layer data for one sample image (+ its ground-truth mask as a hidden Labels layer).

    The ground truth comes first so the image is added last and stays the selected layer:
    Segment works on it right after File › Open Sample.
    """
    from .core.io import read_image, read_mask

    d = sample_dir()
    info = json.loads((d / "descriptions.json").read_text(encoding="utf-8"))[file_name]
    p = d / file_name
    data = read_image(p)
    name = f"{info['modality']}_sample"
    meta = {"description": info["description"], "modality": info["modality"],
            "source_path": str(p), "source": info["source"], "licence": info["licence"],
            "attribution": info["attribution"]}
    layers = []
    if with_mask and info.get("mask"):
        mask = read_mask(d / info["mask"]).astype("int32")
        layers.append((mask, {"name": f"{name} ground truth", "opacity": 0.4, "visible": False,
                              "metadata": {"ground_truth": True, "source_image": name,
                                           "licence": info["licence"],
                                           "description": info["description"]}}, "labels"))
    layers.append((data, {"name": name, "metadata": meta,
                          "rgb": data.ndim == 3 and data.shape[-1] in (3, 4)}, "image"))
    return layers


def histology():
    """H&E crop from MoNuSeg (CC BY-NC-SA 4.0) with its LViT description."""
    return load_sample("histology.jpg")


def xray():
    """Chest X-ray (CC BY) with its clinical note."""
    return load_sample("xray.jpg")


def ultrasound():
    """Breast ultrasound from BUSI (CC0) with its lesion mask."""
    return load_sample("ultrasound.png")

"""napari reader: TIFF, PNG, JPEG and DICOM files, and folders, with their descriptions.

Descriptions come with the images: from a sidecar ``<stem>.json`` (what our writer saves), a
``descriptions.json`` / ``descriptions.csv`` in the folder, or the dataset's own table when a
folder has a known layout (MoNuSeg/LViT, BUSI, chest X-ray, images/+masks/; see
``core.datasets``) — in that case the masks are opened too, as Labels layers. A labels file
saved by our writer (sidecar with ``"kind": "labels"``) opens as a Labels layer again.

Whole slides (pyramidal TIFF, SVS, NDPI, OME-TIFF) open as multiscale layers of dask arrays
(``core.slides``: nothing decoded until napari draws it), scaled in µm when the file gives
its pixel size; QuPath GeoJSON opens as Labels (``_slides_io``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["get_reader", "read_paths", "SUFFIXES"]

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".svs", ".ndpi",
            ".btf", ".geojson")


def _readable(p: Path) -> bool:
    if p.is_dir():
        return True
    return p.suffix.lower() in SUFFIXES


def get_reader(path):
    """npe2 reader hook: a reader for supported files/folders, else ``None``."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read_paths


def read_paths(path) -> list[tuple]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[tuple] = []
    for p in map(Path, paths):
        out += _read_folder(p) if p.is_dir() else [_read_file(p)]
    return out


# -- files ------------------------------------------------------------------------------------
def _sidecar(p: Path) -> dict:
    """The file's own sidecar (``NAME.EXT.json``, as the labels writer makes it), else the
    older shared ``NAME.json``."""
    for side in (p.with_name(p.name + ".json"), p.with_suffix(".json")):
        if side.is_file():
            try:
                data = json.loads(side.read_text(encoding="utf-8"))
                return data if isinstance(data, dict) else {}
            except ValueError:
                return {}
    return {}


def _folder_descriptions(folder: Path) -> dict[str, dict]:
    """``{stem: {"description": ..., ...}}`` from descriptions.json/.csv in ``folder``."""
    out: dict[str, dict] = {}
    c = folder / "descriptions.csv"
    if c.is_file():
        import csv

        with open(c, newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                low = {k.lower().strip(): (v or "").strip() for k, v in row.items() if k}
                key = low.get("image") or low.get("filename") or low.get("name")
                if key:
                    out[Path(key).stem] = {"description": low.get("description", low.get("text", "")),
                                           **({"modality": low["modality"]} if low.get("modality") else {})}
    j = folder / "descriptions.json"
    if j.is_file():
        try:
            data = json.loads(j.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
        if isinstance(data, dict):
            for k, v in data.items():
                out[Path(k).stem] = dict(v) if isinstance(v, dict) else {"description": str(v)}
    return out


def _image_layer(p: Path, name: str, info: dict) -> tuple:
    from .core.io import read_image

    data = read_image(p)
    meta = {"description": str(info.get("description", "") or ""), "source_path": str(p)}
    for key in ("modality", "licence", "source", "attribution"):
        if info.get(key):
            meta[key] = info[key]
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    return data, {"name": name, "metadata": meta, "rgb": rgb}, "image"


def _labels_layer(mask: np.ndarray, name: str, meta: dict) -> tuple:
    return np.asarray(mask, dtype=np.int32), {"name": name, "metadata": meta}, "labels"


def _read_file(p: Path, info: dict | None = None) -> tuple:
    from ._slides_io import geojson_layer, is_slide, slide_layer

    if p.suffix.lower() == ".geojson":
        return geojson_layer(p)
    side = _sidecar(p)
    info = {**(info or {}), **side}
    if is_slide(p):
        return slide_layer(p, info)
    if side.get("kind") == "labels":
        from .core.io import read_mask

        meta = {k: side[k] for k in ("description", "source_image", "modality") if k in side}
        meta["source_path"] = str(p)
        return _labels_layer(read_mask(p, instances=True), side.get("layer", p.stem), meta)
    return _image_layer(p, p.stem, info)


# -- folders ------------------------------------------------------------------------------------
def _read_folder(folder: Path) -> list[tuple]:
    from .core import datasets

    try:
        layout, root = datasets.detect_layout(folder)
    except ValueError:
        layout = None
    if layout is not None:
        return _read_dataset(root)
    texts = _folder_descriptions(folder)
    files = sorted(f for f in folder.iterdir()
                   if f.is_file() and f.suffix.lower() in SUFFIXES and not f.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no TIFF/PNG/JPEG/DICOM images in this folder")
    return [_read_file(f, texts.get(f.stem)) for f in files]


def _read_dataset(root: Path) -> list[tuple]:
    """A known dataset layout: every image with its description, and its mask as labels."""
    from .core import datasets

    layers = []
    for s in datasets.discover(root):
        data, kw, kind = _image_layer(s.image_path, s.name, {"description": s.text})
        layers.append((data, kw, kind))
        if s.has_mask:
            meta = {"source_image": s.name, "description": s.text, "ground_truth": True}
            layers.append(_labels_layer(s.load_mask(), f"{s.name}_labels", meta))
    return layers

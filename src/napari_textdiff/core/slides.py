"""Whole-slide images (SVS, NDPI, OME-TIFF, generic tiled pyramids) opened lazily.

Why: a slide is tens of thousands of pixels a side; reading level 0 into memory takes GBs and
minutes. tifffile exposes every pyramid level as a zarr array whose tiles are decoded only
when sliced, so napari can show the slide as a multiscale layer at once and segmentation can
read one block at a time at the level closest to the model's working scale.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

__all__ = ["Slide", "SlideError", "open_slide", "is_slide", "slide_mpp", "choose_level",
           "model_scale", "SLIDE_SUFFIXES"]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".scn",
                  ".bif")
_MIN_FLAT = 8192 * 8192        # a tiled single-level TIFF this large is opened as a slide too


class SlideError(ValueError):
    """A slide could not be opened or read; the message names the file."""


@dataclasses.dataclass
class Slide:
    """A pyramid of lazily read levels; level 0 is full resolution.

    ``levels``: zarr arrays (H, W[, C]); ``downsamples``: (dy, dx) of each level relative to
    level 0; ``mpp``: micrometres per level-0 pixel, or None when the file does not say.
    """

    path: Path
    levels: list
    mpp: float | None
    kind: str

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(a.shape[0]), int(a.shape[1])) for a in self.levels]

    @property
    def downsamples(self) -> list[tuple[float, float]]:
        h0, w0 = self.shapes[0]
        return [(h0 / h, w0 / w) for h, w in self.shapes]

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of ``level`` as a numpy array (only those tiles decoded)."""
        try:
            return np.asarray(self.levels[level][y0:y1, x0:x1])
        except Exception as e:          # codec errors, truncated files
            raise SlideError(f"{self.path}: cannot read level {level} [{y0}:{y1}, {x0}:{x1}]: "
                             f"{e} (the file may be truncated or use an unsupported codec)") from e

    def dask_levels(self) -> list:
        """Every level as a dask array (napari's multiscale data)."""
        import dask.array as da

        return [da.from_zarr(a) for a in self.levels]


def _plausible(mpp) -> float | None:
    try:
        v = float(mpp)
    except (TypeError, ValueError):
        return None
    return v if 0.01 <= v <= 100 and math.isfinite(v) else None


def slide_mpp(tif) -> float | None:
    """Micrometres per level-0 pixel from the file's metadata: Aperio's ``MPP``, OME's
    ``PhysicalSizeX``, else the TIFF resolution tags in cm or inch (NDPI, generic). Values
    outside 0.01-100 µm (e.g. a default 72 dpi) are ignored."""
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    desc = page.description or ""
    if getattr(tif, "is_svs", False):
        m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
        if m and _plausible(m.group(1)):
            return _plausible(m.group(1))
    if getattr(tif, "is_ome", False):
        xml = tif.ome_metadata or ""
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
            factor = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(
                unit.group(1) if unit else "µm", 1.0)
            v = _plausible(float(m.group(1)) * factor)
            if v:
                return v
    tags = page.tags
    xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
    if xres is None or unit is None:
        return None
    num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
    if not num or not den:
        return None
    per_unit = num / den
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    return _plausible(microns / per_unit) if microns else None


def is_slide(path) -> bool:
    """True for a TIFF-family file with a pyramid (or one huge tiled level)."""
    import tifffile

    p = Path(path)
    if not any(p.name.lower().endswith(s) for s in SLIDE_SUFFIXES):
        return False
    try:
        with tifffile.TiffFile(p) as tif:
            s = tif.series[0]
            page = s.pages[0] if s.pages else None
            if len(s.levels) > 1 and s.levels[1].shape[0] < s.shape[0]:
                return True
            return bool(page is not None and page.is_tiled
                        and s.shape[0] * s.shape[1] >= _MIN_FLAT)
    except Exception:
        return False


def open_slide(path) -> Slide:
    """Open a slide lazily (no pixel is decoded). Raises :class:`SlideError` naming the file."""
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise SlideError(f"{p}: no such file")
    try:
        import zarr
    except ImportError as e:
        raise SlideError(f"{p}: reading slides needs the 'zarr' package "
                         "(pip install zarr)") from e
    try:
        with tifffile.TiffFile(p) as tif:
            kind = ("svs" if tif.is_svs else "ndpi" if tif.is_ndpi else
                    "ome" if tif.is_ome else "generic")
            mpp = slide_mpp(tif)
            s = tif.series[0]
            if len(s.shape) < 2:
                raise SlideError(f"{p}: not an image (shape {s.shape})")
            _check_complete(p, s)
        store = tifffile.imread(p, aszarr=True, series=0)
        root = zarr.open(store, mode="r")
    except SlideError:
        raise
    except Exception as e:
        raise SlideError(f"{p}: cannot open as a slide: {e}") from e
    if hasattr(root, "shape"):
        levels = [root]
    else:
        keys = sorted(root.keys(), key=int)
        levels = [root[k] for k in keys]
    for a in levels:
        if len(a.shape) not in (2, 3) or (len(a.shape) == 3 and a.shape[2] not in (1, 3, 4)):
            raise SlideError(f"{p}: level shape {tuple(a.shape)} is not (H, W) or (H, W, C); "
                             "multi-channel fluorescence stacks are not supported as slides")
    levels.sort(key=lambda a: -int(a.shape[0]))
    return Slide(p, levels, mpp, kind)


def _check_complete(p: Path, series) -> None:
    """Refuse a cut file: tiles past its end would silently read as black."""
    size = p.stat().st_size
    for lv in series.levels:
        for page in lv.pages:
            if page is None or not getattr(page, "dataoffsets", None):
                continue
            end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
            if end > size:
                raise SlideError(f"{p}: the file is truncated ({size} of at least {end} "
                                 "bytes): copy or export it again")


def model_scale(model) -> float:
    """The factor by which the model resizes level-0-like pixels (TextDiff ``config.scale``;
    1 for models that resize whole images or have no scale)."""
    c = getattr(model, "config", None)
    s = getattr(c, "scale", None)
    if getattr(c, "resize_to", None) or not isinstance(s, (int, float)) or s <= 0:
        return 1.0
    return float(s)


def model_mpp(model) -> float | None:
    """The training images' µm per pixel, when the model file records it (config or meta)."""
    c = getattr(model, "config", None)
    for v in (getattr(c, "mpp", None), (getattr(model, "meta", None) or {}).get("mpp")):
        if _plausible(v):
            return float(v)
    return None


def choose_level(slide: Slide, scale: float, model_um: float | None = None) -> tuple[int, float]:
    """``(level, scale_at_level)``: the coarsest level not more than 10 % coarser than the
    model's working resolution (4x pyramids: 40x level 0 -> the 10x level for a model working
    at 1/3.9), and the remaining resize factor there.

    The model resizes its input by ``scale``; with both the slide's and the model's µm/pixel
    known, the target also corrects for a slide scanned at another magnification.
    """
    target = 1.0 / scale                                   # working px per level-0 px
    if slide.mpp and model_um:
        target = (model_um / scale) / slide.mpp
    best = 0
    for i, (dy, dx) in enumerate(slide.downsamples):
        if min(dy, dx) <= target * 1.10:
            best = i if min(dy, dx) > min(slide.downsamples[best]) else best
    d = min(slide.downsamples[best])
    return best, d / target

"""Segment a region of a slide, or the whole slide streamed block by block.

Why: a slide does not fit in memory at full resolution, and the models work at a coarser
scale anyway (the histology model sees pixels resized by 0.256). So the pyramid level closest
to the working scale is read, one block (plus a halo of context) at a time; each block is
predicted as a plain image with :func:`prediction.iter_predict`, its core thresholded into a
mask (a disk memmap for large areas), and instances are split across block seams by
:mod:`stitching`. A region that fits in one block is exactly "segment these pixels as a
plain image". Coordinates in and out are level-0 pixels.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .progress import Progress
from .slides import Slide, choose_level, model_mpp, model_scale

__all__ = ["SlideLabels", "iter_segment_slide", "parse_region", "tissue_mask",
           "slide_stain_statistics", "at_scale"]


@dataclasses.dataclass
class SlideLabels:
    """Labels of a slide area at ``level``; ``box`` = (y0, x0, y1, x1) in level pixels,
    ``region`` = (x, y, w, h) in level-0 pixels (what was asked for)."""

    labels: np.ndarray                  # (y1-y0, x1-x0) ints, ndarray or memmap
    level: int
    downsample: tuple[float, float]     # (dy, dx) of the level vs level 0
    box: tuple[int, int, int, int]
    region: tuple[int, int, int, int]
    objects: int
    mpp: float | None
    workdir: tempfile.TemporaryDirectory | None = None
    scale: float | None = None          # the model's resize of the level's pixels (at_scale)

    def level0(self) -> np.ndarray:
        """The labels nearest-resized to exactly the requested level-0 region (h, w)."""
        x, y, w, h = self.region
        dy, dx = self.downsample
        iy = np.clip(((y + np.arange(h) + 0.5) / dy).astype(np.int64) - self.box[0], 0,
                     self.labels.shape[0] - 1)
        ix = np.clip(((x + np.arange(w) + 0.5) / dx).astype(np.int64) - self.box[1], 0,
                     self.labels.shape[1] - 1)
        return np.asarray(self.labels)[np.ix_(iy, ix)]

    def component_labels(self, should_stop: Callable[[], bool] | None = None):
        """A binary result's objects, one id per 8-connected component (what GeoJSON needs:
        one QuPath object each). Streamed results are labelled block by block into a memmap
        in the work folder, never as one int32 array in memory. Generator of ``Progress``;
        returns the labels (None when stopped)."""
        from scipy import ndimage as ndi

        if self.workdir is None:
            lab, _ = ndi.label(np.asarray(self.labels) != 0, structure=np.ones((3, 3), bool))
            return lab
        from .stitching import iter_label_blocks

        out = np.lib.format.open_memmap(Path(self.workdir.name) / "components.npy", "w+",
                                        np.int32, tuple(self.labels.shape))
        n = yield from iter_label_blocks(self.labels, out, should_stop=should_stop,
                                         message="objects")
        return None if n is None else out

    def close(self) -> None:
        if self.workdir is not None:
            self.labels = np.zeros((0, 0), np.int32)
            self.workdir.cleanup()
            self.workdir = None


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``"X,Y,W,H"`` (level-0 pixels) -> ints; a clear error otherwise."""
    try:
        x, y, w, h = (int(float(v)) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"region {text!r}: expected X,Y,W,H in level-0 pixels, "
                         "e.g. 1000,2000,1000,1000") from None
    if w < 1 or h < 1 or x < 0 or y < 0:
        raise ValueError(f"region {text!r}: X and Y must be >= 0 and W, H >= 1")
    return x, y, w, h


@contextlib.contextmanager
def at_scale(model, scale: float | None):
    """The model resizing by ``scale`` for a while (the slide level already did part of it):
    predicting on a level's pixels, and fine-tuning on a region read from that level."""
    if scale is None:
        yield
        return
    c = getattr(model, "config", None)
    if c is None or not hasattr(c, "scale") or getattr(c, "resize_to", None) \
            or abs(scale - model_scale(model)) < 1e-9:
        yield
        return
    old = c.scale
    c.scale = float(scale)
    try:
        yield
    finally:
        c.scale = old


def _coarse_view(slide: Slide, box, level: int, max_pixels: int = 1 << 22,
                 read_bytes: int = 1 << 26):
    """``box`` (level coords) seen on the coarsest level, as floats in [0, 1] with at most
    ~``max_pixels`` pixels (a level without a pyramid is read in strips of about
    ``read_bytes`` and subsampled), and its downsample relative to ``level``."""
    top = len(slide.levels) - 1
    f = min(slide.downsamples[top]) / min(slide.downsamples[level])
    y0, x0, y1, x1 = int(box[0] / f), int(box[1] / f), math.ceil(box[2] / f), \
        math.ceil(box[3] / f)
    step = max(1, math.ceil(math.sqrt((y1 - y0) * (x1 - x0) / max_pixels)))
    rows = max(1, read_bytes // max(1, (x1 - x0) * 4))     # RGBA-sized bound per read
    strip = step * max(1, rows // step)
    parts = [np.asarray(slide.read(top, y, x0, min(y1, y + strip), x1))[::step, ::step]
             for y in range(y0, y1, strip)]
    t = np.concatenate(parts, 0)
    t = t.astype(np.float32) / (255.0 if t.dtype == np.uint8 else float(max(1, t.max())))
    return t, f * step


def _tissue(t: np.ndarray) -> np.ndarray:
    """Saturated or darker-than-glass pixels of a [0, 1] image, dilated."""
    from scipy import ndimage as ndi

    if t.ndim == 3 and t.shape[2] >= 3:
        sat = t[..., :3].max(-1) - t[..., :3].min(-1)
        tissue = (sat > 0.07) | (t[..., :3].mean(-1) < 0.8)
    else:
        g = t if t.ndim == 2 else t[..., 0]
        tissue = g < 0.8
    return ndi.binary_dilation(tissue, iterations=2)


def tissue_mask(slide: Slide, box, level: int) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of ``box`` (level coords) from the coarsest level, and its
    downsample relative to ``level``: saturated or darker-than-glass pixels, dilated."""
    t, f = _coarse_view(slide, box, level)
    return _tissue(t), f


def slide_stain_statistics(slide: Slide, box, level: int, scale: float, *, tissue=None,
                           tiles: int = 16, side: int = 512, name: str = "slide"):
    """LAB (mean, std) of the tissue in ``box`` (level coords) as the model sees it, so every
    block of a slide is stain-normalised with the same statistics (no seams).

    Up to ``tiles`` tiles of ``side`` level pixels, centred on tissue spread over the box
    (``tissue``: :func:`tissue_mask`'s result, found on the coarsest level), are read at
    ``level``, normalised as blocks are and resized by ``scale`` as prediction does: a coarse
    pyramid level is smoothed, and its colour spread (the std Reinhard divides by) is
    2-3x too small. None for slides without colour (gray: no a/b spread).
    """
    from .largeimage import lazy_image, resize_lowmem
    from .stain import lab_statistics

    keep, f = tissue if tissue is not None else tissue_mask(slide, box, level)
    ys, xs = np.nonzero(keep)
    if not len(ys):                              # no tissue found: spread over the box
        ys, xs = np.nonzero(np.ones_like(keep, bool))
    y0, x0, y1, x1 = box
    pixels = []
    for k in np.unique(np.linspace(0, len(ys) - 1, min(tiles, len(ys))).round().astype(int)):
        cy, cx = y0 + int((ys[k] + 0.5) * f), x0 + int((xs[k] + 0.5) * f)
        ty, tx = (int(np.clip(c - side // 2, lo, max(lo, hi - side)))
                  for c, lo, hi in ((cy, y0, y1), (cx, x0, x1)))
        img = lazy_image(slide.read(level, ty, tx, min(y1, ty + side), min(x1, tx + side)),
                         channels=3, name=name)
        h, w = img.shape[:2]
        img = np.asarray(resize_lowmem(img, (max(1, round(h * scale)), max(1, round(w * scale))),
                                       1))[..., :3]
        m = _tissue(img)
        pixels.append(img[m] if m.sum() >= 16 else img.reshape(-1, 3))
    return lab_statistics(np.concatenate(pixels)[:, None, :])


def _instance_split(d: float):
    """binary_to_instances with its pixel sizes (set at full resolution) scaled to the level."""
    from .instances import SPLIT_DEFAULTS as S, binary_to_instances

    return lambda m: binary_to_instances(m, min_size=max(2, round(S["min_size"] / d ** 2)),
                                         min_distance=max(1, round(S["min_distance"] / d)),
                                         h=S["h"] / max(d, 1))


def iter_segment_slide(model, slide: Slide, text: str | None = None, *, region=None,
                       level: int | None = None, threshold: float = 0.5,
                       instances: bool = False, block: int = 2048, halo: int | None = None,
                       tissue: bool = False, should_stop: Callable[[], bool] | None = None,
                       name: str = "", workdir=None):
    """Progress generator of :class:`SlideLabels` for ``region`` (x, y, w, h level-0 pixels;
    None = the whole slide), or None when stopped.

    ``level``: pyramid level to read (None = the one closest to the model's working scale,
    :func:`slides.choose_level`). ``block``: core side in level pixels; areas above it are
    streamed with ``halo`` pixels of context per side (default: the model's tile overlap,
    at least 64). ``tissue``:
    skip blocks with no tissue on the coarsest level. Events: ``Progress("predict", block,
    blocks)`` then ``Progress("instances", …)``.
    """
    from .largeimage import lazy_image
    from .prediction import binary_mask, iter_predict

    s = model_scale(model)
    if level is None:
        level, s_lvl = choose_level(slide, s, model_mpp(model))
    else:
        if not 0 <= level < len(slide.levels):
            raise ValueError(f"{slide.path}: level {level} does not exist "
                             f"(0..{len(slide.levels) - 1})")
        s_lvl = s * min(slide.downsamples[level])
    dy, dx = slide.downsamples[level]
    h0, w0 = slide.shapes[0]
    hl, wl = slide.shapes[level]
    x, y, w, h = region if region is not None else (0, 0, w0, h0)
    if x >= w0 or y >= h0:
        raise ValueError(f"{slide.path}: region {x},{y},{w},{h} lies outside the slide "
                         f"({w0}x{h0} level-0 pixels)")
    w, h = min(w, w0 - x), min(h, h0 - y)
    by0, bx0 = int(y / dy), int(x / dx)
    by1, bx1 = min(hl, max(by0 + 1, math.ceil((y + h) / dy))), \
        min(wl, max(bx0 + 1, math.ceil((x + w) / dx)))
    bh, bw = by1 - by0, bx1 - bx0
    # context per side: the model's tile overlap (its blending already discounts tile edges
    # there) in level pixels; instances larger than the halo are re-read whole (stitching)
    cfg = getattr(model, "config", None)
    ov = getattr(cfg, "tile_overlap", None) or (getattr(cfg, "working_size", None) or 256) // 4
    halo = int(halo if halo is not None else min(block // 2,
                                                 max(64, math.ceil(ov / max(s_lvl, 1e-3)))))
    split = _instance_split(min(dy, dx)) if instances else None
    tmp = None
    if bh * bw <= block * block:
        mask = np.zeros((bh, bw), np.uint8)
        labels = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="textdiff-slide-", dir=workdir)
        mask = np.lib.format.open_memmap(Path(tmp.name) / "mask.npy", "w+", np.uint8, (bh, bw))
        labels = None if not instances else np.lib.format.open_memmap(
            Path(tmp.name) / "labels.npy", "w+", np.int32, (bh, bw))
    try:
        from .stitching import block_grid, iter_label_blocks

        cores = block_grid(bh, bw, block) if tmp is not None else [(0, 0, bh, bw)]
        stain = getattr(getattr(model, "config", None), "stain_norm", "")
        found = tissue_mask(slide, (by0, bx0, by1, bx1), level) \
            if tmp is not None and (tissue or stain) else None
        keep, f = found if tissue and found is not None else (None, None)
        stats = None
        if tmp is not None and stain:
            # streamed: one set of colour statistics for the whole area, not one per block
            # (an area that fits in one block is a plain image, normalised by its own)
            yield Progress("predict", 0, len(cores), message=f"{name}: stain statistics")
            stats = slide_stain_statistics(slide, (by0, bx0, by1, bx1), level, s_lvl,
                                           tissue=found, name=name)
        with at_scale(model, s_lvl):
            for i, (cy0, cx0, cy1, cx1) in enumerate(cores):
                if keep is not None and not keep[int(cy0 / f):math.ceil(cy1 / f),
                                                 int(cx0 / f):math.ceil(cx1 / f)].any():
                    yield Progress("predict", i + 1, len(cores), message=f"{name} (background)")
                    continue
                ry0, rx0 = max(0, cy0 - halo), max(0, cx0 - halo)
                ry1, rx1 = min(bh, cy1 + halo), min(bw, cx1 + halo)
                # normalised as a plain image file is (core.largeimage), tile by tile
                img = lazy_image(slide.read(level, by0 + ry0, bx0 + rx0, by0 + ry1, bx0 + rx1),
                                 channels=getattr(model, "channels", None), name=name)
                gen = iter_predict(model, img, text, should_stop=should_stop, name=name,
                                   stain_stats=stats)
                try:
                    while True:
                        ev = next(gen)
                        if len(cores) == 1:          # tiles done/total, as for an image
                            yield ev
                        else:
                            yield Progress("predict", i, len(cores), message=f"{name} block "
                                           f"{i + 1}/{len(cores)}: tile {ev.step}/{ev.total}")
                except StopIteration as stop:
                    prob = stop.value
                if prob is None:
                    if tmp is not None:
                        tmp.cleanup()
                    return None
                # the model's mask on the block with its halo, then the core (holes that
                # reach into the halo are seen whole)
                core = binary_mask(model, prob, threshold)[cy0 - ry0:cy1 - ry0,
                                                            cx0 - rx0:cx1 - rx0]
                mask[cy0:cy1, cx0:cx1] = core
                del img, prob
        if tmp is None:
            from .instances import relabel_sequential

            labels = split(mask) if split is not None else mask.astype(np.int32)
            labels = relabel_sequential(labels) if split is not None else labels
            n = int(labels.max())
        elif split is None:                 # binary output: the mask itself
            labels, n = mask, int(any(mask[r:r + 1024].any() for r in range(0, bh, 1024)))
        else:
            n = yield from iter_label_blocks(mask, labels, block=block, halo=halo,
                                             split=split, should_stop=should_stop,
                                             message=name)
            if n is None:
                del mask, labels
                tmp.cleanup()
                return None
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return SlideLabels(labels, level, (dy, dx), (by0, bx0, by1, bx1), (x, y, w, h), n,
                       slide.mpp, tmp, s_lvl)

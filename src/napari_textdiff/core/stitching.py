"""Instance labels of a mask too large for memory, block by block, with no seam artefacts.

Why: splitting touching nuclei (``instances.binary_to_instances``) on each block alone cuts
every nucleus lying on a block border in two and numbers it twice. Here each connected
component (8-connected, so components never touch) is split exactly once, whole, by the
block that holds its *anchor* (its first pixel in raster order): a block looks at its core
plus a halo, and a component that reaches past the halo is re-read in a larger window until
it fits. Splitting depends only on a component's own pixels, so the result equals splitting
the whole mask at once (ids numbered in block order instead), and memory is bounded by the
block size plus the largest object's bounding box.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .progress import Progress

__all__ = ["iter_label_blocks", "block_grid"]

_EIGHT = np.ones((3, 3), dtype=bool)


def block_grid(h: int, w: int, block: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping cores ``(y0, x0, y1, x1)`` of at most ``block``² covering h×w.
    ``block`` must be a whole number > 0 (0 would loop forever or fail inside ``range``, and
    a negative size would give no block at all: an empty mask)."""
    if isinstance(block, bool) or int(block) != block or block <= 0:
        raise ValueError(f"block size must be a whole number of pixels > 0, got {block!r}")
    block = int(block)
    return [(y, x, min(y + block, h), min(x + block, w))
            for y in range(0, h, block) for x in range(0, w, block)]


def _component(mask, gy: int, gx: int, box, h: int, w: int):
    """The 8-connected component of ``mask`` through (gy, gx), read in a window grown from
    ``box`` until the component does not touch the window's inner edges. Returns
    (window origin y, x, boolean component crop over the window, slices of its bbox)."""
    from scipy import ndimage as ndi

    y0, x0, y1, x1 = box
    while True:
        win = np.asarray(mask[y0:y1, x0:x1]) != 0
        comps, _ = ndi.label(win, structure=_EIGHT)
        k = comps[gy - y0, gx - x0]
        sl = ndi.find_objects((comps == k).astype(np.int32))[0]
        grow = [sl[0].start == 0 and y0 > 0, sl[0].stop == win.shape[0] and y1 < h,
                sl[1].start == 0 and x0 > 0, sl[1].stop == win.shape[1] and x1 < w]
        if not any(grow):
            return y0, x0, comps[sl] == k, sl
        gh, gw = max(y1 - y0, 64), max(x1 - x0, 64)
        y0 = max(0, y0 - gh) if grow[0] else y0
        y1 = min(h, y1 + gh) if grow[1] else y1
        x0 = max(0, x0 - gw) if grow[2] else x0
        x1 = min(w, x1 + gw) if grow[3] else x1


def _holds(rec, gy: int, gx: int) -> bool:
    """Whether the grown component ``rec`` (origin y, x, crop, bbox slices) has (gy, gx)."""
    oy, ox, sub, sl = rec
    ry, rx = gy - oy - sl[0].start, gx - ox - sl[1].start
    return 0 <= ry < sub.shape[0] and 0 <= rx < sub.shape[1] and bool(sub[ry, rx])


def iter_label_blocks(mask, out, block: int = 2048, halo: int = 64,
                      split: Callable[[np.ndarray], np.ndarray] | None = None,
                      should_stop: Callable[[], bool] | None = None, message: str = ""):
    """Fill ``out`` (H, W) int32, zeroed, e.g. a memmap) with instance labels of ``mask``.

    ``split(component_crop) -> int labels`` splits one component (its crop is padded by one
    background pixel first, so the split sees the component as in the whole mask); None keeps
    each component as one object. Yields ``Progress("instances", block, blocks)``; returns
    the number of objects, or None when stopped (``out`` then holds a partial result).
    """
    from scipy import ndimage as ndi

    h, w = int(mask.shape[0]), int(mask.shape[1])
    cores = block_grid(h, w, block)
    next_id = 1
    grown: list = []                     # components read whole (each read once)
    for i, (y0, x0, y1, x1) in enumerate(cores):
        if should_stop is not None and should_stop():
            return None
        wy0, wx0 = max(0, y0 - halo), max(0, x0 - halo)
        wy1, wx1 = min(h, y1 + halo), min(w, x1 + halo)
        win = np.asarray(mask[wy0:wy1, wx0:wx1]) != 0
        if not win[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0].any():
            yield Progress("instances", i + 1, len(cores), message=message)
            continue
        comps, _ = ndi.label(win, structure=_EIGHT)
        for k, sl in enumerate(ndi.find_objects(comps), 1):
            if sl is None:
                continue
            sub = comps[sl] == k
            gy, gx = wy0 + sl[0].start, wx0 + sl[1].start + int(np.argmax(sub[0]))
            if not (y0 <= gy < y1 and x0 <= gx < x1):
                continue                 # its anchor lies in another block's core
            touches = ((sl[0].start == 0 and wy0 > 0) or (sl[0].stop == win.shape[0] and wy1 < h)
                       or (sl[1].start == 0 and wx0 > 0) or (sl[1].stop == win.shape[1] and wx1 < w))
            oy, ox = wy0, wx0
            if touches:                  # reaches past the halo: read it whole (once)
                hit = next((r for r in grown if _holds(r, gy, gx)), None)
                if hit is None:
                    oy, ox, sub, sl = _component(mask, gy, gx, (wy0, wx0, wy1, wx1), h, w)
                    hit = (oy, ox, sub, sl)
                    grown.append(hit)
                oy, ox, sub, sl = hit
                ay, ax = oy + sl[0].start, ox + sl[1].start + int(np.argmax(sub[0]))
                if not (y0 <= ay < y1 and x0 <= ax < x1):
                    continue             # its true anchor lies in another block's core
            if split is None:
                lab = sub.astype(np.int32)
            else:
                lab = np.asarray(split(np.pad(sub, 1)))[1:-1, 1:-1].astype(np.int32)
                lab[~sub] = 0
            n = int(lab.max())
            if n == 0:
                continue
            ys = slice(oy + sl[0].start, oy + sl[0].stop)
            xs = slice(ox + sl[1].start, ox + sl[1].stop)
            dst = np.asarray(out[ys, xs])
            fg = lab > 0
            dst[fg] = lab[fg] + (next_id - 1)
            out[ys, xs] = dst
            next_id += n
        yield Progress("instances", i + 1, len(cores), message=message)
    if isinstance(out, np.memmap):
        out.flush()
    return next_id - 1

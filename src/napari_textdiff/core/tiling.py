"""Sliding-window prediction for images of any size, streamed tile batch by tile batch.

Why: the models see fixed-size tiles (256² for TextDiff/MGCC) but whole-slide H&E images and
chest X-rays are larger. Tiles overlap and are blended with a separable raised-cosine window
normalised by the accumulated weights, so seams vanish and a translation-equivariant model
gives the whole-image answer away from the tile borders. Tiles are read from ``image`` only
when their batch runs, so ``image`` may be a memmap or a lazy store and ``out`` a memmap: the
memory used is about one batch of tiles besides the output.

Because the window is separable (per axis it depends only on the tile's start) and the tile
grid is a product grid, the accumulated weight is the outer product of two 1-D sums: no
(H, W) weight buffer is needed.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

__all__ = ["iter_tile_boxes", "tile_starts", "blend_window", "predict_tiled", "iter_tiled"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: every ``tile - overlap``, the last flush with the end."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def iter_tile_boxes(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """Boxes ``(y0, x0, y1, x1)`` covering an h×w image, row-major. A box is ``tile`` wide
    except along an axis shorter than the tile (then it is the whole axis and gets padded)."""
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    for y0 in tile_starts(h, tile, overlap):
        for x0 in tile_starts(w, tile, overlap):
            yield y0, x0, min(y0 + tile, h), min(x0 + tile, w)


def blend_window(tile: int, overlap: int, margin: int | None = None) -> np.ndarray:
    """1-D weights for one tile: near zero (1e-6) over the outer ``margin`` pixels, a
    raised-cosine ramp over the next ``overlap - 2*margin``, 1 in the middle.

    Why the margin: a convolutional model's output is wrong within its receptive radius of a
    tile edge (it sees padding there), so those pixels are taken from the neighbouring tile,
    which sees them in its interior (possible while ``margin <= overlap / 2``). At the image
    border only one tile covers a pixel and the normalisation keeps its value exactly, so
    weights stay strictly positive. ``margin`` defaults to ``overlap // 4``.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap <= 0:
        return w
    m = overlap // 4 if margin is None else int(margin)
    m = max(0, min(m, overlap // 2, tile // 2))
    r = min(overlap - 2 * m, tile // 2 - m)
    edge = np.full(m + max(r, 0), 1e-6)
    if r > 0:
        edge[m:] = np.maximum(0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r), 1e-6)
    w[:len(edge)] = edge
    w[tile - len(edge):] = edge[::-1]
    return w


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def predict_tiled(image, predict_fn: Callable[[np.ndarray], np.ndarray], tile: int = 256,
                  overlap: int = 32, batch_size: int = 4, out_channels: int = 1, out=None,
                  progress: Callable[[int, int], None] | None = None,
                  pad_mode: str = "reflect", margin: int | None = None) -> np.ndarray:
    """Apply ``predict_fn`` to overlapping tiles and blend the results into (K, H, W) float32.

    ``image``: (H, W, C) or (H, W), any array-like supporting slicing (np.ndarray, np.memmap,
    a tifffile/zarr store); tiles are converted to float32 as they are (normalise before).
    ``predict_fn``: float32 (B, tile, tile, C) -> (B, K, tile, tile) (numpy or torch).
    Tiles crossing an image edge shorter than the tile are padded (``pad_mode``, reflect by
    default) and cropped back. ``out``: optional preallocated (K, H, W) float32 array
    (e.g. an np.memmap) which is filled and returned. ``progress(done, total)`` after each
    batch (in tiles). ``margin``: tile-edge pixels trusted least (see :func:`blend_window`;
    set it to the model's receptive radius when ``overlap >= 2 * radius``).
    The same work as a progress generator (with Stop between batches): :func:`iter_tiled`.
    """
    gen = iter_tiled(image, predict_fn, tile=tile, overlap=overlap, batch_size=batch_size,
                     out_channels=out_channels, out=out, pad_mode=pad_mode, margin=margin)
    try:
        while True:
            ev = next(gen)
            if progress is not None:
                progress(ev.step, ev.total)
    except StopIteration as stop:
        return stop.value


def iter_tiled(image, predict_fn: Callable[[np.ndarray], np.ndarray], tile: int = 256,
               overlap: int = 32, batch_size: int = 4, out_channels: int = 1, out=None,
               pad_mode: str = "reflect", margin: int | None = None,
               should_stop: Callable[[], bool] | None = None, stage: str = "predict",
               message: str = ""):
    """:func:`predict_tiled` as a progress generator: one ``Progress(stage, done, total)``
    per tile batch; returns the blended (K, H, W) map, or ``None`` when ``should_stop()``
    turned true between batches (nothing partial is returned, so callers keep what they had).
    """
    from .progress import Progress

    shape = tuple(image.shape)
    if len(shape) == 2:
        h, w, c, gray2d = shape[0], shape[1], 1, True
    elif len(shape) == 3:
        (h, w, c), gray2d = shape, False
    else:
        raise ValueError(f"predict_tiled expects (H, W) or (H, W, C), got shape {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    boxes = list(iter_tile_boxes(h, w, tile, overlap))
    k = int(out_channels)
    rows = max(1, (1 << 18) // max(1, w * k))   # row chunk for whole-output passes (~1 MB)
    if out is None:
        out = np.zeros((k, h, w), dtype=np.float32)
    else:
        if tuple(out.shape) != (k, h, w):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {(k, h, w)}")
        for r0 in range(0, h, rows):
            out[:, r0:r0 + rows] = 0
    base = blend_window(tile, overlap, margin)

    def axis_windows(size: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
        # sides lying on the image border are not tapered: no other tile covers them there
        wins, acc = {}, np.zeros(size, dtype=np.float64)
        for s0 in tile_starts(size, tile, overlap):
            v = base.copy()
            if s0 == 0:
                v[:tile // 2] = 1.0
            if s0 + tile >= size:
                v[tile // 2:] = 1.0
            v = v[:min(tile, size - s0)]
            wins[s0] = v
            acc[s0:s0 + len(v)] += v
        return wins, acc

    win_y, wy = axis_windows(h)
    win_x, wx = axis_windows(w)

    total = len(boxes)
    done = 0
    for b0 in range(0, total, batch_size):
        if should_stop is not None and should_stop():
            return None
        chunk = boxes[b0:b0 + batch_size]
        batch = np.empty((len(chunk), tile, tile, c), dtype=np.float32)
        for i, (y0, x0, y1, x1) in enumerate(chunk):
            t = np.asarray(image[y0:y1, x0:x1], dtype=np.float32)
            if gray2d:
                t = t[..., None]
            th, tw = y1 - y0, x1 - x0
            if th < tile or tw < tile:
                # reflect needs >= 2 pixels to mirror; a 1-pixel edge is repeated instead
                mode = "edge" if pad_mode == "reflect" and min(th, tw) == 1 else pad_mode
                t = np.pad(t, ((0, tile - th), (0, tile - tw), (0, 0)), mode=mode)
            batch[i] = t
        pred = _to_numpy(predict_fn(batch))
        if pred.shape != (len(chunk), k, tile, tile):
            raise ValueError(f"predict_fn returned shape {pred.shape}, expected "
                             f"{(len(chunk), k, tile, tile)} (B, K, tile, tile)")
        for i, (y0, x0, y1, x1) in enumerate(chunk):
            th, tw = y1 - y0, x1 - x0
            wgt = np.outer(win_y[y0], win_x[x0]).astype(np.float32)
            out[:, y0:y1, x0:x1] += pred[i, :, :th, :tw] * wgt
        done += len(chunk)
        del batch, pred
        yield Progress(stage, done, total, message=message)
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        out[:, r0:r1] /= np.outer(wy[r0:r1], wx).astype(np.float32)[None]
    if isinstance(out, np.memmap):
        out.flush()
    return out

"""Labels of a slide written as a tiled, pyramidal TIFF, streamed tile by tile.

Why: a whole slide's labels at full resolution are billions of pixels (32 768² int32 is
4.3 GB); they are kept at the working level (``wsi.SlideLabels``) and every output tile is
nearest-resized from there as tifffile asks for it, so memory stays one tile per level. The
file opens in napari (this plugin's reader, as a multiscale Labels layer), QuPath and any
TIFF reader; level 0 covers exactly the requested region.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["write_label_pyramid"]


def _tiles(src, box, ds, region, f: float, shape, tile: int):
    """Tiles of the output level with downsample ``f`` (vs level 0), row-major, padded."""
    x0, y0 = region[0], region[1]
    h, w = shape
    dy, dx = ds
    for ty in range(0, h, tile):
        rows = np.arange(ty, min(ty + tile, h))
        iy = np.clip(((y0 + (rows + 0.5) * f) / dy).astype(np.int64) - box[0], 0,
                     src.shape[0] - 1)
        band = np.asarray(src[iy.min():iy.max() + 1])
        for tx in range(0, w, tile):
            cols = np.arange(tx, min(tx + tile, w))
            ix = np.clip(((x0 + (cols + 0.5) * f) / dx).astype(np.int64) - box[1], 0,
                         src.shape[1] - 1)
            t = np.zeros((tile, tile), src.dtype)
            t[:len(rows), :len(cols)] = band[np.ix_(iy - iy.min(), ix)]
            yield t


def write_label_pyramid(path, result, *, tile: int = 512, min_size: int = 1024,
                        compression: str = "zlib") -> str:
    """Write ``result`` (a :class:`wsi.SlideLabels`) as a pyramidal tiled TIFF at ``path``
    (atomically): level 0 = the requested level-0 region, sub-levels 4x smaller each until
    under ``min_size`` px, nearest-resized (ids kept); resolution tags carry the MPP."""
    import tifffile

    from .bundle import atomic_write

    src, box, ds, region = result.labels, result.box, result.downsample, result.region
    w0, h0 = int(region[2]), int(region[3])
    dtype = np.uint8 if src.dtype == np.uint8 else np.uint32
    if dtype == np.uint32 and src.dtype != np.uint32:
        src = src.view(np.uint32) if src.dtype == np.int32 else src.astype(np.uint32)
    factors = [1.0]
    while max(h0, w0) / (factors[-1] * 4) >= min_size:
        factors.append(factors[-1] * 4)
    extra = {}
    if result.mpp:
        extra = {"resolution": (1e4 / result.mpp, 1e4 / result.mpp),
                 "resolutionunit": "CENTIMETER"}

    def write(tmp: str) -> None:
        with tifffile.TiffWriter(tmp, bigtiff=h0 * w0 * 4 > 2 ** 31) as tif:
            for i, f in enumerate(factors):
                shape = (max(1, math.ceil(h0 / f)), max(1, math.ceil(w0 / f)))
                tif.write(_tiles(src, box, ds, region, f, shape, tile), shape=shape,
                          dtype=dtype, tile=(tile, tile), compression=compression,
                          photometric="minisblack", metadata=None,
                          subifds=len(factors) - 1 if i == 0 else None,
                          subfiletype=1 if i else 0, **(extra if i == 0 else {}))

    atomic_write(path, write)
    return str(path)

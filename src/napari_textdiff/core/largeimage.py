"""Whole-slide-sized images with bounded memory: lazy normalisation and per-channel resizing.

Why: a 12 000² RGB image is 432 MB as uint8 but 1.7 GB as the float32 ``(H, W, 3)`` the models
take, and resizing it with ``skimage.transform.resize`` holds a second filtered copy (the
fault trial measured 5.7 GB peak, ~30 bytes per pixel). Here the image stays in its stored
dtype (or on disk as a memmap):

* :class:`LazyImage` normalises only the tile that is sliced (:func:`core.normalize
  .normalize_image` rules, with one white level for the whole image, so tiles agree);
* :func:`resize_lowmem` resizes one channel at a time (a gray image repeated to 3 channels is
  resized once) by ``skimage.transform.resize``'s steps (its anti-aliasing filter and zoom act
  on each channel alone), so small and large images give the same answer to float rounding.

Peak memory above the stored image: 4 bytes a pixel (one float32 channel, filtered in place,
while it is resized; the float32 probability map after).
"""
from __future__ import annotations

import numpy as np

from .normalize import luma, normalize_image, white_level

__all__ = ["LazyImage", "lazy_image", "resize_lowmem", "measure_large_image"]

_ROWS = 512     # rows per chunk for whole-image passes (min/max, channel extraction)


class LazyImage:
    """A normalised float32 ``(H, W, C)`` view of a raw image; slicing reads only that part.

    ``raw``: (H, W) or (H, W, C) array-like in its stored dtype (ndarray, np.memmap, a
    tifffile/zarr store) of uint8, uint16, bool, or float already in [0, 1]; ``white`` the
    white level the file declares. ``channels`` 1 or 3 converts as ``normalize_image`` does.
    """

    def __init__(self, raw, channels: int | None = None, white: float | None = None,
                 name: str = "image"):
        self.raw = raw
        shape = tuple(raw.shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"{name}: expected (H, W) or (H, W, C), got shape {shape}")
        c_in = 1 if len(shape) == 2 else shape[2]
        c_in = {2: 1, 4: 3}.get(c_in, c_in)          # alpha dropped
        if c_in not in (1, 3):                       # stacks, channels-first: whole-image rules
            raise ValueError(f"{name}: shape {shape} is not (H, W) or (H, W, C<=4)")
        self.gray_source = c_in == 1
        self.channels = channels or c_in
        self.shape = (shape[0], shape[1], self.channels)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        kind = np.dtype(raw.dtype)
        if kind in (np.uint8, np.uint16):
            if kind == np.uint8:
                self.level = 255.0
            else:
                top = max(int(np.max(raw[r:r + _ROWS])) for r in range(0, shape[0], _ROWS))
                self.level = white_level(np.array([top], np.uint16), white, name)
        elif kind == np.bool_:
            self.level = 1.0
        elif kind.kind == "f" and _inside_01(raw):
            self.level = 1.0
        else:
            raise ValueError(f"{name}: {kind} data outside [0, 1] needs the whole-image "
                             "normalisation; use normalize_image")

    def _channels(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t)
        if t.ndim == 2:
            t = t[:, :, None]
        if t.shape[-1] == 2:
            t = t[..., :1]
        elif t.shape[-1] == 4:
            t = t[..., :3]
        x = t.astype(np.float32)
        if self.level != 1.0:
            x /= np.float32(self.level)
        if self.channels == 3 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        elif self.channels == 1 and x.shape[-1] == 3:
            x = luma(x)
        return x

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows, cols = (tuple(key) + (slice(None), slice(None)))[:2]
        x = self._channels(self.raw[rows, cols])
        return x[(slice(None), slice(None)) + tuple(key[2:])] if len(key) > 2 else x

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        step = self._rows()
        for r in range(0, self.shape[0], step):
            out[r:r + step] = self[r:r + step]
        return out if dtype is None else out.astype(dtype, copy=False)

    def _rows(self) -> int:
        """Rows per chunk for whole-image passes: about 1 MB of float32 at a time."""
        return max(8, (1 << 18) // max(1, self.shape[1] * self.shape[2]))

    def channel(self, k: int) -> np.ndarray:
        """Channel ``k`` as float32 (H, W), built in row chunks (4 bytes per pixel)."""
        out = np.empty(self.shape[:2], np.float32)
        step = self._rows()
        for r in range(0, self.shape[0], step):
            if self.gray_source:              # no 3-channel repeat for a gray image
                t = np.asarray(self.raw[r:r + step])
                t = t if t.ndim == 2 else t[..., 0]
                out[r:r + step] = t
                if self.level != 1.0:
                    out[r:r + step] /= np.float32(self.level)
            else:
                out[r:r + step] = self[r:r + step][..., k]
        return out


def _inside_01(raw) -> bool:
    for r in range(0, raw.shape[0], _ROWS):
        part = np.asarray(raw[r:r + _ROWS])
        if not np.isfinite(part).all() or part.min() < 0 or part.max() > 1:
            return False
    return True


def lazy_image(image, channels: int | None = None, white: float | None = None,
               name: str = "image"):
    """A :class:`LazyImage` of ``image`` where its dtype allows one, else the whole-image
    ``normalize_image`` result (float data outside [0, 1] needs its percentiles)."""
    if isinstance(image, LazyImage):
        if channels in (None, image.channels):
            return image
        return LazyImage(image.raw, channels, None, name)
    try:
        return LazyImage(image if hasattr(image, "shape") else np.asarray(image), channels,
                         white, name)
    except ValueError:
        return normalize_image(np.asarray(image), channels=channels, white=white, name=name)


def resize_lowmem(image, shape: tuple[int, int], order: int = 1,
                  dtype=np.float32) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode="reflect", preserve_range=True,
    anti_aliasing=<when shrinking>)`` one channel at a time; ``image`` may be a
    :class:`LazyImage` (its channels are built one by one; a repeated gray channel once).

    Returns (h, w, C) for 3-D input, (h, w) for 2-D; the input itself when the size is
    unchanged (a LazyImage stays lazy).
    """
    from scipy import ndimage as ndi

    shape = (int(shape[0]), int(shape[1]))
    if tuple(image.shape[:2]) == shape:
        return image
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]

    def one(a2d, own: bool):
        # skimage.transform.resize's steps (float32 kept, mode "reflect" = ndimage "mirror"),
        # the anti-aliasing filter in place on a channel we own
        lo, hi = float(a2d.min()), float(a2d.max())
        factors = np.divide(a2d.shape, shape)
        if order > 0 and shrink:
            sigma = np.maximum(0, (factors - 1) / 2)
            a2d = ndi.gaussian_filter(a2d, sigma, mode="mirror", output=a2d if own else None)
        out = ndi.zoom(a2d, 1 / factors, order=order, mode="mirror", grid_mode=True)
        if order > 0:
            np.clip(out, lo, hi, out=out)
        return out.astype(dtype, copy=False)

    if len(image.shape) == 2:
        a = np.asarray(image)
        return one(a.astype(np.float32, copy=False), own=a.dtype != np.float32)
    c = image.shape[2]
    out = np.empty(shape + (c,), dtype)
    lazy = isinstance(image, LazyImage)
    if lazy and image.gray_source and c == 3:
        out[...] = one(image.channel(0), own=True)[..., None]
        return out
    for k in range(c):
        out[..., k] = (one(image.channel(k), own=True) if lazy else
                       one(np.ascontiguousarray(image[..., k], np.float32), own=False))
    return out


def measure_large_image(model, side: int = 4096, text: str = "", seed: int = 0) -> dict:
    """Bytes per pixel (traced peak of the buffers one prediction allocates, the stored uint8
    image excluded) and seconds per megapixel of ``model`` on a ``side``² gray image: the
    numbers the speed benchmark reports for large images."""
    import time
    import tracemalloc

    img = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    model.predict_proba(img, text)
    seconds = time.monotonic() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if not tracing:
        tracemalloc.stop()
    mp = img.size / 1e6
    return {"bytes_per_pixel": round(peak / img.size, 2), "seconds_per_mp": round(seconds / mp, 3),
            "megapixels": round(mp, 2)}

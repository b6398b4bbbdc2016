"""The one image normalisation the models see, and the one mask rule training uses.

Images (:func:`normalize_image`) become float32 ``(H, W, C)`` in ``[0, 1]``:

* ``bool`` -> {0, 1}; ``uint8`` -> / 255;
* ``uint16`` -> / its *white level*: the one the file declares (TIFF BitsPerSample or
  MaxSampleValue, PNG sBIT; passed as ``white``), else the smallest of the 8-, 10-, 12-, 14- and
  16-bit ranges that holds the image's maximum. Detectors store 10/12/14-bit data in 16-bit
  files, and dividing 12-bit data by 65 535 gives a dark image and a different mask than the
  same picture as 8-bit. A warning names the file when the data does not fit the declared
  range, or uses under 1/16 of it;
* float arrays whose finite values already lie in ``[0, 1]`` are kept (normalising twice is a
  no-op);
* every other float or integer array -> robust min-max: the 0.5th and 99.5th percentiles (over
  all pixels and channels together, so colours keep their balance) map to 0 and 1, then clip;
  a constant image becomes 0. NaN/inf become 0.
* channels: RGBA / gray+alpha drop alpha; ``channels=3`` repeats gray; ``channels=1`` converts
  RGB by luminance with the ITU-R BT.601 weights (0.299, 0.587, 0.114, as Pillow's ``"L"``).

Masks (:func:`binary_mask`): the rule of :func:`core.io.read_mask` for arrays, so a mask drawn in
napari, passed to the API or read from a file means the same thing: bool/integer -> nonzero is
foreground; float in [0, 1] -> above 0.5; other floats -> nonzero; NaN, no mask, or a mask that
is not 2-D are errors. Descriptions (:func:`clean_text`) must be strings.
Batches of normalised images become network input with :func:`to_model_channels`.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["normalize_image", "white_level", "binary_mask", "clean_text", "to_model_channels",
           "LUMA_BT601", "luma"]

LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_DEPTHS = (8, 10, 12, 14, 16)


def _as_hwc(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3:
        if arr.shape[-1] <= 4:
            return arr
        if arr.shape[0] in (1, 3, 4):  # channels-first (C, H, W)
            return np.moveaxis(arr, 0, -1)
        raise ValueError(f"array of shape {arr.shape} looks like a stack of {arr.shape[0]} "
                         f"planes, not an image: pick one plane")
    raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {arr.shape}")


def white_level(a, white: float | None = None, name: str = "image") -> float | None:
    """The value that maps to 1 for ``uint8``/``uint16`` data (None for other dtypes).

    Exposed so a large image read tile by tile is scaled by one whole-image level, not one
    per tile.
    """
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return 255.0
    if a.dtype != np.uint16:
        return None
    top = int(a.max()) if a.size else 0
    if white:
        if top > white:
            warnings.warn(f"{name}: values up to {top} exceed the declared maximum "
                          f"{white:g}; scaling by 65535 instead", stacklevel=3)
            return 65535.0
        if 0 < top < white / 16:
            warnings.warn(f"{name}: the brightest value {top} uses under 1/16 of the declared "
                          f"range 0..{white:g}: the image will look dark to the model",
                          stacklevel=3)
        return float(white)
    for bits in _DEPTHS:
        if top <= 2 ** bits - 1:
            return float(2 ** bits - 1)
    return 65535.0


def normalize_image(arr, channels: int | None = None, white: float | None = None,
                    name: str = "image") -> np.ndarray:
    """float32 (H, W, C) in [0, 1] with C = 1 or 3 (see the module docstring for the rules).

    ``channels=None`` keeps gray as 1 channel and colour as 3; 1 or 3 forces that count.
    ``white``: the white level the file declares for integer data (None: inferred).
    """
    a = np.asarray(arr)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"unsupported image dtype {a.dtype}: expected bool, integer or float")
    a = _as_hwc(a)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image has no pixels (shape {a.shape})")
    c = a.shape[-1]
    if c == 2:      # gray + alpha
        a = a[..., :1]
    elif c == 4:    # RGBA
        a = a[..., :3]
    level = white_level(a, white, name) if a.dtype in (np.uint8, np.uint16) else None
    if a.dtype == np.bool_:
        x = a.astype(np.float32)
    elif level is not None:
        x = a.astype(np.float32)
        x /= np.float32(level)
    else:
        x = a.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, np.float32(0))
        inside = a.dtype.kind == "f" and x.size and float(x.min()) >= 0 and float(x.max()) <= 1
        if not inside:
            lo, hi = np.percentile(x, [0.5, 99.5])
            if hi > lo:
                x = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0, 1)
            else:
                x = np.zeros_like(x)
    c = x.shape[-1]
    if channels == 3 and c == 1:
        x = np.repeat(x, 3, axis=-1)
    elif channels == 1 and c == 3:
        x = luma(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) float32 → (..., 1) BT.601 luma, summed elementwise: ``rgb @ LUMA`` goes through
    BLAS, whose summation order depends on the array's layout, so a lazy tile and the whole
    image would differ in the last bit."""
    w = LUMA_BT601
    return (rgb[..., 0] * w[0] + rgb[..., 1] * w[1] + rgb[..., 2] * w[2])[..., None]


def binary_mask(mask, name: str = "") -> np.ndarray:
    """uint8 {0, 1} (H, W) by the one mask rule (module docstring); clear errors otherwise."""
    who = f"mask of {name}" if name else "mask"
    if mask is None:
        raise ValueError(f"{who}: no mask given (None); draw or load a mask first")
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"{who}: expected a 2-D (H, W) mask, got shape {m.shape}")
    if m.dtype.kind not in "biuf":
        raise ValueError(f"{who}: unsupported dtype {m.dtype}: expected bool, integer or float")
    if m.dtype.kind == "f":
        if np.isnan(m).any():
            raise ValueError(f"{who}: holds NaN values ({int(np.isnan(m).sum())} pixels); "
                             "a mask must say foreground or background everywhere")
        finite = m[np.isfinite(m)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return (m > 0.5).astype(np.uint8)
    return (m != 0).astype(np.uint8)


def clean_text(text, name: str = "description") -> str:
    """A description as the text encoder may see it: ``None`` -> ""; a non-string is refused
    (``str(42)`` or a list's repr would silently change the result); lone surrogates (from
    undecodable command-line bytes) become U+FFFD instead of a tokenizer traceback."""
    if text is None:
        return ""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{name} must be a str, got bytes: decode it first, e.g. "
                        "text.decode('utf-8')")
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__} ({text!r:.40})")
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def to_model_channels(images, channels: int):
    """(B, H, W, C) float array/tensor in [0, 1] -> (B, channels, H, W) tensor in [-1, 1]."""
    import torch

    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[..., None]
    x = x.permute(0, 3, 1, 2)
    c = x.shape[1]
    if c == 4:                       # drop alpha
        x, c = x[:, :3], 3
    if c != channels:
        if channels == 1:
            x = x.mean(1, keepdim=True) if c == 3 else x[:, :1]
        elif channels == 3 and c == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    return (x * 2 - 1).contiguous()

"""Reading and writing images and masks: the entry points every caller uses.

Why one module: every entry point (widgets, CLI, training, benchmark) must turn a file into the
same float32 ``(H, W, C)`` array in ``[0, 1]``, and every failure must name the file and the
problem instead of surfacing as a deep library traceback. The format readers live in
:mod:`core.readers`, the normalisation and the mask rule in :mod:`core.normalize` (both
re-exported here).

Masks (:func:`read_mask`): binary masks are ``uint8`` {0, 1} (the rule of
:func:`core.normalize.binary_mask`, except lossy JPEG masks which are thresholded at half the
range; RGBA masks use the red channel, as in the chest X-ray data); instance masks are
``int32`` labels, 0 = background.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from .bundle import atomic_write
from .normalize import LUMA_BT601, binary_mask, normalize_image, white_level
from .readers import (DICOM_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES, ImageReadError, check_file,
                      is_dicom, pil_limit, read_raw)

__all__ = [
    "ImageReadError", "IMAGE_SUFFIXES", "MASK_SUFFIXES", "read_image", "normalize_image",
    "load_image", "read_mask", "write_mask", "write_image", "check_same_shape", "image_shape",
    "is_image_file", "open_lazy", "load_lazy", "binary_mask", "white_level", "LUMA_BT601",
]

IMAGE_SUFFIXES = TIFF_SUFFIXES + DICOM_SUFFIXES + PIL_SUFFIXES + (".npy",)
MASK_SUFFIXES = TIFF_SUFFIXES + (".png", ".bmp", ".npy", ".jpg", ".jpeg")


def is_image_file(path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _read(path, plane):
    arr, white = read_raw(path, plane)
    p = Path(path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] > 4):
        raise ImageReadError(p, f"unsupported image shape {arr.shape}: expected (H, W) or "
                                f"(H, W, C) with C <= 4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(p, f"image has no pixels (shape {arr.shape})")
    return arr, white


def read_image(path, plane: int | None = None) -> np.ndarray:
    """The raw pixel array of an image file (no normalisation).

    TIFF (8/16-bit, float, gray/RGB/RGBA, OME, multi-page, one series per page), DICOM
    (rescaled + windowed), PNG/JPEG/BMP/GIF/WebP via Pillow (large images allowed), and
    ``.npy`` (see :mod:`core.readers`). Files holding several planes (pages, series, Z/T,
    frames) need ``plane``; otherwise the error says how many there are. A ``plane`` the file
    does not have is refused, also on a single-plane file. Returns (H, W) or (H, W, C).
    """
    return _read(path, plane)[0]


def image_shape(path) -> tuple[int, int]:
    """(H, W) of an image file, from its header where possible (no full decode)."""
    p = check_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in PIL_SUFFIXES and not is_dicom(p):
            from PIL import Image
            with pil_limit(), Image.open(p) as im:
                return int(im.size[1]), int(im.size[0])
        if suffix in TIFF_SUFFIXES:
            import tifffile
            with tifffile.TiffFile(p) as tf:
                s = tf.series[0]
                if "Y" in s.axes and "X" in s.axes:
                    return int(s.shape[s.axes.index("Y")]), int(s.shape[s.axes.index("X")])
    except Exception:
        pass
    a = read_image(p, plane=0)
    return int(a.shape[0]), int(a.shape[1])


def _open_lazy(path, plane):
    """(raw sliceable array, declared white level): a memmap where the file allows one."""
    p = check_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise ImageReadError(p, f"cannot read .npy ({e})") from e
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] <= 4):
            if plane not in (None, 0, -1):
                raise ImageReadError(p, f"plane {plane} is out of range: the file has 1 plane "
                                        "(only plane 0)")
            return a, None
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        from .readers import _tiff_white
        try:
            with tifffile.TiffFile(p) as tf:
                s = tf.series[0]
                simple = (len(tf.series) == 1 and s.axes in ("YX", "YXS")
                          and s.dataoffset is not None and plane in (None, 0, -1))
                white = _tiff_white(tf.pages[0], s.dtype) if simple else None
            if simple:
                return tifffile.memmap(p, mode="r"), white
        except Exception:
            pass
    return _read(p, plane)


def open_lazy(path, plane: int | None = None):
    """A sliceable view of a (large) image without reading it all: a read-only memmap for
    ``.npy`` and uncompressed contiguous single-image TIFFs, otherwise the fully read array
    (raw dtype; :func:`load_lazy` adds the normalisation)."""
    return _open_lazy(path, plane)[0]


def load_lazy(path, channels: int | None = None, plane: int | None = None):
    """:func:`load_image` for whole-slide-sized files: a :class:`core.largeimage.LazyImage`
    that normalises only the tiles a model reads (the file stays memory-mapped where it can,
    else in its stored dtype: 1-3 bytes a pixel, not 12). Float data outside [0, 1] falls
    back to the whole-image :func:`load_image`."""
    from .largeimage import lazy_image

    raw, white = _open_lazy(path, plane)
    try:
        return lazy_image(raw, channels=channels, white=white, name=str(path))
    except ValueError as e:
        raise ImageReadError(path, str(e)) from e


def load_image(path, channels: int | None = None, plane: int | None = None) -> np.ndarray:
    """An image file as the models see it: ``normalize_image(read_image(path, plane),
    channels)`` with the white level the file declares (bit depth).

    Args:
        path: TIFF (8/16-bit, multi-page), PNG, JPEG, DICOM, ``.npy``...
        channels: 1 (gray, BT.601 luminance) or 3 (RGB); ``None`` keeps the file's.
        plane: which page / frame of a multi-plane file (required when there are several).

    Returns:
        float32 (H, W, C) in [0, 1].

    Raises:
        ImageReadError: unreadable or unsupported file (the message names it).
    """
    arr, white = _read(path, plane)
    try:
        return normalize_image(arr, channels=channels, white=white, name=str(path))
    except ValueError as e:
        raise ImageReadError(path, str(e)) from e


# ------------------------------------------------------------------------------------- masks
def read_mask(path, instances: bool = False, threshold: float | None = None,
              plane: int | None = None) -> np.ndarray:
    """A mask file as binary ``uint8`` {0, 1} (default) or ``int32`` instance labels.

    Binary: RGBA -> red channel (falls back to alpha when red is constant); RGB -> any channel;
    foreground = value > ``threshold`` if given, else nonzero (JPEG masks, being lossy: above half
    the dtype range; float masks within [0, 1]: > 0.5).
    Instances: integer ids are kept (8-bit 0/255 masks give ids {0, 1}); RGB colour-coded labels
    get one id per colour.
    """
    a = read_image(path, plane=plane)
    p = Path(path)
    if a.ndim == 3:
        if a.shape[-1] == 4:
            red, alpha = a[..., 0], a[..., 3]
            a = alpha if (red.min() == red.max() and alpha.min() != alpha.max()) else red
        elif a.shape[-1] == 2:
            a = a[..., 0]
        elif instances:
            cols = a.reshape(-1, a.shape[-1])
            uniq, inv = np.unique(cols, axis=0, return_inverse=True)
            black = (uniq == 0).all(axis=1)
            # black is background (0); the other colours get ids 1..n in sorted colour order
            ids = np.cumsum(~black).astype(np.int64)
            ids[black] = 0
            return ids[inv.reshape(-1)].reshape(a.shape[:2]).astype(np.int32)
        else:
            a = a.max(axis=-1)
    if instances:
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
                raise ImageReadError(p, "instance mask holds non-integer values")
        if a.dtype.kind == "b":
            return a.astype(np.int32)
        if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
            raise ImageReadError(p, f"label ids out of range [{a.min()}, {a.max()}]")
        if a.dtype == np.uint8:
            u = np.unique(a)
            if set(u.tolist()) <= {0, 255}:
                return (a > 0).astype(np.int32)
        return a.astype(np.int32)
    if threshold is not None:
        return (a > threshold).astype(np.uint8)
    if p.suffix.lower() in (".jpg", ".jpeg") and a.dtype.kind in "ui":
        return (a > np.iinfo(a.dtype).max // 2).astype(np.uint8)
    try:
        return binary_mask(a)        # the one mask rule (core.normalize)
    except ValueError as e:
        raise ImageReadError(p, str(e)) from e


def check_same_shape(image, mask, image_path=None, mask_path=None) -> None:
    """Raise ValueError naming both files when the mask is not (H, W) of the image."""
    ishape = tuple(np.shape(image))[:2] if not isinstance(image, tuple) else image[:2]
    mshape = tuple(np.shape(mask)) if not isinstance(mask, tuple) else mask
    if len(mshape) != 2 or tuple(mshape) != tuple(ishape):
        ip = Path(image_path).name if image_path is not None else "the image"
        mp = Path(mask_path).name if mask_path is not None else "the mask"
        raise ValueError(f"mask {mp} has shape {tuple(mshape)} but image {ip} is "
                         f"{ishape[0]}x{ishape[1]} (H x W): they must match")


# ------------------------------------------------------------------------------------ writing
def write_mask(path, mask) -> Path:
    """Write a binary or label mask as TIFF (``.tif/.tiff``) or PNG (``.png``), atomically.

    Binary masks (bool, or uint8 with values in {0, 1}) are stored 0/255 so they are visible in
    any viewer; :func:`read_mask` maps them back to {0, 1}. Other integer masks are labels and
    keep their ids (PNG: uint8/uint16, so ids must be <= 65535; TIFF: any integer dtype).
    """
    path = Path(path)
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{path.name}: a mask must be 2-D (H, W), got shape {m.shape}")
    if m.dtype.kind not in "biu":
        raise ValueError(f"{path.name}: mask dtype {m.dtype} is not bool/integer")
    if m.dtype == np.bool_ or (m.dtype == np.uint8 and (m.size == 0 or m.max() <= 1)):
        out = np.multiply(m, np.uint8(255), dtype=np.uint8)   # one copy (large masks)
    else:
        if m.size and m.min() < 0:
            raise ValueError(f"{path.name}: negative label ids")
        out = m
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile
        if out.dtype == np.int64 or out.dtype == np.uint64:
            if out.size and out.max() > np.iinfo(np.int32).max:
                raise ValueError(f"{path.name}: label ids above int32")
            out = out.astype(np.int32)
        return atomic_write(path, lambda t: tifffile.imwrite(t, out, compression="zlib"))
    if suffix == ".png":
        from PIL import Image
        if out.dtype != np.uint8:
            if out.size and out.max() > 65535:
                raise ValueError(f"{path.name}: label ids above 65535 do not fit a PNG; use .tif")
            out = out.astype(np.uint16) if (out.size and out.max() > 255) else out.astype(np.uint8)
        return atomic_write(path, lambda t: Image.fromarray(out).save(t, format="PNG"))
    if suffix == ".npy":
        return atomic_write(path, lambda t: np.save(t, np.asarray(mask)))
    raise ValueError(f"{path.name}: masks are written as .tif, .tiff or .png, not {suffix!r}")


def write_image(path, arr) -> Path:
    """Write an image (H, W) or (H, W, C) atomically.

    TIFF keeps the dtype (float32 stays float32). PNG/JPEG/BMP: uint8/uint16 are kept (16-bit
    gray PNG), float data in [0, 1] is scaled to uint8 (values outside are clipped).
    """
    path = Path(path)
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"{path.name}: cannot write an image of shape {a.shape}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile
        kw = {"photometric": "rgb"} if a.ndim == 3 else {}
        return atomic_write(path, lambda t: tifffile.imwrite(t, a, compression="zlib", **kw))
    if suffix == ".npy":
        return atomic_write(path, lambda t: np.save(t, a))
    if suffix not in PIL_SUFFIXES:
        raise ValueError(f"{path.name}: unsupported image format {suffix!r}")
    from PIL import Image
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0, 1) * 255 + 0.5).astype(np.uint8)
    elif a.dtype == np.uint16 and a.ndim == 2 and suffix == ".png":
        pass
    elif a.dtype != np.uint8:
        a = (normalize_image(a)[..., 0] if a.ndim == 2 else normalize_image(a))
        a = (a * 255 + 0.5).astype(np.uint8)
    if suffix in (".jpg", ".jpeg") and a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix, suffix[1:].upper())
    return atomic_write(path, lambda t: Image.fromarray(a).save(t, format=fmt))

"""Reading and writing images and masks, and the one image normalisation the models see.

Why one module: every entry point (widgets, CLI, training, benchmark) must turn a file into the
same float32 ``(H, W, C)`` array in ``[0, 1]``, and every failure must name the file and the
problem instead of surfacing as a deep library traceback.

Normalisation (:func:`normalize_image`):

* ``bool`` -> {0, 1}; ``uint8`` / ``uint16`` -> divided by the dtype's maximum (255 / 65535),
  so 8-bit and 16-bit files keep their absolute brightness;
* float arrays whose finite values already lie in ``[0, 1]`` are kept (so normalising twice is a
  no-op);
* every other float or integer array -> robust min-max: the 0.5th and 99.5th percentiles (over
  all pixels and channels together, so colours keep their balance) map to 0 and 1, then clip;
  a constant image becomes 0. NaN/inf become 0.
* channels: RGBA / gray+alpha drop alpha; ``channels=3`` repeats gray; ``channels=1`` converts
  RGB by luminance with the ITU-R BT.601 weights (0.299, 0.587, 0.114, as Pillow's ``"L"``).

Masks (:func:`read_mask`): binary masks are ``uint8`` {0, 1} (any nonzero value is foreground,
except lossy JPEG masks which are thresholded at half the range; RGBA masks use the red channel,
as in the chest X-ray data); instance masks are ``int32`` labels, 0 = background.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .bundle import atomic_write

__all__ = [
    "ImageReadError", "IMAGE_SUFFIXES", "MASK_SUFFIXES", "read_image", "normalize_image",
    "load_image", "read_mask", "write_mask", "write_image", "check_same_shape", "image_shape",
    "is_image_file", "open_lazy",
]

TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + DICOM_SUFFIXES + PIL_SUFFIXES + (".npy",)
MASK_SUFFIXES = TIFF_SUFFIXES + (".png", ".bmp", ".npy", ".jpg", ".jpeg")
LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageReadError(ValueError):
    """A file could not be read as an image/mask; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


def is_image_file(path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _check_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "file is empty")
    return p


def _is_dicom(p: Path) -> bool:
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _pick_plane(p: Path, arr: np.ndarray, n_planes: int, plane, what: str) -> np.ndarray:
    """``arr`` has the planes on axis 0; return one of them or explain."""
    if n_planes == 1:
        return arr[0]
    if plane is None:
        raise ImageReadError(p, f"{what} with {n_planes} planes (shape {tuple(arr.shape)}); "
                                f"choose one with plane=0..{n_planes - 1}")
    if not -n_planes <= int(plane) < n_planes:
        raise ImageReadError(p, f"plane {plane} out of range: the file has {n_planes} planes")
    return arr[int(plane)]


# ----------------------------------------------------------------------------------- readers
def _read_tiff(p: Path, plane) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            if not tf.series:
                raise ImageReadError(p, "TIFF holds no image series")
            s = tf.series[0]
            axes, shape = s.axes, s.shape
            arr = s.asarray()
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises many types for truncated/corrupt files
        raise ImageReadError(p, f"cannot read TIFF ({type(e).__name__}: {e})") from e
    arr = np.asarray(arr).reshape(shape)
    # spatial axes Y, X; channel axis S (samples) or a small C; everything else is a plane axis
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:  # unusual series: trust the shape
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
            return arr
        lead = arr.reshape((-1,) + arr.shape[-2:])
        return _pick_plane(p, lead, lead.shape[0], plane, "multi-page TIFF")
    ch = None
    if "S" in axes:
        ch = axes.index("S")
    elif "C" in axes and shape[axes.index("C")] in (3, 4):
        ch = axes.index("C")
    order = [i for i, a in enumerate(axes) if a not in "YX" and i != ch]
    order += [axes.index("Y"), axes.index("X")] + ([ch] if ch is not None else [])
    arr = np.transpose(arr, order)
    tail = 3 if ch is not None else 2
    n = int(np.prod(arr.shape[:-tail])) if arr.ndim > tail else 1
    arr = arr.reshape((n,) + arr.shape[-tail:])
    kind = "OME-TIFF" if ".ome." in p.name.lower() else "multi-page TIFF"
    return _pick_plane(p, arr, n, plane, f"{kind} ({s.axes})")


def _read_dicom(p: Path, plane) -> np.ndarray:
    """DICOM pixels with Rescale Slope/Intercept and the VOI window applied.

    With a window (Window Center/Width) the result is float32 in [0, 1] (DICOM PS3.3 C.11.2.1.2
    linear function); without one it is the rescaled float32 data (e.g. Hounsfield units),
    left for :func:`normalize_image`'s robust min-max. MONOCHROME1 (white = low) is inverted.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(p)
        px = ds.pixel_array
    except Exception as e:
        raise ImageReadError(p, f"cannot read DICOM ({type(e).__name__}: {e})") from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        px = _pick_plane(p, np.asarray(px), frames, plane, "multi-frame DICOM")
    if photometric.startswith("YBR") or photometric in ("RGB", "PALETTE COLOR"):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space
            px = convert_color_space(px, photometric, "RGB")
        elif photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut
            px = apply_color_lut(px, ds)
        return np.asarray(px)
    x = np.asarray(px, dtype=np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    x = x * slope + intercept
    wc, ww = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    func = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
    windowed = False
    if wc is not None and ww is not None:
        c = float(wc[0] if isinstance(wc, Sequence) and not isinstance(wc, str) else wc)
        w = float(ww[0] if isinstance(ww, Sequence) and not isinstance(ww, str) else ww)
        if w >= 1:
            if func == "SIGMOID":
                x = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
            elif func == "LINEAR_EXACT":
                x = np.clip((x - c) / w + 0.5, 0.0, 1.0)
            else:
                x = np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
            windowed = True
    if photometric == "MONOCHROME1":
        x = 1.0 - x if windowed else (np.nanmax(x) + np.nanmin(x)) - x
    return x.astype(np.float32)


def _read_pil(p: Path, plane) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            n = int(getattr(im, "n_frames", 1) or 1)
            if n > 1:
                if plane is None:
                    raise ImageReadError(p, f"multi-frame image with {n} frames; choose one "
                                            f"with plane=0..{n - 1}")
                if not -n <= int(plane) < n:
                    raise ImageReadError(p, f"plane {plane} out of range: {n} frames")
                im.seek(int(plane) % n)
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode == "PA":
                im = im.convert("RGBA")
            arr = np.array(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(p, "not a readable image (unknown or corrupt format)") from e
    except Exception as e:  # truncated files, decoder errors
        raise ImageReadError(p, f"cannot read image ({type(e).__name__}: {e})") from e
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535 \
            and mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr


def read_image(path, plane: int | None = None) -> np.ndarray:
    """The raw pixel array of an image file (no normalisation).

    TIFF (8/16-bit, float, gray/RGB/RGBA, OME, multi-page), DICOM (rescaled + windowed, see
    ``_read_dicom``), PNG/JPEG/BMP/GIF/WebP via Pillow, and ``.npy``. Files holding several
    planes (pages, Z/T, frames) need ``plane``; otherwise the error says how many there are.
    Returns (H, W) or (H, W, C).
    """
    p = _check_file(path)
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        arr = _read_tiff(p, plane)
    elif suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ImageReadError(p, f"cannot read .npy ({e})") from e
        if arr.ndim == 3 and arr.shape[-1] > 4:
            arr = _pick_plane(p, arr, arr.shape[0], plane, "3-D stack")
        elif arr.ndim == 4:
            arr = _pick_plane(p, arr, arr.shape[0], plane, "4-D stack")
    elif _is_dicom(p):
        arr = _read_dicom(p, plane)
    else:
        arr = _read_pil(p, plane)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] > 4):
        raise ImageReadError(p, f"unsupported image shape {arr.shape}: expected (H, W) or "
                                f"(H, W, C) with C <= 4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(p, f"image has no pixels (shape {arr.shape})")
    return arr


def image_shape(path) -> tuple[int, int]:
    """(H, W) of an image file, from its header where possible (no full decode)."""
    p = _check_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in PIL_SUFFIXES and not _is_dicom(p):
            from PIL import Image
            with Image.open(p) as im:
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


def open_lazy(path, plane: int | None = None):
    """A sliceable view of a (large) image without reading it all: a read-only memmap for
    ``.npy`` and uncompressed contiguous TIFFs, otherwise the fully read array. Meant for
    :func:`core.tiling.predict_tiled` on whole-slide-sized files (raw dtype: normalise tiles,
    e.g. ``/ 255``, in the predict function)."""
    p = _check_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise ImageReadError(p, f"cannot read .npy ({e})") from e
        if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] <= 4):
            return a
    elif suffix in TIFF_SUFFIXES:
        import tifffile
        try:
            with tifffile.TiffFile(p) as tf:
                s = tf.series[0]
                simple = s.axes in ("YX", "YXS") and s.dataoffset is not None
            if simple:
                return tifffile.memmap(p, mode="r")
        except Exception:
            pass
    return read_image(p, plane=plane)


# ------------------------------------------------------------------------------ normalisation
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


def normalize_image(arr, channels: int | None = None) -> np.ndarray:
    """float32 (H, W, C) in [0, 1] with C = 1 or 3 (see the module docstring for the rules).

    ``channels=None`` keeps gray as 1 channel and colour as 3; 1 or 3 forces that count.
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
    if a.dtype == np.bool_:
        x = a.astype(np.float32)
    elif a.dtype == np.uint8:
        x = a.astype(np.float32) / np.float32(255)
    elif a.dtype == np.uint16:
        x = a.astype(np.float32) / np.float32(65535)
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
        x = (x @ LUMA_BT601)[..., None]
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image(path, channels: int | None = None, plane: int | None = None) -> np.ndarray:
    """``normalize_image(read_image(path, plane), channels)``, errors naming the file."""
    arr = read_image(path, plane=plane)
    try:
        return normalize_image(arr, channels=channels)
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
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return (np.nan_to_num(a) > 0.5).astype(np.uint8)
        return (np.nan_to_num(a) != 0).astype(np.uint8)
    if p.suffix.lower() in (".jpg", ".jpeg") and a.dtype.kind in "ui":
        return (a > np.iinfo(a.dtype).max // 2).astype(np.uint8)
    return (a != 0).astype(np.uint8)


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
        out = (m > 0).astype(np.uint8) * np.uint8(255)
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

"""File readers behind :func:`core.io.read_image`: TIFF, DICOM, Pillow formats and ``.npy``.

Why a module of their own: each format has its own ways to hold several planes (pages, series,
Z/T, frames) and to declare its bit depth, and every one of them must end in the same place:
one addressable plane per index (an index out of range is refused, even on a single-plane
file) and an error that names the file. :func:`read_raw` returns the raw array and the white
level the file declares (``None`` when it says nothing), which :mod:`core.normalize` uses.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ImageReadError", "read_raw", "check_file", "is_dicom", "TIFF_SUFFIXES",
           "DICOM_SUFFIXES", "PIL_SUFFIXES", "MAX_PIXELS", "pil_limit"]

TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Pillow refuses images above ~89 M pixels as "decompression bombs" (a guard for files from
# the web). The files here are the user's own slides and X-rays: allow up to 2^31 pixels
# (46 000²), the most a 32-bit-indexed decoder handles; the memory is bounded by tiling.
MAX_PIXELS = 2 ** 31
# TIFF series that are not image planes (whole-slide formats add these beside the image)
_SIDE_SERIES = ("thumbnail", "label", "macro")


class ImageReadError(ValueError):
    """A file could not be read as an image/mask; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


def check_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "file is empty")
    return p


def is_dicom(p: Path) -> bool:
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


def _plane_index(p: Path, n: int, plane, what: str) -> int:
    """The index to read among ``n`` planes, or an error saying how to choose."""
    if plane is None:
        if n == 1:
            return 0
        raise ImageReadError(p, f"{what} with {n} planes; choose one with plane=0..{n - 1} "
                                "(--plane in the command line)")
    if not -n <= int(plane) < n:
        has = "1 plane (only plane 0)" if n == 1 else f"{n} planes (0..{n - 1})"
        raise ImageReadError(p, f"plane {plane} is out of range: the file has {has}")
    return int(plane) % n


def _pick_plane(p: Path, arr: np.ndarray, plane, what: str) -> np.ndarray:
    """``arr`` has the planes on axis 0; return one of them or explain."""
    return arr[_plane_index(p, arr.shape[0], plane, f"{what} (shape {tuple(arr.shape)})")]


# ----------------------------------------------------------------------------------- TIFF
def _series_layout(axes: str, shape: Sequence[int]):
    """(transpose order, trailing dims, number of planes) of a tifffile series."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:  # unusual series: trust the shape
        if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4)):
            return None, len(shape), 1
        return None, 2, int(np.prod(shape[:-2]))
    ch = None
    if "S" in axes:
        ch = axes.index("S")
    elif "C" in axes and shape[axes.index("C")] in (3, 4):
        ch = axes.index("C")
    order = [i for i, a in enumerate(axes) if a not in "YX" and i != ch]
    n = int(np.prod([shape[i] for i in order])) if order else 1
    order += [axes.index("Y"), axes.index("X")] + ([ch] if ch is not None else [])
    return order, (3 if ch is not None else 2), n


def _tiff_white(page, dtype) -> float | None:
    """White level a TIFF page declares: BitsPerSample below the container's, or MaxSampleValue."""
    if np.dtype(dtype).kind != "u":
        return None
    full = np.iinfo(dtype).max
    bits = page.bitspersample
    if isinstance(bits, tuple):
        bits = max(bits)
    if bits and bits < np.dtype(dtype).itemsize * 8:
        return float(2 ** bits - 1)
    tag = page.tags.get("MaxSampleValue")
    if tag is not None:
        v = tag.value
        v = max(v) if isinstance(v, (tuple, list)) else v
        if 0 < v < full:
            return float(v)
    return None


def _read_tiff(p: Path, plane):
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = [s for s in tf.series
                      if (s.name or "").strip().lower() not in _SIDE_SERIES] or tf.series[:1]
            if not series:
                raise ImageReadError(p, "TIFF holds no image series")
            counts = [_series_layout(s.axes, s.shape)[2] for s in series]
            total = sum(counts)
            many = len(series) > 1
            kind = "OME-TIFF" if ".ome." in p.name.lower() else "multi-page TIFF"
            what = (f"{kind} with {len(series)} image series" if many
                    else f"{kind} ({series[0].axes}, shape {tuple(series[0].shape)})")
            k = _plane_index(p, total, plane, what)
            j = 0
            while k >= counts[j]:
                k -= counts[j]
                j += 1
            s = series[j]
            arr = np.asarray(s.asarray()).reshape(s.shape)
            white = _tiff_white(s.pages[0] if s.pages else tf.pages[0], arr.dtype)
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises many types for truncated/corrupt files
        raise ImageReadError(p, f"cannot read TIFF ({type(e).__name__}: {e})") from e
    order, tail, n = _series_layout(s.axes, s.shape)
    if n == 1 and order is None:
        return arr, white
    if order is not None:
        arr = np.transpose(arr, order)
    arr = arr.reshape((n,) + arr.shape[-tail:])
    return arr[k], white


# ----------------------------------------------------------------------------------- DICOM
def _read_dicom(p: Path, plane):
    """DICOM pixels with Rescale Slope/Intercept and the VOI window applied.

    With a window (Window Center/Width) the result is float32 in [0, 1] (DICOM PS3.3 C.11.2.1.2
    linear function); without one it is the rescaled float32 data (e.g. Hounsfield units),
    left for the robust min-max of :func:`core.normalize.normalize_image`. MONOCHROME1
    (white = low) is inverted.
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
        px = _pick_plane(p, np.asarray(px), plane, "multi-frame DICOM")
    else:
        _plane_index(p, 1, plane, "DICOM")
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


# ----------------------------------------------------------------------------------- Pillow
def _png_significant_bits(p: Path) -> int | None:
    """The PNG ``sBIT`` chunk (significant bits of the colour samples), if any."""
    try:
        with open(p, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                n, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = f.read(n)
                    return max(data[:3]) if data else None
                if kind in (b"IDAT", b"IEND"):
                    return None
                f.seek(n + 4, 1)
    except OSError:
        return None


class pil_limit:
    """Context raising Pillow's decompression-bomb limit to :data:`MAX_PIXELS` for a file the
    user opened (restored after: other code in the process keeps Pillow's guard)."""

    def __enter__(self):
        from PIL import Image

        self._old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2   # Pillow errors at twice the limit
        return self

    def __exit__(self, *exc):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._old
        return False


def _read_pil(p: Path, plane):
    from PIL import Image, UnidentifiedImageError

    try:
        with pil_limit(), Image.open(p) as im:
            n = int(getattr(im, "n_frames", 1) or 1)
            k = _plane_index(p, n, plane, "multi-frame image")
            if n > 1:
                im.seek(k)
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
    except Image.DecompressionBombError as e:
        raise ImageReadError(p, f"image too large to read whole ({e}); convert it to a tiled "
                                "TIFF") from e
    except MemoryError as e:
        raise ImageReadError(p, "not enough memory to read this image; convert it to a tiled "
                                "or uncompressed TIFF (read tile by tile)") from e
    except Exception as e:  # truncated files, decoder errors
        raise ImageReadError(p, f"cannot read image ({type(e).__name__}: {e})") from e
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535 \
            and mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    white = None
    if arr.dtype == np.uint16 and p.suffix.lower() == ".png":
        bits = _png_significant_bits(p)
        if bits and bits < 16:
            white = float(2 ** bits - 1)
    return arr, white


# ----------------------------------------------------------------------------------- any
def read_raw(path, plane: int | None = None) -> tuple[np.ndarray, float | None]:
    """``(pixels, white)``: the raw array of one plane and the white level the file declares
    for integer data (``None`` when it declares nothing). See :func:`core.io.read_image`."""
    p = check_file(path)
    suffix = p.suffix.lower()
    white = None
    if suffix in TIFF_SUFFIXES:
        arr, white = _read_tiff(p, plane)
    elif suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise ImageReadError(p, f"cannot read .npy ({e})") from e
        if arr.ndim == 3 and arr.shape[-1] > 4:
            arr = _pick_plane(p, arr, plane, "3-D stack")
        elif arr.ndim == 4:
            arr = _pick_plane(p, arr, plane, "4-D stack")
        else:
            _plane_index(p, 1, plane, "image")
    elif is_dicom(p):
        arr = _read_dicom(p, plane)
    else:
        arr, white = _read_pil(p, plane)
    return np.asarray(arr), white

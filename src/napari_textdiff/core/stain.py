"""Stain normalisation for H&E: the same colour statistics for every slide the model sees.

Why: MoNuSeg's 30 images come from 18 hospitals; their mean lightness varies by ±11 LAB units
and the best threshold per image from 0.2 to 0.85. Reinhard's method (Reinhard et al., 2001,
as used in histopathology since Magee et al., 2009) maps each image's per-channel LAB mean and
standard deviation onto fixed targets. With it (applied at native resolution by
``benchmarks/td_issue16.py``, TD_STAIN=reinhard) the TextDiff histology head's 3-fold
cross-validated Dice rose from 73.8 ± 10.5 to 75.3 ± 7.5; this module applies it at the
working scale (``TextDiffConfig.stain_norm``), the same in training and prediction.
Whole slides are predicted block by block, and each block gets its own statistics
(``core.wsi`` warns): slide-level statistics are still to do, so no bundled model uses it.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["STAIN_METHODS", "REINHARD_TARGET", "reinhard", "apply_stain_norm"]

STAIN_METHODS = ("", "reinhard")
#: LAB (mean, std) per channel: the means over the 30 labelled MoNuSeg images
REINHARD_TARGET = ((52.6, 27.6, -14.1), (18.0, 8.3, 7.8))
_MAX_STAT_PIXELS = 1 << 20        # statistics from a regular subsample above this
_BLOCK_PIXELS = 1 << 20           # converted in row blocks of about this many pixels


def reinhard(image: np.ndarray, target=REINHARD_TARGET) -> np.ndarray:
    """RGB float image in [0, 1] -> the same with LAB mean/std set to ``target`` (float32).

    Gray or constant images are returned unchanged (no colour statistics to match).
    """
    from skimage.color import lab2rgb, rgb2lab

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        return img
    step = max(1, int(np.ceil(np.sqrt(img.shape[0] * img.shape[1] / _MAX_STAT_PIXELS))))
    sample = rgb2lab(np.clip(img[::step, ::step], 0, 1)).reshape(-1, 3)
    mu, sd = sample.mean(0), sample.std(0)
    if not np.all(sd > 1e-3):
        return img
    out = np.empty(img.shape, np.float32)
    rows = max(1, _BLOCK_PIXELS // max(1, img.shape[1]))   # bounded float64 temporaries
    with warnings.catch_warnings():           # out-of-gamut values are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        for y in range(0, img.shape[0], rows):
            lab = rgb2lab(np.clip(img[y:y + rows], 0, 1))
            lab = (lab - mu) / sd * np.asarray(target[1]) + np.asarray(target[0])
            out[y:y + rows] = np.clip(lab2rgb(lab), 0, 1)
    return out


def apply_stain_norm(image: np.ndarray, method: str) -> np.ndarray:
    """``method`` "" leaves the image as it is; "reinhard" normalises it (see module doc)."""
    if method not in STAIN_METHODS:
        raise ValueError(f"stain_norm must be one of {STAIN_METHODS}, got {method!r}")
    return reinhard(image) if method == "reinhard" else image

"""Image/mask tensors for MGCC: channel conversion, [0,1] scaling, whole-image resizing.

MGCC is trained and run on whole images resized to a square working size (256 by default),
as in the paper; these helpers do that the same way for training, validation and prediction.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["image_tensor", "mask_tensor", "normalize_input",
           "resize_proba"]


def image_tensor(image: np.ndarray, channels: int, size: int | None,
                 normalized: bool = False) -> torch.Tensor:
    """Image -> float32 tensor (C,size,size) in [0,1] (``io.normalize_image``, then an
    antialiased bilinear resize). ``normalized``: ``image`` is already ``normalize_image``'s
    (H, W, channels) float32 result (no second copy)."""
    from ..io import normalize_image

    a = image if normalized else normalize_image(image, channels=channels)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    if size is not None and tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp_(0, 1)
    return t


def mask_tensor(mask: np.ndarray, size: int | None) -> torch.Tensor:
    """Binary/label mask (H,W) -> float tensor (1,size,size) in {0,1} (area-weighted resize)."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"expected a mask (H,W), got shape {m.shape}")
    t = torch.from_numpy((m > 0).astype(np.float32))[None]
    if size is not None and tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        t = (t >= 0.5).float()
    return t


def normalize_input(x: torch.Tensor) -> torch.Tensor:
    """[0,1] -> [-1,1]: the network's input scaling (fixed, stored nowhere else)."""
    return x * 2.0 - 1.0


def resize_proba(prob: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B,1,h,w) probabilities -> (B,1,H,W) by bilinear interpolation."""
    if tuple(prob.shape[-2:]) == tuple(shape):
        return prob
    return F.interpolate(prob, size=tuple(shape), mode="bilinear", align_corners=False)

"""Classic multiscale filter bank: the ilastik / convpaint-classic features, in torch.

Why: on MoNuSeg the bundled 225-step diffusion backbone's features lose to these filters under
the same pixel classifier (docs/textdiff_features.md), so the TextDiff head can take both.
Per input channel and per Gaussian sigma (in working-scale pixels) it gives what
``skimage.feature.multiscale_basic_features`` gives: the smoothed intensity, the gradient
magnitude of the smoothed image, and the two eigenvalues of its Hessian — 4 maps per
channel per sigma, all at full resolution (stride 1). Pure convolutions: deterministic, run
on whatever device the head runs on, and cost milliseconds per 256² tile.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["ClassicFeatures", "DEFAULT_SIGMAS"]

DEFAULT_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def _gauss_kernels(sigma: float):
    """1-D Gaussian and its first/second derivative kernels (float64 numpy), radius 4 sigma."""
    r = max(1, int(math.ceil(4 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    d1 = -x / sigma ** 2 * g
    d2 = (x ** 2 / sigma ** 4 - 1 / sigma ** 2) * g
    d2 -= d2.mean()                       # a constant image has zero curvature
    return r, g, d1, d2


class ClassicFeatures:
    """``__call__(images)`` -> ``[tensor (B, in_channels * 4 * len(sigmas), H, W)]``."""

    per_sigma = 4

    def __init__(self, in_channels: int = 3, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 device="cpu"):
        self.in_channels = int(in_channels)
        self.sigmas = [float(s) for s in sigmas]
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"classic sigmas must be > 0, got {self.sigmas}")
        self.device = "cpu"
        self.to(device)

    @property
    def channels(self) -> int:
        return self.in_channels * self.per_sigma * len(self.sigmas)

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        return self

    def _sep(self, x, kr, kc, r):
        """Separable 2-D filter: ``kr`` along rows (y), ``kc`` along columns (x)."""
        import torch
        import torch.nn.functional as F

        c = x.shape[1]
        h, w = x.shape[-2:]
        mode = "reflect" if r < h and r < w else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
        ky = torch.as_tensor(kr, dtype=x.dtype, device=x.device).view(1, 1, -1, 1)
        kx = torch.as_tensor(kc, dtype=x.dtype, device=x.device).view(1, 1, 1, -1)
        x = F.conv2d(x, ky.expand(c, 1, -1, 1), groups=c)
        return F.conv2d(x, kx.expand(c, 1, 1, -1), groups=c)

    def compute(self, x):
        """x: (B, C, H, W) float tensor in [0, 1] -> (B, C * 4 * n_sigmas, H, W)."""
        import torch

        out = []
        for s in self.sigmas:
            r, g, d1, d2 = _gauss_kernels(s)
            smooth = self._sep(x, g, g, r)
            gy = self._sep(x, d1, g, r)
            gx = self._sep(x, g, d1, r)
            hyy = self._sep(x, d2, g, r)
            hxx = self._sep(x, g, d2, r)
            hxy = self._sep(x, d1, d1, r)
            # scale-normalised (sigma, sigma^2) so every scale has comparable magnitude
            edges = torch.sqrt(gx * gx + gy * gy + 1e-12) * s
            half = (hxx + hyy) / 2
            root = torch.sqrt(((hxx - hyy) / 2) ** 2 + hxy * hxy + 1e-12)
            out += [smooth, edges, (half + root) * s * s, (half - root) * s * s]
        # channel order: per sigma [intensity, edges, eig1, eig2], each with C channels
        return torch.cat(out, 1)

    def __call__(self, images, batch_size: int = 4):
        """(B, H, W, C) float images in [0, 1] (any channel count) -> [float32 CPU tensor]."""
        import torch

        from ..normalize import to_model_channels

        x = (to_model_channels(images, self.in_channels) + 1) / 2
        outs = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], max(1, batch_size)):
                xb = x[i:i + batch_size].to(self.device, torch.float32)
                outs.append(self.compute(xb).float().cpu())
        return [torch.cat(outs)]

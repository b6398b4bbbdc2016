"""Feature perturbations fed to MGCC's auxiliary decoders (cross-consistency training).

Each is an ``nn.Module`` that is the identity in ``eval()`` mode, so a model put in eval mode
can never perturb its inputs by accident; in ``train()`` mode they behave exactly as in the
authors' code (see REFERENCE.md). An optional ``torch.Generator`` makes them reproducible.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FeatureDropout", "FeatureNoise", "Dropout", "PERTURBATIONS"]


class FeatureDropout(nn.Module):
    """Zero the most activated positions of each sample.

    Attention map ``a`` = channel mean (B,1,H,W); threshold = per-sample ``max(a) * u`` with one
    draw ``u ~ U(lo, hi)`` per call (shared by the batch); positions with ``a >= threshold`` are
    zeroed in every channel. No rescaling (as in the authors' code).
    """

    def __init__(self, lo: float = 0.7, hi: float = 0.9, generator: torch.Generator | None = None):
        super().__init__()
        self.lo, self.hi, self.generator = lo, hi, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        att = x.mean(dim=1, keepdim=True)
        u = self.lo + (self.hi - self.lo) * torch.rand((), generator=self.generator).item()
        thr = att.amax(dim=(1, 2, 3), keepdim=True) * u
        keep = (att < thr).to(x.dtype)
        return x * keep


class FeatureNoise(nn.Module):
    """Multiplicative uniform noise ``x * (1 + n)``, ``n ~ U(-r, r)`` of shape (C, H, W).

    One noise tensor per call, shared by every sample of the batch (as in the authors' code).
    """

    def __init__(self, uniform_range: float = 0.3, generator: torch.Generator | None = None):
        super().__init__()
        self.r, self.generator = uniform_range, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = torch.rand(x.shape[1:], generator=self.generator, dtype=torch.float32)
        n = (n * 2 - 1) * self.r
        return x * (1 + n.to(device=x.device, dtype=x.dtype).unsqueeze(0))


class Dropout(nn.Module):
    """Element-wise dropout (p=0.3 by default) with the usual 1/(1-p) rescaling.

    Always on while the module trains (the aux decoder only runs in training); identity in eval.
    """

    def __init__(self, p: float = 0.3, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            return nn.functional.dropout(x, self.p, training=True)
        keep = (torch.rand(x.shape, generator=self.generator) >= self.p).to(x.device, x.dtype)
        return x * keep / (1 - self.p)


PERTURBATIONS = {"feature_dropout": FeatureDropout, "dropout": Dropout, "feature_noise": FeatureNoise}

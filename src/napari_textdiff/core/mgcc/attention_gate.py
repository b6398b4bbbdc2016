"""Multi-scale attention gate on the U-Net skips (MGCC / CMU-Net).

Three parallel receptive fields (1x1, 3x3, 3x3 dilated by 2) decide, per pixel and channel, how
much of an encoder feature to amplify before it reaches the decoder: ``x + x * a``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiScaleAttentionGate"]


class MultiScaleAttentionGate(nn.Module):
    """BN(1x1), BN(3x3), BN(3x3 dil 2) -> concat -> ReLU -> 1x1 -> BN -> sigmoid -> x + x*a.

    The BN before the sigmoid is in the authors' code (not in the paper's figure); we keep it
    because the published parameter count includes it.
    """

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.pointwise = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.ordinary = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.dilated = nn.Sequential(nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c))
        self.vote = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.BatchNorm2d(c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.cat([self.pointwise(x), self.ordinary(x), self.dilated(x)], dim=1)
        a = self.vote(torch.relu(f))
        return x + x * a

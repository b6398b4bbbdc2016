"""The 8 dihedral transforms (rot90 x flip): one definition for every training loop.

Why here: TextDiff augments cached features and masks with a given transform index, MGCC draws
one at random per sample for image and mask together; both must mean the same 8 transforms.
"""
from __future__ import annotations

import numpy as np

__all__ = ["dihedral", "random_dihedral"]


def dihedral(x, k: int):
    """Transform ``k`` in 0..7 of a torch tensor's last two axes: flip (``k >= 4``), then
    rotate by ``k % 4`` quarter turns."""
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def random_dihedral(x, y, rng: np.random.Generator):
    """A random transform per sample of a batch ``x`` (B, ...), the same one on ``y`` (or
    ``None``); returns ``(x, y)``. Draws two integers per sample from ``rng``."""
    import torch

    xs, ys = [], []
    for i in range(x.shape[0]):
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        # rot90(turns) then flip == flip then rot90(-turns): transform 4 + (-turns % 4)
        k = 4 + (-turns) % 4 if flip else turns
        xs.append(dihedral(x[i], k))
        if y is not None:
            ys.append(dihedral(y[i], k))
    return torch.stack(xs), (torch.stack(ys) if y is not None else None)

"""The one dihedral definition: 8 distinct transforms; the random one moves image and mask
together and draws the same transforms as the rot90-then-flip rule MGCC was trained with."""
import numpy as np
import torch

from napari_textdiff.core.augment import dihedral, random_dihedral


def test_eight_distinct_transforms():
    x = torch.arange(9.0).reshape(3, 3)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8
    assert torch.equal(dihedral(x, 0), x)


def test_random_dihedral_same_on_image_and_mask_and_as_rot_then_flip():
    x = torch.randn(12, 2, 5, 5)
    y = x[:, :1].clone()
    xs, ys = random_dihedral(x, y, np.random.default_rng(3))
    assert torch.equal(xs[:, :1], ys)
    rng = np.random.default_rng(3)
    for i in range(12):
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        ref = torch.rot90(x[i], turns, dims=(-2, -1))
        assert torch.equal(xs[i], ref.flip(-1) if flip else ref)

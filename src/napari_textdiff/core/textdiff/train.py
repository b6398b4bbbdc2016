"""Training helpers of the TextDiff head: which cached tiles each step sees, and crops.

Why crops: the head is fully convolutional, so a random ``crop``² window of a cached tile
(taps cropped at their own strides) trains the same weights at a fraction of the cost per
step; more, cheaper steps reach the validation plateau sooner on a CPU. ``epoch_steps`` fixes
the number of steps per epoch independently of how many tiles there are, so 5 images (5
tiles at scale 0.256) still make epochs long enough to be worth a validation pass.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["epoch_batches", "random_crop", "cropped_batch"]


def epoch_batches(n: int, batch_size: int, epoch_steps: int | None, rng) -> list[np.ndarray]:
    """Index batches for one epoch: one pass over a permutation, or ``epoch_steps`` batches
    drawn from consecutive permutations (every tile seen equally often)."""
    bs = max(1, min(batch_size, n))
    steps = epoch_steps or math.ceil(n / bs)
    order = np.concatenate([rng.permutation(n)
                            for _ in range(math.ceil(steps * bs / n) if epoch_steps else 1)])
    return [np.sort(order[i:i + bs]) for i in range(0, min(len(order), steps * bs), bs)]


def random_crop(feats, masks, valid, strides, crop: int | None, rng):
    """Crop every map of a batch to the same random ``crop``² window (aligned to the largest
    stride so each tap crops to whole pixels). No-op when the tiles are not larger."""
    size = masks.shape[-1]
    if not crop or crop >= min(masks.shape[-2:]):
        return feats, masks, valid
    m = max(strides)
    crop = max(m, crop // m * m)
    ys = rng.integers(0, (masks.shape[-2] - crop) // m + 1) * m
    xs = rng.integers(0, (size - crop) // m + 1) * m
    out = [f[..., ys // s:(ys + crop) // s, xs // s:(xs + crop) // s] for f, s in
           zip(feats, strides)]
    return (out, masks[..., ys:ys + crop, xs:xs + crop],
            valid[..., ys:ys + crop, xs:xs + crop])


def cropped_batch(cache, idx, aug, strides, crop: int | None, rng):
    """``cache.batch`` of only a random ``crop``² window: the window is cut from the fp16
    cache before the float32 copy and the dihedral transform, which on full 256² tiles cost
    more than the head's step itself. (A dihedral transform of a random window is a random
    window of the transformed tile, so the sampled distribution is the same.)"""
    import torch

    from .model import dihedral

    tile = cache.masks.shape[-1]
    if not crop or crop >= tile:
        return cache.batch(idx, aug)
    m = max(strides)
    crop = max(m, crop // m * m)
    ys = int(rng.integers(0, (cache.masks.shape[-2] - crop) // m + 1)) * m
    xs = int(rng.integers(0, (tile - crop) // m + 1)) * m
    feats = [torch.from_numpy(np.asarray(f[idx, :, ys // s:(ys + crop) // s,
                                           xs // s:(xs + crop) // s], dtype=np.float32))
             for f, s in zip(cache.feats, strides)]
    masks = torch.from_numpy(cache.masks[idx, ys:ys + crop, xs:xs + crop].astype(np.int64))
    valid = torch.from_numpy(cache.valid[idx, ys:ys + crop, xs:xs + crop].astype(np.float32))
    if aug is not None:
        for b, k in enumerate(aug):
            if k:
                for f in feats:
                    f[b] = dihedral(f[b], k).clone()
                masks[b] = dihedral(masks[b], k).clone()
                valid[b] = dihedral(valid[b], k).clone()
    return feats, masks, valid

"""The training tiles of a TextDiff fit: their frozen features computed once, kept fp16.

Why it is fast to fit: the backbone and text encoder are frozen, so the features of the
training tiles are computed ONCE and cached (fp16, spilled to a disk memmap when large); the
dihedral augmentation (rot90/flips) is applied to the cached features and masks. That is an
approximation — a diffusion UNet is not exactly equivariant to rotations/flips (its features
of a rotated image are only roughly the rotated features) — but it is what makes fitting take
seconds instead of recomputing the UNet every step as the authors' code does.

Not :class:`~.feature_memo.FeatureMemo`: the memo remembers features per tile *content* across
jobs (segment → fine-tune → re-segment); this is one job's indexed training set (features,
masks, valid pixels, text index), sliced into batches and dropped when the job ends.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Sequence

import numpy as np

from ..augment import dihedral
from ..models import Example
from ..progress import Progress
from ..tiling import tile_starts

__all__ = ["TileCache", "training_tiles", "iter_build_cache"]


class TileCache:
    """Per-tap (N, C, h, w) fp16 arrays in RAM, or in a disk memmap when they are large."""

    def __init__(self, n: int, shapes: list[tuple[int, int, int]], tile: int, ram_mb: float):
        nbytes = n * sum(c * h * w for c, h, w in shapes) * 2
        self.dir = None
        if nbytes > ram_mb * 2 ** 20:
            self.dir = tempfile.mkdtemp(prefix="textdiff-features-")
            self.feats = [np.lib.format.open_memmap(os.path.join(self.dir, f"tap{i}.npy"),
                                                    mode="w+", dtype=np.float16,
                                                    shape=(n, *s))
                          for i, s in enumerate(shapes)]
        else:
            self.feats = [np.zeros((n, *s), np.float16) for s in shapes]
        self.masks = np.zeros((n, tile, tile), np.uint8)
        self.valid = np.zeros((n, tile, tile), np.uint8)
        self.text = np.zeros(n, np.int64)
        self.texts: list[str] = []
        self.nbytes = nbytes
        self.n = n

    def batch(self, idx, aug: Sequence[int] | None = None):
        """float32 features, int64 masks and float32 valid maps of tiles ``idx``, each tile
        transformed by its ``aug`` dihedral index (0 = none)."""
        import torch

        feats = [torch.from_numpy(np.asarray(f[idx], dtype=np.float32)) for f in self.feats]
        masks = torch.from_numpy(self.masks[idx].astype(np.int64))
        valid = torch.from_numpy(self.valid[idx].astype(np.float32))
        return augment_batch(feats, masks, valid, aug)

    def close(self):
        self.feats = []
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def augment_batch(feats, masks, valid, aug):
    """Apply dihedral ``aug[b]`` to sample ``b`` of every map, in place (the maps are copies
    made by fancy indexing); returns ``(feats, masks, valid)``."""
    if aug is not None:
        for b, k in enumerate(aug):
            if k:
                for f in feats:
                    f[b] = dihedral(f[b], k).clone()
                masks[b] = dihedral(masks[b], k).clone()
                valid[b] = dihedral(valid[b], k).clone()
    return feats, masks, valid


def training_tiles(model, example: Example):
    """Working-scale (image, mask, valid) tiles of one example; ``valid`` is 0 on padding."""
    from ..largeimage import resize_lowmem
    from ..stain import apply_stain_norm

    c = model.config
    img = model._prepare(example.image)
    mask = np.asarray(example.mask)
    if mask.ndim != 2 or mask.shape != img.shape[:2]:
        raise ValueError(f"example {example.name or ''}: mask shape {mask.shape} does not "
                         f"match image shape {img.shape[:2]}")
    mask = (mask > 0).astype(np.float32)
    shape = model._working_shape(img.shape)
    img = apply_stain_norm(resize_lowmem(img, shape, 1), c.stain_norm)
    mask = (resize_lowmem(mask, shape, 1) >= 0.5).astype(np.uint8)
    valid = np.ones(shape, np.uint8)
    s = c.working_size
    ph, pw = max(0, s - shape[0]), max(0, s - shape[1])
    if ph or pw:   # small image: pad, and ignore the padding in the loss
        mode = "reflect" if ph < shape[0] and pw < shape[1] else "edge"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
        mask = np.pad(mask, ((0, ph), (0, pw)))
        valid = np.pad(valid, ((0, ph), (0, pw)))
    out = []
    for y in tile_starts(img.shape[0], s, c.tile_overlap):
        for x in tile_starts(img.shape[1], s, c.tile_overlap):
            out.append((img[y:y + s, x:x + s], mask[y:y + s, x:x + s],
                        valid[y:y + s, x:x + s]))
    return out


def iter_build_cache(model, examples: Sequence[Example], max_tiles_per_image: int | None,
                     rng: np.random.Generator, stage: str = "features", should_stop=None):
    """Progress generator: the features of every training tile, computed once; returns the
    :class:`TileCache`, or ``None`` when stopped."""
    texts: list[str] = []
    tiles = []
    for ex in examples:
        t = training_tiles(model, ex)
        if max_tiles_per_image and len(t) > max_tiles_per_image:
            # prefer tiles with foreground, then random ones (seeded)
            fg = np.array([m.sum() > 0 for _, m, _ in t])
            order = np.concatenate([rng.permutation(np.flatnonzero(fg)),
                                    rng.permutation(np.flatnonzero(~fg))])
            t = [t[i] for i in sorted(order[:max_tiles_per_image])]
        text = ex.text or ""
        if text not in texts:
            texts.append(text)
        tiles += [(a, m, v, texts.index(text)) for a, m, v in t]
    s = model.config.working_size
    shapes = [(c, -(-s // st), -(-s // st)) for c, st in
              zip(model.features.out_channels, model.features.strides)]
    cache = TileCache(len(tiles), shapes, s, model.config.cache_ram_mb)
    bs = max(1, model.config.batch_size)
    t0 = time.monotonic()
    try:
        for i in range(0, len(tiles), bs):
            if should_stop is not None and should_stop():
                cache.close()
                return None
            chunk = tiles[i:i + bs]
            feats = model.features(np.stack([a for a, _, _, _ in chunk]), batch_size=bs)
            for k, f in enumerate(feats):
                cache.feats[k][i:i + len(chunk)] = f.numpy().astype(np.float16)
            for j, (_, m, v, ti) in enumerate(chunk):
                cache.masks[i + j], cache.valid[i + j], cache.text[i + j] = m, v, ti
            yield Progress(stage, step=min(i + bs, len(tiles)), total=len(tiles),
                           message=f"diffusion features of {len(tiles)} tiles",
                           elapsed=time.monotonic() - t0)
    except BaseException:
        cache.close()
        raise
    cache.texts = texts
    return cache

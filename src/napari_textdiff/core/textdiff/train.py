"""Training of the TextDiff head on cached tile features: fit, fine-tune, the loop itself.

Only the head trains (backbone and text encoder are frozen), over a :class:`.cache.TileCache`
built once per job. A stopped or closed job keeps the best validated head (or the last one
without validation), so the model is usable at every yield.

Why crops: the head is fully convolutional, so a random ``crop``² window of a cached tile
(taps cropped at their own strides) trains the same weights at a fraction of the cost per
step; more, cheaper steps reach the validation plateau sooner on a CPU. ``epoch_steps`` fixes
the number of steps per epoch independently of how many tiles there are, so 5 images (5
tiles at scale 0.256) still make epochs long enough to be worth a validation pass.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..models import Example
from ..progress import Progress
from .cache import augment_batch, iter_build_cache

__all__ = ["iter_fit", "iter_finetune", "iter_train", "cache_dice", "epoch_batches",
           "random_crop", "cropped_batch"]


def epoch_batches(n: int, batch_size: int, epoch_steps: int | None, rng) -> list[np.ndarray]:
    """Index batches for one epoch: one pass over a permutation, or ``epoch_steps`` batches
    drawn from consecutive permutations (every tile seen equally often)."""
    bs = max(1, min(batch_size, n))
    steps = epoch_steps or math.ceil(n / bs)
    order = np.concatenate([rng.permutation(n)
                            for _ in range(math.ceil(steps * bs / n) if epoch_steps else 1)])
    return [np.sort(order[i:i + bs]) for i in range(0, min(len(order), steps * bs), bs)]


def _window(valid, crop: int, m: int, rng) -> tuple[int, int]:
    """Top-left corner (multiples of ``m``) of a ``crop``² window inside the tiles' valid part.

    Padding is only ever below and right of the image (``training_tiles``), so the window is
    drawn over the batch's valid extent: a small image padded to the working size would
    otherwise give mostly all-padding windows, steps with a loss of exactly 0 that teach
    nothing (60 % of a fine-tune's steps on napari's 512² histology sample)."""
    v = np.asarray(valid) > 0
    corner = []
    for axis in (-2, -1):
        other = tuple(a for a in range(v.ndim) if a != v.ndim + axis)
        used = np.flatnonzero(v.any(axis=other))
        extent, full = (int(used[-1]) + 1 if used.size else v.shape[axis]), v.shape[axis]
        top = min(full - crop, -(-(extent - crop) // m) * m) if extent > crop else 0
        corner.append(int(rng.integers(0, top // m + 1)) * m)
    return corner[0], corner[1]


def random_crop(feats, masks, valid, strides, crop: int | None, rng):
    """Crop every map of a batch to the same random ``crop``² window (aligned to the largest
    stride so each tap crops to whole pixels) inside the valid part. No-op when the tiles are
    not larger."""
    if not crop or crop >= min(masks.shape[-2:]):
        return feats, masks, valid
    m = max(strides)
    crop = max(m, crop // m * m)
    ys, xs = _window(valid.numpy() if hasattr(valid, "numpy") else valid, crop, m, rng)
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

    tile = cache.masks.shape[-1]
    if not crop or crop >= tile:
        return cache.batch(idx, aug)
    m = max(strides)
    crop = max(m, crop // m * m)
    ys, xs = _window(cache.valid[idx], crop, m, rng)
    feats = [torch.from_numpy(np.asarray(f[idx, :, ys // s:(ys + crop) // s,
                                           xs // s:(xs + crop) // s], dtype=np.float32))
             for f, s in zip(cache.feats, strides)]
    masks = torch.from_numpy(cache.masks[idx, ys:ys + crop, xs:xs + crop].astype(np.int64))
    valid = torch.from_numpy(cache.valid[idx, ys:ys + crop, xs:xs + crop].astype(np.float32))
    return augment_batch(feats, masks, valid, aug)


def iter_train(model, cache, epochs: int, lr: float, val_cache=None, should_stop=None,
               seed: int = 0, patience: int | None = None, stage: str = "train"):
    """Progress generator: Adam on ``model.head`` over cached features; returns a history
    dict (per-epoch loss and validation Dice, best epoch, whether stopped)."""
    import torch
    import torch.nn.functional as F

    from ..amp import Amp
    from ..losses import soft_dice_loss

    c = model.config
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.head.parameters(), lr=lr)
    bs = max(1, min(c.batch_size, cache.n))
    total = (c.epoch_steps or math.ceil(cache.n / bs)) * epochs
    text_all = model._text_tensors(cache.texts) if model.uses_text else (None, None)
    hist: dict[str, Any] = {"loss": [], "val_dice": [], "best_epoch": None,
                            "stopped": False, "epochs_run": 0, "epoch_seconds": []}
    best = (-1.0, None)
    bad_epochs = 0
    step = 0
    t0 = time.monotonic()
    amp = Amp(model.device, what=f"TextDiff {stage}")
    try:
        for epoch in range(1, epochs + 1):
            losses = []
            for idx in epoch_batches(cache.n, bs, c.epoch_steps, rng):
                if should_stop is not None and should_stop():
                    hist["stopped"] = True
                    return hist
                aug = rng.integers(0, 8, len(idx)) if c.augment else None
                feats, masks, valid = cropped_batch(cache, idx, aug, model.features.strides,
                                                    c.crop_size, rng)
                feats = [f.to(model.device) for f in feats]
                masks, valid = masks.to(model.device), valid.to(model.device)
                th, tm = text_all
                if th is not None:
                    ti = torch.as_tensor(cache.text[idx], device=model.device)
                    th, tm = th[ti], tm[ti]
                model.head.train()
                with amp.autocast():
                    logits = model.head(feats, th, tm, out_size=masks.shape[-2:])
                logits = logits.float()
                ce = (F.cross_entropy(logits, masks, reduction="none") * valid).sum() \
                    / valid.sum().clamp_min(1)
                dice = soft_dice_loss(logits.softmax(1)[:, 1], masks, valid, smooth=1.0)
                loss = ce + c.dice_weight * dice
                amp.step(loss, opt)
                model.head.eval()
                step += 1
                losses.append(float(loss.detach()))
                yield Progress(stage, step=step, total=total, epoch=epoch, loss=losses[-1],
                               elapsed=time.monotonic() - t0)
            hist["loss"].append(float(np.mean(losses)))
            hist["epochs_run"] = epoch
            hist["epoch_seconds"].append(time.monotonic() - t0)
            if val_cache is not None:
                d = cache_dice(model, val_cache)
                hist["val_dice"].append(d)
                if d > best[0]:
                    best = (d, {k: v.detach().clone() for k, v in
                                model.head.state_dict().items()})
                    hist["best_epoch"] = epoch
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                yield Progress("validate", step=step, total=total, epoch=epoch,
                               loss=hist["loss"][-1], metrics={"val_dice": d},
                               elapsed=time.monotonic() - t0)
                if patience and bad_epochs >= patience:
                    hist["early_stopped"] = True
                    break
    finally:
        # stopped, closed or finished: keep the best validated head if there is one
        model.head.eval()
        if best[1] is not None:
            model.head.load_state_dict(best[1])
            hist["best_val_dice"] = best[0]
    return hist


def cache_dice(model, cache) -> float:
    """Pixel Dice, pooled over cached tiles, of the head at ``config.threshold`` (the
    validation score that picks the best epoch)."""
    import torch

    inter = den = 0.0
    th_all, tm_all = model._text_tensors(cache.texts) if model.uses_text else (None, None)
    with torch.inference_mode():
        for i in range(cache.n):
            feats, masks, valid = cache.batch(np.array([i]))
            th = tm = None
            if th_all is not None:
                th, tm = th_all[cache.text[i]][None], tm_all[cache.text[i]][None]
            p = model._head_proba([f.to(model.device) for f in feats], th, tm,
                                  masks.shape[-2:])
            pred = (p >= model.config.threshold).float().cpu() * valid
            m = masks.float() * valid
            inter += float((pred * m).sum())
            den += float(pred.sum() + m.sum())
    return (2 * inter + 1e-5) / (den + 1e-5)


def iter_fit(model, train: Sequence[Example], val: Sequence[Example] | None = None, *,
             val_fraction: float = 0.0, epochs: int | None = None, lr: float | None = None,
             should_stop: Callable[[], bool] | None = None,
             max_tiles_per_image: int | None = None):
    """:meth:`TextDiffModel.fit <.model.TextDiffModel.fit>` (see there)."""
    c = model.config
    train = list(train)
    if not train:
        raise ValueError("fit: no training examples")
    rng = np.random.default_rng(c.seed)
    val_index = None          # positions in the given ``train`` that became validation
    if val is None and val_fraction > 0 and len(train) > 1:
        n_val = min(len(train) - 1, max(1, round(len(train) * val_fraction)))
        perm = rng.permutation(len(train))
        val_index = [int(i) for i in perm[:n_val]]
        val = [train[i] for i in perm[:n_val]]
        train = [train[i] for i in perm[n_val:]]
    t0 = time.monotonic()
    stopped = {"loss": [], "val_dice": [], "stopped": True, "epochs_run": 0}
    cache = yield from iter_build_cache(model, train, max_tiles_per_image, rng,
                                        should_stop=should_stop)
    if cache is None:
        return stopped
    val_cache = None
    try:
        if val:
            val_cache = yield from iter_build_cache(model, list(val), max_tiles_per_image, rng,
                                                    stage="features (validation)",
                                                    should_stop=should_stop)
            if val_cache is None:
                return stopped
        t_feat = time.monotonic() - t0
        hist = yield from iter_train(model, cache, epochs or c.epochs, lr or c.lr, val_cache,
                                     should_stop, seed=c.seed,
                                     patience=c.patience if val_cache else None)
    finally:
        cache.close()
        if val_cache is not None:
            val_cache.close()
    hist.update(feature_seconds=t_feat, seconds=time.monotonic() - t0,
                train_images=len(train), val_images=len(val or []), tiles=cache.n,
                val_names=[ex.name for ex in val or []], val_index=val_index)
    model.meta["training"] = {k: v for k, v in hist.items() if k != "loss"}
    model.meta["training"]["final_loss"] = hist["loss"][-1] if hist["loss"] else None
    return hist


def iter_finetune(model, examples: Sequence[Example], *, epochs: int | None = None,
                  lr: float | None = None, should_stop=None,
                  max_tiles_per_image: int | None = 4):
    """:meth:`TextDiffModel.finetune <.model.TextDiffModel.finetune>` (see there)."""
    from ..finetune_defaults import finetune_defaults

    d = finetune_defaults(model.kind)
    epochs, lr = epochs or d["epochs"], lr or d["lr"]
    examples = list(examples)
    if not examples:
        raise ValueError("finetune: no examples")
    t0 = time.monotonic()
    rng = np.random.default_rng(model.config.seed)
    cache = yield from iter_build_cache(model, examples, max_tiles_per_image, rng,
                                        should_stop=should_stop)
    if cache is None:
        return {"loss": [], "stopped": True, "epochs_run": 0}
    try:
        hist = yield from iter_train(model, cache, epochs, lr, None, should_stop,
                                     seed=model.config.seed, stage="finetune")
    finally:
        cache.close()
    hist["seconds"] = time.monotonic() - t0
    model.meta.setdefault("finetunes", []).append(
        {"images": len(examples), "epochs": hist["epochs_run"], "lr": lr})
    return hist

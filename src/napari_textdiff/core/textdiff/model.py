"""TextDiffModel: frozen diffusion features + frozen text tokens -> trained head.

Why it is fast to fit: the backbone and text encoder are frozen, so the features of the
training tiles are computed ONCE and cached (fp16, spilled to a disk memmap when large); the
dihedral augmentation (rot90/flips) is applied to the cached features and masks. That is an
approximation — a diffusion UNet is not exactly equivariant to rotations/flips (its features
of a rotated image are only roughly the rotated features) — but it is what makes fitting take
seconds instead of recomputing the UNet every step as the authors' code does.

Geometry: with ``config.resize_to`` set (the paper protocol) the whole image is resized to
``resize_to``² for fitting and prediction; otherwise images are rescaled by ``config.scale``
and cut into ``working_size``² tiles (training: a grid of overlapping tiles; prediction:
``core.tiling.predict_tiled`` with blending), so images of any size work.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..models import Example
from ..progress import Progress
from ..tiling import tile_starts
from .config import DEFAULT_TEXT_ENCODER, TextDiffConfig

__all__ = ["TextDiffModel", "dihedral"]

KIND = "textdiff"


# ------------------------------------------------------------------------------ helpers
def dihedral(x, k: int):
    """One of the 8 rot90/flip transforms on the last two axes (torch tensor)."""
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def _resize(arr: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    from skimage.transform import resize

    if tuple(arr.shape[:2]) == tuple(shape):
        return arr
    out = resize(arr, shape, order=order, mode="reflect", preserve_range=True,
                 anti_aliasing=order > 0 and (shape[0] < arr.shape[0] or shape[1] < arr.shape[1]))
    return out.astype(arr.dtype, copy=False)


def _soft_dice_loss(prob, target, valid):
    dims = (1, 2)
    inter = (prob * target * valid).sum(dims)
    den = (prob * valid).sum(dims) + (target * valid).sum(dims)
    return (1 - (2 * inter + 1) / (den + 1)).mean()


class _FeatureCache:
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
        self.nbytes = nbytes
        self.n = n

    def batch(self, idx, aug: Sequence[int] | None = None):
        import torch

        feats = [torch.from_numpy(np.asarray(f[idx], dtype=np.float32)) for f in self.feats]
        masks = torch.from_numpy(self.masks[idx].astype(np.int64))
        valid = torch.from_numpy(self.valid[idx].astype(np.float32))
        if aug is not None:
            for b, k in enumerate(aug):
                if k:   # (fancy indexing made copies: transform them in place)
                    for f in feats:
                        f[b] = dihedral(f[b], k).clone()
                    masks[b] = dihedral(masks[b], k).clone()
                    valid[b] = dihedral(valid[b], k).clone()
        return feats, masks, valid

    def close(self):
        self.feats = []
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ------------------------------------------------------------------------------ model
class TextDiffModel:
    """TextDiff segmentation model (satisfies ``core.models.SegmentationModel``)."""

    kind = KIND

    def __init__(self, config: TextDiffConfig, features, text_encoder=None, head=None,
                 device="cpu", meta: dict | None = None):
        import torch

        from ..device import resolve_device
        from .head import build_head

        self.config = config
        self.features = features
        self.text_encoder = text_encoder
        if self.uses_text and text_encoder is None:
            raise ValueError(f"text_mode={config.text_mode!r} needs a text encoder")
        self.device = resolve_device(device)
        if head is None:
            torch.manual_seed(config.seed)
            head = build_head(config, features.out_channels,
                              text_dim=text_encoder.dim if text_encoder else 1)
        self.head = head.to(self.device).eval()
        self.features.to(self.device)
        if self.text_encoder is not None:
            self.text_encoder.to(self.device)
        self.meta = dict(meta or {})
        self.last_timings: dict[str, float] = {}

    # -- protocol attributes --------------------------------------------------------------
    @property
    def channels(self) -> int:
        return int(self.features.in_channels)

    @property
    def uses_text(self) -> bool:
        return self.config.text_mode != "none"

    @property
    def num_parameters(self) -> int:
        return self.head.num_parameters()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, config: TextDiffConfig | None = None, backbone=None, text_encoder=None,
               device="auto", **overrides) -> "TextDiffModel":
        """New model with an untrained head.

        ``backbone``: a directory / hub id (stored in the bundle) or an already loaded
        ``(unet, scheduler)`` pair (then ``config.backbone`` must name where it is saved for the
        bundle to be reloadable). ``text_encoder``: a :class:`TextEncoder` or a directory / id.
        """
        from .features import build_features, load_backbone
        from .text_encoder import TextEncoder

        config = config or TextDiffConfig()
        if overrides:
            config = TextDiffConfig.from_dict({**config.to_dict(), **overrides})
        if backbone is None:
            backbone = config.backbone
        if not backbone and config.features == "classic":
            unet = sched = None
        elif not backbone:
            raise ValueError("no diffusion backbone given (a UNet2DModel.save_pretrained "
                             "directory; see `napari-textdiff pretrain-backbone`)")
        elif isinstance(backbone, (str, os.PathLike)):
            ref = str(backbone)
            unet, sched = load_backbone(ref)
            config.backbone = str(Path(ref).expanduser().resolve()) if Path(ref).expanduser() \
                .is_dir() else ref
        else:
            unet, sched = backbone if isinstance(backbone, tuple) else (backbone, None)
        feats = build_features(config, unet, sched, device=device)
        config.taps = list(feats.taps) or None   # resolved names, stored in the bundle
        enc = None
        if config.text_mode != "none":
            if isinstance(text_encoder, TextEncoder):
                enc = text_encoder
                config.text_encoder = enc.ref
            else:
                ref = str(text_encoder or config.text_encoder or DEFAULT_TEXT_ENCODER)
                if Path(ref).expanduser().is_dir():
                    ref = str(Path(ref).expanduser().resolve())
                config.text_encoder = ref
                enc = TextEncoder(ref, max_length=config.max_length, device=device)
            if enc.max_length != config.max_length:
                enc.max_length = config.max_length
                enc._cache.clear()
        return cls(config, feats, enc, device=device)

    # -- image geometry -------------------------------------------------------------------
    def _prepare(self, image) -> np.ndarray:
        from ..io import normalize_image

        return normalize_image(np.asarray(image), channels=self.channels)

    def _working_shape(self, shape) -> tuple[int, int]:
        c = self.config
        if c.resize_to:
            return (c.resize_to, c.resize_to)
        return (max(1, round(shape[0] * c.scale)), max(1, round(shape[1] * c.scale)))

    def _text_tensors(self, texts: Sequence[str], b: int | None = None):
        if not self.uses_text:
            return None, None
        h, m = self.text_encoder.encode_batch(texts)
        if b is not None and h.shape[0] == 1 and b > 1:
            h, m = h.expand(b, -1, -1), m.expand(b, -1)
        return h.to(self.device), m.to(self.device)

    def _tiles(self, example: Example):
        """Working-scale image/mask/valid tiles of one example (training)."""
        c = self.config
        img = self._prepare(example.image)
        mask = np.asarray(example.mask)
        if mask.ndim != 2 or mask.shape != img.shape[:2]:
            raise ValueError(f"example {example.name or ''}: mask shape {mask.shape} does not "
                             f"match image shape {img.shape[:2]}")
        mask = (mask > 0).astype(np.float32)
        shape = self._working_shape(img.shape)
        img = _resize(img, shape, 1)
        mask = (_resize(mask, shape, 1) >= 0.5).astype(np.uint8)
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

    def _build_cache(self, examples: Sequence[Example], max_tiles_per_image: int | None,
                     rng: np.random.Generator, stage: str = "features", should_stop=None):
        """Generator: computes the features of every training tile once (None if stopped)."""
        texts: list[str] = []
        tiles = []
        for ex in examples:
            t = self._tiles(ex)
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
        s = self.config.working_size
        shapes = [(c, -(-s // st), -(-s // st)) for c, st in
                  zip(self.features.out_channels, self.features.strides)]
        cache = _FeatureCache(len(tiles), shapes, s, self.config.cache_ram_mb)
        bs = max(1, self.config.batch_size)
        t0 = time.monotonic()
        try:
            for i in range(0, len(tiles), bs):
                if should_stop is not None and should_stop():
                    cache.close()
                    return None
                chunk = tiles[i:i + bs]
                feats = self.features(np.stack([a for a, _, _, _ in chunk]), batch_size=bs)
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

    # -- training -----------------------------------------------------------------------------
    def _train(self, cache, epochs: int, lr: float, val_cache=None, should_stop=None,
               seed: int = 0, patience: int | None = None, stage: str = "train"):
        """Generator: Adam on the head over cached features; returns a history dict."""
        import torch
        import torch.nn.functional as F

        c = self.config
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        from .train import cropped_batch, epoch_batches

        opt = torch.optim.Adam(self.head.parameters(), lr=lr)
        bs = max(1, min(c.batch_size, cache.n))
        per_epoch = c.epoch_steps or math.ceil(cache.n / bs)
        total = per_epoch * epochs
        text_all = self._text_tensors(cache.texts) if self.uses_text else (None, None)
        hist: dict[str, Any] = {"loss": [], "val_dice": [], "best_epoch": None,
                                "stopped": False, "epochs_run": 0, "epoch_seconds": []}
        best = (-1.0, None)
        bad_epochs = 0
        step = 0
        t0 = time.monotonic()
        from ..amp import Amp
        amp = Amp(self.device, what=f"TextDiff {stage}")
        try:
            for epoch in range(1, epochs + 1):
                losses = []
                for idx in epoch_batches(cache.n, bs, c.epoch_steps, rng):
                    if should_stop is not None and should_stop():
                        hist["stopped"] = True
                        return hist
                    aug = rng.integers(0, 8, len(idx)) if c.augment else None
                    feats, masks, valid = cropped_batch(cache, idx, aug,
                                                        self.features.strides, c.crop_size, rng)
                    feats = [f.to(self.device) for f in feats]
                    masks, valid = masks.to(self.device), valid.to(self.device)
                    th, tm = text_all
                    if th is not None:
                        ti = torch.as_tensor(cache.text[idx], device=self.device)
                        th, tm = th[ti], tm[ti]
                    self.head.train()
                    with amp.autocast():
                        logits = self.head(feats, th, tm, out_size=masks.shape[-2:])
                    logits = logits.float()
                    ce = (F.cross_entropy(logits, masks, reduction="none") * valid).sum() \
                        / valid.sum().clamp_min(1)
                    prob = logits.softmax(1)[:, 1]
                    loss = ce + c.dice_weight * _soft_dice_loss(prob, masks.float(), valid)
                    amp.step(loss, opt)
                    self.head.eval()
                    step += 1
                    losses.append(float(loss.detach()))
                    yield Progress(stage, step=step, total=total, epoch=epoch, loss=losses[-1],
                                   elapsed=time.monotonic() - t0)
                hist["loss"].append(float(np.mean(losses)))
                hist["epochs_run"] = epoch
                hist["epoch_seconds"].append(time.monotonic() - t0)
                if val_cache is not None:
                    d = self._cache_dice(val_cache)
                    hist["val_dice"].append(d)
                    if d > best[0]:
                        best = (d, {k: v.detach().clone() for k, v in
                                    self.head.state_dict().items()})
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
            self.head.eval()
            if best[1] is not None:
                self.head.load_state_dict(best[1])
                hist["best_val_dice"] = best[0]
        return hist

    def _cache_dice(self, cache) -> float:
        """Pixel Dice (threshold) of the head on cached tiles."""
        import torch

        inter = den = 0.0
        th_all, tm_all = self._text_tensors(cache.texts) if self.uses_text else (None, None)
        with torch.inference_mode():
            for i in range(cache.n):
                feats, masks, valid = cache.batch(np.array([i]))
                th = tm = None
                if th_all is not None:
                    th, tm = th_all[cache.text[i]][None], tm_all[cache.text[i]][None]
                p = self._head_proba([f.to(self.device) for f in feats], th, tm,
                                     masks.shape[-2:])
                pred = (p >= self.config.threshold).float().cpu() * valid
                m = masks.float() * valid
                inter += float((pred * m).sum())
                den += float(pred.sum() + m.sum())
        return (2 * inter + 1e-5) / (den + 1e-5)

    def _head_proba(self, feats, th, tm, size):
        import torch

        from ..device import autocast

        self.head.eval()
        with torch.inference_mode(), autocast(self.device):
            logits = self.head(feats, th, tm, out_size=size)
        return logits.float().softmax(1)[:, 1]

    def fit(self, train: Sequence[Example], val: Sequence[Example] | None = None, *,
            val_fraction: float = 0.0, epochs: int | None = None, lr: float | None = None,
            should_stop: Callable[[], bool] | None = None,
            max_tiles_per_image: int | None = None):
        """Train the head (progress generator; returns a history dict).

        ``val`` or ``val_fraction`` (a seeded split of ``train``) enables early stopping on
        validation Dice with the best head kept. The model is usable at every yield; a stopped
        or closed fit keeps the best validated head (or the last one without validation).
        """
        c = self.config
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
        cache = yield from self._build_cache(train, max_tiles_per_image, rng,
                                             should_stop=should_stop)
        if cache is None:
            return stopped
        val_cache = None
        try:
            if val:
                val_cache = yield from self._build_cache(list(val), max_tiles_per_image, rng,
                                                         stage="features (validation)",
                                                         should_stop=should_stop)
                if val_cache is None:
                    return stopped
            t_feat = time.monotonic() - t0
            hist = yield from self._train(cache, epochs or c.epochs, lr or c.lr, val_cache,
                                          should_stop, seed=c.seed,
                                          patience=c.patience if val_cache else None)
        finally:
            cache.close()
            if val_cache is not None:
                val_cache.close()
        hist.update(feature_seconds=t_feat, seconds=time.monotonic() - t0,
                    train_images=len(train), val_images=len(val or []), tiles=cache.n,
                    val_names=[ex.name for ex in val or []], val_index=val_index)
        self.meta["training"] = {k: v for k, v in hist.items() if k != "loss"}
        self.meta["training"]["final_loss"] = hist["loss"][-1] if hist["loss"] else None
        return hist

    def finetune(self, examples: Sequence[Example], *, epochs: int | None = None,
                 lr: float | None = None, should_stop=None,
                 max_tiles_per_image: int | None = 4, **kw):
        """Continue training the head on a few corrected examples (progress generator).

        Starts from the current head; only ``max_tiles_per_image`` tiles per image (those with
        foreground first) are used so a few big images stay quick on a CPU.
        """
        from ..finetune_defaults import finetune_defaults

        d = finetune_defaults(KIND)
        epochs, lr = epochs or d["epochs"], lr or d["lr"]
        examples = list(examples)
        if not examples:
            raise ValueError("finetune: no examples")
        t0 = time.monotonic()
        rng = np.random.default_rng(self.config.seed)
        cache = yield from self._build_cache(examples, max_tiles_per_image, rng,
                                             should_stop=should_stop)
        if cache is None:
            return {"loss": [], "stopped": True, "epochs_run": 0}
        try:
            hist = yield from self._train(cache, epochs, lr, None, should_stop,
                                          seed=self.config.seed, stage="finetune")
        finally:
            cache.close()
        hist["seconds"] = time.monotonic() - t0
        self.meta.setdefault("finetunes", []).append(
            {"images": len(examples), "epochs": hist["epochs_run"], "lr": lr})
        return hist

    # -- prediction -----------------------------------------------------------------------------
    def _predict_fn(self, text: str | None):
        import torch

        from ..memory import split_on_oom

        # features stay on the device in the backbone's dtype (no CPU round trip)
        on_dev = getattr(type(self.features), "device_features", None)

        def fn(batch):
            batch = np.asarray(batch, dtype=np.float32)
            feats = (on_dev(self.features, batch, batch_size=len(batch)) if on_dev is not None
                     else self.features(batch, batch_size=len(batch)))
            th, tm = self._text_tensors([text or ""], b=len(batch)) if self.uses_text \
                else (None, None)
            p = self._head_proba([f.to(self.device) for f in feats], th, tm, batch.shape[1:3])
            return p[:, None].cpu().numpy().astype(np.float32)
        return split_on_oom(fn, self.device, "TextDiff prediction")

    def iter_proba(self, image, text: str | None = None, *, tiled: bool = True, device=None,
                   batch_size: int = 1, should_stop=None, name: str = ""):
        """Prediction as a progress generator (one event per tile batch; Stop honoured within
        a UNet block): returns the probability map (H, W) float32, or None when stopped.
        See :mod:`.prediction`."""
        from .prediction import iter_proba

        return (yield from iter_proba(self, image, text, tiled=tiled, device=device,
                                      batch_size=batch_size, should_stop=should_stop,
                                      name=name))

    def predict_proba(self, image, text: str | None = None, *, tiled: bool = True,
                      device=None, batch_size: int = 4, progress=None) -> np.ndarray:
        """Foreground probability (H, W) float32 for an image of any size.

        Tiled at the working scale by default; ``tiled=False`` (or a model trained with
        ``resize_to``) resizes the whole image to the working size (the paper protocol).
        ``progress(done, total)`` is called after each tile batch.
        """
        from ..progress import run

        cb = None if progress is None else (lambda ev: progress(ev.step, ev.total))
        return run(self.iter_proba(image, text, tiled=tiled, device=device,
                                   batch_size=batch_size), callback=cb)

    def predict(self, image, text: str | None = None, *, threshold: float | None = None,
                instances: bool = False, **kw) -> np.ndarray:
        """Binary uint8 mask, or int32 instance labels with ``instances=True``."""
        prob = self.predict_proba(image, text, **kw)
        mask = (prob >= (self.config.threshold if threshold is None else threshold))
        mask = mask.astype(np.uint8)
        if instances:
            from ..instances import binary_to_instances
            return binary_to_instances(mask)
        return mask

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.head.to(self.device)
        self.features.to(self.device)
        if self.text_encoder is not None:
            self.text_encoder.to(self.device)
        return self

    # -- bundles ------------------------------------------------------------------------------
    def save(self, path) -> Path:
        from ..bundle import save_bundle

        c = self.config
        if not c.backbone and c.features != "classic":
            raise ValueError("cannot save: the model's backbone has no path/id (create the "
                             "model from a saved backbone directory)")
        path = Path(path)
        meta = dict(self.meta)
        meta.update(
            backbone_fingerprint=self.features.fingerprint(),
            feature_channels=self.features.out_channels,
            feature_strides=self.features.strides,
            head_parameters=self.num_parameters,
            channels=self.channels,
            text_dim=self.text_encoder.dim if self.text_encoder else None,
        )
        if c.backbone and Path(c.backbone).is_dir():
            meta["backbone_relpath"] = os.path.relpath(Path(c.backbone).resolve(),
                                                       path.resolve().parent)
        if self.text_encoder is not None:
            meta["text_encoder_fingerprint"] = self.text_encoder.fingerprint()
            if Path(c.text_encoder).is_dir():
                meta["text_encoder_relpath"] = os.path.relpath(
                    Path(c.text_encoder).resolve(), path.resolve().parent)
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        return save_bundle(path, KIND, state, c.to_dict(), meta)

    @classmethod
    def load(cls, path, device="auto", backbone=None, text_encoder=None) -> "TextDiffModel":
        """Load a bundle; ``backbone``/``text_encoder`` override where those are looked for.

        The backbone is looked for at the override, then relative to the bundle (as saved),
        then at its stored absolute path / hub id. A backbone whose weights differ from the
        one the head was trained on is refused (fingerprint check).
        """
        from ..bundle import BundleError, load_bundle
        from .features import build_features, load_backbone
        from .head import build_head
        from .text_encoder import TextEncoder

        path = Path(path)
        header, state = load_bundle(path, expect_kind=KIND)
        try:
            config = TextDiffConfig.from_dict(header["config"])
        except (TypeError, ValueError) as e:
            raise BundleError(f"{path}: bad TextDiff config ({e})") from e
        meta = header.get("meta", {})

        def locate(override, rel, stored, what):
            cands = []
            if override is not None:
                cands.append(str(override))
            else:
                if rel:
                    cands.append(str((path.resolve().parent / rel).resolve()))
                if stored:
                    cands.append(stored)
            for cand in cands:
                if Path(cand).expanduser().is_dir():
                    return str(Path(cand).expanduser().resolve())
            for cand in cands:   # hub ids (only when online)
                if cand and not Path(cand).is_absolute() and "/" in cand \
                        and not cand.startswith("."):
                    return cand
                if cand == DEFAULT_TEXT_ENCODER:
                    return cand
            raise BundleError(f"{path}: the {what} this model needs was not found (looked at "
                              f"{cands}); pass its location ({what}=...)")

        bb, unet, sched = "", None, None
        if config.features != "classic":
            bb = locate(backbone, meta.get("backbone_relpath"), config.backbone, "backbone")
            try:
                unet, sched = load_backbone(bb)
            except (FileNotFoundError, ValueError) as e:
                raise BundleError(f"{path}: cannot load its backbone: {e}") from e
        feats = build_features(config, unet, sched, device=device)
        fp = meta.get("backbone_fingerprint")
        if fp and unet is not None and feats.fingerprint() != fp:
            raise BundleError(f"{path}: this head was trained on another backbone (fingerprint "
                              f"{fp}); {bb} has fingerprint {feats.fingerprint()}. Load it with "
                              "the backbone it was trained on (backbone=...).")
        config.backbone = bb
        enc = None
        if config.text_mode != "none":
            if isinstance(text_encoder, TextEncoder):
                enc = text_encoder
            else:
                te = locate(text_encoder, meta.get("text_encoder_relpath"),
                            config.text_encoder, "text_encoder")
                enc = TextEncoder(te, max_length=config.max_length, device=device)
                config.text_encoder = te
            tfp = meta.get("text_encoder_fingerprint")
            if tfp and enc.fingerprint() != tfp:
                raise BundleError(f"{path}: this head was trained with another text encoder "
                                  f"(fingerprint {tfp}, found {enc.fingerprint()}).")
        head = build_head(config, feats.out_channels, text_dim=enc.dim if enc else 1)
        hs = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        try:
            head.load_state_dict(hs, strict=True)
        except RuntimeError as e:
            raise BundleError(f"{path}: head weights do not fit its config ({e})") from e
        return cls(config, feats, enc, head=head, device=device, meta=meta)

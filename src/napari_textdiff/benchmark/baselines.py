"""Baselines trained from scratch on the same images: a plain U-Net and MGCC-light supervised.

The U-Net reuses MGCC's encoder/decoder blocks (double conv, nearest-upsample conv) without the
ConvMixer and the attention gates: the "fully supervised U-Net" row of MGCC's tables and the
"small U-Net from scratch" of REFERENCE.md. Both baselines run behind ``MGCCModel`` (same
preprocessing, whole-image resize or tiled prediction), so they are evaluated exactly like MGCC.

Training data for the native-resolution protocol: overlapping ``size``² crops of the full images
(:func:`crops_of`), then prediction in tiles (``MGCCModel.predict_proba(mode="tile")``).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.augment import random_dihedral
from ..core.configs import JsonConfig
from ..core.mgcc.losses import bce_dice_loss
from ..core.mgcc.model import MGCCModel
from ..core.mgcc.network import BASE_CHANNELS, DoubleConv, Encoder, UpConv
from ..core.mgcc.preprocess import image_tensor, mask_tensor, normalize_input
from ..core.models import Example
from ..core.progress import Progress

__all__ = ["UNetConfig", "UNet", "SupervisedConfig", "train_unet", "train_mgcc_light",
           "crops_of"]


@dataclasses.dataclass
class UNetConfig(JsonConfig):
    in_channels: int = 3
    width: float = 0.25          # x (64..1024): 0.25 = 16..256 channels, ~1.9 M params

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(max(4, int(round(c * self.width))) for c in BASE_CHANNELS)


class UNet(nn.Module):
    """Plain U-Net (Ronneberger) on MGCC's blocks: 5 stages, 4 skips by concatenation."""

    def __init__(self, config: UNetConfig | None = None, **kw):
        super().__init__()
        self.config = config = config or UNetConfig(**kw)
        c = config.channels
        self.encoder = Encoder(config.in_channels, c)
        self.ups = nn.ModuleList(UpConv(c[i + 1], c[i]) for i in reversed(range(4)))
        self.convs = nn.ModuleList(DoubleConv(2 * c[i], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], 1, 1)

    def forward(self, x):
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"U-Net input H and W must be multiples of 16, got "
                             f"{tuple(x.shape[-2:])}")
        feats = self.encoder(x)
        y = feats[4]
        for j, (up, conv) in enumerate(zip(self.ups, self.convs)):
            y = conv(torch.cat([feats[3 - j], up(y)], dim=1))
        return self.head(y)

    def inference_state_dict(self):
        return self.state_dict()


@dataclasses.dataclass
class SupervisedConfig:
    iterations: int = 300
    batch_size: int = 4
    lr: float = 1e-3             # Adam (converges in a few hundred steps, unlike MGCC's SGD)
    size: int = 256
    augment: bool = True
    seed: int = 0


def crops_of(examples: Sequence[Example], size: int, overlap: int | None = None,
             max_per_image: int | None = None, seed: int = 0) -> list[Example]:
    """Overlapping ``size``² crops at native resolution (padded when an image is smaller).

    With ``max_per_image`` a seeded subset is kept, crops with foreground first.
    """
    from ..core.tiling import tile_starts

    overlap = size // 4 if overlap is None else overlap
    rng = np.random.default_rng(seed)
    out = []
    for ex in examples:
        img, m = np.asarray(ex.image), np.asarray(ex.mask)
        ph, pw = max(0, size - img.shape[0]), max(0, size - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
            m = np.pad(m, ((0, ph), (0, pw)))
        crops = [(img[y:y + size, x:x + size], m[y:y + size, x:x + size])
                 for y in tile_starts(img.shape[0], size, overlap)
                 for x in tile_starts(img.shape[1], size, overlap)]
        if max_per_image and len(crops) > max_per_image:
            fg = np.array([c[1].any() for c in crops])
            order = np.concatenate([rng.permutation(np.flatnonzero(fg)),
                                    rng.permutation(np.flatnonzero(~fg))])
            crops = [crops[i] for i in sorted(order[:max_per_image])]
        out += [Example(a, b, ex.text, f"{ex.name}#{i}") for i, (a, b) in enumerate(crops)]
    return out


UNIT_CHECKPOINT = "checkpoint.pt"


def _replay(records):
    """The validation events of the part trained before a resume, so a caller's curve is
    whole (``message`` says they come from the checkpoint)."""
    for rec in records:
        yield Progress("validate", step=int(rec["it"]), total=None,
                       metrics={k: v for k, v in rec.items() if k != "it"},
                       message="from checkpoint")


def train_unet(examples: Sequence[Example], *, config: SupervisedConfig | None = None,
               net_config: UNetConfig | None = None, device="cpu", inference: str = "resize",
               should_stop: Callable[[], bool] | None = None, val: Sequence[Example] = (),
               val_every: int | None = None, checkpoint_dir=None,
               checkpoint_every: int | None = None):
    """Progress generator: Adam on 0.5·BCE + Dice; returns ``(MGCCModel over the U-Net,
    loss history)``. Images are resized to ``config.size``² (pass crops for tiled work).
    With ``val`` the weights with the best mean validation IoU are kept (as MGCC's trainer).

    With ``checkpoint_dir`` the whole training state is saved there atomically every
    ``checkpoint_every`` iterations (default: each validation) and on a stop, and a
    checkpoint found there is continued, so a unit cut by a session's end loses at most
    that many iterations; the resumed run draws the same batches as an uninterrupted one.
    """
    from ..core.amp import Amp
    from ..core.device import resolve_device
    from ..core.mgcc.trainer import atomic_torch_save, evaluate_model

    cfg = config or SupervisedConfig()
    if not examples:
        raise ValueError("train_unet: no training examples")
    dev = resolve_device(device)
    ncfg = net_config or UNetConfig()
    X = torch.stack([image_tensor(e.image, ncfg.in_channels, cfg.size) for e in examples])
    Y = torch.stack([mask_tensor(e.mask, cfg.size) for e in examples])
    torch.manual_seed(cfg.seed)
    net = UNet(ncfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    amp = Amp(dev, what="U-Net training")
    rng = np.random.default_rng(cfg.seed)
    model = MGCCModel(net, size=cfg.size, inference=inference, device=dev,
                      meta={"baseline": "unet", "net": ncfg.to_dict()})
    bs = min(cfg.batch_size, len(X))
    every_val = val_every or max(1, cfg.iterations // 5)
    every_ck = checkpoint_every or every_val
    losses: list[float] = []
    records: list[dict] = []
    order, pos = rng.permutation(len(X)), 0
    best: tuple[float, dict | None] = (-1.0, None)
    start, before = 1, 0.0
    ck_path = Path(checkpoint_dir) / UNIT_CHECKPOINT if checkpoint_dir is not None else None
    if ck_path is not None and ck_path.is_file():
        ck = torch.load(ck_path, map_location=dev, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        amp.load_state_dict(ck.get("amp"))
        losses, records = list(ck["losses"]), list(ck["records"])
        best = (float(ck["best_score"]), ck["best_state"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"].cpu())
        order, pos = np.asarray(ck["order"], dtype=np.int64), int(ck["pos"])
        start, before = int(ck["it"]) + 1, float(ck["elapsed"])
        model.meta["resumed"] = {"from_iteration": start - 1, "seconds_before": round(before, 2)}
        yield from _replay(records)
    t0 = time.monotonic() - before

    def save(it):
        if ck_path is not None:
            atomic_torch_save({
                "net": net.state_dict(), "opt": opt.state_dict(), "amp": amp.state_dict(),
                "it": it, "losses": losses, "records": records, "best_score": best[0],
                "best_state": best[1], "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "order": np.asarray(order).tolist(),
                "pos": pos, "elapsed": time.monotonic() - t0}, ck_path)

    it = start - 1
    try:
        for it in range(start, cfg.iterations + 1):
            if should_stop is not None and should_stop():
                it -= 1
                break
            idx = []
            while len(idx) < bs:
                if pos >= len(order):
                    order, pos = rng.permutation(len(X)), 0
                idx.append(order[pos])
                pos += 1
            x, y = X[idx], Y[idx]
            if cfg.augment:
                x, y = random_dihedral(x, y, rng)
            net.train()
            with amp.autocast():
                logits = net(normalize_input(x.to(dev)))
            loss = bce_dice_loss(logits.float(), y.to(dev))
            amp.step(loss, opt)
            losses.append(float(loss.detach()))
            yield Progress("train", step=it, total=cfg.iterations, loss=losses[-1],
                           elapsed=time.monotonic() - t0)
            if val and (it % every_val == 0 or it == cfg.iterations):
                net.eval()
                score = float(evaluate_model(model, list(val))[0]["iou"])
                records.append({"it": it, "val_iou": score})
                if score > best[0]:
                    best = (score, {k: v.detach().clone() for k, v in net.state_dict().items()})
                yield Progress("validate", step=it, total=cfg.iterations,
                               metrics={"val_iou": score}, elapsed=time.monotonic() - t0)
            if it % every_ck == 0 and it < cfg.iterations:
                save(it)
        else:
            it = cfg.iterations
        if it < cfg.iterations:       # stopped: keep where it got to
            save(it)
    finally:
        net.eval()
        if best[1] is not None:
            net.load_state_dict(best[1])
            model.meta["val_iou"] = best[0]
    return model, losses


def train_mgcc_light(examples: Sequence[Example], unlabeled: Sequence[np.ndarray] = (),
                     val: Sequence[Example] = (), *, iterations: int = 300, size: int = 256,
                     width: float = 0.25, in_channels: int = 3, batch_labeled: int = 4,
                     batch_unlabeled: int = 4, lr: float = 0.01, seed: int = 0,
                     device="cpu", inference: str = "resize", val_every: int | None = None,
                     should_stop=None, checkpoint_dir=None, checkpoint_every: int | None = None):
    """Progress generator over ``core.mgcc.MGCCTrainer``; returns ``(MGCCModel, history)``
    where history holds the per-iteration total loss (``"loss"``) and the validation records.

    Without ``unlabeled`` images this is MGCC's supervised part (four decoders, no
    consistency term): the "MGCC-light supervised" baseline. ``checkpoint_dir`` as in
    :func:`train_unet` (the trainer's own exact-resume checkpoint, plus the loss history).
    """
    from ..core.mgcc.network import MGCCConfig
    from ..core.mgcc.trainer import CHECKPOINT, MGCCTrainer, TrainConfig

    every_val = val_every or max(1, iterations // 5)
    tc = TrainConfig(iterations=iterations, size=size, batch_labeled=batch_labeled,
                     batch_unlabeled=batch_unlabeled, lr=lr, seed=seed, val_every=every_val,
                     checkpoint_every=(checkpoint_every or every_val) if checkpoint_dir
                     else 10 ** 9)
    resume = checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT).is_file()
    trainer = MGCCTrainer(list(examples), list(unlabeled), list(val),
                          net_config=MGCCConfig(in_channels=in_channels, width=width),
                          config=tc, device=device, run_dir=checkpoint_dir, resume=resume)
    losses: list[float] = list(trainer.extra_state.get("losses", []))
    trainer.extra_state["losses"] = losses       # saved with every checkpoint
    before, it0 = float(trainer.extra_state.get("elapsed", 0.0)), trainer.it
    if resume:
        yield from _replay(trainer.history)
    t0 = time.monotonic()
    gen = trainer.run(should_stop)
    try:
        while True:
            ev = next(gen)
            if ev.stage == "train" and ev.loss is not None:
                losses.append(float(ev.loss))
            trainer.extra_state["elapsed"] = before + time.monotonic() - t0
            yield ev
    except StopIteration as stop:
        model = stop.value
    model.inference = inference
    if resume:
        model.meta["resumed"] = {"from_iteration": it0, "seconds_before": round(before, 2)}
    return model, {"loss": losses, "validation": trainer.history,
                   "best_iteration": trainer.best_it}

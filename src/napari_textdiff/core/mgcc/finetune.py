"""Fine-tuning an MGCC model on a few corrected masks (the Fine-tune panel's loop).

Why these defaults (``FINETUNE_DEFAULTS``): with a handful of images, at most the main decoder
(attention gates and head included) adapts, by default only its 1x1 output layer (what was
measured to do no harm); the encoder and ConvMixer stay frozen and every
BatchNorm keeps its running statistics (the net stays in eval mode), since statistics from
batches of 2 would ruin them. Because the frozen part is deterministic, its features are
computed once per image and per dihedral transform (8 per image) and cached, so each step only
runs the decoder: several times more steps fit in the same time on a CPU. The learning rate and
the number of epochs were chosen on BUSI with ``scripts/busi_finetune.py`` (10 corrected cases,
Dice on other held-out cases; results in ``models/README.md``).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from ..augment import dihedral
from ..finetune_defaults import FINETUNE_DEFAULTS as _ALL_DEFAULTS
from ..progress import Progress
from .losses import bce_dice_loss
from .preprocess import image_tensor, mask_tensor, normalize_input

__all__ = ["FINETUNE_DEFAULTS", "finetune_model"]

#: Library defaults of ``MGCCModel.finetune`` (and of the GUI's Fine-tune panel for MGCC).
#: Measured on BUSI (models/README.md): every setting that moves the decoder lost Dice on the
#: other cases (Adam 1e-3 x 30: 5-12 points; 1e-4 x 20: 2-5; with an L2-SP anchor or AdaBN
#: too), in distribution and under a simulated scanner change; the 1x1 output layer alone
#: (Adam 3e-2 x 60) is the setting that did no harm. The numbers live in the torch-free
#: ``core.finetune_defaults`` (the Fine-tune panel reads them there).
FINETUNE_DEFAULTS = _ALL_DEFAULTS["mgcc"]

_CACHE_LIMIT_BYTES = 768 * 2 ** 20   # above this the frozen features are recomputed per step


def _frozen_features(net, x: torch.Tensor) -> list[torch.Tensor]:
    """Encoder skips + ConvMixer output: the main decoder's input."""
    feats = net.encoder(x)
    b = feats[4]
    for layer in net.mixer:
        b = layer(b)
    return [*feats[:4], b]


def _penultimate(dec, feats: list[torch.Tensor]) -> torch.Tensor:
    """The main decoder's last feature map (the input of its 1x1 head)."""
    x = feats[4]
    for j, (up, gate, conv) in enumerate(zip(dec.ups, dec.gates, dec.convs)):
        x = conv(torch.cat([gate(feats[3 - j]), up(x)], dim=1))
    return x


def _optimizer(name: str, params, lr: float):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}: use adam, adamw or sgd")


def finetune_model(model, examples: Sequence, *, epochs: int = FINETUNE_DEFAULTS["epochs"],
                   lr: float = FINETUNE_DEFAULTS["lr"],
                   batch_size: int = FINETUNE_DEFAULTS["batch_size"],
                   optimizer: str = FINETUNE_DEFAULTS["optimizer"],
                   train: str = FINETUNE_DEFAULTS["train"],
                   augment: bool = FINETUNE_DEFAULTS["augment"], seed: int = 0,
                   should_stop=None):
    """Progress generator fine-tuning ``model`` (an ``MGCCModel``) in place.

    ``train``: "decoder" (main decoder only, cached frozen features), "head" (the decoder's
    last double conv and 1x1 head), "output" (the 1x1 head alone: a learned recalibration,
    on cached decoder features), "norm" (every BatchNorm scale and shift plus the 1x1 head,
    statistics frozen: a cheap re-calibration for another scanner or setting; its epochs / lr
    and measured gains: ``core.finetune_defaults.MGCC_PART_DEFAULTS``) or "all"
    (every weight, BatchNorm statistics still frozen).
    Corrected masks with no lesion are left out of the pixel loss (said in the first event):
    measured on BUSI, one empty mask fine-tuned on made the model find nothing on other images;
    "no lesion" is the image-level rule's answer. All-empty examples are an error.
    Yields ``Progress("finetune", ...)`` after every step; the model is usable at every
    yield. Returns the list of per-epoch mean losses.
    """
    from ..amp import Amp

    if train not in ("decoder", "head", "output", "norm", "all"):
        raise ValueError("train must be 'decoder', 'head', 'output', 'norm' or 'all', "
                         f"got {train!r}")
    if not examples:
        raise ValueError("fine-tuning needs at least one image/mask example")
    net, dev = model.net, model.device
    xs, ys = [], []
    for i, ex in enumerate(examples):
        img, m = ex.image, ex.mask
        if np.asarray(m).shape[:2] != np.asarray(img).shape[:2]:
            raise ValueError(f"example {ex.name or i}: mask shape {np.asarray(m).shape[:2]} "
                             f"!= image shape {np.asarray(img).shape[:2]}")
        xs.append(image_tensor(img, model.channels, model.size))
        ys.append(mask_tensor(m, model.size))
    empty = [i for i, ex in enumerate(examples) if not np.asarray(ex.mask).any()]
    if len(empty) == len(ys):
        raise ValueError(
            f"all {len(ys)} corrected masks are empty (no lesion): fine-tuning the pixel model on "
            "them alone teaches it to find nothing anywhere. Add at least one corrected image "
            "that shows a lesion.")
    keep = [i for i in range(len(ys)) if i not in set(empty)]
    X, Y = torch.stack([xs[i] for i in keep]), torch.stack([ys[i] for i in keep])
    n = len(X)
    rng = np.random.default_rng(seed)
    dec = net.main_decoder
    params = {"decoder": lambda: list(dec.parameters()), "all": lambda: list(net.parameters()),
              "head": lambda: [*dec.convs[-1].parameters(), *dec.head.parameters()],
              "output": lambda: list(dec.head.parameters()),
              "norm": lambda: [*(p for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)
                                 for p in m.parameters()), *dec.head.parameters()]}[train]()
    train_ids = {id(p) for p in params}
    frozen = [p for p in net.parameters() if id(p) not in train_ids]
    saved_flags = [p.requires_grad for p in frozen]
    opt = _optimizer(optimizer, params, lr)
    amp = Amp(dev, what="MGCC fine-tuning")
    steps_per_epoch = math.ceil(n / batch_size)
    total, step, history = epochs * steps_per_epoch, 0, []
    was_training = net.training
    net.eval()
    for p in frozen:
        p.requires_grad_(False)
    t0 = time.monotonic()
    try:
        if empty:
            names = ", ".join(str(examples[i].name or i) for i in empty)
            yield Progress("finetune", step=0, total=total, elapsed=0.0, message=(
                f"left out {len(empty)} corrected mask(s) with no lesion ({names}): on BUSI "
                "one such image made the model find nothing on other images (Dice 0.72 -> "
                "0.13); 'no lesion' is the image-level rule's answer"))
        cache = None
        if train not in ("all", "norm"):
            n_tf = 8 if augment else 1
            per = sum(int(np.prod(f.shape)) for f in _frozen_features(net, X[:1].to(dev) * 0))
            if per * 4 * n * n_tf <= _CACHE_LIMIT_BYTES:
                cache = {}
                with torch.no_grad():
                    for t in range(n_tf):
                        xt = normalize_input(dihedral(X, t).to(dev))
                        feats = _frozen_features(net, xt)
                        cache[t] = ([_penultimate(dec, feats)] if train == "output"
                                    else [f.detach() for f in feats])
        for epoch in range(epochs):
            order, losses = rng.permutation(n), []
            for s in range(steps_per_epoch):
                if should_stop is not None and should_stop():
                    return history
                idx = order[s * batch_size:(s + 1) * batch_size]
                tfs = rng.integers(8, size=len(idx)) if augment else np.zeros(len(idx), int)
                y = torch.stack([dihedral(Y[i], int(t))
                                 for i, t in zip(idx, tfs)]).to(dev)
                with amp.autocast():
                    if cache is not None:
                        feats = [torch.stack([c[i] for i, t in zip(idx, tfs)
                                              for c in [cache[int(t)][j]]])
                                 for j in range(len(cache[0]))]
                        logits = dec.head(feats[0]) if train == "output" else dec(feats)
                    else:
                        x = torch.stack([dihedral(X[i], int(t))
                                         for i, t in zip(idx, tfs)])
                        logits = net(normalize_input(x.to(dev)))
                loss = bce_dice_loss(logits.float(), y)
                amp.step(loss, opt)
                step += 1
                losses.append(float(loss.detach()))
                yield Progress("finetune", step=step, total=total, epoch=epoch + 1,
                               loss=losses[-1], elapsed=time.monotonic() - t0)
            history.append(float(np.mean(losses)))
        return history
    finally:
        for p, f in zip(frozen, saved_flags):
            p.requires_grad_(f)
        net.train(was_training)
        model.meta["finetuned_examples"] = model.meta.get("finetuned_examples", 0) + n
        if empty:
            model.meta["finetune_left_out_empty"] = (
                model.meta.get("finetune_left_out_empty", 0) + len(empty))

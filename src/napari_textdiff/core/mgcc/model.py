"""``MGCCModel``: the MGCC network behind the shared ``SegmentationModel`` interface.

Prediction follows the paper: the whole image is resized to the working size (256 by default),
segmented, and the probability map resized back. BUSI images are ~500 px and the network was
trained on resized whole images, so tiling at native resolution would show it lesions at twice
the scale it learned. Tiling (``mode="tile"``, through ``core.tiling.predict_tiled``) is
available for models trained on crops of large images; the interface's ``tiled=True`` default
does not force it (it only allows it when the bundle's own inference mode is ``"tile"``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..progress import Progress
from .losses import bce_dice_loss
from .network import MGCCConfig, MGCCNet
from .preprocess import image_tensor, mask_tensor, normalize_input, resize_proba

__all__ = ["MGCCModel", "KIND"]

KIND = "mgcc"


class MGCCModel:
    """Inference + fine-tuning wrapper; ``net`` may be the live training network (with aux)."""

    kind = KIND
    uses_text = False

    def __init__(self, net: MGCCNet, *, size: int = 256, threshold: float = 0.5,
                 inference: str = "resize", meta: dict | None = None, device=None):
        if size % 16:
            raise ValueError(f"working size must be a multiple of 16, got {size}")
        if inference not in ("resize", "tile"):
            raise ValueError(f"inference mode must be 'resize' or 'tile', got {inference!r}")
        self.net = net
        self.size = int(size)
        self.threshold = float(threshold)
        self.inference = inference
        self.meta = dict(meta or {})
        self.device = torch.device(device) if device is not None else next(net.parameters()).device

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, in_channels: int = 1, width: float = 1.0, size: int = 256, **kw) -> "MGCCModel":
        """A freshly initialised model (inference path only)."""
        net = MGCCNet(MGCCConfig(in_channels=in_channels, width=width, aux=False)).eval()
        return cls(net, size=size, **kw)

    @property
    def channels(self) -> int:
        return self.net.config.in_channels

    @property
    def config(self) -> dict:
        c = self.net.config.to_dict()
        c["aux"] = False
        return {"net": c, "size": self.size, "threshold": self.threshold,
                "inference": self.inference}

    def to(self, device) -> "MGCCModel":
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.net.to(self.device)
        return self

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,size,size) float in [0,1] -> probabilities (B,1,size,size), main path only."""
        from ..device import autocast

        was_training = self.net.training
        self.net.eval()
        try:
            with autocast(self.device):
                logits = self.net(normalize_input(images.to(self.device)))
            return torch.sigmoid(logits.float())
        finally:
            self.net.train(was_training)

    def predict_proba(self, image: np.ndarray, text: str | None = None, *, tiled: bool = True,
                      device: Any = None, mode: str | None = None, tile: int | None = None,
                      overlap: int = 32, batch_size: int = 4, progress=None) -> np.ndarray:
        """Foreground probability (H, W) float32 for an image of any size (``text`` is ignored).

        ``mode`` "resize" (default for MGCC, as in the paper) or "tile"; when ``mode`` is None
        the bundle's inference mode is used, and ``tiled=False`` always means "resize".
        """
        if device is not None:
            self.to(device)
        mode = mode or (self.inference if tiled else "resize")
        arr = np.asarray(image)
        h, w = arr.shape[:2]
        if mode == "resize":
            x = image_tensor(arr, self.channels, self.size)[None]
            prob = resize_proba(self.predict_batch(x), (h, w))
            return prob[0, 0].cpu().numpy().astype(np.float32)
        if mode != "tile":
            raise ValueError(f"unknown prediction mode {mode!r}: use 'resize' or 'tile'")
        from ..io import normalize_image
        from ..tiling import predict_tiled

        img = normalize_image(arr, channels=self.channels)

        def fn(tiles):  # float32 (B, t, t, C) -> (B, 1, t, t)
            t = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2)))
            return self.predict_batch(t).cpu().numpy()

        out = predict_tiled(img, fn, tile=tile or self.size, overlap=overlap,
                            batch_size=batch_size, out_channels=1, progress=progress)
        return np.asarray(out[0], np.float32)

    def predict_mask(self, image: np.ndarray, threshold: float | None = None,
                     instances: bool = False, **kw) -> np.ndarray:
        """Binary mask (uint8) or, with ``instances=True``, int32 connected-component labels."""
        t = self.threshold if threshold is None else float(threshold)
        mask = (self.predict_proba(image, **kw) >= t).astype(np.uint8)
        if instances:
            from ..instances import binary_to_instances

            return binary_to_instances(mask)
        return mask

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self, examples: Sequence, *, epochs: int = 20, lr: float = 1e-4,
                 should_stop=None, batch_size: int = 2, augment: bool = True, seed: int = 0,
                 device: Any = None, **kw):
        """Fine-tune the main decoder (attention gates included) on a few corrected masks.

        The encoder and ConvMixer stay frozen and every BatchNorm keeps its running statistics
        (the net stays in eval mode): a handful of images would ruin them. Yields
        ``Progress("finetune", ...)`` after every step; the model is usable at every yield.
        Returns the list of per-epoch mean losses.
        """
        from ..device import autocast

        if kw:
            raise TypeError(f"unexpected fine-tune options: {sorted(kw)}")
        if not examples:
            raise ValueError("fine-tuning needs at least one image/mask example")
        if device is not None:
            self.to(device)
        xs, ys = [], []
        for i, ex in enumerate(examples):
            img, m = ex.image, ex.mask
            if np.asarray(m).shape[:2] != np.asarray(img).shape[:2]:
                raise ValueError(f"example {ex.name or i}: mask shape {np.asarray(m).shape[:2]} "
                                 f"!= image shape {np.asarray(img).shape[:2]}")
            xs.append(image_tensor(img, self.channels, self.size))
            ys.append(mask_tensor(m, self.size))
        X, Y = torch.stack(xs), torch.stack(ys)
        rng = np.random.default_rng(seed)
        params = list(self.net.main_decoder.parameters())
        train_ids = {id(p) for p in params}
        frozen = [p for p in self.net.parameters() if id(p) not in train_ids]
        saved_flags = [p.requires_grad for p in frozen]
        for p in frozen:
            p.requires_grad_(False)
        opt = torch.optim.Adam(params, lr=lr)
        steps_per_epoch = math.ceil(len(X) / batch_size)
        total, step, history = epochs * steps_per_epoch, 0, []
        was_training = self.net.training
        self.net.eval()
        try:
            for epoch in range(epochs):
                order, losses = rng.permutation(len(X)), []
                for s in range(steps_per_epoch):
                    if should_stop is not None and should_stop():
                        return history
                    idx = order[s * batch_size:(s + 1) * batch_size]
                    x, y = X[idx], Y[idx]
                    if augment:
                        x, y = dihedral(x, y, rng)
                    with autocast(self.device):
                        logits = self.net(normalize_input(x.to(self.device)))
                    loss = bce_dice_loss(logits.float(), y.to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    losses.append(float(loss.detach()))
                    yield Progress("finetune", step=step, total=total, epoch=epoch + 1,
                                   loss=losses[-1])
                history.append(float(np.mean(losses)))
            return history
        finally:
            for p, f in zip(frozen, saved_flags):
                p.requires_grad_(f)
            self.net.train(was_training)
            self.meta["finetuned_examples"] = self.meta.get("finetuned_examples", 0) + len(X)

    # ------------------------------------------------------------------ persistence
    def save(self, path, dtype=None, meta: dict | None = None):
        """Write the inference path as a ``kind="mgcc"`` bundle (atomic, one .safetensors)."""
        from ..bundle import save_bundle

        m = dict(self.meta)
        m.update(meta or {})
        return save_bundle(path, KIND, self.net.inference_state_dict(), self.config, m, dtype=dtype)

    @classmethod
    def load(cls, path, device="auto") -> "MGCCModel":
        from ..bundle import BundleError, load_bundle
        from ..device import resolve_device

        dev = resolve_device(device)
        header, state = load_bundle(path, expect_kind=KIND)
        cfg = header.get("config") or {}
        try:
            net_cfg = MGCCConfig.from_dict({**cfg["net"], "aux": False})
            net = MGCCNet(net_cfg)
            state = {k: v.to(torch.float32) if v.is_floating_point() else v
                     for k, v in state.items()}
            net.load_state_dict(state, strict=True)
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise BundleError(f"{path}: MGCC weights do not match their config ({e})") from e
        model = cls(net.eval(), size=cfg.get("size", 256), threshold=cfg.get("threshold", 0.5),
                    inference=cfg.get("inference", "resize"), meta=header.get("meta"))
        return model.to(dev)


def dihedral(x: torch.Tensor, y: torch.Tensor | None, rng: np.random.Generator):
    """Random rot90 x flip per sample (the 8 dihedral transforms), same for image and mask."""
    xs, ys = [], []
    for i in range(x.shape[0]):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        xi = torch.rot90(x[i], k, dims=(-2, -1))
        xi = xi.flip(-1) if flip else xi
        xs.append(xi)
        if y is not None:
            yi = torch.rot90(y[i], k, dims=(-2, -1))
            ys.append(yi.flip(-1) if flip else yi)
    return torch.stack(xs), (torch.stack(ys) if y is not None else None)

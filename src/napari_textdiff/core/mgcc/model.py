"""``MGCCModel``: the MGCC network behind the shared ``SegmentationModel`` interface.

Prediction follows the paper: the whole image is resized to the working size (256 by default),
segmented, and the probability map resized back. BUSI images are ~500 px and the network was
trained on resized whole images, so tiling at native resolution would show it lesions at twice
the scale it learned. Tiling (``mode="tile"``, through ``core.tiling.predict_tiled``) is
available for models trained on crops of large images; the interface's ``tiled=True`` default
does not force it (it only allows it when the bundle's own inference mode is ``"tile"``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..progress import Progress
from .network import MGCCConfig, MGCCNet
from .preprocess import image_tensor, normalize_input, resize_proba

__all__ = ["MGCCModel", "KIND"]

KIND = "mgcc"


class MGCCModel:
    """Inference + fine-tuning wrapper; ``net`` may be the live training network (with aux)."""

    kind = KIND
    uses_text = False

    def __init__(self, net: MGCCNet, *, size: int = 256, threshold: float = 0.5,
                 inference: str = "resize", meta: dict | None = None, device=None,
                 decision: dict | None = None):
        if size % 16:
            raise ValueError(f"working size must be a multiple of 16, got {size}")
        if inference not in ("resize", "tile"):
            raise ValueError(f"inference mode must be 'resize' or 'tile', got {inference!r}")
        self.net = net
        self.size = int(size)
        self.threshold = float(threshold)
        self.inference = inference
        self.meta = dict(meta or {})
        self.decision = dict(decision) if decision else None   # image-level rule (decision.py)
        self.device = torch.device(device) if device is not None else next(net.parameters()).device

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, in_channels: int = 1, width: float = 1.0, size: int = 256, **kw) -> "MGCCModel":
        """A freshly initialised model (inference path only; train with ``MGCCTrainer``).

        Args:
            in_channels: 1 (gray) or 3 (RGB) input.
            width: channel multiplier (0.25 = the light variant).
            size: working size, a multiple of 16 (images are resized to it).
            kw: ``threshold``, ``inference`` ("resize" | "tile"), ``meta``, ``device``.

        Returns:
            The model.
        """
        net = MGCCNet(MGCCConfig(in_channels=in_channels, width=width, aux=False)).eval()
        return cls(net, size=size, **kw)

    @property
    def channels(self) -> int:
        return self.net.config.in_channels

    @property
    def config(self) -> dict:
        c = self.net.config.to_dict()
        c["aux"] = False
        out = {"net": c, "size": self.size, "threshold": self.threshold,
               "inference": self.inference}
        if self.decision:
            out["decision"] = dict(self.decision)
        return out

    def to(self, device) -> "MGCCModel":
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.net.to(self.device)
        return self

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,size,size) float in [0,1] -> probabilities (B,1,size,size), main path only.

        Whole-image models (``inference="resize"``) apply their image-level "no lesion" rule
        (``self.decision``, see ``decision.py``) here, so every caller gets the same answer.
        """
        from ..device import autocast

        was_training = self.net.training
        self.net.eval()
        try:
            x = normalize_input(images.to(self.device))
            with autocast(self.device):     # nets without a bottleneck (the U-Net baseline)
                if hasattr(self.net, "forward_with_bottleneck"):
                    logits, bott = self.net.forward_with_bottleneck(x)
                else:
                    logits, bott = self.net(x), None
            prob = torch.sigmoid(logits.float())
            if self.decision and self.inference == "resize" and bott is not None:
                from .decision import apply_rule, image_features

                prob = apply_rule(prob, self.decision, self.threshold,
                                  image_features(prob, bott))
            return prob
        finally:
            self.net.train(was_training)

    def iter_proba(self, image: np.ndarray, text: str | None = None, *, tiled: bool = True,
                   device: Any = None, mode: str | None = None, tile: int | None = None,
                   overlap: int = 32, batch_size: int = 4, should_stop=None, name: str = ""):
        """Prediction as a progress generator: ``Progress("predict", done, total)`` per tile
        batch (one step in resize mode); returns (H, W) float32, or None when stopped.

        ``mode`` "resize" (default for MGCC, as in the paper) or "tile"; when ``mode`` is None
        the bundle's inference mode is used, and ``tiled=False`` always means "resize".
        ``text`` is ignored.
        """
        from ..memory import split_on_oom
        from ..progress import Progress

        if device is not None:
            self.to(device)
        from ..io import normalize_image

        mode = mode or (self.inference if tiled else "resize")
        if mode not in ("resize", "tile"):
            raise ValueError(f"unknown prediction mode {mode!r}: use 'resize' or 'tile'")
        # normalised first, as TextDiff does: (C, H, W) becomes (H, W, C) there, so the map
        # comes back (H, W); an array that is no image is refused with a clear message
        img = normalize_image(np.asarray(image), channels=self.channels)
        h, w = img.shape[:2]
        if mode == "resize":
            yield Progress("predict", 0, 1, message=name)
            if should_stop is not None and should_stop():
                return None
            x = image_tensor(img, self.channels, self.size, normalized=True)[None]
            prob = resize_proba(split_on_oom(self.predict_batch, self.device,
                                             "MGCC prediction")(x), (h, w))
            yield Progress("predict", 1, 1, message=name)
            return prob[0, 0].cpu().numpy().astype(np.float32)
        from ..tiling import iter_tiled


        def fn(tiles):  # float32 (B, t, t, C) -> (B, 1, t, t)
            t = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2)))
            return self.predict_batch(t).cpu().numpy()

        fn = split_on_oom(fn, self.device, "MGCC tiled prediction")
        out = yield from iter_tiled(img, fn, tile=tile or self.size, overlap=overlap,
                                    batch_size=batch_size, out_channels=1,
                                    should_stop=should_stop, message=name)
        return None if out is None else np.asarray(out[0], np.float32)

    def predict_proba(self, image: np.ndarray, text: str | None = None, *, tiled: bool = True,
                      device: Any = None, mode: str | None = None, tile: int | None = None,
                      overlap: int = 32, batch_size: int = 4, progress=None) -> np.ndarray:
        """Foreground probability for an image of any size (see :meth:`iter_proba`).

        Args:
            image: (H, W) or (H, W, C) array, any dtype.
            text: ignored (MGCC reads no text).
            tiled, mode, tile, overlap, batch_size: see :meth:`iter_proba`.
            device: move the model there first.
            progress: ``progress(done, total)`` after each tile batch.

        Returns:
            (H, W) float32 in [0, 1].
        """
        from ..progress import run

        cb = None if progress is None else (lambda ev: progress(ev.step, ev.total))
        return run(self.iter_proba(image, text, tiled=tiled, device=device, mode=mode,
                                   tile=tile, overlap=overlap, batch_size=batch_size),
                   callback=cb)

    def predict_mask(self, image: np.ndarray, text: str | None = None, *,
                     threshold: float | None = None, instances: bool = False,
                     **kw) -> np.ndarray:
        """Binary uint8 mask at ``self.threshold``, or int32 instance labels with
        ``instances=True`` (see ``core.prediction.predict_mask``); ``text`` is ignored."""
        from ..prediction import predict_mask

        return predict_mask(self, image, text, threshold=threshold, instances=instances, **kw)

    # ------------------------------------------------------------------ fine-tuning
    def finetune(self, examples: Sequence, *, should_stop=None, device: Any = None, **kw):
        """Fine-tune on a few corrected masks (progress generator): by default the output layer.

        Options and their defaults: ``core.mgcc.finetune.FINETUNE_DEFAULTS`` (epochs, lr,
        batch_size, optimizer, train, augment) plus ``seed``; see ``finetune_model``. The
        encoder stays frozen and BatchNorm keeps its statistics. Returns per-epoch mean losses.
        """
        from .finetune import finetune_model

        if device is not None:
            self.to(device)
        from ..finetune_defaults import FINETUNE_DEFAULTS, MGCC_PART_DEFAULTS

        kw = {k: v for k, v in kw.items() if v is not None}     # None: the library's value
        if kw.get("train", FINETUNE_DEFAULTS["mgcc"]["train"]) == "auto":
            kw["train"] = yield from self._choose_part(examples)
        # a part with its own epochs / lr (norm) uses them unless they are given
        kw = {**MGCC_PART_DEFAULTS.get(kw.get("train", ""), {}), **kw}
        return (yield from finetune_model(self, examples, should_stop=should_stop, **kw))

    def _choose_part(self, examples: Sequence):
        """``train="auto"``: "norm" when the corrected images' BatchNorm statistics are far
        from the training ones (another scanner or setting), else "output" (``shift.py``)."""
        from ..progress import Progress
        from .shift import SHIFT_THRESHOLD, batchnorm_shift

        score = batchnorm_shift(self, [ex.image for ex in examples])
        part = "norm" if score > SHIFT_THRESHOLD else "output"
        why = ("unlike the model's training images" if part == "norm" else
               "like the model's training images")
        yield Progress("finetune", step=0, elapsed=0.0, message=(
            f"the corrected images look {why} (BatchNorm shift {score:.3f}, threshold "
            f"{SHIFT_THRESHOLD}): training the "
            + ("normalisation layers and the output layer" if part == "norm"
               else "output layer")))
        self.meta["last_finetune"] = {"part": part, "shift": round(score, 4)}
        return part

    # ------------------------------------------------------------------ persistence
    def save(self, path, dtype=None, meta: dict | None = None):
        """Write the inference path as a ``kind="mgcc"`` bundle (atomic, one .safetensors)."""
        from ..bundle import save_bundle

        m = dict(self.meta)
        m.update(meta or {})
        return save_bundle(path, KIND, self.net.inference_state_dict(), self.config, m, dtype=dtype)

    @classmethod
    def load(cls, path, device="auto") -> "MGCCModel":
        """Load a ``kind="mgcc"`` model file.

        Args:
            path: the ``.safetensors`` file.
            device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ...

        Returns:
            The model (inference path, float32).

        Raises:
            core.bundle.BundleError: not an MGCC file, or weights that do not fit its config.
        """
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
                    inference=cfg.get("inference", "resize"), meta=header.get("meta"),
                    decision=cfg.get("decision"))
        return model.to(dev)

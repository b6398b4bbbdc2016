"""TextDiffModel: frozen diffusion features + frozen text tokens -> trained head.

The model object holds the parts and predicts; the rest lives beside it, as MGCC is split:
``cache`` (the training tiles' features, computed once), ``train`` (fit / fine-tune loops),
``prediction`` (the tile-streaming progress generator), ``files`` (save / load).

Geometry: with ``config.resize_to`` set (the paper protocol) the whole image is resized to
``resize_to``² for fitting and prediction; otherwise images are rescaled by ``config.scale``
and cut into ``working_size``² tiles (training: a grid of overlapping tiles; prediction:
``core.tiling.iter_tiled`` with blending), so images of any size work.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..models import Example
from .config import DEFAULT_TEXT_ENCODER, TextDiffConfig
from .files import KIND

__all__ = ["TextDiffModel"]


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
        """A new model with an untrained head (the frozen parts loaded, the head seeded).

        Args:
            config: every setting (default ``TextDiffConfig()``); ``overrides`` replace fields.
            backbone: the diffusion backbone: a ``save_pretrained`` directory or hub id
                (stored in the file), or a loaded ``(unet, scheduler)`` pair (then
                ``config.backbone`` must say where it is saved, for the file to reload).
                Default ``config.backbone``; none is needed for ``features="classic"``.
            text_encoder: a :class:`.text_encoder.TextEncoder` or a directory / id
                (default ``config.text_encoder``, the offline all-MiniLM-L6-v2).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a ``torch.device``.

        Returns:
            The model, ready to :meth:`fit`.

        Raises:
            ValueError: no backbone for diffusion features.
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

    # -- training ---------------------------------------------------------------------------
    def fit(self, train: Sequence[Example], val: Sequence[Example] | None = None, *,
            val_fraction: float = 0.0, epochs: int | None = None, lr: float | None = None,
            should_stop: Callable[[], bool] | None = None,
            max_tiles_per_image: int | None = None):
        """Train the head (a progress generator: drive it with ``core.progress.run``).

        The model is usable at every yield; a stopped or closed fit keeps the best validated
        head (or the last one without validation).

        Args:
            train: training examples (image, mask, text).
            val: validation examples; with them (or ``val_fraction``) each epoch is scored
                and training stops after ``config.patience`` epochs without improvement.
            val_fraction: without ``val``, this share of ``train`` (seeded) is held out.
            epochs, lr: default ``config.epochs``, ``config.lr``.
            should_stop: polled between steps (see ``core.progress``).
            max_tiles_per_image: at most this many tiles of each image (foreground first).

        Yields:
            ``Progress`` events: ``features``, ``train`` (per step), ``validate`` (per epoch).

        Returns:
            The history dict (``loss``, ``val_dice``, ``best_epoch``, ``stopped``, seconds...),
            also stored in ``meta["training"]``.
        """
        from .train import iter_fit

        return (yield from iter_fit(self, train, val, val_fraction=val_fraction, epochs=epochs,
                                    lr=lr, should_stop=should_stop,
                                    max_tiles_per_image=max_tiles_per_image))

    def finetune(self, examples: Sequence[Example], *, epochs: int | None = None,
                 lr: float | None = None, should_stop=None,
                 max_tiles_per_image: int | None = 4, **kw):
        """Continue training the head on a few corrected examples (progress generator).

        Starts from the current head; only ``max_tiles_per_image`` tiles per image (those with
        foreground first) are used so a few big images stay quick on a CPU. ``epochs`` and
        ``lr`` default to ``core.finetune_defaults``. Returns the history dict.
        """
        from .train import iter_finetune

        return (yield from iter_finetune(self, examples, epochs=epochs, lr=lr,
                                         should_stop=should_stop,
                                         max_tiles_per_image=max_tiles_per_image))

    def _head_proba(self, feats, th, tm, size):
        import torch

        from ..device import autocast

        self.head.eval()
        with torch.inference_mode(), autocast(self.device):
            logits = self.head(feats, th, tm, out_size=size)
        return logits.float().softmax(1)[:, 1]

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
                   batch_size: int = 1, should_stop=None, name: str = "", stain_stats=None):
        """Prediction as a progress generator (one event per tile batch; Stop honoured within
        a UNet block): returns the probability map (H, W) float32, or None when stopped.
        See :mod:`.prediction`."""
        from .prediction import iter_proba

        return (yield from iter_proba(self, image, text, tiled=tiled, device=device,
                                      batch_size=batch_size, should_stop=should_stop,
                                      name=name, stain_stats=stain_stats))

    def predict_proba(self, image, text: str | None = None, *, tiled: bool = True,
                      device=None, batch_size: int = 4, progress=None) -> np.ndarray:
        """Foreground probability for an image of any size.

        Args:
            image: (H, W) or (H, W, C) array, any dtype (normalised like ``io.load_image``).
            text: the image's description (ignored with ``text_mode="none"``).
            tiled: tile at the working scale (default); ``False`` (or a model trained with
                ``resize_to``) resizes the whole image to the working size (paper protocol).
            device: move the model there first.
            batch_size: tiles per forward pass.
            progress: ``progress(done, total)`` after each tile batch.

        Returns:
            (H, W) float32 in [0, 1].
        """
        from ..progress import run

        cb = None if progress is None else (lambda ev: progress(ev.step, ev.total))
        return run(self.iter_proba(image, text, tiled=tiled, device=device,
                                   batch_size=batch_size), callback=cb)

    def predict_mask(self, image, text: str | None = None, *, threshold: float | None = None,
                     instances: bool = False, **kw) -> np.ndarray:
        """Binary uint8 mask at ``config.threshold``, or int32 instance labels with
        ``instances=True`` (see ``core.prediction.predict_mask``)."""
        from ..prediction import predict_mask

        return predict_mask(self, image, text, threshold=threshold, instances=instances, **kw)

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.head.to(self.device)
        self.features.to(self.device)
        if self.text_encoder is not None:
            self.text_encoder.to(self.device)
        return self

    # -- files ----------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write one ``.safetensors`` file (atomic): head weights, config, model card.

        Args:
            path: the file to write.

        Returns:
            The path written.

        Raises:
            ValueError: the backbone has no path or id to store.
        """
        from .files import save_textdiff

        return save_textdiff(self, path)

    @classmethod
    def load(cls, path, device="auto", backbone=None, text_encoder=None) -> "TextDiffModel":
        """Load a model file with the backbone and text encoder it was trained with.

        Args:
            path: a ``kind="textdiff"`` file.
            device: where to run (``"auto"`` picks CUDA, then MPS, then CPU).
            backbone, text_encoder: where to look first; otherwise beside the file (as
                saved), then at the stored absolute path / id.

        Returns:
            The model.

        Raises:
            core.bundle.BundleError: not a TextDiff file, a missing part, or a backbone / text
                encoder other than the one the head was trained on (fingerprint check).
        """
        from .files import load_textdiff

        return load_textdiff(cls, path, device=device, backbone=backbone,
                             text_encoder=text_encoder)

"""TextDiff model files: the head's weights, config and how to find its frozen parts again.

Why a file needs more than weights: the head is useless without the exact backbone and text
encoder it was trained on, and those are large folders kept beside (or far from) the file.
The file stores their paths (absolute and relative to itself) and fingerprints, so a moved
project still loads and a different backbone is refused instead of giving silent garbage.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import DEFAULT_TEXT_ENCODER, TextDiffConfig

__all__ = ["save_textdiff", "load_textdiff", "KIND"]

KIND = "textdiff"


def save_textdiff(model, path) -> Path:
    """Write ``model`` as one ``kind="textdiff"`` file (see :meth:`.model.TextDiffModel.save`)."""
    from ..bundle import save_bundle

    c = model.config
    if not c.backbone and c.features != "classic":
        raise ValueError("cannot save: the model's backbone has no path/id (create the "
                         "model from a saved backbone directory)")
    path = Path(path)
    meta = dict(model.meta)
    meta.update(
        backbone_fingerprint=model.features.fingerprint(),
        feature_channels=model.features.out_channels,
        feature_strides=model.features.strides,
        head_parameters=model.num_parameters,
        channels=model.channels,
        text_dim=model.text_encoder.dim if model.text_encoder else None,
    )
    if c.backbone and Path(c.backbone).is_dir():
        meta["backbone_relpath"] = os.path.relpath(Path(c.backbone).resolve(),
                                                   path.resolve().parent)
    if model.text_encoder is not None:
        meta["text_encoder_fingerprint"] = model.text_encoder.fingerprint()
        if Path(c.text_encoder).is_dir():
            meta["text_encoder_relpath"] = os.path.relpath(
                Path(c.text_encoder).resolve(), path.resolve().parent)
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    return save_bundle(path, KIND, state, c.to_dict(), meta)


def load_textdiff(cls, path, device="auto", backbone=None, text_encoder=None):
    """A ``cls`` (``TextDiffModel``) from a file (see :meth:`.model.TextDiffModel.load`).

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

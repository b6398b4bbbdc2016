"""Per-modality defaults and where the bundled models live (GUI-free, no torch).

The napari widgets and the CLI both ask here which model file to use for a modality and which
settings make sense for it (threshold, instance splitting, gray vs RGB), so the two agree.
Models are bundled in ``napari_textdiff/models/``; a modality whose model is not shipped yet
returns ``None`` from :func:`default_model_path` and :func:`missing_model_message` says why.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

__all__ = ["ModalityDefaults", "MODALITIES", "modality_defaults", "models_dir",
           "default_model_path", "bundled_models", "missing_model_message",
           "default_backbone_dir", "default_ldm_dir", "config_dir", "load_settings",
           "save_settings", "stored_threshold", "default_threshold", "model_modality",
           "object_class"]


@dataclasses.dataclass(frozen=True)
class ModalityDefaults:
    """Sensible settings for one imaging modality."""

    name: str
    label: str               # shown in menus
    model_file: str          # file name under models/
    channels: int            # 3 = RGB input, 1 = gray
    threshold: float         # fallback threshold when the model file carries none
    split_instances: bool    # separate touching objects (nuclei) into instance labels
    text_hint: str           # placeholder for the description box
    extra_models: tuple[str, ...] = ()   # other bundled models of this modality (offered too)
    object_class: str = "Object"         # QuPath classification of the objects found


MODALITIES: dict[str, ModalityDefaults] = {
    "histology": ModalityDefaults(
        "histology", "Histology (H&E)", "histology.safetensors", 3, 0.5, True,
        "e.g. The nuclei density in the upper right is high.", object_class="Nucleus"),
    "xray": ModalityDefaults(
        "xray", "Chest X-ray", "xray.safetensors", 1, 0.5, False,
        "e.g. Bilateral pulmonary infection, two infected areas, lower left and lower right lung.",
        object_class="Infection"),
    "ultrasound": ModalityDefaults(
        "ultrasound", "Breast ultrasound", "ultrasound_mgcc.safetensors", 1, 0.5, False,
        "(the default MGCC model ignores text; the TextDiff one reads e.g. Benign breast lesion.)",
        extra_models=("ultrasound.safetensors",), object_class="Lesion"),
}

_ALIASES = {"he": "histology", "h&e": "histology", "x-ray": "xray", "cxr": "xray",
            "chest": "xray", "us": "ultrasound", "busi": "ultrasound"}


def _key(modality: str) -> str:
    key = str(modality).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")
    return key


def modality_defaults(modality: str) -> ModalityDefaults:
    return MODALITIES[_key(modality)]


def models_dir() -> Path:
    """Folder of the bundled models (override with ``NAPARI_TEXTDIFF_MODELS``)."""
    env = os.environ.get("NAPARI_TEXTDIFF_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def default_model_path(modality: str) -> Path | None:
    """The bundled model for ``modality``, or ``None`` when it is not shipped (yet)."""
    p = models_dir() / modality_defaults(modality).model_file
    return p if p.is_file() else None


def stored_threshold(path) -> float | None:
    """The threshold a model file carries (picked by ``napari-textdiff calibrate`` or set at
    training), read from its header without loading weights; None if it has none or the file
    cannot be read (the caller then falls back to the modality's value)."""
    from .bundle import BundleError, read_bundle_header

    try:
        cfg = read_bundle_header(path).get("config") or {}
    except (BundleError, OSError):
        return None
    thr = cfg.get("threshold") if isinstance(cfg, dict) else None
    return float(thr) if isinstance(thr, (int, float)) and 0 < thr < 1 else None


def model_kind(path) -> str | None:
    """The kind ("textdiff", "mgcc", …) a model file declares, or None if unreadable."""
    from .bundle import BundleError, read_bundle_header

    try:
        return read_bundle_header(path).get("kind")
    except (BundleError, OSError):
        return None


def model_modality(path) -> str | None:
    """The modality a model file is for: the one its header names (``meta.modality``), else the
    one whose bundled model it is; None when neither tells (a user's own model)."""
    from .bundle import BundleError, read_bundle_header

    try:
        named = (read_bundle_header(path).get("meta") or {}).get("modality")
    except (BundleError, OSError):
        named = None
    if isinstance(named, str):
        try:
            return _key(named)
        except ValueError:
            pass
    from .bundle import same_file

    for key in MODALITIES:
        if any(same_file(p, path) for p in bundled_models(key)):
            return key
    return None


def object_class(modality: str | None = None, model=None) -> str:
    """What a modality's objects are called in QuPath (GeoJSON ``classification``): histology
    "Nucleus", X-ray "Infection", ultrasound "Lesion"; with only a ``model`` file, its modality's
    (:func:`model_modality`); else the neutral "Object"."""
    if modality is None and model is not None:
        modality = model_modality(model)
    if not modality:
        return "Object"
    try:
        return modality_defaults(modality).object_class
    except ValueError:
        return "Object"


def default_threshold(modality: str) -> float:
    """The bundled default model's own threshold, else the modality's fallback."""
    p = default_model_path(modality)
    thr = stored_threshold(p) if p is not None else None
    return modality_defaults(modality).threshold if thr is None else thr


def bundled_models(modality: str) -> list[Path]:
    """Every shipped model of ``modality``: the default first, then its ``extra_models``."""
    d = modality_defaults(modality)
    files = [models_dir() / f for f in (d.model_file, *d.extra_models)]
    return [p for p in files if p.is_file()]


def missing_model_message(modality: str) -> str:
    d = modality_defaults(modality)
    return (f"No bundled {d.label} model: {models_dir() / d.model_file} is not there. "
            "Choose a model file (.safetensors) made with `napari-textdiff textdiff train` or "
            "`napari-textdiff mgcc train`.")


def default_backbone_dir() -> Path | None:
    """The bundled diffusion backbone folder (TextDiff's frozen features), or ``None``."""
    p = models_dir() / "backbone"
    found = (p / "config.json").is_file() or (p / "unet" / "config.json").is_file()
    return p if found else None


def default_ldm_dir() -> Path | None:
    """The bundled latent-diffusion model folder, or ``None``."""
    p = models_dir() / "ldm"
    return p if p.is_dir() else None


def config_dir() -> Path:
    """Per-user settings folder (override with ``NAPARI_TEXTDIFF_CONFIG_DIR``, e.g. in tests)."""
    env = os.environ.get("NAPARI_TEXTDIFF_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "napari-textdiff"


def load_settings() -> dict:
    """Remembered user choices (e.g. the synthetic pool folder); ``{}`` if none or unreadable."""
    p = config_dir() / "settings.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def save_settings(**values) -> dict:
    """Merge ``values`` into the settings file (atomic write) and return the new settings."""
    from .bundle import atomic_write_bytes

    s = load_settings()
    s.update(values)
    atomic_write_bytes(config_dir() / "settings.json", json.dumps(s, indent=2).encode())
    return s

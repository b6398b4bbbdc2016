"""What the dock widgets of one viewer share: modality, chosen model, loaded model, history.

napari creates each dock widget on its own; they meet here, one :class:`Session` per viewer.
The model itself is loaded lazily (first Segment / Fine-tune), inside a worker thread, so
neither napari's start nor opening a widget imports torch.
"""
from __future__ import annotations

import tempfile
import threading
import weakref
from pathlib import Path

from qtpy.QtCore import QObject, Signal

from ..core import defaults

__all__ = ["Session", "get_session", "DEFAULT_SOURCE", "DEVICES"]

DEFAULT_SOURCE = "default"          # model source meaning "the bundled model of the modality"
DEVICES = ["auto", "cpu", "cuda", "mps"]

_SESSIONS: dict[int, tuple[weakref.ref, "Session"]] = {}


def get_session(viewer) -> "Session":
    """The session of ``viewer`` (created on first use, dropped with the viewer)."""
    key = id(viewer)
    hit = _SESSIONS.get(key)
    if hit is not None and hit[0]() is viewer:
        return hit[1]
    for k in [k for k, (ref, _) in _SESSIONS.items() if ref() is None]:
        del _SESSIONS[k]
    s = Session()
    _SESSIONS[key] = (weakref.ref(viewer), s)
    return s


class Session(QObject):
    """Shared state; signals tell the other widgets when the modality or the model changes."""

    modality_changed = Signal(str)
    model_changed = Signal(str)      # a short description of the model now in use

    def __init__(self):
        super().__init__()
        self.modality = "histology"
        self.source = DEFAULT_SOURCE     # DEFAULT_SOURCE or a path to a .safetensors bundle
        self.device = "auto"
        d = defaults.modality_defaults(self.modality)
        self.threshold, self.split, self.tiled = (defaults.default_threshold(self.modality),
                                                   d.split_instances, True)
        self.model = None
        self.model_key: tuple | None = None   # (resolved path, device) the model was loaded from
        self.model_label = "no model loaded"
        self.snapshots: list[Path] = []       # saved states before each fine-tune (for Revert)
        self._tmp = None
        self.busy = threading.Lock()          # one long job per viewer at a time
        self.synthetic_pool = defaults.load_settings().get("synthetic_pool")

    # -- choices -------------------------------------------------------------------------------
    def set_modality(self, modality: str) -> None:
        modality = defaults.modality_defaults(modality).name
        if modality != self.modality:
            self.modality = modality
            self.modality_changed.emit(modality)

    def resolve_source(self) -> Path:
        """The model file the current choice points to; a clear error if there is none."""
        if self.source == DEFAULT_SOURCE:
            p = defaults.default_model_path(self.modality)
            if p is None:
                raise FileNotFoundError(defaults.missing_model_message(self.modality))
            return p
        p = Path(self.source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Model file not found: {p}")
        return p

    # -- the model (call from the worker thread: may import torch and read big files) --------
    def ensure_model(self):
        """Return the model for the current choice, loading it only when the choice changed.

        A fine-tuned model is kept (not reloaded from disk) until the user picks another model.
        """
        path = self.resolve_source()
        key = (str(path.resolve()), self.device)
        if self.model is None or self.model_key != key:
            from ..core.models import load_model

            self.model = load_model(path, device=self.device)
            self.model_key = key
            self.snapshots.clear()
            self.model_label = f"{path.name} ({getattr(self.model, 'kind', '?')})"
            self.model_changed.emit(self.model_label)
        return self.model

    def snapshot(self) -> Path:
        """Save the current model to a temporary bundle so a fine-tune can be reverted."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-textdiff-")
        p = Path(self._tmp.name) / f"before_finetune_{len(self.snapshots) + 1}.safetensors"
        self.model.save(p)
        self.snapshots.append(p)
        return p

    def restore(self, snapshot: Path, drop: bool = True) -> None:
        """Replace the model by a saved snapshot (the previous state)."""
        from ..core.models import load_model

        self.model = load_model(snapshot, device=self.device)
        if drop and snapshot in self.snapshots:
            i = self.snapshots.index(snapshot)
            del self.snapshots[i:]
        base = self.model_label.split(" [")[0]
        self.model_label = base + (f" [fine-tuned ×{len(self.snapshots)}]" if self.snapshots else "")
        self.model_changed.emit(self.model_label)

    def mark_finetuned(self) -> None:
        base = self.model_label.split(" [")[0]
        self.model_label = f"{base} [fine-tuned ×{len(self.snapshots)}]"
        self.model_changed.emit(self.model_label)

"""What every panel of one viewer shares: modality, model choice, loaded models, the running job.

napari builds each dock widget on its own and hands each a *different* wrapper of the viewer
(``PublicOnlyProxy``), so sessions are keyed on the real viewer behind any wrapper
(:func:`real_viewer`): the selected image's modality (or the Image panel's choice) sets the
model of every panel, a fine-tuned model is what Segment, Fine-tune and re-segment all use, and
one job runs per viewer. A choice made while a job runs waits for the job's end, so the job's
model, settings and fine-tune credit stay those it started with.

Models are loaded lazily (first Segment / Fine-tune) inside a worker thread, so neither
napari's start nor opening a panel imports torch. Each model choice keeps its loaded model
(a fine-tuned one included) until the viewer closes: switching modality and back returns the
fine-tuned model, not the file. TextDiff models get a feature memo, so the frozen diffusion
features of an image are computed once for segment → fine-tune → re-segment.
"""
from __future__ import annotations

import sys
import tempfile
import threading
import weakref
from pathlib import Path

from qtpy.QtCore import QObject, QTimer, Signal

from ..core import defaults

__all__ = ["Session", "get_session", "real_viewer", "wait_warm", "DEFAULT_SOURCE", "DEVICES"]

DEFAULT_SOURCE = "default"          # model source meaning "the bundled model of the modality"
DEVICES = ["auto", "cpu", "cuda", "mps"]
FEATURE_MEMO_MB = 1024              # RAM for remembered diffusion features (then disk)

_SESSIONS: dict[int, tuple[weakref.ref, "Session"]] = {}
_WARM = threading.Event()
_WARM_STARTED = threading.Lock()


def _warm_up() -> None:
    """Import the heavy libraries once, in a background thread, when the first panel opens.

    Importing torch, diffusers and transformers holds Python's GIL in long stretches (shared
    libraries, module bodies): done at the first Segment it froze the GUI thread then (up to
    0.7 s). Jobs call :func:`wait_warm` in their worker thread first, so no job imports
    concurrently with the warm-up: diffusers' and transformers' lazy modules are not safe to
    import from two threads at once, and here only this thread imports them.
    """
    try:
        import torch  # noqa: F401
        import safetensors.torch  # noqa: F401
        import scipy.ndimage  # noqa: F401
        import skimage.segmentation  # noqa: F401
        import skimage.transform  # noqa: F401
        # what the first Segment loads: the backbone, the schedulers, the text encoder
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: F401
        from transformers import AutoModel, AutoTokenizer  # noqa: F401
    except Exception:  # noqa: BLE001 - a job will import again and report the real error
        pass
    finally:
        _WARM.set()


def start_warm_up() -> None:
    if _WARM_STARTED.acquire(blocking=False):
        threading.Thread(target=_warm_up, name="napari-textdiff warm-up", daemon=True).start()


#: Niceness added to job threads (0 disables): the GUI thread then wins the CPU whenever it
#: has work, the job gets every cycle it leaves. Threads a job's thread starts (torch's
#: OpenMP team) inherit it on Linux, where niceness is per thread. napari reuses its pool
#: threads, which keep the setting (an unprivileged thread cannot lower it again); it is the
#: process's niceness + this, never more however many jobs ran on the thread.
JOB_NICENESS = 10


def lower_this_thread_priority(niceness: int | None = None) -> bool:
    """Make the calling (worker) thread yield the CPU to the GUI; False where unsupported."""
    import os

    n = JOB_NICENESS if niceness is None else niceness
    if n <= 0 or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + n)
        if os.getpriority(os.PRIO_PROCESS, tid) < target:   # pooled threads: set once, no stacking
            os.setpriority(os.PRIO_PROCESS, tid, target)
        return True
    except OSError:        # not permitted (some containers): run at the normal priority
        return False


def wait_warm(timeout: float | None = None) -> None:
    """In a worker thread: wait until the warm-up imports are done (no-op if never started).

    No time limit by default: on a loaded machine the imports took over 2 minutes, and a job
    that stopped waiting then imported diffusers beside the warm-up and failed ("cannot import
    name 'DDPMScheduler'"). The warm-up always ends (its ``finally`` sets the event)."""
    if _WARM_STARTED.locked():
        _WARM.wait(timeout)


def real_viewer(viewer):
    """The viewer object behind napari's ``PublicOnlyProxy`` wrappers (or ``viewer`` itself)."""
    seen = 0
    while hasattr(viewer, "__wrapped__") and seen < 8:
        viewer = viewer.__wrapped__
        seen += 1
    return viewer


def get_session(viewer) -> "Session":
    """The session of ``viewer``, however napari wrapped it (created on first use)."""
    viewer = real_viewer(viewer)
    key = id(viewer)
    hit = _SESSIONS.get(key)
    if hit is not None and hit[0]() is viewer:
        return hit[1]
    for k in [k for k, (ref, _) in _SESSIONS.items() if ref() is None]:
        del _SESSIONS[k]
    s = Session(viewer)
    _SESSIONS[key] = (weakref.ref(viewer), s)
    return s


class Session(QObject):
    """Shared state; signals tell the panels when the modality or the model changes."""

    modality_changed = Signal(str)
    model_changed = Signal(str)      # a short description of the model now in use
    job_changed = Signal(str)        # "" when idle, else what runs ("Segmentation", …)

    def __init__(self, viewer=None):
        super().__init__()
        self.modality = "histology"
        self.source = DEFAULT_SOURCE     # DEFAULT_SOURCE or a path to a .safetensors bundle
        self.device = "auto"
        d = defaults.modality_defaults(self.modality)
        self.threshold, self.split, self.tiled = (defaults.default_threshold(self.modality),
                                                   d.split_instances, True)
        self.models: dict[tuple, object] = {}        # (path, device) -> loaded model
        self.snapshots_by_key: dict[tuple, list[Path]] = {}
        self.finetunes: dict[tuple, int] = {}        # how often each model was fine-tuned
        self.model_key: tuple | None = None          # the key of :attr:`model`
        self._memos: dict[str, object] = {}          # features' memo_key -> FeatureMemo
        self._tmp = None
        self.busy = threading.Lock()                 # one long job per viewer at a time
        self.job = ""                                # what holds ``busy``
        self._pending: list[tuple[str, str]] = []    # choices made during a job, in order
        self._viewer = weakref.ref(viewer) if viewer is not None else None
        self._to_move: set[tuple] = set()            # loaded models whose device changed
        self.synthetic_pool = defaults.load_settings().get("synthetic_pool")
        if viewer is not None:
            from ._layers import track_corrections

            track_corrections(viewer)
            viewer.layers.selection.events.active.connect(self._selection_changed)
            self._selection_changed()
            start_warm_up()

    # -- the running job -------------------------------------------------------------------------
    def try_begin(self, what: str) -> bool:
        """Claim the viewer for job ``what``; False when another job runs."""
        if not self.busy.acquire(blocking=False):
            return False
        self.job = what
        self.job_changed.emit(what)
        return True

    def end(self) -> None:
        self.job = ""
        if self.busy.locked():
            self.busy.release()
        self.job_changed.emit("")
        if self._pending:   # after the ending job's callbacks: a follow-up job keeps them waiting
            QTimer.singleShot(0, self._apply_pending)

    def _apply_pending(self) -> None:
        if self.job:
            return
        pending, self._pending = self._pending, []
        for what, value in pending:
            getattr(self, f"set_{what}")(value)

    def _defer(self, what: str, value: str) -> bool:
        """During a job, remember the choice for its end (True); else False."""
        if not self.job:
            return False
        self._pending.append((what, value))
        return True

    def _selection_changed(self, event=None) -> None:
        """The selected image (or its labels) carries a modality: the model follows it, in
        whatever panels are docked."""
        viewer = self._viewer() if self._viewer is not None else None
        if viewer is None:
            return
        meta = getattr(viewer.layers.selection.active, "metadata", None) or {}
        mod = meta.get("modality")
        src = meta.get("source_image")
        if mod is None and src in viewer.layers:                 # labels -> its image
            mod = viewer.layers[src].metadata.get("modality")
        if mod in defaults.MODALITIES:
            self.set_modality(mod)

    # -- choices -------------------------------------------------------------------------------
    def set_modality(self, modality: str) -> None:
        modality = defaults.modality_defaults(modality).name
        if self._defer("modality", modality):
            return
        if modality != self.modality:
            self.modality = modality
            self.modality_changed.emit(modality)
            self.model_changed.emit(self.model_label)

    def set_source(self, source: str) -> None:
        if self._defer("source", source):
            return
        if source != self.source:
            self.source = source
            self.model_changed.emit(self.model_label)

    def set_device(self, device: str) -> None:
        if self._defer("device", device):
            return
        if device != self.device:
            old, self.device = self.device, device
            # loaded models (fine-tuned ones!) go along to the new device, not back to the file
            for key in [k for k in self.models if k[1] == old]:
                new = (key[0], device)
                self.models[new] = self.models.pop(key)
                for book in (self.finetunes, self.snapshots_by_key):
                    if key in book:
                        book[new] = book.pop(key)
                self._to_move.add(new)
            self.model_changed.emit(self.model_label)

    def resolve_source(self) -> Path:
        """The model file the current choice points to; a clear error if there is none."""
        if self.source == DEFAULT_SOURCE:
            p = defaults.default_model_path(self.modality)
            if p is None:
                raise FileNotFoundError(defaults.missing_model_message(self.modality))
            return p
        p = Path(self.source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Model file not found: {p}. Choose another with "
                                    "'Model file…' in the Segment panel.")
        return p

    def current_key(self) -> tuple | None:
        try:
            path = self.resolve_source()
        except FileNotFoundError:
            return None
        return (str(path.resolve()), self.device)

    @property
    def model(self):
        """The loaded model of the current choice (None until first used)."""
        key = self.current_key()
        return self.models.get(key) if key is not None else None

    @property
    def snapshots(self) -> list[Path]:
        return self.snapshots_by_key.setdefault(self.current_key(), [])

    @property
    def model_label(self) -> str:
        """One name for the model in use, the same in every panel."""
        return self.label_of(self.current_key())

    def label_of(self, key: tuple | None) -> str:
        """The name of the model behind ``key`` (a job's own model, whatever is chosen now)."""
        if key is None:
            return "no model file for this modality"
        name = Path(key[0]).name
        n = self.finetunes.get(key, 0)
        state = f" [fine-tuned ×{n}]" if n else ""
        loaded = "" if key in self.models else " (loads on first use)"
        return f"{name}{state}{loaded}"

    # -- the model (call from the worker thread: may import torch and read big files) --------
    def ensure_model(self, key: tuple | None = None):
        """The model for ``key`` (default: the current choice): loaded once, then kept
        (fine-tunes included). Jobs pass the key they started with."""
        key = key or self.current_key()
        if key is None:
            self.resolve_source()            # raises the clear error
        if key not in self.models:
            from ..core.models import load_model

            self.models[key] = self._remember_features(load_model(key[0], device=key[1]))
            self.model_changed.emit(self.model_label)
        elif key in self._to_move:          # the device changed since it was loaded
            self._to_move.discard(key)
            if hasattr(self.models[key], "to"):
                self.models[key] = self.models[key].to(key[1])
        self.model_key = key
        return self.models[key]

    def _remember_features(self, model):
        """Give a TextDiff model the session's feature memo of its backbone."""
        feats = getattr(model, "features", None)
        if feats is None or not hasattr(feats, "fingerprint") or FEATURE_MEMO_MB <= 0:
            return model
        from ..core.textdiff.feature_memo import FeatureMemo, memo_key

        fp = memo_key(feats)        # the backbone *and* its noise steps, taps and scale
        memo = self._memos.get(fp)
        if memo is None:
            for old in self._memos.values():      # other features: free the old ones
                old.close()
            self._memos = {fp: FeatureMemo(feats, ram_mb=FEATURE_MEMO_MB)}
            memo = self._memos[fp]
        model.features = memo
        return model

    def snapshot(self, key: tuple | None = None) -> Path:
        """Save the model of ``key`` (default: the current choice) to a temporary bundle so a
        fine-tune can be reverted."""
        key = key or self.current_key()
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="napari-textdiff-")
        snaps = self.snapshots_by_key.setdefault(key, [])
        p = Path(self._tmp.name) / f"before_finetune_{id(snaps)}_{len(snaps) + 1}.safetensors"
        self.models[key].save(p)
        snaps.append(p)
        return p

    def restore(self, snapshot: Path, key: tuple | None = None) -> None:
        """Replace the model of ``key`` (default: the current choice) by a saved snapshot
        (the state before a fine-tune)."""
        from ..core.models import load_model

        from ..core.device import release

        key = key or self.current_key()
        release(self.models.pop(key, None))      # free its (GPU) memory before loading
        model = self._remember_features(load_model(snapshot, device=key[1]))
        if hasattr(model, "to"):             # the shared memo may sit on another device
            model = model.to(key[1])
        self.models[key] = model
        snaps = self.snapshots_by_key.setdefault(key, [])
        if snapshot in snaps:
            del snaps[snaps.index(snapshot):]
        self.finetunes[key] = len(snaps)
        self.model_changed.emit(self.model_label)

    def mark_finetuned(self, key: tuple | None = None) -> None:
        key = key or self.current_key()
        self.finetunes[key] = self.finetunes.get(key, 0) + 1
        self.model_changed.emit(self.model_label)

    def close(self) -> None:
        """Drop the loaded models and remembered features (the viewer is closing)."""
        from ..core.device import release

        for memo in self._memos.values():
            memo.close()
        self._memos = {}
        models, self.models = list(self.models.values()), {}
        if models:
            release(*models)

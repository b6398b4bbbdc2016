"""The interface both model families (TextDiff, MGCC) share, and loading by kind."""
from __future__ import annotations

import dataclasses
from typing import Any, Generator, Protocol, Sequence, runtime_checkable

import numpy as np

from .progress import Progress

__all__ = ["Example", "SegmentationModel", "load_model", "register_kind", "MODEL_KINDS"]


@dataclasses.dataclass
class Example:
    """One training triple: ``image`` float32 (H, W, C) in [0, 1], ``mask`` (H, W) binary."""

    image: np.ndarray
    mask: np.ndarray
    text: str = ""
    name: str = ""

    def __post_init__(self):
        # one mask rule everywhere (core.normalize.binary_mask): a float 0.4 is background as
        # in read_mask, NaN or a missing mask is an error naming the example
        from .normalize import binary_mask, clean_text

        self.text = clean_text(self.text, f"text of {self.name or 'example'}")
        m = np.asarray(self.mask) if self.mask is not None else None
        if m is not None and m.dtype.kind in "iu" and m.ndim == 2:
            self.mask = m              # labels are kept (foreground = nonzero, as the rule)
        else:
            self.mask = binary_mask(self.mask, self.name)


@runtime_checkable
class SegmentationModel(Protocol):
    kind: str          # bundle kind, e.g. "textdiff" or "mgcc"
    channels: int      # 1 = gray input, 3 = RGB input
    uses_text: bool    # whether descriptions change the output

    def predict_proba(self, image: np.ndarray, text: str | None = None, *, tiled: bool = True,
                      device: Any = None) -> np.ndarray:
        """Foreground probability (H, W) float32 for an image of any size."""

    def predict_mask(self, image: np.ndarray, text: str | None = None, *,
                     threshold: float | None = None, instances: bool = False,
                     **kw) -> np.ndarray:
        """uint8 mask at the model's threshold, or int32 instances (``core.prediction``)."""

    def finetune(self, examples: Sequence[Example], *, epochs: int = 20, lr: float = 1e-4,
                 should_stop=None, **kw) -> Generator[Progress, None, Any]:
        """Continue training the light head on a few corrected examples (progress generator)."""

    def save(self, path) -> Any: ...


# kind -> "module:Class" with a classmethod ``load(path, device=...)``; imported lazily.
MODEL_KINDS: dict[str, str] = {
    "textdiff": "napari_textdiff.core.textdiff.model:TextDiffModel",
    "mgcc": "napari_textdiff.core.mgcc.model:MGCCModel",
}


def register_kind(kind: str, target: str) -> None:
    MODEL_KINDS[kind] = target


def load_model(path, device="auto"):
    """Load any napari-textdiff model file; the class is picked from the file's header.

    Args:
        path: a ``.safetensors`` model file written by this package.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ...

    Returns:
        A :class:`SegmentationModel` (``TextDiffModel`` or ``MGCCModel``).

    Raises:
        core.bundle.BundleError: not a model file, or a kind this version does not know.
    """
    import importlib

    from .bundle import BundleError, read_bundle_header

    kind = read_bundle_header(path)["kind"]
    if kind not in MODEL_KINDS:
        raise BundleError(f"{path}: unknown model kind {kind!r} (known: {sorted(MODEL_KINDS)})")
    mod, cls = MODEL_KINDS[kind].split(":")
    return getattr(importlib.import_module(mod), cls).load(path, device=device)

"""The peer a user would pick instead: a random-forest pixel classifier on classic filters.

ilastik and napari-convpaint's classic mode give their users exactly this: scikit-image's
``multiscale_basic_features`` (intensity, gradient magnitude and Hessian eigenvalues per
channel at sigmas 1-16) and a scikit-learn random forest trained on sampled labelled
pixels. It is the bar the TextDiff rows are read against (issue 16): trained on the same
K images, predicted at the protocol's resolution, scored the same way.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from ..core.configs import JsonConfig
from ..core.models import Example
from ..core.progress import Progress

__all__ = ["ForestConfig", "ForestModel", "train_random_forest"]


@dataclasses.dataclass
class ForestConfig(JsonConfig):
    n_estimators: int = 100
    max_depth: int = 20
    pixels_per_image: int = 40_000     # sampled from each training image...
    # ...half foreground, half background (as a user's strokes in ilastik are): nuclei are a
    # minority class, and a uniform sample leaves the forest's 0.5 threshold far too high
    balanced: bool = True
    sigma_min: float = 1.0
    sigma_max: float = 16.0
    resize_to: int | None = None       # paper protocol: whole images resized to N x N
    seed: int = 0
    n_jobs: int = 1


def _sklearn():
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError as e:            # a clear message, not a bare ImportError
        raise ImportError("the random-forest peer needs scikit-learn: pip install "
                          "scikit-learn") from e
    return RandomForestClassifier


class ForestModel:
    """A fitted forest behind ``predict_proba(image) -> (H, W) float32`` like every model."""

    uses_text = False

    def __init__(self, forest, config: ForestConfig, channels: int):
        self.forest, self.config, self.channels = forest, config, channels

    def features(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import multiscale_basic_features

        img = np.asarray(image, np.float32)
        return multiscale_basic_features(img, channel_axis=-1 if img.ndim == 3 else None,
                                         sigma_min=self.config.sigma_min,
                                         sigma_max=self.config.sigma_max)

    def predict_proba(self, image, text=None, *, rows: int = 1 << 18) -> np.ndarray:
        from ..core.largeimage import resize_lowmem

        img = np.asarray(image, np.float32)
        ch = 1 if img.ndim == 2 else img.shape[2]
        if ch != self.channels:
            raise ValueError(f"the forest was trained on {self.channels}-channel images, got "
                             f"{ch} channels: give it images like its training images")
        h, w = img.shape[:2]
        s = self.config.resize_to
        work = np.asarray(resize_lowmem(img, (s, s), 1)) if s else img
        f = self.features(work)
        flat = f.reshape(-1, f.shape[-1])
        p = np.concatenate([self.forest.predict_proba(flat[i:i + rows])[:, -1]
                            for i in range(0, len(flat), rows)]).reshape(f.shape[:2])
        if s:
            p = np.asarray(resize_lowmem(p.astype(np.float32), (h, w), 1))
        return np.clip(p, 0, 1).astype(np.float32)


def train_random_forest(examples: Sequence[Example], config: ForestConfig | None = None,
                        should_stop: Callable[[], bool] | None = None):
    """Progress generator (one event per image's features, then the fit); returns the
    :class:`ForestModel`, or None when stopped."""
    from ..core.largeimage import resize_lowmem

    cfg = config or ForestConfig()
    if not examples:
        raise ValueError("the random forest needs at least one labelled image")
    rng = np.random.default_rng(cfg.seed)
    ch = 1 if np.asarray(examples[0].image).ndim == 2 else np.asarray(examples[0].image).shape[2]
    model = ForestModel(None, cfg, ch)
    X, y = [], []
    t0 = time.monotonic()
    for i, ex in enumerate(examples):
        if should_stop is not None and should_stop():
            return None
        img, mask = np.asarray(ex.image, np.float32), np.asarray(ex.mask) > 0
        if cfg.resize_to:
            s = (cfg.resize_to, cfg.resize_to)
            img = np.asarray(resize_lowmem(img, s, 1))
            mask = np.asarray(resize_lowmem(mask.astype(np.float32), s, 1)) >= 0.5
        f = model.features(img)
        f = f.reshape(-1, f.shape[-1])
        n = min(cfg.pixels_per_image, len(f))
        flat = mask.ravel()
        if cfg.balanced and flat.any() and not flat.all():
            fg, bg = np.flatnonzero(flat), np.flatnonzero(~flat)
            idx = np.concatenate([rng.choice(fg, min(n // 2, len(fg)), replace=False),
                                  rng.choice(bg, min(n - n // 2, len(bg)), replace=False)])
        else:
            idx = rng.choice(len(f), n, replace=False)
        X.append(f[idx])
        y.append(flat[idx])
        yield Progress("train", step=i + 1, total=len(examples) + 1,
                       message=f"random forest: features of {ex.name}",
                       elapsed=time.monotonic() - t0)
    y = np.concatenate(y)
    if y.all() or not y.any():
        raise ValueError("the random forest needs both foreground and background pixels in "
                         "the training masks")
    forest = _sklearn()(cfg.n_estimators, max_depth=cfg.max_depth, n_jobs=cfg.n_jobs,
                        random_state=cfg.seed)
    forest.fit(np.concatenate(X), y)
    model.forest = forest
    yield Progress("train", step=len(examples) + 1, total=len(examples) + 1,
                   message="random forest fitted", elapsed=time.monotonic() - t0)
    return model

"""The random-forest peer of `benchmark monuseg` (``benchmark.forest``) and the TextDiff
settings a benchmark run may override."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_datasets import blobs  # noqa: E402


def test_forest_stops_before_fitting_and_refuses_one_class_masks():
    from napari_textdiff.benchmark.forest import train_random_forest
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.progress import run

    rng = np.random.default_rng(0)
    img, mask = blobs(rng, 48)
    ex = Example(img.astype(np.float32) / 255, mask, name="a")
    assert run(train_random_forest([ex, ex], should_stop=lambda: True)) is None
    with pytest.raises(ValueError, match="foreground and background"):
        run(train_random_forest([Example(ex.image, np.zeros_like(mask), name="b")]))
    model = run(train_random_forest([ex]))
    p = model.predict_proba(ex.image, rows=100)          # chunked prediction, same map
    np.testing.assert_allclose(p, model.predict_proba(ex.image), atol=1e-6)
    assert p.shape == mask.shape and p.dtype == np.float32
    with pytest.raises(ValueError, match="3-channel"):
        model.predict_proba(ex.image[..., 0])


def test_forest_samples_both_classes_equally_by_default(monkeypatch):
    """Nuclei are a minority class: half the sampled pixels are foreground (a user's strokes),
    unless ``balanced=False`` (a uniform sample)."""
    from napari_textdiff.benchmark import forest
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.progress import run

    seen = []
    real = forest._sklearn()

    class Spy(real):
        def fit(self, X, y):
            seen.append(np.asarray(y))
            return super().fit(X, y)

    monkeypatch.setattr(forest, "_sklearn", lambda: Spy)
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[:16, :16] = 1                                       # 6 % foreground
    ex = Example(img, mask, name="a")
    cfg = forest.ForestConfig(pixels_per_image=400, n_estimators=5)
    run(forest.train_random_forest([ex], cfg))
    run(forest.train_random_forest([ex], forest.ForestConfig(**{**cfg.to_dict(),
                                                                "balanced": False})))
    assert len(seen[0]) == 400 and seen[0].mean() == 0.5
    assert seen[1].mean() < 0.1


def test_textdiff_overrides_are_checked_and_parsed():
    from napari_textdiff.benchmark.fewshot import MonusegConfig
    from napari_textdiff.cli._common import key_values

    assert key_values(["scale=0.5", 'stain_norm="reinhard"', "features=both"], "--x") == \
        {"scale": 0.5, "stain_norm": "reinhard", "features": "both"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        key_values(["scale"], "--textdiff-set")
    with pytest.raises(ValueError, match="unknown TextDiff settings"):
        MonusegConfig(textdiff_overrides={"scael": 0.5})
    with pytest.raises(ValueError, match="sets these itself"):
        MonusegConfig(textdiff_overrides={"text_mode": "none"})
    assert MonusegConfig(textdiff_overrides={"scale": 0.5}).textdiff_overrides == {"scale": 0.5}


def test_the_recorded_command_repeats_textdiff_set_and_the_report_names_it():
    """The run's command line can be pasted back: one ``--textdiff-set`` per setting (a
    comma-joined list would parse as one string); the Markdown says the tile size changed."""
    import argparse

    from napari_textdiff.benchmark.report import _run_lines
    from napari_textdiff.cli._common import key_values
    from napari_textdiff.cli.benchmark import _command

    args = argparse.Namespace(benchmark_command="monuseg", k=[5], seeds=[0, 1],
                              textdiff_set=["scale=0.5", 'stain_norm="reinhard"'],
                              no_progress=True, func=None)
    argv = _command(args)
    assert argv[argv.index("--k") + 1] == "5" and argv[argv.index("--seeds") + 1] == "0,1"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--textdiff-set"]
    assert key_values(sets, "--textdiff-set") == {"scale": 0.5, "stain_norm": "reinhard"}
    res = {"run": {"command": " ".join(argv), "device_description": "cpu", "torch": "2",
                   "python": "3", "started": "now", "seeds": [0, 1],
                   "config": {"head_preset": "light", "textdiff_overrides": {"scale": 0.5}}},
           "wall_seconds": 60}
    assert any("settings set after the protocol's: scale=0.5" in x for x in _run_lines(res))

"""The one evaluation loop: per-image metrics, progress per image, the mean over images; MGCC
validation scores through it."""
from types import SimpleNamespace

import numpy as np
import pytest

from napari_textdiff.core.evaluation import evaluate, iter_evaluate
from napari_textdiff.core.progress import run


def _examples():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2] = 1
    return mask, [SimpleNamespace(name=f"im{i}", mask=mask) for i in range(3)]


def test_evaluation_reports_progress_per_image_and_returns_the_metrics():
    mask, exs = _examples()
    events = []
    rows = run(iter_evaluate(exs, (mask.astype(float) * (ex.name != "im2") for ex in exs)),
               events.append)
    assert [(e.stage, e.step, e.total) for e in events] == [("evaluate", i, 3) for i in (1, 2, 3)]
    assert [r["name"] for r in rows] == ["im0", "im1", "im2"]
    assert [r["dice"] for r in rows] == pytest.approx([1.0, 1.0, 0.0], abs=1e-4)


def test_evaluate_means_over_images_at_the_threshold():
    mask, exs = _examples()
    probs = [mask * 0.6, mask * 0.4, mask * 0.6]
    mean, rows = evaluate(exs, probs, threshold=0.5)
    assert mean["n"] == 3
    assert mean["dice"] == pytest.approx(2 / 3, abs=1e-4)
    assert evaluate(exs, probs, threshold=0.3)[0]["dice"] == pytest.approx(1.0, abs=1e-4)


def test_mgcc_evaluate_model_is_the_same_loop():
    import torch

    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.mgcc.trainer import evaluate_model
    from napari_textdiff.core.models import Example

    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    rng = np.random.default_rng(0)
    exs = [Example(rng.random((40, 48, 1)).astype(np.float32),
                   (rng.random((40, 48)) > 0.5).astype(np.uint8), name=f"e{i}") for i in range(3)]
    mean, per = evaluate_model(m, exs, batch_size=2)
    ref_mean, ref = evaluate(exs, [m.predict_proba(ex.image) for ex in exs], m.threshold)
    assert [r["name"] for r in per] == ["e0", "e1", "e2"]
    assert [r["dice"] for r in per] == pytest.approx([r["dice"] for r in ref], abs=1e-5)
    assert mean["dice"] == pytest.approx(ref_mean["dice"], abs=1e-5)

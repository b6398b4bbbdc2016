"""Threshold calibration: the Dice-vs-threshold curve, the pick, and storing it in models."""
import dataclasses

import numpy as np
import pytest

from napari_textdiff.core.calibration import (DEFAULT_GRID, dice_by_threshold, get_threshold,
                                              pick_threshold, set_threshold, tune_threshold)
from napari_textdiff.core.models import Example, load_model
from napari_textdiff.core.progress import run


def _prob_and_mask(seed, cut=0.7, size=48):
    """A probability map whose true foreground is exactly prob >= ``cut`` (an over-confident
    head: 0.5 would over-segment)."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, (size, size)).astype(np.float32)
    return prob, (prob >= cut).astype(np.uint8)


def test_curve_peaks_at_the_true_cut():
    pairs = [_prob_and_mask(s) for s in range(3)]
    grid = [0.5, 0.6, 0.7, 0.8]
    scores = dice_by_threshold([p for p, _ in pairs], [m for _, m in pairs], grid)
    assert scores.shape == (4,) and scores[2] == pytest.approx(1.0)
    assert scores[0] < scores[1] < scores[2] > scores[3]
    assert pick_threshold(scores, grid) == 0.7


def test_ties_go_to_the_preferred_threshold():
    assert pick_threshold([0.8, 0.8, 0.8], [0.3, 0.5, 0.9], prefer=0.5) == 0.5
    assert pick_threshold([0.8, 0.8, 0.2], [0.3, 0.5, 0.9], prefer=0.1) == 0.3


def test_bad_inputs_are_refused():
    p, m = _prob_and_mask(0)
    with pytest.raises(ValueError, match="at least one"):
        dice_by_threshold([], [])
    with pytest.raises(ValueError, match="differ in shape"):
        dice_by_threshold([p], [m[:10]])


@dataclasses.dataclass
class _Cfg:
    threshold: float = 0.5


class _Echo:
    """A model whose probability is the image's first channel."""
    uses_text = False

    def __init__(self):
        self.config, self.meta, self.calls = _Cfg(), {}, 0

    def predict_proba(self, image, text=None, *, tiled=True, device=None):
        self.calls += 1
        return image[..., 0]


def _examples(n=4):
    return [Example(p[..., None], m, "", f"im{i}") for i, (p, m) in
            enumerate(_prob_and_mask(s) for s in range(n))]


def test_tune_sets_the_threshold_and_records_it():
    model, exs = _Echo(), _examples()
    events = []
    rec = run(tune_threshold(model, exs), callback=events.append)
    assert model.calls == 4 and [e.step for e in events] == [0, 1, 2, 3, 4]
    assert "noisy" in events[0].message          # 4 < FEW_IMAGES: every front end shows it
    assert not any("noisy" in e.message for e in events[1:])
    assert rec["threshold"] == pytest.approx(0.7) and get_threshold(model) == pytest.approx(0.7)
    assert rec["previous"] == 0.5 and rec["dice"] == pytest.approx(1.0)
    assert rec["dice_at_previous"] < 0.9 and len(rec["dice_by_threshold"]) == len(DEFAULT_GRID)
    assert model.meta["threshold_tuning"]["images"] == ["im0", "im1", "im2", "im3"]


def test_dry_run_and_stop_leave_the_model_unchanged():
    model = _Echo()
    rec = run(tune_threshold(model, _examples(), apply=False))
    assert rec["threshold"] == pytest.approx(0.7) and get_threshold(model) == 0.5
    assert "threshold_tuning" not in model.meta
    calls = iter([False, True])
    assert run(tune_threshold(model, _examples(), should_stop=lambda: next(calls))) is None
    assert get_threshold(model) == 0.5 and model.calls == 5
    with pytest.raises(ValueError, match="no validation"):
        run(tune_threshold(model, []))
    with pytest.raises(ValueError, match="grid"):
        run(tune_threshold(model, _examples(), grid=[0.5, 1.0]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        set_threshold(model, 0.0)


def test_mgcc_threshold_survives_save_and_load(tmp_path):
    import torch

    from napari_textdiff.core.mgcc.model import MGCCModel

    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    set_threshold(m, 0.35)
    m.meta["threshold_tuning"] = {"threshold": 0.35}
    m.save(tmp_path / "m.safetensors")
    m2 = load_model(tmp_path / "m.safetensors", device="cpu")
    assert get_threshold(m2) == pytest.approx(0.35)
    assert m2.meta["threshold_tuning"]["threshold"] == pytest.approx(0.35)
    img = np.random.default_rng(0).uniform(0, 1, (32, 32, 1)).astype(np.float32)
    prob = m2.predict_proba(img)
    assert np.array_equal(m2.predict_mask(img), prob >= 0.35)

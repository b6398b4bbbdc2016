"""Prediction as a progress generator: one event per tile, same map as predict_proba, Stop
between tiles and inside the diffusion backbone returns None."""
import numpy as np
import pytest

from napari_textdiff.core.prediction import iter_predict, probability_to_labels
from napari_textdiff.core.progress import run


def _drain(gen):
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        return events, stop.value


def test_textdiff_streams_one_event_per_tile_and_matches_predict_proba(tiny_textdiff_path):
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_textdiff_path, device="cpu")
    img = np.random.default_rng(0).random((70, 50, 3)).astype(np.float32)
    events, prob = _drain(iter_predict(m, img, "the object on the left", name="a.png"))
    # working size 32, overlap 8 at scale 1: 3 x 2 tiles
    assert [e.step for e in events] == list(range(1, 7))
    assert all(e.total == 6 and e.message == "a.png" and e.stage == "predict" for e in events)
    ref = m.predict_proba(img, "the object on the left")
    assert prob.shape == (70, 50) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, ref, atol=1e-5)


def test_stop_between_tiles_returns_none(tiny_textdiff_path):
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_textdiff_path, device="cpu")
    img = np.random.default_rng(1).random((70, 50, 3)).astype(np.float32)
    seen = []
    gen = iter_predict(m, img, "x", should_stop=lambda: len(seen) >= 2)
    events, prob = [], "unset"
    try:
        while True:
            ev = next(gen)
            seen.append(ev)
    except StopIteration as stop:
        prob = stop.value
    assert prob is None and len(seen) == 2


def test_stop_inside_the_backbone_aborts_the_forward(tiny_textdiff_path):
    """Once Stop is asked, the UNet's next block raises: the tile is not finished."""
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_textdiff_path, device="cpu")
    img = np.random.default_rng(2).random((30, 30, 3)).astype(np.float32)
    calls = {"n": 0}

    def stop():            # false for the check before the tile, true inside the UNet
        calls["n"] += 1
        return calls["n"] > 2

    events, prob = _drain(iter_predict(m, img, "x", should_stop=stop))
    assert prob is None and events == []
    assert calls["n"] == 3                     # stopped at the UNet's second block
    # the hooks are gone afterwards: a normal prediction still runs fully
    assert run(iter_predict(m, img, "x")).shape == (30, 30)


def test_mgcc_tiles_and_resize(tiny_mgcc_path):
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_mgcc_path, device="cpu")
    img = np.random.default_rng(3).random((70, 40, 1)).astype(np.float32)
    events, prob = _drain(m.iter_proba(img, mode="tile", overlap=8, batch_size=1, name="u"))
    assert len(events) == events[-1].total > 1
    np.testing.assert_allclose(prob, m.predict_proba(img, mode="tile", overlap=8), atol=1e-6)
    events, prob = _drain(iter_predict(m, img, tiled=False))
    assert [(e.step, e.total) for e in events] == [(0, 1), (1, 1)]
    assert prob.shape == (70, 40)


def test_models_without_iter_proba_are_wrapped():
    class Plain:
        uses_text = False

        def predict_proba(self, image, text=None, *, tiled=True, device=None):
            assert text is None                     # text only for models that use it
            return np.asarray(image)[..., 0]

    events, prob = _drain(iter_predict(Plain(), np.ones((4, 5, 1)), "ignored"))
    assert [(e.step, e.total) for e in events] == [(0, 1), (1, 1)] and prob.shape == (4, 5)


@pytest.mark.parametrize("split,expected_max", [(False, 1), (True, 2)])
def test_probability_to_labels(split, expected_max):
    p = np.zeros((10, 10), np.float32)
    p = np.zeros((12, 12), np.float32)
    p[1:5, 1:5] = 0.9
    p[7:11, 7:11] = 0.8
    lab = probability_to_labels(p, 0.5, split)
    assert lab.dtype == np.int32 and lab.max() == expected_max and (lab > 0).sum() == 32


def test_a_threshold_passed_where_the_description_goes_is_refused(tiny_mgcc_path):
    """MGCC's predict_mask once took the threshold second: that call must not silently ignore it."""
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_mgcc_path, device="cpu")
    img = np.zeros((32, 32, 1), np.float32)
    with pytest.raises(TypeError, match="threshold="):
        m.predict_mask(img, 0.3)
    assert m.predict_mask(img, threshold=0.3).shape == (32, 32)


def test_models_that_fill_holes_get_solid_objects_everywhere_a_mask_is_made():
    """``config.fill_holes`` (the histology recipe): a ring comes out as a disc from
    ``predict_mask``, the panel's ``probability_to_labels`` and a streamed slide alike; a
    model without it keeps the hole."""
    from types import SimpleNamespace

    from napari_textdiff.core.prediction import binary_mask, predict_mask, probability_to_labels

    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    ring = ((r < 12) & (r > 5)).astype(np.float32)

    class Ring:
        uses_text = False
        channels = 1

        def __init__(self, fill):
            self.config = SimpleNamespace(fill_holes=fill, threshold=0.5)

        def predict_proba(self, image, text=None, **kw):
            return ring

    solid = predict_mask(Ring(True), np.zeros((40, 40), np.float32))
    assert solid[20, 20] == 1 and solid.sum() == (r < 12).sum()
    assert predict_mask(Ring(False), np.zeros((40, 40), np.float32))[20, 20] == 0
    lab = probability_to_labels(ring, 0.5, True, Ring(True))
    assert lab[20, 20] > 0 and len(np.unique(lab[r < 12])) == 1
    assert not binary_mask(None, ring, 0.5)[20, 20]           # no model: threshold only


def test_thresholds_outside_0_1_are_refused_by_predict_mask(tiny_mgcc_path):
    """CLI review item 8: threshold=2, -1 or NaN gave an empty or a full mask in silence."""
    from napari_textdiff.core.models import load_model
    from napari_textdiff.core.prediction import binary_mask, predict_mask

    m = load_model(tiny_mgcc_path, device="cpu")
    img = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    for bad in (2, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"threshold .* outside the valid range \[0, 1\]"):
            m.predict_mask(img, threshold=bad)
        with pytest.raises(ValueError, match="valid range"):
            binary_mask(m, np.zeros((4, 4), np.float32), bad)
    with pytest.raises(TypeError, match="threshold must be a number"):
        predict_mask(m, img, threshold="high")
    assert m.predict_mask(img, threshold=1.0).shape == (40, 36)          # the ends are valid
    assert m.predict_mask(img, threshold=0).all()


@pytest.mark.parametrize("mode", ["resize", "tile"])
def test_mgcc_takes_channels_first_images_like_textdiff(tiny_mgcc_path, mode):
    """CLI review item 7: (C, H, W) input gave a (C, H)-shaped map without a word."""
    from napari_textdiff.core.models import load_model

    m = load_model(tiny_mgcc_path, device="cpu")
    kw = {"mode": mode, "overlap": 8}                # the tiny model's tiles are 32 px
    img = np.random.default_rng(1).random((40, 36)).astype(np.float32)
    ref = m.predict_proba(img, **kw)
    assert ref.shape == (40, 36)
    for chw in (img[None], np.repeat(img[None], 3, axis=0)):
        prob = m.predict_proba(chw, **kw)
        assert prob.shape == (40, 36)
        if chw.shape[0] == 1:
            np.testing.assert_allclose(prob, ref, atol=1e-6)
    with pytest.raises(ValueError, match="stack of 5 planes"):
        m.predict_proba(np.zeros((5, 40, 36), np.float32), **kw)

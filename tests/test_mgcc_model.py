"""MGCCModel: the shared SegmentationModel interface, bundles, prediction, fine-tuning."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_textdiff.core.bundle import BundleError, read_bundle_header, save_bundle
from napari_textdiff.core.models import Example, SegmentationModel, load_model
from napari_textdiff.core.mgcc.model import MGCCModel


def _model(channels=1, size=32):
    torch.manual_seed(0)
    return MGCCModel.create(in_channels=channels, width=0.0625, size=size)


def _disk(h=40, w=56, r=9):
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r).astype(np.uint8)
    rng = np.random.default_rng(0)
    img = np.clip(0.3 + 0.5 * m + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)
    return img[..., None], m


def test_satisfies_the_shared_protocol():
    m = _model()
    assert isinstance(m, SegmentationModel)
    assert m.kind == "mgcc" and m.channels == 1 and m.uses_text is False


def test_predict_any_size_gray_or_rgb_input():
    m = _model(channels=1)
    for shape in [(40, 56, 1), (37, 23, 3), (50, 50)]:
        img = np.random.default_rng(1).random(shape).astype(np.float32)
        p = m.predict_proba(img, text="ignored")
        assert p.shape == shape[:2] and p.dtype == np.float32
        assert np.all((p >= 0) & (p <= 1))
    img = np.random.default_rng(1).random((40, 56, 1)).astype(np.float32)
    # text is ignored, tiled=True does not change the paper's whole-image path
    np.testing.assert_array_equal(m.predict_proba(img, "a"), m.predict_proba(img, tiled=False))
    mask = m.predict_mask(img, threshold=0.0)
    assert mask.dtype == np.uint8 and mask.all()
    assert m.net.training is False


def test_bundle_round_trip(tmp_path):
    m = _model(channels=3)
    m.threshold = 0.4
    p = m.save(tmp_path / "m.safetensors", meta={"note": "x"})
    h = read_bundle_header(p)
    assert h["kind"] == "mgcc" and h["config"]["net"]["aux"] is False
    assert h["config"]["size"] == 32 and h["meta"]["note"] == "x"
    m2 = load_model(p, device="cpu")
    assert isinstance(m2, MGCCModel) and m2.channels == 3 and m2.threshold == 0.4
    img = np.random.default_rng(2).random((33, 47, 3)).astype(np.float32)
    np.testing.assert_allclose(m2.predict_proba(img), m.predict_proba(img), atol=1e-6)
    # fp16 bundles load back to float32 and predict nearly the same
    m.save(tmp_path / "h.safetensors", dtype=torch.float16)
    m3 = MGCCModel.load(tmp_path / "h.safetensors", device="cpu")
    assert next(m3.net.parameters()).dtype == torch.float32
    np.testing.assert_allclose(m3.predict_proba(img), m.predict_proba(img), atol=2e-2)


def test_load_rejects_other_kinds_and_mismatched_weights(tmp_path):
    save_bundle(tmp_path / "t.safetensors", "textdiff", {"w": torch.zeros(1)}, {})
    with pytest.raises(BundleError, match="expected 'mgcc'"):
        MGCCModel.load(tmp_path / "t.safetensors", device="cpu")
    m = _model()
    cfg = m.config
    cfg["net"]["width"] = 0.125
    save_bundle(tmp_path / "bad.safetensors", "mgcc", m.net.inference_state_dict(), cfg)
    with pytest.raises(BundleError, match="do not match"):
        MGCCModel.load(tmp_path / "bad.safetensors", device="cpu")


def test_finetune_changes_only_decoder_weights_and_lowers_loss():
    m = _model()
    img, mask = _disk()
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    gen = m.finetune([Example(img, mask, name="a"), Example(img[::-1], mask[::-1], name="b")],
                     epochs=15, lr=3e-3, batch_size=2)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        history = stop.value
    assert [e.step for e in events] == list(range(1, 16)) and events[-1].total == 15
    assert history[-1] < history[0]
    after = m.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "fine-tuning changed nothing"
    assert all(k.startswith("main_decoder.") for k in changed), sorted(changed)[:5]
    # BN running statistics are frozen too, and every parameter is trainable again afterwards
    assert not any(k.endswith("running_mean") for k in changed)
    assert all(p.requires_grad for p in m.net.parameters())


def test_finetune_stops_and_rejects_bad_examples():
    m = _model()
    img, mask = _disk()
    n = [0]

    def stop():
        n[0] += 1
        return n[0] > 3

    events = list(m.finetune([Example(img, mask)], epochs=10, should_stop=stop))
    assert len(events) == 3
    with pytest.raises(ValueError, match="mask shape"):
        list(m.finetune([Example(img, mask[:10])], epochs=1))
    with pytest.raises(ValueError, match="at least one"):
        list(m.finetune([], epochs=1))


def test_tiled_mode_on_a_large_image():
    m = _model(size=32)
    img = np.random.default_rng(3).random((70, 90, 1)).astype(np.float32)
    p = m.predict_proba(img, mode="tile", overlap=8)
    assert p.shape == (70, 90) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    # a tile-mode bundle tiles by default; tiled=False still resizes
    m.inference = "tile"
    np.testing.assert_allclose(m.predict_proba(img, overlap=8), p, atol=1e-6)
    assert not np.allclose(m.predict_proba(img, tiled=False), p)
    with pytest.raises(ValueError, match="mode"):
        m.predict_proba(img, mode="bogus")


def test_predict_instances_splits_touching_objects():
    m = _model()
    yy, xx = np.mgrid[:40, :56]
    discs = [(yy - 20) ** 2 + (xx - cx) ** 2 < 100 for cx in (18, 36)]   # touching at x = 27
    prob = np.maximum(*discs).astype(np.float32)
    m.predict_proba = lambda image, text=None, **kw: prob                # the map is known
    img = np.zeros((40, 56, 1), np.float32)
    binary = m.predict_mask(img)
    assert ndimage.label(binary)[1] == 1                                 # one blob as a mask
    lab = m.predict_mask(img, instances=True)
    assert lab.dtype == np.int32 and lab.max() == 2                      # two objects
    cores = [(yy - 20) ** 2 + (xx - cx) ** 2 < 36 for cx in (18, 36)]
    ids = [set(np.unique(lab[c])) for c in cores]
    assert all(len(i) == 1 and 0 not in i for i in ids) and ids[0] != ids[1]   # one id each

"""TextDiffModel: learning, text dependence, determinism, stop, bundles, tiling, fine-tune."""
import shutil

import numpy as np
import pytest
import torch

from napari_textdiff.core.bundle import BundleError, read_bundle_header
from napari_textdiff.core.models import SegmentationModel, load_model
from napari_textdiff.core.progress import Progress, run
from napari_textdiff.core.textdiff.config import TextDiffConfig
from napari_textdiff.core.textdiff.model import TextDiffModel
from textdiff_testkit import dice, make_tiny_backbone, make_tiny_bert, shapes_set

CFG = dict(working_size=32, tile_overlap=8, dim=16, heads=2, decoder=[16, 8], epochs=30,
           lr=3e-3, batch_size=4, steps=[10, 50], max_length=12)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("td")
    return {"root": root, "bert": make_tiny_bert(root / "bert"),
            "bb": make_tiny_backbone(root / "bb")}


def _model(env, **kw):
    return TextDiffModel.create(TextDiffConfig(**{**CFG, **kw}), backbone=str(env["bb"]),
                                text_encoder=str(env["bert"]), device="cpu")


@pytest.fixture(scope="module")
def fitted(env):
    torch.set_num_threads(1)
    m = _model(env)
    events = []
    hist = run(m.fit(shapes_set(16, seed=0)), callback=events.append)
    return m, hist, events


def test_head_learns_and_text_selects_the_object(fitted):
    m, hist, events = fitted
    assert isinstance(m, SegmentationModel) and m.kind == "textdiff" and m.uses_text
    assert m.channels == 3
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert {e.stage for e in events} >= {"features", "train"}
    right, wrong = [], []
    for ex in shapes_set(8, seed=1):
        other = "right" if ex.name == "left" else "left"
        right.append(dice(m.predict_mask(ex.image, ex.text), ex.mask))
        wrong.append(dice(m.predict_mask(ex.image, f"the object on the {other}"), ex.mask))
    # chance for a blob of ~5 % of the image is far below; the other description gives
    # the other blob (disjoint -> Dice ~0)
    assert np.mean(right) > 0.7, right
    assert np.mean(wrong) < 0.2, wrong


def test_deterministic_for_a_seed_and_disk_cache(env):
    a, b = _model(env, epochs=2), _model(env, epochs=2, cache_ram_mb=0)  # b spills to memmap
    data = shapes_set(4, seed=3)
    ha, hb = run(a.fit(data)), run(b.fit(data))
    assert ha["loss"] == hb["loss"]
    for (k, va), vb in zip(a.head.state_dict().items(), b.head.state_dict().values()):
        assert torch.equal(va, vb), k


def test_bundle_roundtrip_bit_exact_and_moved(fitted, env, tmp_path):
    fitted_model, _, _ = fitted
    ex = shapes_set(1, seed=5)[0]
    # bundle, backbone and text encoder kept together in one folder, which is then moved
    moved = tmp_path / "moved"
    shutil.copytree(env["bb"], moved / "bb")
    shutil.copytree(env["bert"], moved / "bert")
    m = TextDiffModel.create(TextDiffConfig(**CFG), backbone=str(moved / "bb"),
                             text_encoder=str(moved / "bert"), device="cpu")
    m.head.load_state_dict(fitted_model.head.state_dict())
    p0 = m.predict_proba(ex.image, ex.text)
    assert np.array_equal(p0, fitted_model.predict_proba(ex.image, ex.text))
    path = m.save(moved / "models" / "m.safetensors")
    hdr = read_bundle_header(path)
    assert hdr["kind"] == "textdiff" and hdr["meta"]["backbone_relpath"] == "../bb"
    shutil.move(str(moved), str(tmp_path / "elsewhere"))
    m2 = load_model(tmp_path / "elsewhere" / "models" / "m.safetensors", device="cpu")
    assert isinstance(m2, TextDiffModel)
    for (k, v), v2 in zip(m.head.state_dict().items(), m2.head.state_dict().values()):
        assert torch.equal(v, v2), k
    assert np.array_equal(m2.predict_proba(ex.image, ex.text), p0)
    assert m2.config.taps == m.config.taps and m2.config.steps == m.config.steps


def test_wrong_backbone_and_corrupt_file_fail_clearly(fitted, env, tmp_path):
    m, _, _ = fitted
    path = m.save(tmp_path / "m.safetensors")
    other = make_tiny_backbone(tmp_path / "other_bb", seed=1)
    with pytest.raises(BundleError, match="another backbone"):
        TextDiffModel.load(path, device="cpu", backbone=other)
    with pytest.raises(BundleError, match="not found"):
        TextDiffModel.load(path, device="cpu", backbone=tmp_path / "nowhere")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError):
        TextDiffModel.load(bad, device="cpu")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(BundleError):
        load_model(tmp_path / "junk.safetensors", device="cpu")


def test_stopped_fit_leaves_a_loadable_model(env, tmp_path):
    m = _model(env, epochs=50)
    n = [0]

    def stop():
        n[0] += 1
        return n[0] > 3
    hist = run(m.fit(shapes_set(4, seed=0), should_stop=stop))
    assert hist["stopped"] and 0 < hist["epochs_run"] < 5  # 1 step per epoch
    # a stop during the feature stage leaves the (untrained) head untouched and usable
    early = run(_model(env).fit(shapes_set(4, seed=0), should_stop=lambda: True))
    assert early["stopped"] and early["epochs_run"] == 0
    m.save(tmp_path / "stopped.safetensors")
    m2 = TextDiffModel.load(tmp_path / "stopped.safetensors", device="cpu")
    assert m2.predict_mask(np.random.rand(40, 40, 3).astype(np.float32), "left").shape == (40, 40)
    # closing the generator mid-training also leaves a valid model
    m3 = _model(env, epochs=50)
    gen = m3.fit(shapes_set(4, seed=0), val_fraction=0.5)
    for ev in gen:
        if ev.stage == "validate":
            break
    gen.close()
    assert m3.predict_proba(np.random.rand(32, 32, 3).astype(np.float32), "x").shape == (32, 32)


def test_validation_keeps_best_head(env):
    m = _model(env, epochs=6, patience=2)
    hist = run(m.fit(shapes_set(8, seed=0), val_fraction=0.25))
    assert len(hist["val_dice"]) == hist["epochs_run"] >= 1
    assert hist["best_val_dice"] == max(hist["val_dice"])
    assert hist["val_images"] == 2 and hist["train_images"] == 6


def test_tiled_equals_whole_image(fitted):
    m, _, _ = fitted
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(0.3, 0.05, (64, 64, 3)), 0, 1).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in [(10, 12), (40, 20), (30, 50), (55, 55)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] += 0.5
    img = np.clip(img, 0, 1)
    tiled = m.predict_proba(img, "the object on the left", tiled=True)
    whole = m._predict_fn("the object on the left")(img[None])[0, 0]
    assert tiled.shape == whole.shape == (64, 64)
    # GroupNorm statistics over a tile vs the whole image differ slightly: tolerance
    assert np.abs(tiled - whole).mean() < 0.05
    assert ((tiled > 0.5) == (whole > 0.5)).mean() > 0.97


def test_predict_any_size_gray_instances_and_resize(fitted):
    m, _, _ = fitted
    gray = np.random.default_rng(0).random((45, 70), dtype=np.float32)
    p = m.predict_proba(gray, "left")
    assert p.shape == (45, 70) and p.dtype == np.float32 and 0 <= p.min() <= p.max() <= 1
    assert m.predict_proba(gray, "left", tiled=False).shape == (45, 70)
    lab = m.predict_mask(shapes_set(1, seed=7)[0].image, "the object on the left", instances=True)
    assert lab.dtype == np.int32 and lab.max() >= 1


def test_resize_protocol_and_no_text_mode(env):
    m = _model(env, resize_to=32, text_mode="none", epochs=3)
    assert not m.uses_text and m.text_encoder is None
    data = [e for e in shapes_set(4, seed=0)]
    for e in data:   # non-square, non-working-size images
        e.image, e.mask = e.image[:, :28], e.mask[:, :28]
    run(m.fit(data))
    img = data[0].image
    assert np.array_equal(m.predict_proba(img, "left"), m.predict_proba(img, "right"))
    assert m.predict_proba(img).shape == (32, 28)


def test_finetune_continues_training(fitted, env):
    m = _model(env, epochs=3)
    run(m.fit(shapes_set(4, seed=0)))
    before = {k: v.clone() for k, v in m.head.state_dict().items()}
    events = []
    hist = run(m.finetune(shapes_set(5, seed=9), epochs=5, lr=1e-3), callback=events.append)
    assert events and all(isinstance(e, Progress) for e in events)
    assert any(e.stage == "finetune" for e in events)
    assert hist["epochs_run"] == 5 and hist["loss"][-1] < hist["loss"][0]
    assert any(not torch.equal(before[k], v) for k, v in m.head.state_dict().items())
    assert m.meta["finetunes"][-1]["images"] == 5

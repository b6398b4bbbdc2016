"""MGCC extras for ultrasound: fine-tune defaults, the "no lesion" rule, supervised warm start."""
import inspect

import numpy as np
import pytest
import torch

from napari_textdiff.core.metrics import binary_metrics
from napari_textdiff.core.mgcc import decision as D
from napari_textdiff.core.mgcc.finetune import FINETUNE_DEFAULTS, finetune_model
from napari_textdiff.core.mgcc.model import MGCCModel
from napari_textdiff.core.mgcc.network import MGCCConfig
from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig, evaluate_model
from napari_textdiff.core.models import Example
from napari_textdiff.core.progress import run


def _case(seed, h=40, w=48, empty=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(12, h - 12), rng.uniform(12, w - 12), rng.uniform(6, 9)
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8) * (not empty)
    img = np.clip(0.25 + 0.5 * m + 0.08 * rng.standard_normal((h, w)), 0, 1)
    return Example(img.astype(np.float32)[..., None], m.astype(np.uint8), name=f"c{seed}")


def test_finetune_defaults_are_the_library_defaults():
    sig = inspect.signature(finetune_model)
    for k, v in FINETUNE_DEFAULTS.items():
        assert sig.parameters[k].default == v, k
    assert FINETUNE_DEFAULTS["train"] == "output"


@pytest.fixture(scope="module")
def pretrained():
    """A tiny MGCC trained on bright disks (what a shipped model is to its users' images)."""
    torch.manual_seed(0)
    cfg = TrainConfig(iterations=40, size=32, batch_labeled=4, lr=0.05, schedule="constant",
                      main_only=True, val_every=1000)
    t = MGCCTrainer([_case(i) for i in range(8)], [], net_config=MGCCConfig(in_channels=1,
                    width=0.0625), config=cfg, device="cpu")
    return run(t.run())


def _fainter(ex, k=0.5):
    """The same disks at half the contrast: another scanner's gain."""
    return Example(np.clip(0.25 + k * (ex.image - 0.25), 0, 1).astype(np.float32), ex.mask)


def test_finetune_with_the_defaults_adapts_to_fainter_images(pretrained):
    import copy

    m = copy.deepcopy(pretrained)
    train = [_fainter(_case(20 + i)) for i in range(4)]
    test = [_fainter(_case(100 + i)) for i in range(4)]
    before = evaluate_model(m, test)[0]["dice"]
    hist = run(m.finetune(train))          # every option at its library default
    assert len(hist) == FINETUNE_DEFAULTS["epochs"] and hist[-1] < 0.7 * hist[0]
    assert evaluate_model(m, test)[0]["dice"] > before + 0.05
    assert m.net.training is False


@pytest.mark.parametrize("part,prefixes", [("head", ("main_decoder.convs.3.", "main_decoder.head.")),
                                           ("all", ("",))])
def test_finetune_parts(part, prefixes):
    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    run(m.finetune([_case(0), _case(1)], epochs=2, train=part, lr=1e-2, augment=False))
    changed = {k for k, v in m.net.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith(prefixes) for k in changed)
    assert not any("running_" in k for k in changed)
    with pytest.raises(ValueError, match="train must be"):
        run(m.finetune([_case(0)], train="encoder"))


def test_finetune_norm_trains_batchnorm_affine_and_the_output_layer_only():
    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    bn = {f"{name}.{p}" for name, mod in m.net.named_modules()
          if isinstance(mod, torch.nn.BatchNorm2d) for p in ("weight", "bias")}
    allowed = bn | {k for k in m.net.state_dict() if k.startswith("main_decoder.head.")}
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    run(m.finetune([_case(0), _case(1)], epochs=2, train="norm", lr=1e-2, augment=False))
    changed = {k for k, v in m.net.state_dict().items() if not torch.equal(before[k], v)}
    assert changed & bn and changed <= allowed          # statistics (running_*) stay frozen
    assert any(k.startswith("encoder") or not k.startswith("main_decoder") for k in changed & bn)


def test_rule_empties_a_low_probability_map_and_keeps_a_confident_one():
    p = torch.zeros(2, 1, 32, 32)
    p[0, 0, 8:16, 8:16] = 0.7     # faint blob: max 0.7
    p[1, 0, 8:16, 8:16] = 0.99    # confident lesion
    out = D.apply_rule(p, {"largest_only": False, "min_max_prob": 0.9, "min_area": 0.0}, 0.5)
    assert out[0].max() == 0 and torch.equal(out[1], p[1])
    out = D.apply_rule(p, {"min_mean_prob": 0.8}, 0.5)
    assert out[0].max() == 0 and torch.equal(out[1], p[1])
    small = D.apply_rule(p, {"largest_only": False, "min_max_prob": 0.0, "min_area": 0.1}, 0.5)
    assert small.max() == 0       # 64 px of 1024 < 10 %
    assert torch.equal(D.apply_rule(p, D.NO_RULE, 0.5), p)


def test_largest_only_drops_the_smaller_blob():
    p = np.zeros((32, 32), np.float32)
    p[2:12, 2:12] = 0.9
    p[20:23, 20:23] = 0.95
    kept, peak, mean, area = D.region_stats(p, 0.5, largest_only=True)
    assert kept[20:23, 20:23].max() == 0 and kept[2:12, 2:12].min() == pytest.approx(0.9)
    assert peak == mean == pytest.approx(0.9) and area == pytest.approx(100 / 1024)


def test_choose_rule_learns_to_answer_no_lesion_on_normals():
    rng = np.random.default_rng(0)
    probs, masks = [], []
    for i in range(12):
        m = np.zeros((64, 64), np.uint8)
        p = (0.3 * rng.random((32, 32))).astype(np.float32)
        if i % 2:                      # lesion: confident blob on the truth
            m[16:40, 16:40] = 1
            p[8:20, 8:20] = 0.97
        else:                          # normal: a faint false blob
            p[4:8, 4:8] = 0.75
        probs.append(p)
        masks.append(m)
    rule, score = D.choose_rule(probs, masks)
    assert (0.75 < rule["min_max_prob"] <= 0.97 or 0.75 < rule["min_mean_prob"] <= 0.97
            or rule["min_area"] > 16 / 1024)
    assert score > 0.95
    cv = D.cross_validate_rule(probs, masks, folds=3, groups=[i % 2 for i in range(12)])
    assert len(cv["iou"]) == 12 and np.mean(cv["iou"]) > 0.9


def test_model_applies_and_stores_its_rule(tmp_path):
    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    img = _case(0).image
    assert m.predict_proba(img).max() > 0
    m.decision = {"largest_only": False, "min_max_prob": 1.01, "min_area": 0.0}
    assert m.predict_proba(img).max() == 0       # nothing is ever confident enough
    assert binary_metrics(m.predict_mask(img), np.zeros(img.shape[:2]))["iou"] == 1.0
    m.save(tmp_path / "m.safetensors")
    m2 = MGCCModel.load(tmp_path / "m.safetensors", device="cpu")
    assert m2.decision == m.decision and m2.config["decision"] == m.decision


def test_supervised_main_only_training_with_a_warm_start():
    torch.manual_seed(0)
    src = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    net = MGCCConfig(in_channels=1, width=0.0625)
    cfg = TrainConfig(iterations=3, size=32, batch_labeled=2, lr=0.0, schedule="constant",
                      momentum=0.0, weight_decay=0.0, main_only=True, val_every=3)
    t = MGCCTrainer([_case(i) for i in range(3)], [], [_case(9)], net_config=net, config=cfg,
                    device="cpu", init_state=src.net.inference_state_dict())
    assert t.net.aux_decoders is None
    run(t.run())
    model = t.result()       # lr 0: the warm start is what comes out (BN stats aside)
    for k, v in src.net.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.allclose(model.net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="unlabeled"):
        MGCCTrainer([_case(0)], [_case(1).image], net_config=net, config=cfg, device="cpu")


def test_lesion_classifier_separates_and_travels_with_the_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    y = x[:, 0] + 0.5 * x[:, 1] > 0
    clf = D.fit_lesion_classifier(x, y)
    p = D.lesion_probability(clf, x)
    assert np.mean((p > 0.5) == y) > 0.9
    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    n_feat = 2 * m.net.config.channels[4] + 2
    never = {"mu": [0.0] * n_feat, "sd": [1.0] * n_feat, "w": [0.0] * n_feat, "b": -10.0}
    m.decision = {**D.NO_RULE, "min_lesion_prob": 0.5, "lesion_classifier": never}
    img = _case(0).image
    assert m.predict_proba(img).max() == 0          # P(lesion) ~ 0: "no lesion"
    m.save(tmp_path / "m.safetensors")
    m2 = MGCCModel.load(tmp_path / "m.safetensors", device="cpu")
    assert m2.decision["lesion_classifier"]["b"] == -10.0 and m2.predict_proba(img).max() == 0
    with pytest.raises(ValueError, match="features"):
        D.apply_rule(torch.rand(1, 1, 8, 8), m.decision, 0.5)


def test_finetune_leaves_out_empty_masks_and_refuses_only_empty_ones(pretrained):
    """One empty corrected mask made the BUSI model find nothing elsewhere: it is left out."""
    import copy

    m = copy.deepcopy(pretrained)
    with pytest.raises(ValueError, match="all 2 corrected masks are empty"):
        run(m.finetune([_case(1, empty=True), _case(2, empty=True)], epochs=1))
    events = list(m.finetune([_case(3, empty=True), _case(4), _case(5)], epochs=2))
    assert "left out 1" in events[0].message and "c3" in events[0].message
    steps = [e for e in events if e.step > 0]
    assert len(steps) == 2 * 1                 # 2 epochs x ceil(2 kept / batch 2)
    assert m.meta["finetune_left_out_empty"] == 1

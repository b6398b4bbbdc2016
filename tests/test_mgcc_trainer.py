"""Semi-supervised MGCC trainer: loss falls, consistency sees unlabeled data, checkpoints resume."""
import numpy as np
import pytest
import torch

from napari_textdiff.core.models import Example
from napari_textdiff.core.mgcc import trainer as tr
from napari_textdiff.core.mgcc.network import MGCCConfig
from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig, train_mgcc
from napari_textdiff.core.progress import run

NET = MGCCConfig(in_channels=1, width=0.0625)


def _case(seed, h=40, w=48):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(12, h - 12), rng.uniform(12, w - 12), rng.uniform(5, 9)
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
    img = np.clip(0.25 + 0.5 * m + 0.08 * rng.standard_normal((h, w)), 0, 1)
    return Example(img.astype(np.float32)[..., None], m, name=f"c{seed}")


def _cfg(**kw):
    base = dict(iterations=6, size=32, batch_labeled=2, batch_unlabeled=2, lr=0.01,
                val_every=3, checkpoint_every=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_short_training_lowers_the_loss():
    lab = [_case(i) for i in range(4)]
    unl = [_case(10 + i).image for i in range(4)]
    t = MGCCTrainer(lab, unl, net_config=NET, device="cpu",
                    config=_cfg(iterations=60, lr=0.05, schedule="constant", w_max=1.0))
    sups = [ev.metrics["sup"] for ev in t.run() if ev.stage == "train"]
    assert len(sups) == 60
    assert np.mean(sups[-10:]) < 0.8 * np.mean(sups[:10])
    model = t.result()
    assert model.net.aux_decoders is None and model.net.training is False


def test_consistency_term_receives_the_unlabeled_part(monkeypatch):
    seen = []
    real = tr.consistency_loss

    def spy(main, aux):
        seen.append((main.shape[0], [a.shape[0] for a in aux], main.requires_grad))
        return real(main, aux)

    monkeypatch.setattr(tr, "consistency_loss", spy)
    lab = [_case(i) for i in range(3)]
    unl = [_case(10 + i).image for i in range(5)]
    t = MGCCTrainer(lab, unl, net_config=NET, device="cpu",
                    config=_cfg(batch_labeled=2, batch_unlabeled=3, rampup_iters=0))
    stats = t.step()
    assert seen == [(3, [3, 3, 3], True)]
    assert stats["cons"] > 0 and stats["w"] == pytest.approx(7.0)
    assert stats["loss"] == pytest.approx(stats["sup"] + 7.0 * stats["cons"], rel=1e-5)
    # fully supervised: no unlabeled images, no consistency term
    seen.clear()
    t2 = MGCCTrainer(lab, [], net_config=NET, device="cpu", config=_cfg())
    s2 = t2.step()
    assert seen == [] and s2["cons"] == 0.0 and s2["loss"] == pytest.approx(s2["sup"])


def test_warmup_default_reaches_w_max_within_the_run():
    cfg = TrainConfig(iterations=1000)
    assert cfg.ramp_length == 400
    from napari_textdiff.core.mgcc.schedules import consistency_weight
    assert consistency_weight(cfg.iterations - 1, cfg.w_max, cfg.ramp_length) == cfg.w_max


def test_stop_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    lab = [_case(i) for i in range(3)]
    unl = [_case(10 + i).image for i in range(3)]
    full = MGCCTrainer(lab, unl, net_config=NET, device="cpu", config=_cfg(),
                       run_dir=tmp_path / "full")
    run(full.run())
    assert full.it == 6 and (tmp_path / "full" / "checkpoint.pt").is_file()

    calls = [0]

    def stop_after_4():
        calls[0] += 1
        return calls[0] > 4

    part = MGCCTrainer(lab, unl, net_config=NET, device="cpu", config=_cfg(),
                       run_dir=tmp_path / "part")
    events = list(part.run(should_stop=stop_after_4))
    assert part.it == 4 and len(events) == 4
    resumed = MGCCTrainer(lab, unl, net_config=NET, device="cpu", config=_cfg(),
                          run_dir=tmp_path / "part", resume=True)
    assert resumed.it == 4
    run(resumed.run())
    a, b = full.net.state_dict(), resumed.net.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    # no half-written files are left behind
    assert not list((tmp_path / "part").glob(".*tmp"))


def test_resume_errors(tmp_path):
    lab = [_case(0)]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        MGCCTrainer(lab, net_config=NET, device="cpu", config=_cfg(), run_dir=tmp_path,
                    resume=True)
    t = MGCCTrainer(lab, net_config=NET, device="cpu", config=_cfg(iterations=1), run_dir=tmp_path)
    run(t.run())
    with pytest.raises(ValueError, match="differs"):
        MGCCTrainer(lab, net_config=MGCCConfig(in_channels=1, width=0.125), device="cpu",
                    config=_cfg(), run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="labeled"):
        MGCCTrainer([], net_config=NET, device="cpu", config=_cfg())


def test_validation_selects_the_best_checkpoint(tmp_path):
    lab = [_case(i) for i in range(4)]
    val = [_case(20 + i) for i in range(2)] + [Example(_case(30).image, np.zeros((40, 48), np.uint8))]
    gen = train_mgcc(lab, [_case(40).image], val, net_config=NET, device="cpu",
                     config=_cfg(iterations=9, lr=0.05), run_dir=tmp_path)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        model = stop.value
    vals = [e for e in events if e.stage == "validate"]
    assert [e.step for e in vals] == [3, 6, 9]
    ious = [e.metrics["iou"] for e in vals]
    assert all(0.0 <= v <= 1.0 for v in ious)
    assert model.meta["val_iou"] == pytest.approx(max(ious))
    assert model.meta["best_iteration"] == 3 * (int(np.argmax(ious)) + 1)
    from napari_textdiff.core.models import load_model
    best = load_model(tmp_path / "best.safetensors", device="cpu")
    img = val[0].image
    np.testing.assert_allclose(best.predict_proba(img), model.predict_proba(img), atol=1e-6)

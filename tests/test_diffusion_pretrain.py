"""Backbone pretraining: crops, loss falling, loadable output, exact resume, crash safety."""
import json

import numpy as np
import pytest
import torch

from napari_textdiff.core.diffusion.crops import CropSampler, collect_image_paths
from napari_textdiff.core.diffusion.pretrain import load_backbone, pretrain_backbone
from napari_textdiff.core.progress import run


def _images(n=3, c=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:48] / 40.0
    out = []
    for _ in range(n):
        a, p = rng.random(2) * 3
        base = 0.5 + 0.4 * np.sin(5 * (xx * np.cos(a) + yy * np.sin(a)) + p)
        img = np.repeat(base[..., None], c, 2) * rng.uniform(0.6, 1.0, c)
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return out


TINY = dict(preset="tiny", crop_size=16, batch_size=4, warmup_steps=0, log_every=1,
            device="cpu")


def _losses(events):
    return [(e.step, e.loss) for e in events if e.stage == "train" and e.loss is not None]


def test_crop_sampler_dihedral_and_deterministic():
    # crops are stored as uint8: use values that uint8 holds exactly
    img = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6) * 7 / 255
    s = CropSampler([img], size=6, scale=(1.0, 1.0), dihedral=True)
    out = s.sample(16, torch.Generator().manual_seed(0))
    assert out.shape == (16, 1, 6, 6) and out.dtype == torch.float32
    views = [torch.rot90(v, k, (1, 2)) for v in (img, img.flip(-1)) for k in range(4)]
    seen = set()
    for crop in out:   # every full-size crop is exactly one of the 8 dihedral views
        match = [i for i, v in enumerate(views) if torch.allclose(crop, v, atol=1e-5)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 2
    again = s.sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    big = CropSampler([torch.rand(3, 50, 70), torch.rand(3, 20, 30)], size=16, scale=(1, 3))
    x = big.sample(8, torch.Generator().manual_seed(1))
    assert x.shape == (8, 3, 16, 16) and 0 <= x.min() and x.max() <= 1


def test_collect_paths_errors_and_exclude(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        collect_image_paths([tmp_path / "nope.png"])
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "a_mask.png").write_bytes(b"x")
    assert [p.name for p in collect_image_paths([tmp_path], exclude=["*_mask*"])] == ["a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        collect_image_paths([tmp_path / "empty"])


def test_pretrain_lowers_loss_and_output_loads(tmp_path):
    events = []
    out = run(pretrain_backbone(_images(), tmp_path / "bb", steps=16, lr=2e-3,
                                checkpoint_every=12, **TINY), callback=events.append)
    losses = [l for _, l in _losses(events)]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    unet, sched = load_backbone(out)
    assert unet.config.in_channels == 3 and sched.config.num_train_timesteps == 1000
    with torch.no_grad():
        y = unet(torch.zeros(1, 3, 16, 16), 10).sample
    assert y.shape == (1, 3, 16, 16) and torch.isfinite(y).all()
    log = json.loads((out / "training_log.json").read_text())
    assert [r["step"] for r in log] == list(range(1, 17))
    assert (out / "training_log.csv").read_text().startswith("step,loss")
    card = json.loads((out / "model_card.json").read_text())
    assert card["step"] == 16 and card["weights"] == "EMA"
    # the exported weights are the EMA weights, not the raw ones
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    raw = ck["model"]["conv_in.weight"]
    assert not torch.equal(unet.conv_in.weight.detach(), raw)


def test_resume_is_exact_after_stop_and_crash(tmp_path):
    imgs = _images(seed=1)
    kw = dict(steps=6, lr=1e-3, checkpoint_every=2, **TINY)
    ref = _losses(list(pretrain_backbone(imgs, tmp_path / "a", **kw)))
    assert [s for s, _ in ref] == [1, 2, 3, 4, 5, 6]

    # 1) consumer stops at step 3 -> state saved at 3, resume continues with identical losses
    gen = pretrain_backbone(imgs, tmp_path / "b", **kw)
    for ev in gen:
        if ev.stage == "train" and ev.step == 3:
            gen.close()
            break
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = _losses(list(pretrain_backbone(imgs, tmp_path / "b", **kw)))
    assert resumed == ref[3:]
    full_log = [r["loss"] for r in json.loads((tmp_path / "b" / "training_log.json").read_text())]
    assert full_log == [l for _, l in ref]

    # 2) crash inside the job at step 3 -> last periodic checkpoint (2) stays loadable
    gen = pretrain_backbone(imgs, tmp_path / "c", **kw)
    with pytest.raises(RuntimeError, match="boom"):
        for ev in gen:
            if ev.stage == "train" and ev.step == 3:
                gen.throw(RuntimeError("boom"))
    assert torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["step"] == 2
    load_backbone(tmp_path / "c")
    resumed = _losses(list(pretrain_backbone(imgs, tmp_path / "c", **kw)))
    assert resumed == ref[2:]

    # changed architecture settings refuse to resume
    with pytest.raises(ValueError, match="crop_size"):
        next(pretrain_backbone(imgs, tmp_path / "c", **{**kw, "crop_size": 24}))


def test_should_stop_keeps_a_loadable_model(tmp_path):
    calls = iter(range(100))
    out = run(pretrain_backbone(_images(c=1), tmp_path / "g", channels=1, steps=50,
                                checkpoint_every=100, should_stop=lambda: next(calls) >= 3,
                                **TINY))
    unet, _ = load_backbone(out)
    assert unet.config.in_channels == 1
    assert json.loads((out / "model_card.json").read_text())["step"] == 3


def test_cli_pretrain_backbone(tmp_path):
    from PIL import Image

    from napari_textdiff.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    for i, a in enumerate(_images(n=2, c=1)):
        Image.fromarray((a[..., 0] * 255).astype(np.uint8)).save(src / f"im{i}.png")
    out = tmp_path / "bb"
    assert main(["pretrain-backbone", str(src), "--out", str(out), "--preset", "tiny",
                 "--channels", "1", "--steps", "2", "--crop-size", "16", "--batch-size", "2",
                 "--log-every", "1", "--device", "cpu"]) == 0
    unet, _ = load_backbone(out)
    assert unet.config.in_channels == 1
    assert main(["pretrain-backbone", str(tmp_path / "missing"), "--out", str(out)]) == 2

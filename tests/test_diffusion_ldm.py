"""Latent diffusion: VAE reconstructs, sampler shapes/ranges (gray + RGB), near-copy flag, CLI."""
import json

import numpy as np
import pytest
import torch

from napari_textdiff.core.diffusion.ldm import train_ldm
from napari_textdiff.core.diffusion.synthesize import TrainingIndex, load_ldm, synthesize
from napari_textdiff.core.progress import run


def _images(c, n=6, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:36] / 36.0
    out = []
    for a, p in rng.random((n, 2)) * 3:
        base = 0.5 + 0.4 * np.sin(6 * (xx * np.cos(a) + yy * np.sin(a)) + p)
        out.append(np.clip(np.repeat(base[..., None], c, 2) * rng.uniform(0.5, 1, c), 0, 1)
                   .astype(np.float32))
    return out


FAST = dict(preset="tiny", vae_steps=60, unet_steps=8, vae_batch=4, unet_batch=4, vae_lr=3e-3,
            log_every=10, device="cpu")


@pytest.mark.parametrize("c", [1, 3])
def test_ldm_trains_samples_and_flags_copies(tmp_path, c):
    imgs = _images(c)
    events = []
    out = run(train_ldm(imgs, tmp_path / "ldm", channels=c, **FAST), callback=events.append)
    meta = json.loads((out / "ldm.json").read_text())
    data = np.stack([np.asarray(torch.nn.functional.interpolate(
        torch.from_numpy(i).permute(2, 0, 1)[None], size=(32, 32), mode="bilinear",
        antialias=True)[0]) for i in imgs])
    var = float(np.var(data * 2 - 1))
    assert meta["scaling_factor"] > 0 and meta["vae_done"]
    vae, unet, _, _ = load_ldm(out)
    assert vae.config.scaling_factor == pytest.approx(meta["scaling_factor"])
    with torch.no_grad():
        x = torch.from_numpy(data) * 2 - 1
        z = vae.encode(x).latent_dist.mean
        mse = torch.mean((vae.decode(z).sample - x) ** 2).item()
        z = z * meta["scaling_factor"]
    assert mse < 0.25 * var, (mse, var)   # far better than predicting the mean
    # scaled latents have ~unit variance
    assert 0.5 < z.std().item() < 2.0

    shown = []
    res = run(synthesize(out, 3, steps=4, eta=0.5, seed=7, device="cpu", batch_size=2),
              callback=lambda e: e.payload is not None and shown.append(e.payload))
    assert len(res) == 3 and len(shown) == 3
    for r in res:
        assert r["image"].shape == (32, 32, c) and r["image"].dtype == np.float32
        assert 0.0 <= r["image"].min() and r["image"].max() <= 1.0
        assert r["distance"] >= 0 and r["nearest"].startswith("image")
    # batch size does not change the samples (one generator per sample)
    res1 = run(synthesize(out, 2, steps=4, eta=0.5, seed=7, device="cpu", batch_size=1))
    assert np.allclose(res1[1]["image"], res[1]["image"], atol=1e-4)

    idx = TrainingIndex.load(out)
    copy = torch.from_numpy(data[2])[None]
    d, near = idx.query(copy)
    # thumbnails are stored as uint8: an exact copy is within the quantisation error (<= 1/510)
    assert d.item() < 1 / 510 and int(near) == 2 and d.item() < idx.threshold
    d2, near2 = idx.query(copy.flip(-1))        # a mirrored copy is a copy too
    assert d2.item() < idx.threshold and int(near2) == 2
    d3, _ = idx.query(torch.full_like(copy, 0.5))
    assert d3.item() > idx.threshold


def test_stop_during_vae_gives_clear_error(tmp_path):
    gen = train_ldm(_images(1), tmp_path / "ldm", channels=1, **{**FAST, "log_every": 5})
    for ev in gen:
        if ev.stage == "vae" and ev.step == 10:
            gen.close()
            break
    assert (tmp_path / "ldm" / "vae" / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match="no latent UNet"):
        next(synthesize(tmp_path / "ldm", 1, device="cpu"))
    with pytest.raises(FileNotFoundError, match="not a latent diffusion"):
        next(synthesize(tmp_path, 1, device="cpu"))


def test_cli_train_ldm_and_synthesize(tmp_path):
    from PIL import Image

    from napari_textdiff.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    for i, a in enumerate(_images(1, n=4)):
        Image.fromarray((a[..., 0] * 255).astype(np.uint8)).save(src / f"im{i}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "im0_mask.png")
    ldm = tmp_path / "ldm"
    assert main(["train-ldm", str(src), "--out", str(ldm), "--channels", "1", "--preset", "tiny",
                 "--vae-steps", "5", "--unet-steps", "3", "--vae-batch", "2", "--unet-batch",
                 "2", "--exclude", "*_mask*", "--device", "cpu"]) == 0
    assert json.loads((ldm / "ldm.json").read_text())["image_names"] == [
        f"im{i}.png" for i in range(4)]
    out = tmp_path / "syn"
    assert main(["synthesize", str(ldm), "-n", "2", "--steps", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    rows = json.loads((out / "samples.json").read_text())
    assert [r["file"] for r in rows] == ["sample_00000.png", "sample_00001.png"]
    assert (out / "samples.csv").read_text().startswith("file,seed,index,distance")
    assert np.asarray(Image.open(out / rows[0]["file"])).shape == (32, 32)
    assert main(["synthesize", str(tmp_path / "nope"), "-n", "1", "--out", str(out)]) == 2


RESUMABLE = dict(preset="tiny", vae_steps=12, unet_steps=10, vae_batch=2, unet_batch=2,
                 vae_lr=3e-3, log_every=2, checkpoint_every=5, device="cpu")


def _drive_until(gen, stage, step):
    """Run the trainer until it reports ``stage`` at ``step``, then close it (Ctrl-C / Stop)."""
    for ev in gen:
        if ev.stage == stage and ev.step == step:
            gen.close()
            return
    raise AssertionError(f"never reached {stage} {step}")


def test_interrupted_runs_resume_exactly(tmp_path):
    """Stopped in the autoencoder and again in the latent UNet, the run continues where it
    stopped and ends with the losses and weights of an uninterrupted run."""
    from safetensors.torch import load_file

    imgs = _images(1, n=4)
    run(train_ldm(imgs, tmp_path / "whole", channels=1, **RESUMABLE))
    part = tmp_path / "part"
    _drive_until(train_ldm(imgs, part, channels=1, **RESUMABLE), "vae", 8)
    assert (part / "ldm_state.pt").is_file()
    assert json.loads((part / "ldm.json").read_text())["vae_steps_done"] == 8
    events = []
    gen = train_ldm(imgs, part, channels=1, **RESUMABLE)
    for ev in gen:
        events.append(ev)
        if ev.stage == "unet" and ev.step == 6:
            gen.close()
            break
    assert "resuming the autoencoder at step 8" in [e.message for e in events][1]
    out = run(train_ldm(imgs, part, channels=1, **RESUMABLE))

    whole = json.loads((tmp_path / "whole" / "training_log.json").read_text())
    resumed = json.loads((out / "training_log.json").read_text())
    assert [(r["stage"], r["step"]) for r in resumed] == [(r["stage"], r["step"]) for r in whole]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    a = load_file(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    meta = json.loads((out / "ldm.json").read_text())
    assert meta["unet_steps_done"] == 10 and meta["vae_steps_done"] == 12
    assert (out / "training_log.csv").read_text().startswith("stage,step,loss,mse,elapsed_s")

    # more steps later: continues from 10, the autoencoder stays as it was (latents depend on it)
    vae_before = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    run(train_ldm(imgs, out, channels=1, **{**RESUMABLE, "unet_steps": 14, "vae_steps": 20}))
    meta = json.loads((out / "ldm.json").read_text())
    assert meta["unet_steps_done"] == 14 and meta["vae_steps_done"] == 12
    vae_after = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before)


def test_resume_refuses_another_runs_state(tmp_path):
    imgs = _images(1, n=4)
    _drive_until(train_ldm(imgs, tmp_path, channels=1, **RESUMABLE), "vae", 4)
    with pytest.raises(ValueError, match=r"ldm_state.pt: was trained with different settings "
                                         r"vae_lr=0.003 \(now 0.001\)"):
        run(train_ldm(imgs, tmp_path, channels=1, **{**RESUMABLE, "vae_lr": 1e-3}))
    with pytest.raises(ValueError, match="was trained on other images"):
        run(train_ldm(imgs[:3], tmp_path, channels=1, **RESUMABLE))
    # --no-resume starts over
    gen = train_ldm(imgs, tmp_path, channels=1, resume=False, **RESUMABLE)
    assert [next(gen).stage, next(gen).step] == ["load", 2]
    gen.close()


def test_cli_ctrl_c_saves_and_the_same_command_continues(tmp_path, monkeypatch, capsys):
    """Ctrl-C stops `train-ldm` at a step boundary with its state saved; the same command again
    continues from there instead of starting over."""
    import os
    import signal

    from PIL import Image

    import napari_textdiff.core.progress as progress
    from napari_textdiff.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    for i, a in enumerate(_images(1, n=4)):
        Image.fromarray((a[..., 0] * 255).astype(np.uint8)).save(src / f"im{i}.png")
    ldm = tmp_path / "ldm"
    argv = ["train-ldm", str(src), "--out", str(ldm), "--channels", "1", "--preset", "tiny",
            "--vae-steps", "25", "--unet-steps", "2", "--vae-batch", "2", "--unet-batch", "2",
            "--device", "cpu"]
    seen = []

    def ctrl_c_at_step_10(every=1.0, stream=None):
        def cb(ev):
            seen.append((ev.stage, ev.step))
            if (ev.stage, ev.step) == ("vae", 10):
                os.kill(os.getpid(), signal.SIGINT)
        return cb

    monkeypatch.setattr(progress, "print_progress", ctrl_c_at_step_10)
    assert main(argv) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    meta = json.loads((ldm / "ldm.json").read_text())
    assert meta["vae_steps_done"] == 10 and not meta["vae_done"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored

    seen.clear()
    monkeypatch.setattr(progress, "print_progress", lambda every=1.0, stream=None: seen.append)
    assert main(argv) == 0
    steps = [(e.stage, e.step) for e in seen if e.stage == "vae"]
    assert steps[0] == ("vae", 10) and ("vae", 20) in steps        # resumed, not restarted
    log = json.loads((ldm / "training_log.json").read_text())
    assert [r["step"] for r in log if r["stage"] == "vae"] == [10, 20, 25]
    assert json.loads((ldm / "ldm.json").read_text())["unet_steps_done"] == 2


def test_second_ctrl_c_aborts():
    import os
    import signal

    from napari_textdiff.cli._common import StopOnCtrlC

    with StopOnCtrlC("a test job") as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_memorisation_report_compares_samples_with_held_out_images(tmp_path):
    """benchmarks/ldm_report.py: a held-out image that is a training image has distance ~0;
    the report gives both sets' statistics and writes the sample grid."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    spec = importlib.util.spec_from_file_location(
        "ldm_report", Path(__file__).parents[1] / "benchmarks" / "ldm_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    imgs = _images(1, n=6)
    ldm = run(train_ldm(imgs[:4], tmp_path / "ldm", channels=1, **FAST))
    held = []
    for i, a in enumerate([imgs[0], imgs[4], imgs[5]]):     # a training image, two unseen
        f = tmp_path / f"held{i}.png"
        Image.fromarray((a[..., 0] * 255).round().astype(np.uint8)).save(f)
        held.append(str(f))
    lst = tmp_path / "held.txt"
    lst.write_text("\n".join(held) + "\n")
    res = mod.report(str(ldm), mod._paths([f"@{lst}"]), str(tmp_path / "rep"), n=3, steps=2)
    assert res["samples"]["n"] == 3 and res["held_out_real"]["n"] == 3
    assert res["held_out_real"]["min"] < 0.01                     # the copy is found
    assert res["held_out_real"]["under_threshold"] >= 1
    assert res["samples"]["median"] > 0 and res["median_ratio_samples_to_reference"] > 0
    saved = json.loads((tmp_path / "rep" / "ldm_report.json").read_text())
    assert saved["near_copy_threshold"] == res["near_copy_threshold"]
    grid = Image.open(tmp_path / "rep" / "ldm_grid.png")
    assert grid.size[0] > 200 and grid.size[1] > 300
    # a "held-out" file that is one of the LDM's training images (by name) is refused
    train_copy = tmp_path / "image0.png"
    Image.fromarray((imgs[0][..., 0] * 255).astype(np.uint8)).save(train_copy)
    with pytest.raises(ValueError, match="training images of"):
        mod.report(str(ldm), [str(train_copy)], str(tmp_path / "rep2"), n=1, steps=2)
    # without held-out images: compared with the training set's own distances
    res = mod.report(str(ldm), [], str(tmp_path / "rep3"), n=2, steps=2)
    assert res["held_out_real"] is None and res["median_ratio_samples_to_reference"] > 0


def test_pack_writes_the_mgcc_split_at_the_ldm_size(tmp_path):
    """`ldm_report.py pack`: the MGCC default's train / held-out cases (same seed and fraction),
    resized as train_ldm resizes them, under their own names (what travels to a GPU)."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    from test_mgcc_cli import _busi

    spec = importlib.util.spec_from_file_location(
        "ldm_report", Path(__file__).parents[1] / "benchmarks" / "ldm_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from napari_textdiff.cli.mgcc import split_for_mgcc
    from napari_textdiff.core.datasets import discover

    busi = _busi(tmp_path / "busi", n_benign=8, n_normal=2)
    counts = mod.pack(str(busi), str(tmp_path / "packed"), size=16)
    _, _, val = split_for_mgcc(discover(busi), 1.0, 0.2, 0)
    held = sorted(p.name for p in (tmp_path / "packed" / "held_out").glob("*.png"))
    assert held == sorted(s.image_path.name for s in val) and counts["held_out"] == len(val)
    train = list((tmp_path / "packed" / "train").glob("*.png"))
    assert len(train) == counts["train"] == 10 - len(val)
    assert not any("_mask" in p.name for p in train)
    assert np.asarray(Image.open(train[0])).shape == (16, 16)

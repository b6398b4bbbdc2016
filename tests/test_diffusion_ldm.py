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

"""Diffusion feature extractor: taps, steps, fixed noise, channel/size handling, loading."""
import numpy as np
import pytest
import torch

from napari_textdiff.core.normalize import to_model_channels
from napari_textdiff.core.textdiff.features import (DiffusionFeatures, load_backbone,
                                                    paper_block_tap, random_backbone)
from textdiff_testkit import make_tiny_backbone


@pytest.fixture(scope="module")
def unet():
    return random_backbone("tiny", in_channels=3, sample_size=32)


def test_taps_steps_shapes(unet):
    f = DiffusionFeatures(unet, steps=[10, 50, 90])
    assert f.taps == ["up_blocks.0.attentions.0", "up_blocks.1.resnets.1"]
    assert f.strides == [2, 1]
    # steps concatenated on channels: 3 steps x raw channels
    assert f.out_channels == [3 * c for c in f.channels] == [96, 48]
    out = f(np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32))
    assert [tuple(o.shape) for o in out] == [(2, 96, 16, 16), (2, 48, 32, 32)]
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)


def test_named_and_paper_block_taps(unet):
    f = DiffusionFeatures(unet, taps=["up_blocks.1.resnets.0", "block:2"], steps=[50])
    assert f.taps == ["up_blocks.1.resnets.0", "up_blocks.0.upsamplers.0"]
    assert paper_block_tap(unet, 4) == "up_blocks.1.resnets.1"
    assert paper_block_tap(unet, 1) == "up_blocks.0.attentions.1"
    with pytest.raises(ValueError, match="unknown decoder taps"):
        DiffusionFeatures(unet, taps=["up_blocks.9.resnets.0"])
    with pytest.raises(ValueError, match="outside"):
        DiffusionFeatures(unet, steps=[5000])


def test_fixed_noise_deterministic_and_batch_independent(unet):
    f = DiffusionFeatures(unet, steps=[50, 150])
    x = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    a = f(x, batch_size=3)
    b = f(x[1:2], batch_size=1)
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa[1:2], fb, atol=1e-4, rtol=1e-4)
    g = DiffusionFeatures(unet, steps=[50, 150], noise_seed=41)
    assert not torch.allclose(g(x[:1])[0], a[0][:1])
    # the noise really is shared: the same image at the same step gives the same activations
    assert torch.equal(f.noise(32, 32), f.noise(32, 32))


def test_gray_rgb_and_odd_sizes(unet):
    x = to_model_channels(np.full((1, 4, 4, 1), 0.25, np.float32), 3)
    assert x.shape == (1, 3, 4, 4) and torch.allclose(x, torch.full_like(x, -0.5))
    y = to_model_channels(np.ones((1, 4, 4, 3), np.float32), 1)
    assert y.shape == (1, 1, 4, 4) and torch.allclose(y, torch.ones_like(y))
    f = DiffusionFeatures(unet, steps=[50])
    out = f(np.random.default_rng(0).random((1, 21, 30, 1), dtype=np.float32))
    assert [tuple(o.shape[-2:]) for o in out] == [(11, 15), (21, 30)]


def test_load_backbone_dir_and_scheduler(tmp_path, unet):
    d = make_tiny_backbone(tmp_path / "bb")
    u, s = load_backbone(d)
    assert s.config.num_train_timesteps == 1000 and s.config.beta_schedule == "linear"
    from diffusers import DDPMScheduler
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(d)
    u2, s2 = load_backbone(d)
    assert s2.config.beta_schedule == "squaredcos_cap_v2"
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    a = DiffusionFeatures(u, s, steps=[250])(x)[0]
    b = DiffusionFeatures(u2, s2, steps=[250])(x)[0]
    assert not torch.allclose(a, b)      # the schedule in the directory is used
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_backbone(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(tmp_path / "empty")

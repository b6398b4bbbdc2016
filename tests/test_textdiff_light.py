"""Issue 16: classic filter bank, the light head, crop training, both feature kinds in a bundle."""
import numpy as np
import pytest
import torch

from napari_textdiff.core.progress import run
from napari_textdiff.core.textdiff.classic import ClassicFeatures
from napari_textdiff.core.textdiff.config import TextDiffConfig
from napari_textdiff.core.textdiff.features import FeatureStack, build_features, random_backbone
from napari_textdiff.core.textdiff.head import LightHead, TextDiffHead, build_head
from napari_textdiff.core.textdiff.model import TextDiffModel
from napari_textdiff.core.textdiff.cache import TileCache
from napari_textdiff.core.textdiff.train import (_window, cropped_batch, epoch_batches,
                                                 random_crop)
from textdiff_testkit import dice, make_tiny_backbone, make_tiny_bert, shapes_set

SMALL = dict(working_size=32, tile_overlap=8, dim=16, heads=2, steps=[10, 50], max_length=12,
             crop_size=16, epochs=12, epoch_steps=10, classic_sigmas=[1.0, 2.0, 4.0])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tdl")
    return {"bert": make_tiny_bert(root / "bert"), "bb": make_tiny_backbone(root / "bb")}


def test_classic_channels_deterministic_and_matches_skimage_smoothing():
    rng = np.random.default_rng(0)
    img = rng.random((2, 40, 36, 3), dtype=np.float32)
    f = ClassicFeatures(3, [1.0, 4.0])
    a, b = f(img)[0], f(img)[0]
    assert f.channels == 3 * 4 * 2 and a.shape == (2, 24, 40, 36)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # the first 3 maps are the sigma-1 Gaussian of each channel (torch reflect = scipy mirror)
    from scipy.ndimage import gaussian_filter
    ref = gaussian_filter(img[0, ..., 0].astype(np.float64), 1.0, mode="mirror", truncate=4)
    np.testing.assert_allclose(a[0, 0].numpy(), ref, atol=2e-3)
    # a constant image: zero edges and curvature at every scale
    flat = f(np.full((1, 20, 20, 3), 0.4, np.float32))[0][0]
    assert float(flat[3:6].abs().max()) < 1e-4 and float(flat[6:12].abs().max()) < 1e-4
    # tiny images (pad wider than the image) still work; gray input is expanded to RGB
    assert f(np.zeros((1, 5, 7, 1), np.float32))[0].shape == (1, 24, 5, 7)


def test_stack_and_build_features():
    unet = random_backbone("tiny", in_channels=3, sample_size=32)
    both = build_features(TextDiffConfig(features="both", steps=[10], classic_sigmas=[1.0]),
                          unet)
    assert isinstance(both, FeatureStack)
    assert both.strides[-1] == 1 and both.out_channels[-1] == 12
    assert both.taps == both.diffusion.taps and both.unet is unet
    out = both(np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32))
    assert [o.shape[1] for o in out] == both.out_channels
    only = build_features(TextDiffConfig(features="classic", classic_sigmas=[1.0, 2.0]))
    assert only.taps == [] and only.out_channels == [24] and only.fingerprint()
    half = build_features(TextDiffConfig(features="both", steps=[10], classic_sigmas=[1.0],
                                         diffusion_scale=0.5), unet)
    assert half.strides == [2 * s for s in both.strides[:-1]] + [1]
    out = half(np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32))
    assert [o.shape[-1] for o in out] == [32 // s for s in half.strides]
    with pytest.raises(ValueError, match="diffusion_scale"):
        FeatureStack(both.diffusion, None, diffusion_scale=0.3)
    plain = build_features(TextDiffConfig(steps=[10]), unet)
    assert not isinstance(plain, FeatureStack)          # "diffusion": unchanged extractor
    with pytest.raises(ValueError, match="features"):
        TextDiffConfig(features="sift")


def test_light_head_loss_falls_and_text_reaches_every_pixel():
    chans = [64, 32, 12]
    cfg = TextDiffConfig.preset("light", dim=16, heads=2, decoder=[16, 16])
    head = build_head(cfg, chans, text_dim=8)
    assert isinstance(head, LightHead)
    conv = build_head(TextDiffConfig(dim=16, heads=2), chans, text_dim=8)
    assert type(conv) is TextDiffHead
    torch.manual_seed(0)
    feats = [torch.randn(4, 64, 8, 8), torch.randn(4, 32, 16, 16), torch.randn(4, 12, 32, 32)]
    target = (feats[2][:, 0] > 0.5).long()                  # learnable from one input channel
    text, mask = torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), 5e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(feats, text, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    # the text still reaches every pixel (fused at the coarse scale, added back upsampled)
    head.eval()
    a = head(feats, torch.randn(4, 5, 8), mask)
    b = head(feats, torch.randn(4, 5, 8), mask)
    assert not torch.allclose(a, b)


def test_epoch_batches_and_aligned_crops():
    rng = np.random.default_rng(0)
    b = epoch_batches(5, 4, 10, rng)
    assert len(b) == 10 and all(len(x) == 4 for x in b)
    assert len(epoch_batches(5, 2, None, rng)) == 3
    feats = [torch.arange(4 * 4).view(1, 1, 4, 4).float(), torch.zeros(1, 2, 32, 32)]
    masks, valid = torch.zeros(1, 32, 32), torch.ones(1, 32, 32)
    f, m, v = random_crop(feats, masks, valid, [8, 1], 16, rng)
    assert f[0].shape[-2:] == (2, 2) and f[1].shape[-2:] == (16, 16) and m.shape[-2:] == (16, 16)
    same = random_crop(feats, masks, valid, [8, 1], 32, rng)
    assert same[1] is masks
    # cutting the window from the fp16 cache first gives the same crop as batch-then-crop
    cache = TileCache(3, [(2, 4, 4), (3, 32, 32)], 32, ram_mb=64)
    for f in cache.feats:
        f[:] = np.random.default_rng(2).random(f.shape)
    cache.masks[:] = np.random.default_rng(3).random(cache.masks.shape) > 0.5
    idx = np.array([0, 2])
    a = cropped_batch(cache, idx, None, [8, 1], 16, np.random.default_rng(7))
    b = random_crop(*cache.batch(idx), [8, 1], 16, np.random.default_rng(7))
    for x, y in zip([*a[0], a[1], a[2]], [*b[0], b[1], b[2]]):
        assert torch.equal(x, y)


def test_crop_windows_stay_on_the_image_not_its_padding():
    """A small image padded to the working size: every window holds image pixels, and the
    windows still range over the whole image (not just its corner)."""
    rng = np.random.default_rng(0)
    valid = torch.zeros(2, 64, 64)
    valid[0, :40, :24] = 1                       # padding is below and right of the image
    valid[1, :20, :30] = 1
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    feats = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 64, 64)]
    for _ in range(200):
        f, m, v = random_crop(feats, masks, valid, [8, 1], 16, rng)
        assert v.shape[-2:] == (16, 16) and float(v.sum()) > 0
    # the union extent is 40 x 30: windows start at 0..24 (rows) and 0..16 (columns)
    seen = set()
    for _ in range(300):
        seen.add(_window(valid.numpy(), 16, 8, rng))
    assert {y for y, _ in seen} == {0, 8, 16, 24} and {x for _, x in seen} == {0, 8, 16}
    # no valid pixel at all (never in practice): the whole tile is used
    assert {_window(np.zeros((1, 64, 64)), 16, 8, rng)[0] for _ in range(100)} == \
        {0, 8, 16, 24, 32, 40, 48}


def test_fit_on_images_smaller_than_the_working_size_has_no_empty_steps(env):
    """Images padded up to the working size: no step sees only padding (loss exactly 0)."""
    torch.set_num_threads(1)
    cfg = TextDiffConfig.preset("light", lr=3e-3, **{**SMALL, "working_size": 64, "epochs": 2})
    m = TextDiffModel.create(cfg, backbone=str(env["bb"]), text_encoder=str(env["bert"]),
                             device="cpu")
    small = shapes_set(6, seed=3)                                  # 32² images, 64² tiles
    assert all(np.asarray(ex.image).shape[0] < 64 for ex in small)
    losses = [ev.loss for ev in m.fit(small) if ev.stage == "train" and ev.loss is not None]
    assert len(losses) == 20 and min(losses) > 0.01


@pytest.mark.parametrize("kind", ["both", "classic"])
def test_light_fit_learns_and_roundtrips(env, tmp_path, kind):
    torch.set_num_threads(1)
    cfg = TextDiffConfig.preset("light", features=kind, lr=3e-3, **SMALL)
    bb = str(env["bb"]) if kind == "both" else None
    m = TextDiffModel.create(cfg, backbone=bb, text_encoder=str(env["bert"]), device="cpu")
    hist = run(m.fit(shapes_set(16, seed=0)))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert len(hist["epoch_seconds"]) == hist["epochs_run"] == 12
    assert np.mean([dice(m.predict_mask(ex.image, ex.text), ex.mask)
                    for ex in shapes_set(8, seed=1)]) > 0.7
    path = m.save(tmp_path / f"{kind}.safetensors")
    back = TextDiffModel.load(path, device="cpu", text_encoder=str(env["bert"]))
    assert back.config.features == kind and back.config.head == "light"
    ex = shapes_set(1, seed=5)[0]
    np.testing.assert_array_equal(m.predict_proba(ex.image, ex.text),
                                  back.predict_proba(ex.image, ex.text))

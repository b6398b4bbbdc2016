"""Reinhard stain normalisation: every image leaves with the target colour statistics."""
import numpy as np
import pytest

from napari_textdiff.core import stain


def _he_like(seed, light):
    rng = np.random.default_rng(seed)
    img = np.empty((120, 150, 3), np.float32)
    img[...] = (light, 0.55 * light, 0.75 * light)
    yy, xx = np.mgrid[:120, :150]
    for cy, cx in rng.uniform(10, 110, (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = (0.35 * light, 0.2 * light, 0.5 * light)
    return np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)


def test_images_of_different_staining_leave_with_the_target_statistics():
    from skimage.color import rgb2lab

    mu_t = np.asarray(stain.REINHARD_TARGET[0])
    outs = [stain.reinhard(_he_like(0, 0.95)), stain.reinhard(_he_like(1, 0.6))]
    before = [rgb2lab(_he_like(s, k)).reshape(-1, 3) for s, k in ((0, 0.95), (1, 0.6))]
    after = [rgb2lab(o).reshape(-1, 3) for o in outs]
    for out, lab in zip(outs, after):
        assert out.dtype == np.float32 and out.shape == (120, 150, 3)
        np.testing.assert_allclose(lab.mean(0)[:2], mu_t[:2], atol=4)  # gamut clipping costs a bit
    gap = lambda f, x: np.abs(f(x[0]) - f(x[1])).max()
    mean, std = (lambda x: x.mean(0)), (lambda x: x.std(0))
    assert gap(mean, after) < 0.2 * gap(mean, before)      # lightness gap of 13 units closed
    assert gap(std, after) < gap(std, before)


def test_block_conversion_equals_the_whole_image(monkeypatch):
    img = _he_like(2, 0.8)
    whole = stain.reinhard(img)
    monkeypatch.setattr(stain, "_BLOCK_PIXELS", 150 * 7)   # 7-row blocks
    np.testing.assert_allclose(stain.reinhard(img), whole, atol=1e-6)


def test_gray_or_flat_images_pass_unchanged_and_unknown_methods_are_refused():
    gray = np.random.default_rng(0).random((20, 20, 1)).astype(np.float32)
    np.testing.assert_array_equal(stain.reinhard(gray), gray)
    flat = np.full((10, 10, 3), 0.5, np.float32)
    np.testing.assert_array_equal(stain.reinhard(flat), flat)
    assert stain.apply_stain_norm(flat, "") is flat
    with pytest.raises(ValueError, match="stain_norm"):
        stain.apply_stain_norm(flat, "macenko")


def test_textdiff_applies_it_in_training_and_prediction_alike(monkeypatch):
    """The config switch reaches both paths: the same tile pixels in fit and predict."""
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.textdiff import cache, config
    from napari_textdiff.core.textdiff.model import TextDiffModel

    cfg = config.TextDiffConfig.preset("light", features="classic", stain_norm="reinhard",
                                       working_size=64, text_mode="none", scale=1.0)
    m = TextDiffModel.create(cfg, device="cpu")
    img = _he_like(3, 0.7)[:64, :64]
    tiles = cache.training_tiles(m, Example(img, np.zeros((64, 64), np.uint8)))
    np.testing.assert_allclose(tiles[0][0], stain.reinhard(img), atol=1e-6)
    seen = []
    real = m._predict_fn

    def spy(text):
        fn = real(text)
        return lambda batch: (seen.append(np.array(batch)), fn(batch))[1]

    monkeypatch.setattr(m, "_predict_fn", spy)
    m.predict_proba(img)
    np.testing.assert_allclose(seen[0][0], stain.reinhard(img), atol=1e-6)
    with pytest.raises(ValueError, match="stain_norm"):
        config.TextDiffConfig(stain_norm="macenko")


def test_statistics_over_a_mask_ignore_glass_and_given_statistics_are_used():
    """A slide normalised with one set of statistics: a piece of it normalised with the
    slide's statistics equals that piece of the normalised whole (no per-block shift)."""
    img = _he_like(4, 0.8)
    img[:, 100:] = 0.96                                        # glass on the right
    tissue = np.zeros(img.shape[:2], bool)
    tissue[:, :100] = True
    mu_all, _ = stain.lab_statistics(img)
    mu_t, sd_t = stain.lab_statistics(img, tissue)
    mu_ref, _ = stain.lab_statistics(img[:, :100])
    np.testing.assert_allclose(mu_t, mu_ref, atol=1e-4)          # glass left out
    assert mu_all[0] - mu_t[0] > 5                             # glass would brighten it
    whole = stain.reinhard(img, stats=(mu_t, sd_t))
    piece = stain.reinhard(img[:40], stats=(mu_t, sd_t))
    np.testing.assert_allclose(piece, whole[:40], atol=1e-6)
    assert np.abs(stain.reinhard(img[:40]) - whole[:40]).max() > 0.02   # own stats differ
    assert stain.lab_statistics(img, np.zeros_like(tissue)) is None
    with pytest.raises(ValueError, match="mask shape"):
        stain.lab_statistics(img, tissue[:10])

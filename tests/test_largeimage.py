"""Issue 18, large images: tiles normalised lazily, channels resized one at a time, the same
answer as the whole-image path, and bounded bytes per pixel (measured, not timed)."""
import tracemalloc

import numpy as np
import pytest
from skimage.transform import resize

from napari_textdiff.core import io
from napari_textdiff.core.largeimage import LazyImage, lazy_image, resize_lowmem
from napari_textdiff.core.normalize import normalize_image


@pytest.mark.parametrize("raw", [
    np.random.default_rng(0).integers(0, 256, (37, 51), dtype=np.uint8),
    np.random.default_rng(1).integers(0, 4096, (37, 51), dtype=np.uint16),     # 12-bit
    np.random.default_rng(2).integers(0, 256, (37, 51, 4), dtype=np.uint8),    # RGBA
])
@pytest.mark.parametrize("channels", [1, 3])
def test_lazy_tiles_equal_the_whole_image_normalisation(raw, channels):
    full = normalize_image(raw, channels=channels)
    lazy = LazyImage(raw, channels=channels)
    assert lazy.shape == full.shape
    np.testing.assert_array_equal(lazy[5:20, 7:40], full[5:20, 7:40])
    np.testing.assert_array_equal(np.asarray(lazy), full)


def test_float_outside_0_1_falls_back_to_the_whole_image_rule():
    a = np.linspace(-5, 5, 100, dtype=np.float32).reshape(10, 10)
    out = lazy_image(a, channels=1)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, normalize_image(a, channels=1))


@pytest.mark.parametrize("shape", [(9, 13), (80, 120)])
def test_resize_lowmem_is_skimage_resize(shape):
    rng = np.random.default_rng(0)
    rgb = rng.random((40, 60, 3), dtype=np.float32)
    ref = resize(rgb, shape, order=1, mode="reflect", preserve_range=True,
                 anti_aliasing=shape[0] < 40).astype(np.float32)
    np.testing.assert_allclose(resize_lowmem(rgb, shape), ref, rtol=0, atol=1e-6)
    gray = rng.integers(0, 256, (40, 60), dtype=np.uint8)
    lazy = LazyImage(gray, channels=3)
    ref = resize(normalize_image(gray, channels=3), shape, order=1, mode="reflect",
                 preserve_range=True, anti_aliasing=shape[0] < 40).astype(np.float32)
    np.testing.assert_allclose(resize_lowmem(lazy, shape), ref, rtol=0, atol=1e-6)


def test_load_lazy_memory_maps_and_keeps_planes_apart(tmp_path):
    import tifffile

    a = np.random.default_rng(0).integers(0, 256, (64, 48), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", a)
    lazy = io.load_lazy(tmp_path / "a.tif", channels=3)
    assert isinstance(lazy.raw, np.memmap)
    np.testing.assert_array_equal(np.asarray(lazy), io.load_image(tmp_path / "a.tif", 3))
    for i in range(2):       # one series per page: not memory-mapped as page 0
        tifffile.imwrite(tmp_path / "two.tif", np.full((8, 8), i, np.uint8), append=True)
    assert float(np.asarray(io.load_lazy(tmp_path / "two.tif", plane=1)).max()) == \
        pytest.approx(1 / 255)


def _tiny_resize_model(tmp_path):
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel
    from textdiff_testkit import make_tiny_backbone

    cfg = TextDiffConfig.preset("cpu", text_mode="none", working_size=32, steps=[10],
                                resize_to=32)
    return TextDiffModel.create(cfg, backbone=make_tiny_backbone(tmp_path / "bb"), device="cpu")


def test_large_gray_image_prediction_stays_under_6_bytes_per_pixel(tmp_path):
    """The whole-image path held over 30 bytes a pixel (a 3-channel float32 copy, skimage's
    float copy and its filtered copy); now one float32 channel filtered in place, then the
    probability map: 4 bytes a pixel at a time."""
    model = _tiny_resize_model(tmp_path)
    n = 1200
    gray = np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8)
    small = gray[:300, :200]
    ref = model.predict_proba(normalize_image(small, channels=3))     # the old input path
    np.testing.assert_allclose(model.predict_proba(small), ref, atol=1e-6)
    model.predict_proba(gray[:64, :64])                                # warm caches
    tracemalloc.start()
    prob = model.predict_proba(gray)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert prob.shape == (n, n) and prob.dtype == np.float32
    assert peak / gray.size < 6, f"{peak / gray.size:.1f} bytes per pixel"


def test_measure_large_image_reports_bytes_per_pixel_and_seconds_per_mp(tmp_path):
    from napari_textdiff.core.largeimage import measure_large_image

    rec = measure_large_image(_tiny_resize_model(tmp_path), side=512)
    assert 0 < rec["bytes_per_pixel"] < 6 and rec["seconds_per_mp"] > 0
    assert rec["megapixels"] == pytest.approx(0.26, abs=0.01)

"""Tiled prediction: coverage, exactness for pointwise functions, agreement with a whole-image
convolutional model away from borders, streaming memory, progress and errors."""
import tracemalloc

import numpy as np
import pytest

from napari_textdiff.core.tiling import blend_window, iter_tile_boxes, predict_tiled, tile_starts


def identity(batch):
    return batch.transpose(0, 3, 1, 2).copy()


@pytest.mark.parametrize("h,w,tile,overlap", [(1, 1, 64, 16), (300, 517, 64, 16),
                                               (64, 64, 64, 8), (65, 130, 64, 0),
                                               (10, 200, 32, 31)])
def test_boxes_cover_image_and_have_tile_size(h, w, tile, overlap):
    cover = np.zeros((h, w), int)
    for y0, x0, y1, x1 in iter_tile_boxes(h, w, tile, overlap):
        assert y1 - y0 == min(tile, h) and x1 - x0 == min(tile, w)
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    starts = tile_starts(w, tile, overlap)
    assert starts == sorted(set(starts)) and starts[-1] == max(w - tile, 0)
    # consecutive tiles overlap by at least `overlap`
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_bad_tile_arguments():
    with pytest.raises(ValueError, match="overlap"):
        list(iter_tile_boxes(10, 10, 8, 8))
    with pytest.raises(ValueError, match="tile"):
        list(iter_tile_boxes(10, 10, 0, 0))
    assert blend_window(16, 4).min() > 0


@pytest.mark.parametrize("shape", [(1, 1, 3), (300, 517, 3), (300, 517), (64, 64, 1),
                                   (17, 100, 2)])
def test_identity_is_reproduced_exactly(shape):
    rng = np.random.default_rng(0)
    im = rng.random(shape, dtype=np.float32)
    c = 1 if len(shape) == 2 else shape[2]
    out = predict_tiled(im, identity, tile=64, overlap=16, batch_size=3, out_channels=c)
    assert out.shape == (c,) + shape[:2] and out.dtype == np.float32
    ref = im[None] if len(shape) == 2 else np.moveaxis(im, -1, 0)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_pointwise_function_with_several_outputs():
    im = np.random.default_rng(1).random((90, 130, 3), dtype=np.float32)

    def fn(b):  # K=2: channel sum and its square
        s = b.sum(-1)
        return np.stack([s, s ** 2], axis=1)

    out = predict_tiled(im, fn, tile=32, overlap=8, out_channels=2)
    np.testing.assert_allclose(out[0], im.sum(-1), atol=1e-5)
    np.testing.assert_allclose(out[1], im.sum(-1) ** 2, atol=1e-4)


def test_matches_whole_image_convnet_in_the_interior():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    # receptive radius 3: three 3x3 convs with zero padding (translation-equivariant inside)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 3, padding=1)).eval()
    im = np.random.default_rng(2).random((150, 211, 3), dtype=np.float32)

    @torch.no_grad()
    def fn(b):
        return net(torch.from_numpy(b).permute(0, 3, 1, 2))

    with torch.no_grad():
        whole = net(torch.from_numpy(im).permute(2, 0, 1)[None])[0].numpy()
    calls = []
    tiled = predict_tiled(im, fn, tile=64, overlap=16, batch_size=4, out_channels=2,
                          progress=lambda d, t: calls.append((d, t)))
    scale = np.abs(whole).max()
    # default margin = overlap // 4 = 4 >= receptive radius 3: tile-edge pixels are taken
    # from the neighbour that sees them inside, and image-border sides are not tapered,
    # so the blend equals the whole-image output everywhere (float rounding only)
    assert np.abs(tiled - whole).max() < 1e-5 * scale
    # without the margin the blend mixes in tile-edge errors: close in the interior only
    loose = predict_tiled(im, fn, tile=64, overlap=16, out_channels=2, margin=0)
    err = np.abs(loose - whole)[:, 3:-3, 3:-3]
    assert 1e-5 * scale < err.max() < 0.1 * scale and err.mean() < 2e-3 * scale
    # progress reaches the total, monotonically
    total = len(list(iter_tile_boxes(150, 211, 64, 16)))
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_streams_from_memmap_into_memmap(tmp_path):
    h, w = 1024, 1536
    src = np.lib.format.open_memmap(tmp_path / "im.npy", mode="w+", dtype=np.float32,
                                    shape=(h, w, 3))
    for r in range(0, h, 256):
        src[r:r + 256] = (np.arange(r, min(r + 256, h))[:, None, None] % 7) / 7.0
    src.flush()
    im = np.load(tmp_path / "im.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32,
                                    shape=(1, h, w))
    tracemalloc.start()
    res = predict_tiled(im, lambda b: b[..., :1].transpose(0, 3, 1, 2), tile=128, overlap=16,
                        batch_size=4, out=out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res is out
    # output is 6 MB, input 18 MB: the job itself stays around a few batches of tiles
    assert peak < 4 * 2**20, peak
    np.testing.assert_allclose(out[0, ::97, ::89], im[::97, ::89, 0], atol=1e-6)


def test_errors_are_clear():
    im = np.zeros((40, 40, 1), np.float32)
    with pytest.raises(ValueError, match="predict_fn returned shape"):
        predict_tiled(im, lambda b: b, tile=32, overlap=8)
    with pytest.raises(ValueError, match="out has shape"):
        predict_tiled(im, identity, tile=32, overlap=8, out=np.zeros((1, 10, 10), np.float32))
    with pytest.raises(ValueError, match="expects"):
        predict_tiled(np.zeros((2, 3, 4, 5)), identity)

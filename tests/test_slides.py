"""Whole slides (issue 21): lazy pyramids, region and streamed whole-slide segmentation,
instances across block seams, QuPath GeoJSON both ways, tiled pyramidal label TIFF.

The slides are made here with tifffile: JPEG-compressed 256² tiles, two sub-resolutions,
0.25 µm/pixel in the resolution tags; bright "nuclei" (discs) on a dark background, some
centred exactly on the block seams the streamed run uses."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FakeModel

H0, W0, MPP = 2560, 3072, 0.25
SEAM = 512                      # level-0 seam spacing: block 256 at level 1


def _discs(h, w, seed=0):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (50, 40, 70)
    centers = [(y, x) for y in range(SEAM, h, SEAM) for x in range(SEAM, w, SEAM)]    # corners
    centers += [(SEAM, 200), (1000, SEAM * 2), (SEAM * 3, 2900)]                    # on a seam
    while len(centers) < 80:                               # apart: one nucleus per disc
        c = (int(rng.integers(30, h - 30)), int(rng.integers(30, w - 30)))
        if min(abs(c[0] - y) + abs(c[1] - x) for y, x in centers) > 60:
            centers.append(c)
    for c in centers:
        img[disk(c, 14, shape=(h, w))] = (225, 200, 235)
    return img, centers


def _write_slide(path, img, mpp=MPP, description=None):
    import tifffile

    kw = dict(tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(img, subifds=2, resolution=(1e4 / mpp, 1e4 / mpp),
                  resolutionunit="CENTIMETER", description=description, **kw)
        for k in (2, 4):
            tif.write(img[::k, ::k], subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    img, centers = _discs(H0, W0)
    p = _write_slide(tmp_path_factory.mktemp("slide") / "case.tif", img)
    return p, centers


@pytest.fixture
def fake_models(monkeypatch):
    from napari_textdiff.core import models

    monkeypatch.setitem(models.MODEL_KINDS, "fake", "conftest:FakeModel")
    monkeypatch.setattr(FakeModel, "fail_after", None)


def test_reader_opens_a_multiscale_layer_without_reading_level_0(slide, monkeypatch):
    import dask.array as da
    from tifffile.zarr import ZarrTiffStore

    from napari_textdiff._reader import get_reader

    keys = []
    orig = ZarrTiffStore.get

    async def spy(self, key, *a, **kw):
        keys.append(key)
        return await orig(self, key, *a, **kw)

    monkeypatch.setattr(ZarrTiffStore, "get", spy)
    [(data, kw, kind)] = get_reader(str(slide[0]))(str(slide[0]))
    assert kind == "image" and kw["multiscale"] and kw["rgb"]
    assert isinstance(data, list) and all(isinstance(a, da.Array) for a in data)
    assert [a.shape[:2] for a in data] == [(H0, W0), (H0 // 2, W0 // 2), (H0 // 4, W0 // 4)]
    chunks = [k for k in keys if k.split("/")[-1][:1].isdigit()]   # "LEVEL/Y.X.C" tiles
    assert not [k for k in chunks if k.startswith("0/")], keys
    assert kw["scale"] == (MPP, MPP) and kw["metadata"]["mpp"] == MPP     # MPP -> layer scale
    assert data[2][:8, :8].compute().shape == (8, 8, 3)                    # reads on demand
    assert any(k.startswith("2/") for k in keys if k.split("/")[-1][:1].isdigit())


def test_mpp_from_svs_and_ome_metadata(tmp_path):
    import tifffile

    from napari_textdiff.core.slides import open_slide

    img = np.zeros((512, 512, 3), np.uint8)
    svs = tmp_path / "a.svs"
    _write_slide(svs, img, mpp=50, description="Aperio Image Library v12\n512x512 |MPP = 0.2527")
    assert open_slide(svs).mpp == pytest.approx(0.2527)
    ome = tmp_path / "b.ome.tif"
    tifffile.imwrite(ome, img, tile=(256, 256), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    assert open_slide(ome).mpp == pytest.approx(0.5)
    plain = tmp_path / "c.tif"
    tifffile.imwrite(plain, img, tile=(256, 256), photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH", metadata=None)
    assert open_slide(plain).mpp is None          # 72 dpi is not a microscope's pixel size


def test_region_mask_equals_segmenting_the_same_pixels(slide, tiny_textdiff_path):
    from napari_textdiff.core.models import load_model
    from napari_textdiff.core.prediction import iter_predict, probability_to_labels
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    model = load_model(tiny_textdiff_path, device="cpu")
    s = open_slide(slide[0])
    x, y, w, h = 500, 490, 70, 60
    res = run(iter_segment_slide(model, s, "dense nuclei", region=(x, y, w, h), threshold=0.5))
    assert res.level == 0 and res.level0().shape == (h, w)
    crop = s.read(0, y, x, y + h, x + w)
    prob = run(iter_predict(model, crop, "dense nuclei"))
    np.testing.assert_array_equal(res.level0(), probability_to_labels(prob, 0.5, False))


def _instances_match(a, b):
    """Same objects: every object of a overlaps exactly one object of b (IoU > 0.9)."""
    fg = (a > 0) | (b > 0)
    pairs = {}
    for i, j in zip(a[fg].tolist(), b[fg].tolist()):
        pairs[(i, j)] = pairs.get((i, j), 0) + 1
    for i in np.unique(a[a > 0]):
        best = max((n for (p, q), n in pairs.items() if p == i and q), default=0)
        union = (a == i).sum() + (b == [q for (p, q), n in pairs.items()
                                        if p == i and n == best][0]).sum() - best if best else 1
        assert best / union > 0.9, f"object {i} split or lost"
    assert len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_objects_on_block_seams_get_one_id(slide, tmp_path):
    from napari_textdiff.core.instances import binary_to_instances
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    s = open_slide(slide[0])
    res = run(iter_segment_slide(FakeModel(1.0, channels=3), s, None, level=1, threshold=0.5,
                                 instances=True, block=256, workdir=tmp_path))
    try:
        assert isinstance(res.labels, np.memmap)           # streamed, not one array
        lab = np.asarray(res.labels)
        for cy, cx in slide[1]:                             # each seam disc: exactly one id
            ids = np.unique(lab[cy // 2 - 5:cy // 2 + 6, cx // 2 - 5:cx // 2 + 6])
            assert len(ids[ids > 0]) == 1, (cy, cx, ids)
        whole = s.read(1, 0, 0, H0 // 2, W0 // 2)[..., 0] / 255.0 >= 0.5
        from napari_textdiff.core.wsi import _instance_split

        _instances_match(binary_to_instances(whole, min_size=2, min_distance=2, h=0.75), lab)
        assert res.objects == lab.max() == len(np.unique(lab)) - 1
        assert _instance_split(2.0)(whole).max() == res.objects
    finally:
        res.close()
    assert not list(tmp_path.iterdir())                    # the work files are gone


def test_cli_region_writes_the_region_mask_and_geojson_in_slide_coordinates(
        slide, fake_model_path, tmp_path):
    from napari_textdiff._reader import read_paths
    from napari_textdiff.cli import main
    from napari_textdiff.core.io import read_mask

    x, y, w, h = 900, 700, 400, 300
    gj = tmp_path / "cells.geojson"
    assert main(["segment", str(slide[0]), "--model", str(fake_model_path), "--region",
                 f"{x},{y},{w},{h}", "--instances", "--geojson", str(gj), "--out",
                 str(tmp_path / "o"), "--threshold", "0.3", "--no-progress"]) == 0
    mask = read_mask(tmp_path / "o" / "case_mask.tif", instances=True)
    assert mask.shape == (h, w)
    from napari_textdiff.core.io import load_lazy
    from napari_textdiff.core.models import load_model
    from napari_textdiff.core.prediction import iter_predict, probability_to_labels
    from napari_textdiff.core.progress import run

    plain = tmp_path / "crop.png"           # the same pixels as a plain image file
    import tifffile
    from PIL import Image

    Image.fromarray(tifffile.imread(slide[0])[y:y + h, x:x + w]).save(plain)
    model = load_model(fake_model_path)
    prob = run(iter_predict(model, load_lazy(plain, channels=model.channels)))
    np.testing.assert_array_equal(mask, probability_to_labels(prob, 0.3, True))
    fc = json.loads(gj.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == mask.max()
    f = fc["features"][0]
    assert f["properties"]["objectType"] == "detection"
    assert f["properties"]["classification"]["name"] == "Object"   # a model of no modality
    assert f["properties"]["measurements"]["Area px"] > 0
    pts = np.array([p for ft in fc["features"] for p in ft["geometry"]["coordinates"][0]])
    assert pts[:, 0].min() >= x and pts[:, 0].max() <= x + w      # level-0 slide pixels
    assert pts[:, 1].min() >= y and pts[:, 1].max() <= y + h
    # round trip: the reader turns the polygons into labels at their slide position
    [(lab, kw, kind)] = read_paths(str(gj))
    assert kind == "labels" and kw["scale"] == (1, 1)
    ty, tx = (int(v) for v in kw["translate"])
    back = np.zeros((h, w), bool)
    back[ty - y:ty - y + lab.shape[0], tx - x:tx - x + lab.shape[1]] = lab > 0
    np.testing.assert_array_equal(back, mask > 0)
    assert len(np.unique(lab)) - 1 == mask.max()


def test_whole_slide_streamed_to_a_tiled_pyramidal_label_tiff(slide, tmp_path, monkeypatch):
    import tifffile

    from napari_textdiff.cli import _inputs
    from napari_textdiff.core.labelpyramid import write_label_pyramid
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    s = open_slide(slide[0])
    events = []
    res = run(iter_segment_slide(FakeModel(1.0, channels=3), s, None, threshold=0.5, level=1,
                                 instances=True, block=512, tissue=True),
              callback=events.append)
    try:
        assert res.region == (0, 0, W0, H0)
        assert {e.stage for e in events} == {"predict", "instances"}
        out = write_label_pyramid(tmp_path / "case_mask.tif", res, tile=256, min_size=256)
        with tifffile.TiffFile(out) as t:
            levels = t.series[0].levels
            assert [lv.shape for lv in levels][0] == (H0, W0) and len(levels) >= 2
            assert t.pages[0].is_tiled and t.pages[0].tilewidth == 256
            np.testing.assert_array_equal(levels[0].asarray()[::7, ::7],
                                          res.level0()[::7, ::7].astype(np.uint32))
    finally:
        res.close()
    # the napari writer takes the same path for big labels and the reader reopens them
    from napari_textdiff._reader import read_paths
    from napari_textdiff._writer import write_labels

    big = np.zeros((4200, 4100), np.int32)
    big[100:200, 300:400] = 7
    paths = write_labels(str(tmp_path / "big.tif"), big, {"name": "big_labels",
                                                          "metadata": {"mpp": 0.5}})
    [(data, kw, kind)] = read_paths(paths[0])
    assert kind == "labels" and kw["multiscale"] and kw["scale"] == (0.5, 0.5)
    assert int(data[0][150, 350].compute()) == 7


def test_segment_modality_expands_folders_and_skips_masks(tmp_path, modality_models, capsys):
    from PIL import Image

    from napari_textdiff.cli import main

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{n}.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(d / "a_mask.png")
    (d / "a.png.json").write_text('{"description": "x"}')
    assert main(["segment", str(d), "--modality", "histology", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threshold"] == pytest.approx(0.55)      # the bundled model's own
    assert summary["model"].endswith("histology.safetensors")
    assert sorted(r["image"].split("/")[-1] for r in summary["images"]) == ["a.png", "b.png"]
    assert all("instances" in r for r in summary["images"])  # histology splits nuclei


def test_bad_slide_inputs_name_the_file(slide, tmp_path, fake_model_path, fake_models):
    from napari_textdiff.cli import main
    from napari_textdiff.core.geojson import GeoJSONError, read_geojson
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import SlideError, open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    cut = tmp_path / "cut.svs"
    cut.write_bytes(slide[0].read_bytes()[:4000])
    with pytest.raises((SlideError, ValueError), match="cut.svs"):
        open_slide(cut).read(0, 0, 0, 256, 256)
    with pytest.raises(ValueError, match="outside the slide"):
        run(iter_segment_slide(FakeModel(), open_slide(slide[0]), region=(W0 + 5, 0, 10, 10)))
    assert main(["segment", str(slide[0]), "--model", str(fake_model_path), "--region",
                 "1,2,3", "--out", str(tmp_path / "o")]) == 2
    pts = tmp_path / "points.geojson"
    pts.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}]}))
    with pytest.raises(GeoJSONError, match="points.geojson"):
        read_geojson(pts)


def test_stop_returns_none_and_removes_work_files(slide, tmp_path):
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    calls = []
    res = run(iter_segment_slide(FakeModel(1.0, channels=3), open_slide(slide[0]), level=1,
                                 instances=True, block=256, workdir=tmp_path,
                                 should_stop=lambda: calls.append(1) or len(calls) > 3))
    assert res is None
    assert not list(tmp_path.iterdir())


def test_tissue_detection_skips_glass(tmp_path):
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import iter_segment_slide

    img = np.full((1024, 1024, 3), 245, np.uint8)             # glass
    img[:400, :400] = (200, 120, 180)                          # tissue in one corner only
    img[100:130, 100:130] = (250, 60, 200)                     # a bright-red "nucleus"
    s = open_slide(_write_slide(tmp_path / "glass.tif", img))
    events = []
    res = run(iter_segment_slide(FakeModel(1.0, channels=3), s, level=0, threshold=0.97,
                                 block=256, tissue=True), callback=events.append)
    skipped = [e for e in events if "(background)" in e.message]
    assert len(skipped) == 16 - 4                              # only the tissue blocks ran
    lab = res.level0()
    assert lab[115, 115] == 1 and lab[600:, 600:].max() == 0
    res.close()


class _StainModel(FakeModel):
    """A stain-normalising model: its probability is the normalised image's red channel,
    so the statistics each block was normalised with show up in the mask."""

    class config:                       # noqa: N801 - read like a model's config
        stain_norm = "reinhard"
        scale = 1.0

    def __init__(self):
        super().__init__(1.0, channels=3)
        self.seen = []

    def iter_proba(self, image, text=None, *, tiled=True, device=None, should_stop=None,
                   name="", stain_stats=None):
        from napari_textdiff.core.progress import Progress
        from napari_textdiff.core.stain import apply_stain_norm

        self.seen.append(stain_stats)
        yield Progress("predict", 1, 1, message=name)
        return apply_stain_norm(np.asarray(image, np.float32), "reinhard", stain_stats)[..., 0]


def _smoothed_pyramid_slide(path, img):
    """Sub-resolutions made by block means, as scanners' pyramids are (smoothed, unlike
    ``img[::k]``): the colour spread shrinks level by level."""
    import tifffile

    kw = dict(tile=(256, 256), compression="zlib", photometric="rgb", metadata=None)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(img, subifds=2, resolution=(1e4 / MPP, 1e4 / MPP),
                  resolutionunit="CENTIMETER", **kw)
        for k in (4, 16):
            h, w = img.shape[0] // k, img.shape[1] // k
            small = img[:h * k, :w * k].reshape(h, k, w, k, 3).mean((1, 3)).round()
            tif.write(small.astype(np.uint8), subfiletype=1, **kw)
    return path


def test_a_streamed_slide_is_stain_normalised_with_one_set_of_tissue_statistics(tmp_path):
    """Every block gets the slide's statistics, measured over tissue at the working scale
    (not on the smoothed coarse level, whose colour spread is far too small), not its own:
    a block of glass with a little tissue is not stretched to look like H&E."""
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.stain import lab_statistics, reinhard
    from napari_textdiff.core.wsi import iter_segment_slide, slide_stain_statistics

    rng = np.random.default_rng(0)
    img = np.full((1024, 1024, 3), 242, np.uint8)              # glass
    img[:700, :700] = (170, 90, 150)                           # tissue, pixel-level texture
    img[:700, :700] += rng.integers(0, 70, (700, 700, 3), dtype=np.uint8)
    s = open_slide(_smoothed_pyramid_slide(tmp_path / "he.tif", img))
    model = _StainModel()
    res = run(iter_segment_slide(model, s, level=0, threshold=0.5, block=256))
    assert len(model.seen) == 16
    stats = slide_stain_statistics(s, (0, 0, 1024, 1024), 0, 1.0)
    for got in model.seen:                                     # one set, the slide's
        np.testing.assert_allclose(got[0], stats[0]), np.testing.assert_allclose(got[1], stats[1])
    mu_t, sd_t = lab_statistics(img[:700, :700].astype(np.float32) / 255)
    np.testing.assert_allclose(stats[0], mu_t, atol=1.5)       # glass left out
    np.testing.assert_allclose(stats[1], sd_t, rtol=0.1)       # the full spread, not the coarse
    top = np.asarray(s.read(2, 0, 0, 40, 40), np.float32) / 255
    assert lab_statistics(top)[1][0] < 0.6 * sd_t[0]           # ... one the last level shows
    pixels = np.asarray(s.read(0, 0, 0, 1024, 1024), np.float32) / 255
    whole = reinhard(pixels, stats=stats)[..., 0] >= 0.5      # the slide normalised at once
    np.testing.assert_array_equal(res.level0() > 0, whole)    # block by block: no seams
    own = reinhard(pixels[640:896, 640:896])[..., 0] >= 0.5    # a mostly-glass block alone
    assert (own != whole[640:896, 640:896]).mean() > 0.02
    res.close()


def test_the_coarse_view_subsamples_in_bounded_strips(slide):
    """A large area on a level without enough pyramid: read in strips, subsampled to the pixel
    budget, with the downsample that maps it back (the tissue mask's indexing relies on it)."""
    from napari_textdiff.core.slides import open_slide
    from napari_textdiff.core.wsi import _coarse_view

    s = open_slide(slide[0])
    full, f1 = _coarse_view(s, (0, 0, H0, W0), 0)
    small, f2 = _coarse_view(s, (0, 0, H0, W0), 0, max_pixels=20_000, read_bytes=4 * 640 * 8)
    step = round(f2 / f1)
    assert step > 1 and small.shape[0] * small.shape[1] <= 1.5 * 20_000
    np.testing.assert_array_equal(small, full[::step, ::step])

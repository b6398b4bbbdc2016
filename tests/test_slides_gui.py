"""Slides in napari without Qt (ViewerModel): the field of view and drawn shapes become
level-0 regions, and the region's labels land exactly over the slide (µm scale)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import FakeModel
from test_slides import MPP, _discs, _write_slide


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    img, centers = _discs(1536, 1792, seed=3)
    return _write_slide(tmp_path_factory.mktemp("gslide") / "g.tif", img), img, centers


def _viewer_with(path):
    from napari.components import ViewerModel

    from napari_textdiff._reader import read_paths

    v = ViewerModel()
    [(data, kw, _kind)] = read_paths(str(path))
    return v, v.add_image(data, **kw)


def test_shapes_and_view_become_level0_regions(small_slide):
    from napari_textdiff.widgets.region import shape_regions, view_region

    v, layer = _viewer_with(small_slide[0])
    assert tuple(layer.scale[-2:]) == (MPP, MPP)
    shapes = v.add_shapes([np.array([[100, 50], [100, 150], [200, 150], [200, 50]]) * 1.0],
                          shape_type="polygon")              # world units: µm
    [(region, poly)] = shape_regions(shapes, layer)
    assert region == (200, 400, 400, 400)                    # x, y, w, h in level-0 pixels
    assert poly[:, 0].min() == 200 and poly[:, 1].max() == 800
    layer.corner_pixels = np.array([[10, 20], [60, 90]])     # as the canvas sets it
    layer._data_level = 2                                    # the 4x level is on screen
    assert view_region(layer) == (80, 40, 284, 204)


def test_region_job_labels_sit_over_the_slide(small_slide):
    from napari_textdiff.core.progress import run
    from napari_textdiff.widgets.region import add_region_labels, region_job

    v, layer = _viewer_with(small_slide[0])
    x, y, w, h = 300, 260, 500, 400
    poly = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)
    r = run(region_job(lambda: FakeModel(1.0, channels=3), small_slide[0], "g",
                       region=(x, y, w, h), polygon=poly, threshold=0.5, split=True))
    lab_layer = add_region_labels(v, layer, r)
    img = small_slide[1]
    for cy, cx in small_slide[2]:
        if y + 20 < cy < y + h - 20 and x + 20 < cx < x + w - 20:
            world = layer.data_to_world((cy, cx))
            iy, ix = np.round(lab_layer.world_to_data(world)).astype(int)
            assert lab_layer.data[iy, ix] > 0, (cy, cx)      # a nucleus centre is labelled
            assert img[cy, cx, 0] > 200
    assert lab_layer.metadata["mpp"] == MPP
    assert r.objects == len(np.unique(r.labels)) - 1


def test_resolve_area_for_the_segment_panel(small_slide):
    from napari_textdiff.widgets.region import resolve_area

    v, layer = _viewer_with(small_slide[0])
    assert resolve_area(v, layer, "slide") == (None, None)
    with pytest.raises(ValueError, match="Shapes layer"):
        resolve_area(v, layer, "shapes")
    v.add_shapes([np.array([[10.0, 10.0], [10.0, 20.0], [30.0, 20.0], [30.0, 10.0]])],
                  shape_type="rectangle")
    region, poly = resolve_area(v, layer, "shapes")
    assert region == (40, 40, 40, 80) and poly.shape == (4, 2)


@pytest.mark.gui
def test_segment_panel_streams_a_drawn_region_of_a_slide(small_slide, viewer, qtbot,
                                                          tiny_mgcc_path, monkeypatch):
    """The Segment panel never reads a slide's level 0 whole: a slide layer goes through
    widgets.region (here a rectangle drawn in a Shapes layer)."""
    from napari_textdiff._reader import read_paths
    from napari_textdiff.widgets.segment import SegmentWidget

    import dask.array as da

    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    viewer.add_image(np.zeros((20, 20), np.uint8), name="plain")
    assert not w.slide_area_choice.isEnabled()            # a plain image has no slide area
    [(data, kw, _)] = read_paths(str(small_slide[0]))
    layer = viewer.add_image(data, **kw)
    assert w.slide_area_choice.isEnabled()                # a slide is open
    viewer.add_shapes([np.array([[50.0, 60.0], [50.0, 110.0], [90.0, 110.0], [90.0, 60.0]])],
                      shape_type="rectangle")
    w.set_model_file(tiny_mgcc_path)
    w.device.setCurrentText("cpu")
    assert w.slide_area_choice.isEnabled()                # with its shapes selected too
    w.slide_area = "shapes"
    monkeypatch.setattr(da.Array, "__array__", lambda *a, **k: pytest.fail("level read whole"))
    assert w.run([layer])
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert w.last_error is None, w.last_error
    lab = viewer.layers[f"{layer.name}_labels"]
    assert lab.data.shape == (160, 200)                      # 40x50 µm at 0.25 µm/pixel
    np.testing.assert_allclose(lab.translate, (50.0, 60.0))   # over the slide, in µm
    assert "objects" in w.status.text()


def test_a_slide_beside_plain_images_in_the_docked_loop(small_slide, viewer, qtbot,
                                                        tiny_mgcc_path):
    """Region labels are predictions (not offered as corrections, replaced without asking until
    a person paints, then asked); "all images" takes the plain images only (a slide is never
    read whole as if it were one); a corrected region trains on its own slide pixels, apart
    from whole images."""
    from napari_textdiff._reader import read_paths
    from conftest import blob_image
    from qtpy.QtCore import Qt
    from test_gui_loop import dock, paint_correction, wait_idle

    seg, ft = dock(viewer, "Segment"), dock(viewer, "Fine-tune")
    seg.set_model_file(tiny_mgcc_path)
    seg.device.setCurrentText("cpu")
    seg.split.setChecked(False)
    [(data, kw, _)] = read_paths(str(small_slide[0]))
    slide = viewer.add_image(data, **kw)
    viewer.add_shapes([np.array([[50.0, 60.0], [50.0, 110.0], [90.0, 110.0], [90.0, 60.0]])],
                      shape_type="rectangle")
    seg.slide_area = "shapes"
    asked = []
    seg.confirm = lambda title, text: asked.append(text) or False
    assert seg.run([slide])
    wait_idle(qtbot, seg)
    lab = viewer.layers[f"{slide.name}_labels"]
    ft.refresh()
    assert ft.checked_pairs() == []            # a fresh region prediction is no correction
    assert seg.run([slide]) and not asked      # replaced without asking
    wait_idle(qtbot, seg)
    lab.brush_size = 10
    lab.paint((5, 5), 1)                       # a person's edit: now it is asked, and kept
    before = np.array(lab.data)
    assert not seg.run([slide]) and len(asked) == 1
    np.testing.assert_array_equal(lab.data, before)
    # plain images beside the slide: "all images" and Fine-tune take those only
    for name, seed in (("p1", 1), ("p2", 2)):
        img, _ = blob_image(40, 40, rgb=True, seed=seed)
        viewer.add_image(img, name=name)
    seg.all_images.setChecked(True)
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert seg.last_error is None, seg.last_error
    assert "p1_labels" in viewer.layers and "p2_labels" in viewer.layers
    paint_correction(viewer.layers["p1_labels"], ((14, 14),))
    ft.refresh()
    rows = {ft.pairs.item(i).data(Qt.UserRole): ft.pairs.item(i)
            for i in range(ft.pairs.count())}
    assert set(ft.checked_pairs()) == {("p1", "p1_labels"), (slide.name, lab.name)}
    assert rows[(slide.name, lab.name)].text().endswith("(corrected)")
    assert not ft.start() and not ft.running     # a region and a whole image: apart, please
    from napari_textdiff.widgets.region import region_training_pixels

    pixels, labels, scale = region_training_pixels(slide, lab)   # what training will see
    y0, x0, y1, x1 = lab.metadata["slide_box"]
    assert labels.shape == pixels.shape[:2] == (y1 - y0, x1 - x0) and scale > 0
    if lab.metadata["slide_level"] == 0:
        diff = np.abs(pixels.astype(int) - small_slide[1][y0:y1, x0:x1].astype(int))
        assert diff.mean() < 2                 # the same pixels, up to JPEG tiles
    rows[("p1", "p1_labels")].setCheckState(Qt.Unchecked)   # the corrected region alone
    ft.resegment.setChecked(False)
    ft.lr.setValue(0.1)
    w0 = {k: v.clone() for k, v in ft.session.ensure_model().net.state_dict().items()}
    shape_before = lab.data.shape
    ft.start_button.click()
    wait_idle(qtbot, ft)
    assert ft.last_error is None, ft.last_error
    assert ft.session.finetunes.get(ft.session.current_key()) == 1
    w1 = ft.session.model.net.state_dict()
    assert any(not (w0[k] == w1[k]).all() for k in w0)      # it trained on the region
    assert lab.data.shape == shape_before and f"{slide.name}_labels (old)" not in viewer.layers
    assert asked == [asked[0]]                 # the slide's corrected labels: never asked again

"""The loop as napari runs it: every panel docked through ``add_plugin_dock_widget`` (so each
gets its own ``PublicOnlyProxy`` of the viewer), driven through its visible buttons."""
import numpy as np
import pytest

from conftest import SlowTiledModel, blob_image

pytestmark = pytest.mark.gui

PLUGIN = "napari-textdiff"


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def paint_correction(lab, centers):
    """The eraser and the brush, as a person corrects: clear the layer, paint disks."""
    lab.brush_size = 80
    lab.paint((20, 20), 0)
    lab.brush_size = 14
    for c in centers:
        lab.paint(c, 1)


def wait_idle(qtbot, w, timeout=60000):
    try:
        qtbot.waitUntil(lambda: not w.running, timeout=timeout)
    except Exception:
        print("STATUS", w.status.text(), "PROGRESS", w.progress.format(), w.session.job)
        raise


def segment_cells(viewer, qtbot, model_path):
    """Segment and Fine-tune docked, one image "cells" segmented with ``model_path``."""
    seg, ft = dock(viewer, "Segment"), dock(viewer, "Fine-tune")
    seg.set_model_file(model_path)
    seg.split.setChecked(False)
    img, _ = blob_image()
    viewer.add_image(img, name="cells")
    seg.run_button.click()
    wait_idle(qtbot, seg)
    return seg, ft


def test_panels_share_one_session_though_napari_wraps_the_viewer(viewer):
    image, seg = dock(viewer, "Image and description"), dock(viewer, "Segment")
    ft, syn = dock(viewer, "Fine-tune"), dock(viewer, "Synthetic preview")
    assert image.session is seg.session is ft.session is syn.session
    assert seg.viewer is viewer                          # the real viewer behind the proxy


def test_xray_modality_segments_with_the_xray_model(viewer, qtbot, modality_models):
    image, seg = dock(viewer, "Image and description"), dock(viewer, "Segment")
    assert seg.threshold.value() == pytest.approx(0.55)       # histology file's threshold
    image.modality.setCurrentIndex(image.modality.findData("xray"))
    assert seg.threshold.value() == pytest.approx(0.8)        # the X-ray file's own threshold
    assert not seg.split.isChecked()
    img, _ = blob_image(40, 40)
    layer = viewer.add_image(img, name="chest")
    viewer.layers.selection.active = layer
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert seg.last_error is None, seg.last_error
    assert seg.session.model_key[0].endswith("xray.safetensors")
    lab = viewer.layers["chest_labels"]
    assert lab.metadata["modality"] == "xray"
    assert "xray.safetensors" in seg.status.text()


def test_segment_after_finetune_uses_the_finetuned_model(viewer, qtbot, modality_models):
    seg, ft = dock(viewer, "Segment"), dock(viewer, "Fine-tune")
    seg.split.setChecked(False)
    seg.device.setCurrentText("cpu")
    a, _ = blob_image(40, 40, rgb=True, seed=1)
    b, _ = blob_image(40, 40, centers=((20, 20),), rgb=True, seed=2)
    la, lb = viewer.add_image(a, name="a"), viewer.add_image(b, name="b")
    seg.all_images.setChecked(True)
    seg.run_button.click()
    wait_idle(qtbot, seg)
    before = np.array(viewer.layers["b_labels"].data)
    paint_correction(viewer.layers["a_labels"], ((14, 14), (34, 32)))
    ft.refresh()
    assert ft.checked_pairs() == [("a", "a_labels")]
    ft.epochs.setValue(40)
    ft.lr.setValue(0.3)                 # the default trains the output layer: move it far
    ft.resegment.setChecked(False)
    ft.start_button.click()
    wait_idle(qtbot, ft)
    assert ft.last_error is None, ft.last_error
    assert "fine-tuned ×1" in ft.model_info.text()
    assert "fine-tuned ×1" in seg.model_info.text()      # one name in every panel
    viewer.layers.selection.active = lb
    seg.all_images.setChecked(False)
    seg.run_button.click()
    wait_idle(qtbot, seg)
    after = np.array(viewer.layers["b_labels"].data)
    assert not np.array_equal(before, after)
    assert "fine-tuned ×1" in seg.status.text()


def test_corrected_only_after_a_person_paints(viewer, qtbot, fake_model_path):
    seg, ft = segment_cells(viewer, qtbot, fake_model_path)
    lab = viewer.layers["cells_labels"]

    def row():
        ft.refresh()
        return ft.pairs.item(0).text(), ft.checked_pairs()

    assert row() == ("cells  ↔  cells_labels  (prediction, not corrected)", [])
    seg.threshold.setValue(0.3)                      # a new prediction is no correction
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert "not corrected" in row()[0]
    lab.undo()                                       # nor is undoing one
    assert "not corrected" in row()[0]
    lab.paint((10, 10), 1)                           # the brush is
    assert row() == ("cells  ↔  cells_labels  (corrected)", [("cells", "cells_labels")])


def test_ground_truth_is_listed_apart_and_never_a_prediction_target(viewer, qtbot,
                                                                    fake_model_path):
    seg, ft = dock(viewer, "Segment"), dock(viewer, "Fine-tune")
    viewer.open_sample(PLUGIN, "histology")
    assert viewer.layers.selection.active.name == "histology_sample"
    ft.refresh()
    assert ft.pairs.item(0).text().endswith("(ground truth)") and ft.checked_pairs() == []
    seg.set_model_file(fake_model_path)
    asked = []
    seg.confirm = lambda *a: asked.append(a) or True
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert asked == []                               # ground truth is not "edited" work
    assert "histology_sample_labels" in viewer.layers
    gt = viewer.layers["histology_sample ground truth"]
    assert gt.metadata["ground_truth"]


def test_stop_mid_image_leaves_the_labels_unchanged(viewer, qtbot, slow_model_path,
                                                    monkeypatch):
    seg = dock(viewer, "Segment")
    seg.set_model_file(slow_model_path)
    seg.split.setChecked(False)
    img, _ = blob_image()
    viewer.add_image(img, name="cells")
    seg.threshold.setValue(0.3)
    seg.run_button.click()
    wait_idle(qtbot, seg)
    first = np.array(viewer.layers["cells_labels"].data)
    monkeypatch.setattr(SlowTiledModel, "tiles", 400)
    monkeypatch.setattr(SlowTiledModel, "tile_delay", 0.02)
    seg.threshold.setValue(0.05)
    seg.run_button.click()
    qtbot.waitUntil(lambda: "predict" in seg.progress.format(), timeout=20000)
    assert seg.progress.maximum() == 400                 # tiles done / total on the bar
    seg.stop_button.click()
    wait_idle(qtbot, seg, timeout=5000)
    np.testing.assert_array_equal(viewer.layers["cells_labels"].data, first)
    assert "stopped" in seg.status.text() and "left as before" in seg.status.text()


def test_one_job_per_viewer_across_panels(viewer, qtbot, slow_model_path, monkeypatch):
    seg, syn, ft = dock(viewer, "Segment"), dock(viewer, "Synthetic preview"), \
        dock(viewer, "Fine-tune")
    seg.set_model_file(slow_model_path)
    monkeypatch.setattr(SlowTiledModel, "tiles", 400)
    monkeypatch.setattr(SlowTiledModel, "tile_delay", 0.02)
    img, _ = blob_image()
    viewer.add_image(img, name="cells")
    seg.run_button.click()
    qtbot.waitUntil(lambda: seg.session.job == "Segmentation", timeout=10000)
    syn.ldm_dir.setText("/nonexistent")
    assert syn.generate() is False and not syn.running
    assert not seg.run_button.isEnabled()
    seg.stop_button.click()
    wait_idle(qtbot, seg, timeout=5000)
    assert seg.session.job == "" and seg.run_button.isEnabled()


def test_closing_the_viewer_mid_job_stops_it_quietly(make_napari_viewer, qtbot,
                                                     slow_model_path, monkeypatch):
    v = make_napari_viewer()
    seg = dock(v, "Segment")
    seg.set_model_file(slow_model_path)
    monkeypatch.setattr(SlowTiledModel, "tiles", 10_000)
    monkeypatch.setattr(SlowTiledModel, "tile_delay", 0.01)
    img, _ = blob_image()
    v.add_image(img, name="cells")
    seg.run_button.click()
    qtbot.waitUntil(lambda: "predict" in seg.progress.format(), timeout=20000)
    control, session = seg.control, seg.session
    worker = control.worker
    v.close()
    # the thread ends (a bound, not a timing: the close latency is in benchmarks/gui_loop.py)
    qtbot.waitUntil(lambda: not worker.is_running and control.dead, timeout=15000)
    assert control.stop and not session.busy.locked()


def test_all_panels_fit_a_1366x768_screen(viewer):
    panel = dock(viewer, "TextDiff (all panels)")
    assert panel.minimumSizeHint().height() <= 600
    assert {panel.tabs.tabText(i) for i in range(panel.tabs.count())} == {
        "Image", "Segment", "Fine-tune", "Synthetic"}
    assert panel.segment.session is panel.image_panel.session


def test_squeezed_docks_scroll_instead_of_drawing_rows_over_each_other(viewer, qtbot):
    """Segment and Fine-tune docked one above the other on a short window: napari lets a dock
    shrink to 50 px; the panels scroll, so the fine-tune status never covers the loss plot."""
    from qtpy.QtCore import QPoint

    seg = dock(viewer, "Segment")
    ft_dock, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    viewer.window.show()
    ft_dock.setMaximumHeight(300)           # as a person drags the dock splitter up
    ft.status.setText("fine-tune finished (1 image(s)); " + "a long note " * 30)
    for x in range(5):
        ft.plot.add("loss", x, 1.0 / (x + 1))
    qtbot.wait(200)

    def rect(w):
        top = w.mapTo(ft, QPoint(0, 0))
        return top.y(), top.y() + w.height()

    rows = [ft.progress, ft.plot, ft.status, ft.model_info, ft.save_button]
    spans = [rect(w) for w in rows]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert ft.status.height() >= ft.status.heightForWidth(ft.status.width()) - 1
    assert ft.plot.height() >= ft.plot.minimumHeight()
    assert ft.scroll.verticalScrollBar().maximum() > 0       # the rest is a scroll away
    assert seg.scroll.widget().isAncestorOf(seg.run_button)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_saved_labels_keep_the_description_one_sidecar_per_file(viewer, qtbot, fake_model_path,
                                                                 tmp_path, suffix):
    seg = dock(viewer, "Segment")
    seg.set_model_file(fake_model_path)
    img, _ = blob_image()
    layer = viewer.add_image(img, name="cells", metadata={"description": "two round cells"})
    seg.run_button.click()
    wait_idle(qtbot, seg)
    viewer.layers.selection.active = layer
    out = tmp_path / f"cells{suffix}"
    written = seg.save_labels(out)
    assert written == [str(out), str(out) + ".json"]
    other = tmp_path / ("cells.png" if suffix == ".tif" else "cells.tif")
    assert not (tmp_path / (other.name + ".json")).exists()   # no shared sidecar
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    assert back.metadata["description"] == "two round cells"
    np.testing.assert_array_equal(back.data > 0, viewer.layers["cells_labels"].data > 0)


def test_diffusion_features_are_computed_once_for_segment_finetune_resegment(
        viewer, qtbot, tiny_textdiff_path):
    seg, ft = dock(viewer, "Segment"), dock(viewer, "Fine-tune")
    seg.set_model_file(tiny_textdiff_path)
    seg.device.setCurrentText("cpu")
    img, mask = blob_image(40, 40, rgb=True)
    layer = viewer.add_image(img, name="cells")
    seg.run_button.click()
    wait_idle(qtbot, seg)
    (memo,) = seg.session._memos.values()
    first = memo.stats()
    assert first["misses"] > 0 and first["hits"] == 0
    lab = viewer.layers["cells_labels"]
    lab.brush_size = 60
    lab.paint((20, 20), 0)
    lab.paint((14, 14), 1)
    ft.refresh()
    ft.epochs.setValue(2)
    ft.resegment.setChecked(False)
    ft.start_button.click()
    wait_idle(qtbot, ft)
    assert ft.last_error is None, ft.last_error
    viewer.layers.selection.active = layer
    seg.confirm = lambda *a: True                   # replace the corrected labels
    seg.run_button.click()
    wait_idle(qtbot, seg)
    after = memo.stats()
    assert after["misses"] == first["misses"]       # nothing recomputed for this image
    assert after["hits"] >= first["misses"]


def test_finetune_adapts_the_normalisation_layers_for_a_new_scanner(viewer, qtbot,
                                                                     modality_models):
    """MGCC: Adapt "to a new scanner" trains BatchNorm scales/shifts (+ the output layer) with
    its own epochs / learning rate; the convolution kernels stay as they were."""
    import torch

    image, seg = dock(viewer, "Image and description"), dock(viewer, "Segment")
    ft = dock(viewer, "Fine-tune")
    image.modality.setCurrentIndex(image.modality.findData("ultrasound"))
    assert not ft.adapt.isHidden() and ft.adapt.currentData() == "output"
    ft.adapt.setCurrentIndex(ft.adapt.findData("norm"))
    assert (ft.epochs.value(), ft.lr.value()) == (20, pytest.approx(2e-3))
    ft.adapt.setCurrentIndex(ft.adapt.findData("output"))
    assert ft.lr.value() == pytest.approx(3e-2)
    ft.adapt.setCurrentIndex(ft.adapt.findData("norm"))
    seg.split.setChecked(False)
    seg.device.setCurrentText("cpu")
    img, _ = blob_image(40, 40, seed=3)
    viewer.add_image(img, name="scan")
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert seg.last_error is None, seg.last_error
    before = {k: v.clone() for k, v in seg.session.model.net.state_dict().items()}
    paint_correction(viewer.layers["scan_labels"], ((14, 14), (30, 28)))
    ft.refresh()
    assert ft.checked_pairs() == [("scan", "scan_labels")]
    ft.epochs.setValue(3)
    ft.resegment.setChecked(False)
    ft.start_button.click()
    wait_idle(qtbot, ft)
    assert ft.last_error is None, ft.last_error
    assert ft.status.text().startswith("fine-tune finished (1 image(s))")
    assert "loading model" not in ft.status.text()      # a job's start is no note for the end
    net = ft.session.model.net
    after = net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    bn = {f"{n}.{p}" for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
          for p in ("weight", "bias")}
    assert changed & bn
    assert changed <= bn | {k for k in after if k.startswith("main_decoder.head.")}

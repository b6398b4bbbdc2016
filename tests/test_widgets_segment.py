"""Segment panel driven like a user: model file, threshold, Segment, undo, edited-labels guard."""
import numpy as np
import pytest

from conftest import FakeModel, blob_image

pytestmark = pytest.mark.gui


def _segment_widget(viewer):
    from napari_textdiff.widgets.segment import SegmentWidget

    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _wait(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def test_real_model_segments_in_a_worker_and_undo_restores(viewer, qtbot, tiny_mgcc_path):
    from napari_textdiff.core.models import load_model

    img, _ = blob_image()
    image = viewer.add_image(img, name="cells")
    w = _segment_widget(viewer)
    w.set_model_file(tiny_mgcc_path)
    w.device.setCurrentText("cpu")
    w.split.setChecked(False)
    ref = load_model(tiny_mgcc_path, device="cpu").predict_proba(
        img[..., None].astype(np.float32) / 255)
    t1 = float(np.quantile(ref, 0.3))           # thresholds that give different, non-empty masks
    t2 = float(np.quantile(ref, 0.7))
    w.threshold.setValue(round(t1, 2))
    viewer.layers.selection.active = image
    w.run_button.click()                        # the real thread worker
    assert w.running
    _wait(qtbot, w)
    assert w.last_error is None, w.last_error
    lab = viewer.layers["cells_labels"]
    assert lab.data.dtype == np.int32 and lab.data.shape == img.shape
    first = (ref >= w.threshold.value()).astype(np.int32)
    np.testing.assert_array_equal(lab.data, first)
    assert lab.metadata["source_image"] == "cells"
    assert "segmented 1 of 1" in w.status.text()

    # a second run updates the same layer in place, as one undoable step
    w.threshold.setValue(round(t2, 2))
    w.run_button.click()
    _wait(qtbot, w)
    second = (ref >= w.threshold.value()).astype(np.int32)
    assert viewer.layers["cells_labels"] is lab and len(viewer.layers) == 2
    np.testing.assert_array_equal(lab.data, second)
    assert not np.array_equal(first, second)
    lab.undo()
    np.testing.assert_array_equal(lab.data, first)
    lab.redo()
    np.testing.assert_array_equal(lab.data, second)


def test_corrections_are_not_overwritten_without_confirmation(viewer, fake_model_path):
    img, _ = blob_image()
    image = viewer.add_image(img, name="im")
    image.metadata["description"] = "two bright round cells"
    w = _segment_widget(viewer)
    w.synchronous = True
    w.set_model_file(fake_model_path)
    w.threshold.setValue(0.3)
    viewer.layers.selection.active = image
    assert w.run()
    lab = viewer.layers["im_labels"]
    pred = lab.data.copy()
    assert pred.sum() > 0 and lab.metadata["description"] == "two bright round cells"
    # the description reached the model (it uses text)
    assert w.session.model.texts[-1] == "two bright round cells"

    # the user paints a correction through napari's edit path
    idx = (np.array([0, 0, 1]), np.array([0, 1, 0]))
    lab.data_setitem(idx, 7)
    corrected = lab.data.copy()
    asked = []
    w.confirm = lambda title, text: asked.append(text) or False
    w.threshold.setValue(0.6)
    assert not w.run()
    assert asked and "im_labels" in asked[0]
    np.testing.assert_array_equal(lab.data, corrected)       # kept

    w.confirm = lambda title, text: True
    assert w.run()
    new = (img.astype(np.float32) / 255 * 0.5 >= 0.6).astype(np.int32)
    np.testing.assert_array_equal(lab.data, new)
    lab.undo()                                               # Ctrl-Z gives the correction back
    np.testing.assert_array_equal(lab.data, corrected)


def test_all_images_split_instances_and_stop(viewer, fake_model_path):
    for i in range(3):
        img, _ = blob_image(seed=i)
        viewer.add_image(img, name=f"img{i}")
    viewer.add_image(np.zeros((4, 8, 8), np.uint8), name="a 3-D stack")   # skipped
    w = _segment_widget(viewer)
    w.synchronous = True
    w.set_model_file(fake_model_path)
    w.threshold.setValue(0.3)
    w.split.setChecked(True)
    w.all_images.setChecked(True)
    assert w.run()
    for i in range(3):
        lab = viewer.layers[f"img{i}_labels"]
        assert sorted(np.unique(lab.data)) == [0, 1, 2]       # two separate cells
    assert "a 3-D stack_labels" not in viewer.layers

    # Stop after the first image: the others are left alone
    for i in range(3):
        viewer.layers.remove(f"img{i}_labels")
    seen = []
    w.progress.valueChanged.connect(lambda v: (seen.append(v), v >= 1 and w.request_stop()))
    assert w.run()
    assert "img0_labels" in viewer.layers and "img2_labels" not in viewer.layers
    assert "stopped" in w.status.text()


def test_missing_bundled_model_is_a_clear_error(viewer, qtbot):
    img, _ = blob_image()
    viewer.add_image(img, name="x")
    w = _segment_widget(viewer)
    w.synchronous = True
    assert "not installed" in w.model_choice.itemText(0)
    assert w.run()
    assert isinstance(w.last_error, FileNotFoundError)
    assert "No bundled Histology" in str(w.last_error)
    assert "x_labels" not in viewer.layers
    assert w.run_button.isEnabled() and not w.stop_button.isEnabled()


def test_modality_sets_defaults(viewer):
    from napari_textdiff.core.defaults import (default_model_path, default_threshold,
                                               stored_threshold)

    w = _segment_widget(viewer)
    w.session.set_modality("histology")
    assert w.split.isChecked()
    w.session.set_modality("ultrasound")
    assert not w.split.isChecked()
    assert w.threshold.value() == pytest.approx(default_threshold("ultrasound"), abs=0.005)
    w.session.set_modality("xray")              # the bundled X-ray head carries its own (0.85)
    bundled = default_model_path("xray")
    if bundled is not None:
        assert w.threshold.value() == pytest.approx(stored_threshold(bundled), abs=0.005)
        assert w.threshold.value() == pytest.approx(default_threshold("xray"), abs=0.005)
    assert "ultrasound_mgcc" in w.model_choice.itemText(0) or "not installed" in \
        w.model_choice.itemText(0)


def test_other_bundled_models_of_the_modality_are_offered(viewer, tmp_path, monkeypatch):
    """Ultrasound ships MGCC (default) and a TextDiff head: both are in the Model menu, and
    switching modality removes the other modality's extras."""
    for f in ("ultrasound_mgcc.safetensors", "ultrasound.safetensors",
              "histology.safetensors"):
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(tmp_path))
    w = _segment_widget(viewer)
    w.session.set_modality("ultrasound")
    items = [w.model_choice.itemText(i) for i in range(w.model_choice.count())]
    assert items[0] == "bundled: ultrasound_mgcc.safetensors"
    assert items[1] == "bundled, also: ultrasound.safetensors"
    w.model_choice.setCurrentIndex(1)
    assert w.session.source == str(tmp_path / "ultrasound.safetensors")
    w.session.set_modality("histology")
    items = [w.model_choice.itemText(i) for i in range(w.model_choice.count())]
    assert items == ["bundled: histology.safetensors"]


def test_a_chosen_model_brings_its_calibrated_threshold(viewer, tmp_path):
    import torch

    from napari_textdiff.core.calibration import set_threshold
    from napari_textdiff.core.mgcc.model import MGCCModel

    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=1 / 16, size=32)
    set_threshold(m, 0.3)
    m.save(tmp_path / "calibrated.safetensors")
    w = _segment_widget(viewer)
    w.threshold.setValue(0.8)
    w.set_model_file(tmp_path / "calibrated.safetensors")
    assert w.threshold.value() == pytest.approx(0.3) and w.session.threshold == pytest.approx(0.3)
    w.threshold.setValue(0.45)                  # the user can still override it
    assert w.session.threshold == pytest.approx(0.45)
    w.session.set_modality("xray")              # a modality change keeps the chosen file's
    assert w.session.source == str(tmp_path / "calibrated.safetensors")
    assert w.threshold.value() == pytest.approx(0.3)

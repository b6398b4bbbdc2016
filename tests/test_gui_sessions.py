"""One viewer, several images, modalities and jobs, as napari runs the plugin (panels docked
through ``add_plugin_dock_widget``, jobs in real worker threads): each job keeps the model it
started with, a failing job is reported and frees the viewer, and undo keeps corrections safe."""
import numpy as np
import pytest

from conftest import FakeModel, blob_image
from test_gui_loop import dock, paint_correction, segment_cells, wait_idle

pytestmark = pytest.mark.gui


def _segment_all(viewer, model_path, names=("a", "b")):
    """The Segment panel docked with ``model_path``, images ``names``; Segment all pressed."""
    seg = dock(viewer, "Segment")
    seg.set_model_file(model_path)
    seg.split.setChecked(False)
    for seed, name in enumerate(names, 1):
        img, _ = blob_image(seed=seed)
        viewer.add_image(img, name=name)
    seg.all_images.setChecked(True)
    seg.run_button.click()
    return seg


def _image(viewer, name, modality, seed, rgb):
    img, _ = blob_image(40, 40, rgb=rgb, seed=seed)
    return viewer.add_image(img, name=name, metadata={"modality": modality})


def test_two_textdiff_models_on_one_backbone_do_not_share_features_read_differently(
        tmp_path, qtbot):
    """Histology and X-ray heads share the bundled backbone but read it at other noise steps:
    the session's remembered features must not pass one model's features to the other."""
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel
    from napari_textdiff.widgets._session import Session
    from textdiff_testkit import make_tiny_backbone, make_tiny_bert

    bb, bert = str(make_tiny_backbone(tmp_path / "bb")), str(make_tiny_bert(tmp_path / "bert"))
    paths = {}
    for name, steps in (("one_step", [10]), ("three_steps", [10, 50, 90])):
        cfg = TextDiffConfig(working_size=32, tile_overlap=8, dim=16, heads=2, decoder=[16, 8],
                             steps=steps, max_length=12)
        m = TextDiffModel.create(cfg, backbone=bb, text_encoder=bert, device="cpu")
        paths[name] = tmp_path / f"{name}.safetensors"
        m.save(paths[name])
    a = paths["one_step"]
    b = paths["three_steps"]
    image = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    s = Session()
    ma, mb = s.ensure_model((str(a), "cpu")), s.ensure_model((str(b), "cpu"))
    assert ma.features.memo_key() != mb.features.memo_key()
    assert ma.features.fingerprint() == mb.features.fingerprint()     # one backbone
    ma.predict_proba(image, "nuclei")
    got = mb.predict_proba(image, "nuclei")          # a shared memo raised a shape error here
    from napari_textdiff.core.models import load_model

    fresh = load_model(b, device="cpu").predict_proba(image, "nuclei")
    np.testing.assert_allclose(got, fresh, atol=2e-3)
    # and back: the first model's features are recomputed, not the second's
    np.testing.assert_allclose(ma.predict_proba(image, "nuclei"),
                               load_model(a, device="cpu").predict_proba(image, "nuclei"),
                               atol=2e-3)
    s.close()


def test_a_runtime_error_in_a_threaded_job_is_reported_and_frees_the_viewer(
        viewer, qtbot, fake_model_path, monkeypatch):
    """torch raises RuntimeError for out-of-memory and shape errors; napari's thread worker
    used to swallow it, leaving the job (and every panel) blocked until the viewer closed."""
    seg, ft = segment_cells(viewer, qtbot, fake_model_path)
    paint_correction(viewer.layers["cells_labels"], ((14, 14),))
    ft.refresh()
    monkeypatch.setattr(FakeModel, "fail_after", 1)
    ft.start_button.click()
    wait_idle(qtbot, ft, timeout=20000)
    assert "simulated out-of-memory" in str(ft.last_error)
    assert "fine-tune failed, previous model kept: simulated out-of-memory" in ft.status.text()
    assert ft.session.job == "" and seg.run_button.isEnabled() and ft.start_button.isEnabled()
    assert ft.session.model.w == pytest.approx(0.5)            # the snapshot came back
    seg.confirm = lambda title, text: True                     # "replace the corrections?"
    seg.run_button.click()                                     # the viewer is free again
    wait_idle(qtbot, seg)
    assert seg.last_error is None


def test_segment_panel_alone_follows_the_selected_images_modality(viewer, qtbot,
                                                                  modality_models):
    seg = dock(viewer, "Segment")                       # no Image panel docked
    seg.split.setChecked(False)
    us = _image(viewer, "breast", "ultrasound", 3, rgb=False)
    viewer.layers.selection.active = us
    seg.run_button.click()
    wait_idle(qtbot, seg)
    assert seg.last_error is None, seg.last_error
    assert seg.session.model_key[0].endswith("ultrasound_mgcc.safetensors")
    assert viewer.layers["breast_labels"].metadata["modality"] == "ultrasound"
    # selecting the labels layer keeps its image's modality
    _image(viewer, "tissue", "histology", 4, rgb=True)
    assert seg.session.modality == "histology"
    viewer.layers.selection.active = viewer.layers["breast_labels"]
    assert seg.session.modality == "ultrasound"


def test_finetune_keeps_its_model_and_resegments_only_its_modality(viewer, qtbot,
                                                                    modality_models):
    """Selecting an ultrasound image during a histology fine-tune: the histology model is the
    one trained and credited, its re-segmentation leaves the ultrasound labels alone, and the
    selection's modality takes over once the jobs end."""
    image, seg, ft = (dock(viewer, "Image and description"), dock(viewer, "Segment"),
                      dock(viewer, "Fine-tune"))
    seg.split.setChecked(False)
    seg.device.setCurrentText("cpu")
    us = _image(viewer, "breast", "ultrasound", 3, rgb=False)
    viewer.layers.selection.active = us
    seg.run_button.click()
    wait_idle(qtbot, seg)
    us_before = np.array(viewer.layers["breast_labels"].data)
    h1, h2 = (_image(viewer, "h1", "histology", 1, rgb=True),
              _image(viewer, "h2", "histology", 2, rgb=True))
    for ly in (h1, h2):
        viewer.layers.selection.active = ly
        seg.run_button.click()
        wait_idle(qtbot, seg)
    assert seg.session.modality == "histology"
    hist_key = seg.session.current_key()
    assert hist_key[0].endswith("histology.safetensors")
    h2_before = np.array(viewer.layers["h2_labels"].data)
    paint_correction(viewer.layers["h1_labels"], ((14, 14), (30, 30)))
    ft.refresh()
    assert ft.checked_pairs() == [("h1", "h1_labels")]
    ft.epochs.setValue(30)
    ft.lr.setValue(0.3)                       # move the output layer far: h2 must change
    ft.start_button.click()
    viewer.layers.selection.active = us       # while the fine-tune runs
    assert seg.session.modality == "histology"            # waits for the jobs to end
    wait_idle(qtbot, ft)
    qtbot.waitUntil(lambda: seg.session.job == "" and seg.session.modality == "ultrasound",
                    timeout=60000)
    s = seg.session
    assert ft.last_error is None, ft.last_error
    assert s.finetunes.get(hist_key) == 1
    assert s.finetunes.get(s.current_key(), 0) == 0       # the ultrasound model: untouched
    assert s.current_key()[0].endswith("ultrasound_mgcc.safetensors")
    np.testing.assert_array_equal(viewer.layers["breast_labels"].data, us_before)
    assert viewer.layers["breast_labels"].metadata["modality"] == "ultrasound"
    assert not np.array_equal(viewer.layers["h2_labels"].data, h2_before)   # re-segmented
    # the fine-tune's own message survives its re-segmentation
    text = ft.status.text()
    assert text.startswith("fine-tune finished (1 image(s))"), text
    assert "correct at least two" in text and "segmented 1 of 1 image(s) with" in text
    assert "histology.safetensors [fine-tuned ×1]" in text


def test_stop_during_finetune_keeps_the_model_and_does_not_resegment(
        viewer, qtbot, fake_model_path, monkeypatch):
    seg, ft = _segment_all(viewer, fake_model_path), dock(viewer, "Fine-tune")
    wait_idle(qtbot, seg)
    b_before = np.array(viewer.layers["b_labels"].data)
    paint_correction(viewer.layers["a_labels"], ((14, 14),))
    ft.refresh()
    monkeypatch.setattr(FakeModel, "step_delay", 0.05)
    ft.epochs.setValue(1000)
    ft.start_button.click()
    qtbot.waitUntil(lambda: len(ft.plot.series.get("loss", [])) >= 2, timeout=20000)
    ft.stop_button.click()
    wait_idle(qtbot, ft)
    qtbot.wait(100)
    assert not ft.running and ft.session.job == ""
    assert ft.status.text().startswith("stopped early; the model trained so far is kept")
    assert ft.session.model.w > 0.5
    np.testing.assert_array_equal(viewer.layers["b_labels"].data, b_before)


def test_undoing_a_prediction_over_corrections_brings_their_protection_back(
        viewer, qtbot, fake_model_path):
    seg, ft = segment_cells(viewer, qtbot, fake_model_path)
    lab = viewer.layers["cells_labels"]
    paint_correction(lab, ((14, 14),))
    corrected = np.array(lab.data)
    asked = []
    seg.confirm = lambda title, text: asked.append(text) or True
    seg.run_button.click()                            # "Replace it?" -- yes
    wait_idle(qtbot, seg)
    assert len(asked) == 1 and not np.array_equal(lab.data, corrected)
    ft.refresh()
    assert "not corrected" in ft.pairs.item(0).text()
    lab.undo()                                        # as the dialog suggests: Ctrl-Z
    np.testing.assert_array_equal(lab.data, corrected)
    ft.refresh()
    assert ft.pairs.item(0).text().endswith("(corrected)") and ft.checked_pairs()
    seg.confirm = lambda title, text: asked.append(text) or False
    seg.run_button.click()                            # asked again, and kept on "no"
    wait_idle(qtbot, seg)
    assert len(asked) == 2
    np.testing.assert_array_equal(lab.data, corrected)
    lab.redo()                                        # back to the prediction: unprotected
    ft.refresh()
    assert "not corrected" in ft.pairs.item(0).text()


def test_changing_the_device_keeps_the_finetuned_model(viewer, qtbot, fake_model_path):
    seg, ft = segment_cells(viewer, qtbot, fake_model_path)
    paint_correction(viewer.layers["cells_labels"], ((14, 14),))
    ft.refresh()
    ft.resegment.setChecked(False)
    ft.epochs.setValue(5)
    ft.start_button.click()
    wait_idle(qtbot, ft)
    s = ft.session
    tuned = s.model.w
    assert tuned > 0.5 and "[fine-tuned ×1]" in s.model_label
    seg.device.setCurrentText("cpu")                    # auto -> cpu
    assert "[fine-tuned ×1]" in s.model_label and "loads on first use" not in s.model_label
    assert ft.revert_button.isEnabled() and ft.save_button.isEnabled()
    assert s.ensure_model().w == tuned                  # the fine-tuned one, not the file


def test_an_image_removed_while_it_is_segmented_is_reported_not_written(
        viewer, qtbot, slow_model_path, monkeypatch):
    from conftest import SlowTiledModel

    monkeypatch.setattr(SlowTiledModel, "tile_delay", 0.3)
    seg = _segment_all(viewer, slow_model_path)
    viewer.layers.remove("b")                      # while the job runs
    wait_idle(qtbot, seg)
    assert "a_labels" in viewer.layers and "b_labels" not in viewer.layers
    assert "not written: b (its layer was removed)" in seg.status.text()

"""Fine-tune panel: train on corrected labels, live loss, Stop, re-segment, save, revert."""
import numpy as np
import pytest

from conftest import FakeModel, blob_image

pytestmark = pytest.mark.gui


def _widgets(viewer, model_path, synchronous=True):
    from napari_textdiff.widgets.finetune import FinetuneWidget
    from napari_textdiff.widgets.segment import SegmentWidget

    seg, ft = SegmentWidget(viewer), FinetuneWidget(viewer)
    for w in (seg, ft):
        w.synchronous = synchronous
        viewer.window.add_dock_widget(w)
    seg.set_model_file(model_path)
    seg.device.setCurrentText("cpu")
    return seg, ft


def _weights(model):
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def test_real_model_finetune_resegment_save_and_revert(viewer, qtbot, tiny_mgcc_path, tmp_path):
    import torch

    from napari_textdiff.core.models import load_model

    for i in range(3):
        img, _ = blob_image(seed=i)
        viewer.add_image(img, name=f"im{i}")
    seg, ft = _widgets(viewer, tiny_mgcc_path, synchronous=False)
    seg.all_images.setChecked(True)
    seg.split.setChecked(False)
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=30000)
    assert seg.last_error is None, seg.last_error
    before = _weights(seg.session.model)

    # the user corrects im0 and im1 (paints the true masks)
    for i in (0, 1):
        lab = viewer.layers[f"im{i}_labels"]
        _, truth = blob_image(seed=i)
        idx = np.nonzero(lab.data != truth)
        lab.data_setitem(idx, truth[idx].astype(np.int32))
    ft.refresh()
    assert sorted(ft.checked_names()) == ["im0", "im1"]     # corrected pairs ticked by default
    ft.epochs.setValue(3)
    ft.lr.setValue(0.01)
    im2_before = viewer.layers["im2_labels"].data.copy()
    ft.start_button.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=60000)
    assert ft.last_error is None, ft.last_error
    losses = ft.plot.series["loss"]
    assert len(losses) == 3 and all(np.isfinite(y) for _, y in losses)   # 3 epochs x 1 batch
    model = ft.session.model
    changed = [k for k, v in _weights(model).items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith("main_decoder") for k in changed)
    assert "fine-tuned" in ft.model_info.text()
    # corrections untouched; the remaining image was re-segmented with the new model
    for i in (0, 1):
        np.testing.assert_array_equal(viewer.layers[f"im{i}_labels"].data, blob_image(seed=i)[1])
    qtbot.waitUntil(lambda: not ft.running, timeout=30000)
    img2 = viewer.layers["im2"].data
    expect = (model.predict_proba(img2[..., None].astype(np.float32) / 255)
              >= seg.threshold.value()).astype(np.int32)
    np.testing.assert_array_equal(viewer.layers["im2_labels"].data, expect)
    assert not np.array_equal(im2_before, expect) or len(changed) > 0

    # save, reload: same predictions
    out = tmp_path / "ft.safetensors"
    ft.save_model(out)
    np.testing.assert_allclose(load_model(out, device="cpu").predict_proba(img2[..., None]),
                               model.predict_proba(img2[..., None]), atol=1e-5)
    # revert: back to the weights before fine-tuning
    assert ft.revert_button.isEnabled()
    ft.revert_button.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=30000)
    after = _weights(ft.session.model)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not ft.revert_button.isEnabled()


def test_stop_ends_finetune_early_with_a_usable_model(viewer, tiny_mgcc_path):
    img, truth = blob_image()
    viewer.add_image(img, name="a")
    viewer.add_labels(truth.astype(np.int32), name="a_labels")
    seg, ft = _widgets(viewer, tiny_mgcc_path)
    ft.refresh()
    assert ft.checked_names() == ["a"]
    ft.epochs.setValue(200)
    ft.resegment.setChecked(False)
    ft.progress.valueChanged.connect(lambda v: v >= 2 and ft.request_stop())
    assert ft.start()
    assert ft.last_error is None
    n = len(ft.plot.series["loss"])
    assert 2 <= n < 200
    assert "correct at least two" in ft.status.text()     # one image: the panel advises
    assert "stopped early" in ft.status.text()
    prob = ft.session.model.predict_proba(img[..., None].astype(np.float32) / 255)
    assert prob.shape == img.shape and np.isfinite(prob).all()


def test_failed_finetune_keeps_previous_model(viewer, fake_model_path, monkeypatch):
    img, truth = blob_image()
    viewer.add_image(img, name="a")
    viewer.add_labels(truth.astype(np.int32), name="a_labels")
    seg, ft = _widgets(viewer, fake_model_path)
    ft.refresh()
    monkeypatch.setattr(FakeModel, "fail_after", 2)
    ft.epochs.setValue(10)
    ft.lr.setValue(0.1)
    assert ft.start()
    assert isinstance(ft.last_error, RuntimeError)
    assert "previous model kept" in ft.status.text()
    assert ft.session.model.w == pytest.approx(0.5)        # restored, not the broken -99
    assert viewer.layers["a_labels"].data.sum() == truth.sum()   # the user's labels are intact
    # a later successful run works and plots loss and the validation metric
    monkeypatch.setattr(FakeModel, "fail_after", None)
    ft.epochs.setValue(4)
    assert ft.start()
    assert ft.last_error is None
    ys = [y for _, y in ft.plot.series["loss"]]
    assert len(ys) == 4 and ys == sorted(ys, reverse=True)    # loss falls
    assert len(ft.plot.series["val_dice"]) == 4
    assert ft.session.model.w > 0.5


def test_nothing_ticked_is_refused(viewer, fake_model_path):
    viewer.add_image(blob_image()[0], name="a")
    seg, ft = _widgets(viewer, fake_model_path)
    assert ft.checked_names() == []
    assert not ft.start()
    assert ft.start_button.isEnabled()


def test_an_erased_mask_is_left_out_and_the_panel_says_so(viewer, qtbot, tiny_mgcc_path):
    """A sonographer erases a false blob on a normal image: that mask is not trained on."""
    for i in range(2):
        viewer.add_image(blob_image(seed=i)[0], name=f"im{i}")
    seg, ft = _widgets(viewer, tiny_mgcc_path, synchronous=False)
    seg.all_images.setChecked(True)
    seg.split.setChecked(False)
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=30000)
    lab0, lab1 = viewer.layers["im0_labels"], viewer.layers["im1_labels"]
    truth = blob_image(seed=0)[1]
    idx = np.nonzero(lab0.data != truth)
    lab0.data_setitem(idx, truth[idx].astype(np.int32))
    lab1.data_setitem(np.nonzero(lab1.data), 0)           # erased: "no lesion here"
    ft.refresh()
    assert sorted(ft.checked_names()) == ["im0", "im1"]
    ft.epochs.setValue(2)
    ft.resegment.setChecked(False)
    ft.start_button.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=60000)
    assert ft.last_error is None, ft.last_error
    assert "left out 1" in ft.status.text() and "im1" in ft.status.text()
    assert "correct at least two" not in ft.status.text()   # two images ticked
    assert len(ft.plot.series["loss"]) == 2                # 2 epochs x 1 kept image

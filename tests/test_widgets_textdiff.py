"""A real (tiny) TextDiff model through Segment and Fine-tune: the description reaches it."""
import numpy as np
import pytest

from conftest import blob_image

pytestmark = pytest.mark.gui


def test_textdiff_segment_then_finetune(viewer, qtbot, tiny_textdiff_path):
    import torch

    from napari_textdiff.core.models import load_model
    from napari_textdiff.widgets.finetune import FinetuneWidget
    from napari_textdiff.widgets.segment import SegmentWidget

    torch.set_num_threads(1)
    img, truth = blob_image(h=32, w=32, centers=((10, 10),), r=5, rgb=True)
    layer = viewer.add_image(img, name="he")
    layer.metadata["description"] = "the object on the left"
    seg, ft = SegmentWidget(viewer), FinetuneWidget(viewer)
    seg.set_model_file(tiny_textdiff_path)
    seg.device.setCurrentText("cpu")
    seg.split.setChecked(False)
    ref_model = load_model(tiny_textdiff_path, device="cpu")
    prob = ref_model.predict_proba(img.astype(np.float32) / 255, "the object on the left")
    seg.threshold.setValue(round(float(np.median(prob)), 2))
    viewer.layers.selection.active = layer
    seg.run_button.click()
    qtbot.waitUntil(lambda: not seg.running, timeout=60000)
    assert seg.last_error is None, seg.last_error
    assert seg.session.model.kind == "textdiff" and seg.session.model.uses_text
    lab = viewer.layers["he_labels"]
    np.testing.assert_array_equal(lab.data, (prob >= seg.threshold.value()).astype(np.int32))

    # correct the labels, fine-tune two epochs in the worker
    idx = np.nonzero(lab.data != truth)
    lab.data_setitem(idx, truth[idx].astype(np.int32))
    ft.refresh()
    assert ft.checked_names() == ["he"]
    ft.epochs.setValue(2)
    ft.lr.setValue(0.003)
    ft.resegment.setChecked(False)
    before = {k: v.clone() for k, v in ft.session.model.head.state_dict().items()}
    ft.start_button.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=60000)
    assert ft.last_error is None, ft.last_error
    assert len(ft.plot.series["loss"]) >= 2
    after = ft.session.model.head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(lab.data, truth)          # the correction is untouched

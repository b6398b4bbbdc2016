"""Image & description panel: the text lives in the layer metadata; modality sets defaults."""
import numpy as np
import pytest

from conftest import blob_image

pytestmark = pytest.mark.gui


def test_description_follows_selection_and_reaches_labels(viewer):
    from napari_textdiff.widgets import _layers
    from napari_textdiff.widgets.image_panel import ImagePanel
    from napari_textdiff.widgets.segment import SegmentWidget

    a = viewer.add_image(blob_image()[0], name="a")
    b = viewer.add_image(blob_image(seed=1)[0], name="b", metadata={"description": "old text"})
    panel, seg = ImagePanel(viewer), SegmentWidget(viewer)
    viewer.layers.selection.active = a
    assert panel.image_label.text() == "<b>a</b>" and panel.description.toPlainText() == ""
    panel.description.setPlainText("The nuclei density in the upper right is high.")
    assert a.metadata["description"] == "The nuclei density in the upper right is high."
    viewer.layers.selection.active = b
    assert panel.description.toPlainText() == "old text"
    assert a.metadata["description"].startswith("The nuclei")       # untouched by switching

    # a labels layer of the image shows (and edits) its image's text
    lab = _layers.apply_prediction(viewer, a, np.zeros(a.data.shape, np.int32))
    viewer.layers.selection.active = lab
    assert panel.description.toPlainText().startswith("The nuclei")
    panel.description.setPlainText("new")
    assert a.metadata["description"] == "new" and lab.metadata["description"] == "new"

    # modality: the combo drives the segment defaults, a layer's modality drives the combo
    panel.modality.setCurrentIndex(panel.modality.findData("xray"))
    assert panel.session.modality == "xray" and not seg.split.isChecked()
    panel.modality.setCurrentIndex(panel.modality.findData("histology"))
    assert seg.split.isChecked()
    b.metadata["modality"] = "ultrasound"
    viewer.layers.selection.active = b
    assert panel.modality.currentData() == "ultrasound"
    assert "MGCC model ignores text" in panel.description.placeholderText()
    viewer.layers.selection.clear()
    assert not panel.description.isEnabled()


def test_open_paths_uses_our_reader(viewer, tmp_path):
    import json

    from napari_textdiff.core.io import write_image
    from napari_textdiff.widgets.image_panel import ImagePanel

    write_image(tmp_path / "x1.png", blob_image()[0])
    (tmp_path / "x1.json").write_text(json.dumps({"description": "round cells"}))
    panel = ImagePanel(viewer)
    panel.set_modality("ultrasound")
    layers = panel.open_paths([str(tmp_path / "x1.png")])
    assert [ly.name for ly in layers] == ["x1"]
    assert layers[0].metadata["description"] == "round cells"
    assert layers[0].metadata["modality"] == "ultrasound"
    assert panel.description.toPlainText() == "round cells"


def test_sample_data_opens_with_descriptions(viewer):
    viewer.open_sample("napari-textdiff", "histology")
    img = viewer.layers["histology_sample"]
    assert img.rgb and img.data.shape == (512, 512, 3)
    assert img.metadata["description"] == "The nuclei are evenly distributed."
    assert "CC BY-NC-SA" in img.metadata["licence"]
    gt = viewer.layers["histology_sample ground truth"]
    assert gt.data.shape == (512, 512) and 0.2 < (gt.data > 0).mean() < 0.5
    assert viewer.layers.selection.active is img      # Segment can run on it at once

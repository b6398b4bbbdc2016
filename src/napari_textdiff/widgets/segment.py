"""Segment panel: model, device, threshold, instances; run on the selected image or all images.

Predictions go into one Labels layer per image (``<image>_labels``), updated in place as one
undo step. A labels layer the user has corrected since the last prediction is only overwritten
after confirmation.
"""
from __future__ import annotations

from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QHBoxLayout, QLabel, QPushButton, QProgressBar)

from ..core import defaults
from . import _layers
from ._runner import JobWidget, start_segmentation
from ._scroll import scrolling_layout
from ._session import DEFAULT_SOURCE, DEVICES

__all__ = ["SegmentWidget"]


class SegmentWidget(JobWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.model_choice = QComboBox()
        self.model_choice.addItem("bundled model for the modality", DEFAULT_SOURCE)
        self.browse = QPushButton("Model file…")
        self.model_info = QLabel(self.session.model_label)
        self.model_info.setWordWrap(True)
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setCurrentText(self.session.device)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.split = QCheckBox("split touching objects into instances")
        self.tiled = QCheckBox("tile large images")
        self.tiled.setChecked(True)
        self.all_images = QCheckBox("all images (else the selected one)")
        self.slide_area_choice = QComboBox()      # what of a whole-slide image to segment
        for text, key in (("visible field of view", "view"),
                          ("shapes drawn in a Shapes layer", "shapes"),
                          ("the whole slide (streamed)", "slide")):
            self.slide_area_choice.addItem(text, key)
        self.slide_area_choice.setToolTip("For pyramidal whole-slide images only")
        self.run_button = QPushButton("Segment")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.save_button = QPushButton("Save labels…")
        self.save_button.setToolTip("The selected image's labels as TIFF/PNG with the "
                                    "description in a sidecar (NAME.tif.json)")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.model_choice, 1)
        row.addWidget(self.browse)
        form.addRow("Model", row)
        form.addRow("", self.model_info)
        form.addRow("Device", self.device)
        form.addRow("Threshold", self.threshold)
        form.addRow("Slide area", self.slide_area_choice)
        lay = scrolling_layout(self)
        lay.addLayout(form)
        for w in (self.split, self.tiled, self.all_images):
            lay.addWidget(w)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.save_button)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.browse.clicked.connect(self._browse)
        self.model_choice.currentIndexChanged.connect(self._source_chosen)
        self.device.currentTextChanged.connect(self._device_chosen)
        self.run_button.clicked.connect(lambda: self.run())
        self.stop_button.clicked.connect(lambda: self.request_stop())
        self.save_button.clicked.connect(self._save_dialog)
        self.session.modality_changed.connect(self.apply_modality_defaults)
        self.session.model_changed.connect(self.model_info.setText)
        self.session.job_changed.connect(self._job_changed)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._layers_changed)
        self._layers_changed()
        self.threshold.valueChanged.connect(self._settings_changed)
        self.split.toggled.connect(self._settings_changed)
        self.tiled.toggled.connect(self._settings_changed)
        self.apply_modality_defaults(self.session.modality)
        if self.session.source != DEFAULT_SOURCE:       # another panel chose a file already
            self.set_model_file(self.session.source)
        self._settings_changed()
        self.model_info.setText(self.session.model_label)

    # -- choices ----------------------------------------------------------------------------------
    def apply_modality_defaults(self, modality: str) -> None:
        d = defaults.modality_defaults(modality)
        self.threshold.setValue(defaults.default_threshold(modality))
        self.split.setChecked(d.split_instances)
        p = defaults.default_model_path(modality)
        self.model_choice.setItemText(
            0, f"bundled: {p.name}" if p else f"bundled {d.label} model (not installed)")
        for i in reversed(range(1, self.model_choice.count())):   # other modality's extras
            if self.model_choice.itemText(i).startswith("bundled, also: "):
                self.model_choice.removeItem(i)
        for extra in defaults.bundled_models(modality)[1:] if p else []:
            self.model_choice.insertItem(1, f"bundled, also: {extra.name}", str(extra))
        self._follow_model_threshold()     # a chosen model file keeps its own threshold

    def set_model_file(self, path) -> None:
        """Use a model bundle file (as the "Model file…" button does)."""
        path = str(path)
        i = self.model_choice.findData(path)
        if i < 0:
            self.model_choice.addItem(path.rsplit("/", 1)[-1], path)
            i = self.model_choice.count() - 1
        self.model_choice.setCurrentIndex(i)
        self.session.set_source(path)
        self._follow_model_threshold()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model bundle", "",
                                              "napari-textdiff model (*.safetensors)")
        if path:
            self.set_model_file(path)

    def _source_chosen(self, index: int) -> None:
        self.session.set_source(self.model_choice.itemData(index))
        self._follow_model_threshold()

    def _follow_model_threshold(self) -> None:
        """A newly chosen model brings its own calibrated threshold (the user can still move
        the spin box afterwards)."""
        src = self.session.source
        path = defaults.default_model_path(self.session.modality) if src == DEFAULT_SOURCE \
            else src
        thr = defaults.stored_threshold(path) if path else None
        if thr is not None:
            self.threshold.setValue(thr)

    def _device_chosen(self, text: str) -> None:
        self.session.set_device(text)

    def _settings_changed(self, *_) -> None:
        self.session.threshold = self.threshold.value()
        self.session.split = self.split.isChecked()
        self.session.tiled = self.tiled.isChecked()

    def _layers_changed(self, event=None) -> None:
        """"Slide area" means something only once a whole-slide image is open."""
        self.slide_area_choice.setEnabled(any(_layers.is_slide_layer(ly)
                                              for ly in self.viewer.layers))

    # -- running -----------------------------------------------------------------------------------
    def targets(self) -> list:
        if self.all_images.isChecked():
            return _layers.plain_image_layers(self.viewer)   # a slide: select it, by region
        layer = self.viewer.layers.selection.active
        if layer is not None and not _layers.is_2d_image(layer):
            src = layer.metadata.get("source_image")
            layer = self.viewer.layers[src] if src in self.viewer.layers else None
        return [layer] if layer is not None else []

    def run(self, layers=None) -> bool:
        """Segment ``layers`` (default: the selected image, or all with "all images")."""
        layers = self.targets() if layers is None else list(layers)
        if not layers:
            self.notify_info("napari-textdiff: select a 2-D image layer to segment.")
            return False
        from .region import start_region_segmentation

        slides = [ly for ly in layers if _layers.is_slide_layer(ly)]
        if slides:           # a lazy pyramid: a region streamed, never the whole level 0 read
            self._set_running(True)
            ok = start_region_segmentation(self, slides[0], self.slide_area,
                                           on_finish=lambda: self._set_running(False))
            if not ok:
                self._set_running(False)
            return ok
        return self.segment_layers(layers)

    def segment_layers(self, layers, *, what: str = "Segmentation", on_finish=None) -> bool:
        self._set_running(True)

        def fin():
            self._set_running(False)
            if on_finish is not None:
                on_finish()

        ok = start_segmentation(self, layers, what=what, on_finish=fin)
        if not ok:
            self._set_running(False)
        return ok

    @property
    def slide_area(self) -> str:
        """"view", "shapes" or "slide": what of a whole-slide layer Segment works on."""
        return self.slide_area_choice.currentData()

    @slide_area.setter
    def slide_area(self, area: str) -> None:
        i = self.slide_area_choice.findData(area)
        if i < 0:
            raise ValueError(f"slide area must be view, shapes or slide, not {area!r}")
        self.slide_area_choice.setCurrentIndex(i)

    # -- saving -----------------------------------------------------------------------------------
    def labels_to_save(self):
        """The selected labels layer, or the working labels of the selected image."""
        layer = self.viewer.layers.selection.active
        if layer is not None and _layers.is_2d_image(layer):
            return _layers.find_labels(self.viewer, layer)
        return layer if _layers.is_labels(layer) else None

    def save_labels(self, path, layer=None) -> list[str]:
        """Write ``layer`` (default: :meth:`labels_to_save`) with the plugin's labels writer:
        the mask plus its description sidecar, for ``.tif``, ``.tiff`` and ``.png`` alike."""
        from .._writer import write_labels

        layer = layer or self.labels_to_save()
        if layer is None:
            raise ValueError("select an image with labels (or a labels layer) to save")
        written = write_labels(str(path), layer.data,
                               {"name": layer.name, "metadata": dict(layer.metadata)})
        self.status.setText(f"saved {written[0]} (+ description)")
        return written

    def _save_dialog(self) -> None:
        layer = self.labels_to_save()
        if layer is None:
            self.notify_info("napari-textdiff: select an image with labels to save.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save labels with their description",
                                              f"{layer.name}.tif",
                                              "Labels (*.tif *.tiff *.png)")
        if path:
            try:
                self.save_labels(path, layer)
            except Exception as err:  # noqa: BLE001 - reported to the user
                self.notify_error(err, "Saving the labels")

    def _job_changed(self, what: str) -> None:
        """Another panel's job: Segment waits for it (one job per viewer)."""
        if not self.running:
            self.run_button.setEnabled(not what)
            self.run_button.setToolTip(f"{what} is running" if what else "")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        if not running:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.last_error is None else 0)

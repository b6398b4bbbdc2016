"""Image & description panel: open images, pick the modality, edit the selected image's text.

The description is stored in the image layer's ``metadata["description"]`` (and copied onto its
labels layer, so the labels writer saves it with the annotations).
"""
from __future__ import annotations

from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QPlainTextEdit, QPushButton, QVBoxLayout, QWidget)

from ..core import defaults
from . import _layers
from ._scroll import scrolling_layout

__all__ = ["ImagePanel"]


class ImagePanel(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from ._session import get_session, real_viewer

        self.viewer = real_viewer(napari_viewer)
        self.session = get_session(napari_viewer)
        self._layer = None
        self._updating = False

        self.modality = QComboBox()
        for key, d in defaults.MODALITIES.items():
            self.modality.addItem(d.label, key)
        self.modality.setToolTip("Sets the default model, threshold and instance splitting")
        self.open_files = QPushButton("Open images…")
        self.open_folder = QPushButton("Open folder…")
        self.image_label = QLabel("no image selected")
        self.image_label.setWordWrap(True)
        self.description = QPlainTextEdit()
        self.description.setMinimumHeight(70)
        self.description.setEnabled(False)

        form = QFormLayout()
        form.addRow("Modality", self.modality)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_files)
        buttons.addWidget(self.open_folder)
        lay = scrolling_layout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(QLabel("Diagnostic description of the selected image:"))
        lay.addWidget(self.image_label)
        lay.addWidget(self.description)
        lay.addStretch(1)

        self.modality.currentIndexChanged.connect(self._modality_chosen)
        self.session.modality_changed.connect(self._show_modality)
        self.description.textChanged.connect(self._text_edited)
        self.open_files.clicked.connect(self._open_files_dialog)
        self.open_folder.clicked.connect(self._open_folder_dialog)
        self.viewer.layers.selection.events.active.connect(self._active_changed)
        self._show_modality(self.session.modality)
        self._active_changed()

    # -- modality -------------------------------------------------------------------------------
    def set_modality(self, modality: str) -> None:
        self.session.set_modality(modality)

    def _modality_chosen(self, index: int) -> None:
        if not self._updating:
            self.session.set_modality(self.modality.itemData(index))

    def _show_modality(self, modality: str) -> None:
        self._updating = True
        try:
            self.modality.setCurrentIndex(self.modality.findData(modality))
            self.description.setPlaceholderText(defaults.modality_defaults(modality).text_hint)
        finally:
            self._updating = False

    # -- the selected image and its text ---------------------------------------------------------
    def _active_changed(self, event=None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and not _layers.is_2d_image(layer):
            # a labels layer selects its image, so the text stays at hand while painting
            src = layer.metadata.get("source_image") if hasattr(layer, "metadata") else None
            layer = self.viewer.layers[src] if src in self.viewer.layers else None
        self._layer = layer
        self._updating = True
        try:
            if layer is None:
                self.image_label.setText("no image selected")
                self.description.setPlainText("")
                self.description.setEnabled(False)
                return
            self.image_label.setText(f"<b>{layer.name}</b>")
            self.description.setEnabled(True)
            self.description.setPlainText(_layers.description_of(layer))
        finally:
            self._updating = False
        # the session itself follows the selected layer's modality (any panel docked)

    def _text_edited(self) -> None:
        if self._updating or self._layer is None:
            return
        _layers.set_description(self.viewer, self._layer, self.description.toPlainText())

    # -- opening ----------------------------------------------------------------------------------
    def open_paths(self, paths) -> list:
        """Open files or folders with this plugin's reader; returns the new layers."""
        layers = self.viewer.open(paths, plugin="napari-textdiff")
        for ly in layers:
            ly.metadata.setdefault("modality", self.session.modality)
        if layers:
            self.viewer.layers.selection.active = layers[-1]
        return layers

    def _open_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "",
            "Images (*.tif *.tiff *.png *.jpg *.jpeg *.dcm);;All files (*)")
        if paths:
            self.open_paths(paths)

    def _open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if path:
            self.open_paths([path])

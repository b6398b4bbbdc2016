"""All panels in one dock, as tabs: the plugin fits a 1366×768 screen.

Four docked panels stacked need ~1 600 px of height; tabs in one dock need the tallest panel
only, and each panel scrolls when the screen is smaller still. The panels are the same objects
as the separate dock widgets and share the viewer's session like them.
"""
from __future__ import annotations

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

__all__ = ["TextDiffPanel"]


class TextDiffPanel(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from .finetune import FinetuneWidget
        from .image_panel import ImagePanel
        from .segment import SegmentWidget
        from .synthetic import SyntheticWidget

        self.image_panel = ImagePanel(napari_viewer)
        self.segment = SegmentWidget(napari_viewer)
        self.finetune = FinetuneWidget(napari_viewer)
        self.synthetic = SyntheticWidget(napari_viewer)
        self.tabs = QTabWidget()
        for w, title in ((self.image_panel, "Image"), (self.segment, "Segment"),
                         (self.finetune, "Fine-tune"), (self.synthetic, "Synthetic")):
            self.tabs.addTab(w, title)      # each panel scrolls itself (_scroll.py)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self.setMinimumHeight(0)

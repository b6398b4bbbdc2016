"""Every panel lays out its rows inside a scroll area that fills the panel.

Why: napari lets a dock shrink to 50 px, below what a panel's rows need, and a squeezed Qt
layout draws its rows over each other (the fine-tune status over the loss plot with two docks
on a 1440×900 screen). Scrolled, every row keeps its height.
"""
from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["scrolling_layout"]


def scrolling_layout(panel: QWidget) -> QVBoxLayout:
    """The layout to put ``panel``'s rows in (``panel.scroll`` is the scroll area)."""
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    inner = QWidget()
    scroll.setWidget(inner)
    outer.addWidget(scroll)
    panel.scroll = scroll
    panel.setMinimumHeight(0)
    return QVBoxLayout(inner)

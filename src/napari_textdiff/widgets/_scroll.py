"""Every panel lays out its rows inside a scroll area that fills the panel.

Why: napari lets a dock shrink to 50 px, below what a panel's rows need, and a squeezed Qt
layout draws its rows over each other (the fine-tune status over the loss plot with two docks
on a 1440×900 screen). Scrolled, every row keeps its height. The scroll area asks for the
rows' own sizes, so docks are as wide and, where the screen allows, as tall as before; a
squeezed dock scrolls (vertically only) instead.
"""
from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["scrolling_layout", "PanelScroll"]


class PanelScroll(QScrollArea):
    """Vertical scrolling that reports the rows' size hints (a plain QScrollArea asks for a
    fixed ~400 px box and lets the dock shrink below the rows' width)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 - Qt API
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        # rows added, shown or hidden: the hints below change, so tell the dock's layout
        if obj is self.widget() and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def _rows_plus_bar(self, hint: str) -> QSize | None:
        """The rows' ``sizeHint`` or ``minimumSizeHint`` widened by the vertical scroll bar."""
        w = self.widget()
        if w is None:
            return None
        s = getattr(w, hint)()
        return QSize(s.width() + self.verticalScrollBar().sizeHint().width(), s.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        s = self._rows_plus_bar("sizeHint")
        return super().sizeHint() if s is None else s

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        # the rows' own minimum: docks get it where the window allows; napari lets a dock be
        # squeezed below it (to 50 px), and then this area scrolls instead of the rows
        # overlapping
        s = self._rows_plus_bar("minimumSizeHint")
        return super().minimumSizeHint() if s is None else s


def scrolling_layout(panel: QWidget) -> QVBoxLayout:
    """The layout to put ``panel``'s rows in (``panel.scroll`` is the scroll area)."""
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = PanelScroll()
    inner = QWidget()
    scroll.setWidget(inner)
    outer.addWidget(scroll)
    panel.scroll = scroll
    return QVBoxLayout(inner)

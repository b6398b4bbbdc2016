"""Thin napari dock widgets; the work happens in ``napari_textdiff.core`` (see each module)."""

"""Plain Python + torch core: never imports napari, Qt or magicgui."""

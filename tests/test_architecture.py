"""The core never imports GUI code, and the CLI starts without heavy imports."""
import pkgutil
import subprocess
import sys

import napari_textdiff.core as core

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")


def _core_modules():
    return [m.name for m in pkgutil.walk_packages(core.__path__, "napari_textdiff.core.")]


def test_core_imports_no_gui_module():
    mods = _core_modules()
    assert "napari_textdiff.core.bundle" in mods
    code = (
        "import importlib, sys\n"
        f"mods = {mods!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {GUI!r})\n"
        "print(repr(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"core pulled in GUI modules: {out.stdout}"


def test_cli_help_is_light():
    code = ("import sys\nfrom napari_textdiff.cli import build_parser\nbuild_parser()\n"
            "print(sorted(k for k in ('torch','napari','diffusers','transformers') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "napari_textdiff.cli", "--help"],
                         capture_output=True, text=True, check=True)
    assert "info" in out.stdout

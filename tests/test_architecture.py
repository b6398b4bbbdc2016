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


# every command a user can type (README, docs); a module that fails to register must fail here
COMMANDS = {"evaluate": (), "info": (), "textdiff": ("fit",), "segment": (), "finetune": (),
            "calibrate": (), "mgcc": ("train",), "pretrain-backbone": (), "convert-guided": (),
            "train-ldm": (), "synthesize": (), "benchmark": ("monuseg", "busi", "xray", "speed",
                                                            "finetune", "report"),
            "demo": ()}


def _subcommands(parser) -> dict:
    import argparse

    acts = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(acts[0].choices) if acts else {}


def test_cli_has_every_command_and_action():
    from napari_textdiff.cli import build_parser

    top = _subcommands(build_parser())
    assert set(top) == set(COMMANDS)
    for name, actions in COMMANDS.items():
        assert set(_subcommands(top[name])) == set(actions), name


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "napari_textdiff.cli", "--help"],
                         capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in out.stdout.splitlines()
              if line.startswith("    ") and line.split()}
    assert set(COMMANDS) <= listed

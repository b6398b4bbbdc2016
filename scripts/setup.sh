#!/usr/bin/env bash
# Idempotent set-up: a .venv with CPU torch (only if no torch is there yet), napari + Qt, the
# project in editable mode, and Xvfb when we are root on a headless Debian machine.
# Every package at the version the suite last passed with (constraints.txt); the Qt binding is
# PyQt6 unless the venv already has one (PyQt5, PyQt6, PySide6 or PySide2 is kept).
# Fast when everything is already in place (a stamp file keyed on the files that decide it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

need_xvfb() { [ -z "${DISPLAY:-}" ] && ! command -v Xvfb >/dev/null 2>&1; }
if need_xvfb && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Xvfb and the xcb libraries Qt needs"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libxcb-icccm4 libxcb-keysyms1 \
    libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxkbcommon-x11-0 \
    libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null
fi

if ! command -v uv >/dev/null 2>&1; then
  "$PY" -m pip install -q uv || true
fi
UV=$(command -v uv || true)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  if [ -n "$UV" ]; then "$UV" venv -q --python "$PY" "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
VPY="$VENV/bin/python"

stamp="$VENV/.napari-textdiff-setup"
key=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && "$VPY" -c "import napari_textdiff, torch" 2>/dev/null; then
  exit 0
fi

pipi() {
  if [ -n "$UV" ]; then "$UV" pip install -q --compile-bytecode --python "$VPY" "$@";
  else "$VPY" -m pip install -q "$@"; fi
}
FL=()
[ -d /opt/wheels ] && FL=(--find-links /opt/wheels)

has_torch() { "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)"; }
# an NVIDIA GPU here: take the registry's torch (CUDA wheels on Linux), never the CPU one on disk
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }
if ! has_torch; then
  echo "[setup] installing torch (CPU wheel where one is on disk and no NVIDIA GPU is seen)"
  if ! has_gpu && [ -d /opt/wheels ] && ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
    pipi "${FL[@]}" -c constraints.txt "torch==2.13.0+cpu"
  else
    pipi -c constraints.txt "torch==2.13.0"      # the tested version (CUDA build from PyPI)
  fi
fi
# a Qt binding already in the venv is kept; without one, PyQt6 (napari 0.9 deprecates PyQt5)
has_qt() { "$VPY" -c "import importlib.util as u, sys
sys.exit(not any(u.find_spec(m) for m in ('PyQt6', 'PySide6', 'PyQt5', 'PySide2')))"; }
extras="napari,testing"
has_qt || extras="$extras,qt"
echo "[setup] installing napari-textdiff (editable) with napari, Qt and test tools ($extras)"
# keep whatever torch is installed: constrain it to the installed version
tv=$("$VPY" -c "from importlib.metadata import version; print(version('torch'))")
echo "torch==$tv" > "$VENV/torch-constraint.txt"
pipi "${FL[@]}" -c "$VENV/torch-constraint.txt" -c constraints.txt -e ".[$extras]"
echo "$key" > "$stamp"
echo "[setup] done: $("$VPY" -c 'import torch, napari, qtpy; print("torch", torch.__version__, "napari", napari.__version__, qtpy.API_NAME)')"

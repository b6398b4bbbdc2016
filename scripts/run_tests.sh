#!/usr/bin/env bash
# Whole test suite, headless: pytest-xvfb starts a virtual X server for the napari tests
# when there is no display. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset QT_QPA_PLATFORM  # offscreen has no OpenGL here; Xvfb does
.venv/bin/python -m pytest -q "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests collected"; exit 1; }
exit $rc

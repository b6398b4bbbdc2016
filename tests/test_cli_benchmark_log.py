"""``benchmark … --no-progress`` (background runs) writes plain log lines instead of a bar."""
from __future__ import annotations

import re

from napari_textdiff.core.progress import Progress


def _events():
    yield Progress("benchmark", step=0, total=2, message="starting")
    for i in range(1, 4):
        yield Progress("train", step=i, total=3, loss=1.0 / i)
    yield Progress("benchmark", step=1, total=2, message="unet seed=0: iou 0.500")
    yield Progress("benchmark", step=2, total=2, message="unet seed=1: iou 0.600")
    return {"done": True}


def test_no_progress_logs_each_unit_and_throttles_training_lines(capsys):
    from napari_textdiff.cli.benchmark import _drive

    assert _drive(_events(), enabled=False, log_every=3600) == {"done": True}
    lines = capsys.readouterr().err.strip().splitlines()
    assert [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", ln) for ln in lines] == [
        "unit 0/2: starting", "unit 1/2: unet seed=0: iou 0.500",
        "unit 2/2: unet seed=1: iou 0.600"]          # training lines wait an hour here

    _drive(_events(), enabled=False, log_every=0)
    err = capsys.readouterr().err
    assert "train  3/3  loss 0.3333" in err          # every training event when not throttled

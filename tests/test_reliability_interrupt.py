"""Issue 18, item 1: Ctrl-C (SIGINT) during training leaves the best model so far at --out.

A real subprocess gets a real SIGINT once its training has started; tiny models, no timing."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_textdiff.core import io
from napari_textdiff.core.bundle import read_bundle_header
from textdiff_testkit import (make_tiny_backbone, make_tiny_bert, shapes_set,
                              write_folder_dataset)


def _interrupt_when(args, marker: str):
    """Run the CLI, send SIGINT at the first stderr line starting with ``marker``; return
    (exit code, all stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_textdiff.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(marker):
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=300)
        lines.append(rest or "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines)


def test_ctrl_c_during_textdiff_fit_saves_the_head(tmp_path):
    ds = write_folder_dataset(tmp_path / "ds", shapes_set(4, seed=0))
    out = tmp_path / "existing.safetensors"
    out.write_bytes(b"an older file the user asked to replace")
    rc, err = _interrupt_when(
        ["textdiff", "fit", str(ds), "--out", str(out), "--backbone",
         str(make_tiny_backbone(tmp_path / "bb")), "--text-encoder",
         str(make_tiny_bert(tmp_path / "bert")), "--working-size", "32", "--epochs", "100000",
         "--steps", "10", "--max-length", "12", "--device", "cpu"], "train")
    assert rc == 130, err
    assert f"saved the latest head to {out}" in err
    hdr = read_bundle_header(out)                      # a real model now, not the old bytes
    assert hdr["kind"] == "textdiff" and hdr["meta"]["training"]["interrupted"] is True
    assert hdr["meta"]["training"]["steps_run"] >= 1


def test_ctrl_c_during_mgcc_train_saves_the_model(tmp_path):
    root = tmp_path / "busi"
    rng = np.random.default_rng(0)
    for cls, n in (("benign", 6), ("normal", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            m = np.zeros((40, 48), np.uint8)
            if cls == "benign":
                m[10:22, 12 + i:26 + i] = 255
            img = np.clip(60 + 0.6 * m + rng.normal(0, 10, m.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            Image.fromarray(m).save(root / cls / f"{cls} ({i})_mask.png")
    out = tmp_path / "m.safetensors"
    rc, err = _interrupt_when(
        ["mgcc", "train", str(root), "--width", "0.0625", "--size", "32", "--iterations",
         "100000", "--val-every", "2", "--batch-labeled", "2", "--batch-unlabeled", "2",
         "--val-fraction", "0.25", "--device", "cpu", "--out", str(out)], "validate")
    assert rc == 130, err
    assert f"saved the best validated model to {out}" in err
    hdr = read_bundle_header(out)
    assert hdr["kind"] == "mgcc" and hdr["meta"]["interrupted"] is True
    assert hdr["meta"]["best_iteration"] >= 2
    assert (tmp_path / "m_run" / "checkpoint.pt").is_file()      # and --resume still works


def test_ctrl_c_during_finetune_saves_the_model_so_far(tmp_path, tiny_mgcc_path):
    from conftest import blob_image

    data = tmp_path / "corrected"
    data.mkdir()
    for i in range(2):
        img, mask = blob_image(seed=i)
        io.write_image(data / f"c{i}.png", img)
        io.write_mask(data / f"c{i}_labels.tif", mask)
    out = tmp_path / "new.safetensors"
    rc, err = _interrupt_when(["finetune", str(tiny_mgcc_path), str(data), "--out", str(out),
                               "--epochs", "100000", "--device", "cpu"], "finetune ")
    assert rc == 130, err
    assert f"saved the model as far as it got to {out}" in err
    entry = read_bundle_header(out)["meta"]["finetunes"][-1]
    assert entry["interrupted"] is True and entry["steps_run"] >= 1
    assert entry["images"] == ["c0", "c1"]

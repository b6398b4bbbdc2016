"""``napari-textdiff mgcc train`` end to end on a tiny BUSI-layout folder."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_textdiff.cli import main
from napari_textdiff.core.bundle import read_bundle_header
from napari_textdiff.core.models import load_model


def _busi(root, n_benign=6, n_normal=2):
    rng = np.random.default_rng(0)
    for cls, n in (("benign", n_benign), ("normal", n_normal)):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(n):
            m = np.zeros((40, 48), np.uint8)
            if cls == "benign":
                m[10:22, 12 + i:26 + i] = 255
            img = np.clip(60 + 0.6 * m + rng.normal(0, 10, m.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{cls} ({i}).png")
            Image.fromarray(m).save(d / f"{cls} ({i})_mask.png")
    return root


def test_mgcc_train_cli(tmp_path, capsys):
    data = _busi(tmp_path / "busi")
    extra = tmp_path / "synth"
    extra.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 30), 90 + i, np.uint8)).save(extra / f"s{i}.png")
    out = tmp_path / "m.safetensors"
    rc = main(["mgcc", "train", str(data), "--labeled-fraction", "0.5", "--val-fraction", "0.25",
               "--synthetic", str(extra), "--width", "0.0625", "--size", "32",
               "--iterations", "4", "--val-every", "2", "--batch-labeled", "2",
               "--batch-unlabeled", "2", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_iteration"] in (2, 4)
    h = read_bundle_header(out)
    assert h["kind"] == "mgcc" and h["config"]["net"]["in_channels"] == 1   # gray PNGs
    assert h["meta"]["synthetic"] == 3 and len(h["meta"]["validation"]) == 2
    # 6 train cases (stratified): half keep masks, half become unlabeled
    assert h["meta"]["labeled"] == 3 and h["meta"]["unlabeled_real"] == 3
    assert (tmp_path / "m_run" / "checkpoint.pt").is_file()
    m = load_model(out, device="cpu")
    assert m.predict_proba(np.zeros((40, 48, 1), np.float32)).shape == (40, 48)


def test_mgcc_train_cli_errors(tmp_path, capsys):
    data = _busi(tmp_path / "busi", 2, 1)
    assert main(["mgcc", "train", str(data), "--labeled-fraction", "0", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "--labeled-fraction" in capsys.readouterr().err
    assert main(["mgcc", "train", str(data), "--synthetic", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err

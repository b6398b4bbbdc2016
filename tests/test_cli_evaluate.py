"""``napari-textdiff evaluate``: matching by stem, values, CSV/JSON output, clear errors."""
import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_textdiff.cli import main


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def case(tmp_path):
    """GT folder (images/ + masks/) with two images and a prediction folder."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    m1 = np.zeros((8, 8), np.uint8)
    m1[:4, :4] = 255                                    # 16 px
    m2 = np.zeros((8, 8), np.uint8)
    for n, m in (("one", m1), ("two", m2)):
        _png(gt / "images" / f"{n}.png", np.full((8, 8, 3), 100, np.uint8))
        _png(gt / "masks" / f"{n}.png", m)
    p1 = np.zeros((8, 8), np.uint8)
    p1[:4, :2] = 1                                      # TP 8, FN 8: IoU 0.5
    _png(pred / "one.png", p1 * 255)
    tifffile.imwrite(pred / "two_pred.tif", np.full((8, 8), 0.2, np.float32))  # empty @0.5
    return gt, pred, tmp_path


def test_evaluate_table_csv_json(case, capsys):
    gt, pred, tmp = case
    rc = main(["evaluate", str(pred), str(gt), "--csv", str(tmp / "o.csv"),
               "--json", str(tmp / "o.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "one" in out and "two" in out and "mean over 2 images" in out
    data = json.loads((tmp / "o.json").read_text())
    rows = {r["name"]: r for r in data["per_image"]}
    assert rows["one"]["iou"] == pytest.approx(0.5, abs=1e-5)
    assert rows["one"]["dice"] == pytest.approx(2 / 3, abs=1e-5)
    assert rows["two"]["iou"] == 1.0                   # empty on empty scores 1
    assert data["mean"]["iou"] == pytest.approx(0.75, abs=1e-5)
    assert data["mean"]["iou_std"] == pytest.approx(0.25, abs=1e-5)
    table = list(csv.reader(open(tmp / "o.csv")))
    assert table[0][:3] == ["name", "dice", "iou"]
    assert table[-2][0] == "mean" and float(table[-2][2]) == pytest.approx(0.75, abs=1e-5)


def test_threshold_and_masks_folder(case, capsys):
    gt, pred, _ = case
    rc = main(["evaluate", str(pred), str(gt / "masks"), "--threshold", "0.1", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    # 'two' is now all foreground on an empty mask: IoU ~0, mean IoU ~0.25
    assert "iou 0.2500" in out


def test_missing_prediction_is_a_clear_error(case, capsys):
    gt, pred, _ = case
    (pred / "two_pred.tif").unlink()
    rc = main(["evaluate", str(pred), str(gt)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no prediction" in err and "two" in err and "--allow-missing" in err
    assert main(["evaluate", str(pred), str(gt), "--allow-missing", "--quiet"]) == 0
    assert "mean over 1 images" in capsys.readouterr().out


def test_shape_mismatch_and_bad_folders(case, capsys):
    gt, pred, tmp = case
    _png(pred / "one.png", np.zeros((4, 4), np.uint8))
    assert main(["evaluate", str(pred), str(gt)]) == 2
    assert "one.png" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "nope"), str(gt)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp / "emptypred").mkdir()
    assert main(["evaluate", str(tmp / "emptypred"), str(gt)]) == 2
    assert "no predicted masks" in capsys.readouterr().err


def test_aji_and_busi_layout(tmp_path, capsys):
    root, pred = tmp_path / "busi", tmp_path / "pred"
    yy, xx = np.mgrid[:40, :60]
    discs = ((yy - 20) ** 2 + (xx - 18) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 <= 100)
    _png(root / "benign" / "benign (1).png", np.zeros((40, 60), np.uint8))
    _png(root / "benign" / "benign (1)_mask.png", (discs * 255).astype(np.uint8))
    _png(pred / "benign (1).png", (discs * 255).astype(np.uint8))
    assert main(["evaluate", str(pred), str(root), "--aji", "--json",
                 str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["per_image"][0]
    assert r["aji"] == pytest.approx(1.0) and r["dice"] == pytest.approx(1.0)


def test_help_lists_evaluate():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "napari_textdiff.cli", "evaluate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--threshold" in out and "pred" in out and "--aji" in out

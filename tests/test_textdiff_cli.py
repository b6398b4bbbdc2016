"""``napari-textdiff textdiff fit`` and ``segment`` end to end on a tiny folder dataset."""
import json

import numpy as np
import pytest

from napari_textdiff.cli import main
from napari_textdiff.core import io
from napari_textdiff.core.bundle import read_bundle_header
from textdiff_testkit import make_tiny_backbone, make_tiny_bert, shapes_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = root / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rows = ["image,description"]
    for i, ex in enumerate(shapes_set(6, seed=0)):
        io.write_image(ds / "images" / f"im{i}.png", (ex.image * 255).astype(np.uint8))
        io.write_mask(ds / "masks" / f"im{i}.png", ex.mask)
        rows.append(f"im{i}.png,{ex.text}")
    (ds / "descriptions.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "ds": ds, "bb": make_tiny_backbone(root / "bb"),
            "bert": make_tiny_bert(root / "bert")}


def test_fit_then_segment(data, capsys):
    out = data["root"] / "model.safetensors"
    rc = main(["textdiff", "fit", str(data["ds"]), "--shots", "4", "--seed", "1",
               "--out", str(out), "--backbone", str(data["bb"]), "--text-encoder",
               str(data["bert"]), "--working-size", "32", "--epochs", "3", "--steps", "10,50",
               "--max-length", "12", "--val-fraction", "0.25", "--device", "cpu"])
    assert rc == 0 and out.is_file()
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_run"] >= 1 and summary["final_loss"] > 0
    hdr = read_bundle_header(out)
    assert hdr["kind"] == "textdiff" and len(hdr["meta"]["training"]["images"]) == 4
    assert hdr["config"]["steps"] == [10, 50] and hdr["config"]["seed"] == 1

    imgs = sorted(str(p) for p in (data["ds"] / "images").glob("*.png"))[:2]
    seg = data["root"] / "seg"
    rc = main(["segment", *imgs, "--model", str(out), "--texts-from", str(data["ds"]),
               "--out", str(seg), "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "textdiff" and len(res["images"]) == 2 and res["predict_mean_s"] > 0
    m = io.read_mask(seg / "im0_mask.tif")
    assert m.shape == (32, 32) and m.dtype == np.uint8

    rc = main(["segment", imgs[0], "--model", str(out), "--text", "left", "--out", str(seg),
               "--instances", "--format", "png", "--resize", "--device", "cpu"])
    assert rc == 0 and (seg / "im0_mask.png").is_file()
    assert "instances" in json.loads(capsys.readouterr().out)["images"][0]


def test_errors_are_one_line(data, tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "missing.png"), "--model",
               str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    assert rc == 2 and "nope.safetensors" in capsys.readouterr().err
    rc = main(["textdiff", "fit", str(data["ds"]), "--out", str(tmp_path / "m.safetensors"),
               "--backbone", str(tmp_path / "no_backbone"), "--device", "cpu"])
    assert rc == 2 and "no_backbone" in capsys.readouterr().err

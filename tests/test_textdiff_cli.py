"""``napari-textdiff textdiff fit`` and ``segment`` end to end on a tiny folder dataset."""
import json

import numpy as np
import pytest

from napari_textdiff.cli import main
from napari_textdiff.core import io
from napari_textdiff.core.bundle import read_bundle_header
from textdiff_testkit import (make_tiny_backbone, make_tiny_bert, shapes_set,
                              write_folder_dataset)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = write_folder_dataset(root / "ds", shapes_set(6, seed=0))
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


def test_calibrate_stores_the_threshold_picked_on_named_images(data, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["textdiff", "fit", str(data["ds"]), "--shots", "4", "--seed", "0",
                 "--out", str(out), "--backbone", str(data["bb"]), "--text-encoder",
                 str(data["bert"]), "--working-size", "32", "--epochs", "2", "--steps", "10",
                 "--max-length", "12", "--val-fraction", "0.25", "--device", "cpu"]) == 0
    capsys.readouterr()
    hdr = read_bundle_header(out)
    val = hdr["meta"]["training"]["val_names"]         # fit records its validation images
    assert len(val) == 1 and val[0] in hdr["meta"]["training"]["images"]
    cal = tmp_path / "calibrated.safetensors"
    rc = main(["calibrate", str(data["ds"]), "--model", str(out), "--names", "im4,im5",
               "--grid", "0.3,0.5,0.7", "--out", str(cal), "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["threshold"] in (0.3, 0.5, 0.7) and res["n_images"] == 2
    assert res["dice"] >= res["dice_at_previous"] and res["previous"] == 0.5
    h2 = read_bundle_header(cal)
    assert h2["config"]["threshold"] == res["threshold"]
    assert h2["meta"]["threshold_tuning"]["images"] == ["im4", "im5"]
    assert read_bundle_header(out)["config"]["threshold"] == 0.5     # --out left it alone
    # a one-value grid must end up in the TextDiff config (set_threshold really stores it)
    assert main(["calibrate", str(data["ds"]), "--model", str(out), "--names", "im4,im5",
                 "--grid", "0.3", "--out", str(cal), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert read_bundle_header(cal)["config"]["threshold"] == 0.3
    # without --names: the model's recorded validation images; a dry run saves nothing
    assert main(["calibrate", str(data["ds"]), "--model", str(out), "--dry-run",
                 "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["model"] is None and res["n_images"] == 1
    assert "recorded validation" in cap.err and "trained the model" not in cap.err
    # calibrating on a training image is allowed but warned about
    trained = [n for n in hdr["meta"]["training"]["images"] if n not in val]
    assert main(["calibrate", str(data["ds"]), "--model", str(out), "--names", trained[0],
                 "--dry-run", "--device", "cpu"]) == 0
    assert "1 of these images trained the model" in capsys.readouterr().err
    # an unknown name is a one-line error
    assert main(["calibrate", str(data["ds"]), "--model", str(out), "--names", "nope",
                 "--device", "cpu"]) == 2
    assert "no labelled image named nope" in capsys.readouterr().err


def test_fit_can_calibrate_on_its_validation_split(data, tmp_path, capsys):
    args = ["textdiff", "fit", str(data["ds"]), "--shots", "4", "--seed", "0",
            "--backbone", str(data["bb"]), "--text-encoder", str(data["bert"]),
            "--working-size", "32", "--epochs", "1", "--steps", "10", "--max-length", "12",
            "--device", "cpu", "--calibrate"]
    out = tmp_path / "m.safetensors"
    assert main([*args, "--out", str(out), "--val-fraction", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    hdr = read_bundle_header(out)
    tuning = hdr["meta"]["threshold_tuning"]
    assert tuning["images"] == hdr["meta"]["training"]["val_names"] and tuning["n_images"] == 2
    assert hdr["config"]["threshold"] == summary["threshold"] == tuning["threshold"]
    # one training image cannot be split: the trained model is still saved, uncalibrated
    one = tmp_path / "one.safetensors"
    one_args = [a if a != "4" else "1" for a in args]
    assert main([*one_args, "--out", str(one), "--val-fraction", "0.5"]) == 0
    assert "--calibrate skipped" in capsys.readouterr().err
    assert read_bundle_header(one)["config"]["threshold"] == 0.5
    assert "threshold_tuning" not in read_bundle_header(one)["meta"]
    # without validation images there is nothing to calibrate on: refused before training
    assert main([*args, "--out", str(tmp_path / "none.safetensors")]) == 2
    assert "--val-fraction" in capsys.readouterr().err
    assert not (tmp_path / "none.safetensors").exists()


def test_errors_are_one_line(data, tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "missing.png"), "--model",
               str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    assert rc == 2 and "nope.safetensors" in capsys.readouterr().err
    rc = main(["textdiff", "fit", str(data["ds"]), "--out", str(tmp_path / "m.safetensors"),
               "--backbone", str(tmp_path / "no_backbone"), "--device", "cpu"])
    assert rc == 2 and "no_backbone" in capsys.readouterr().err


def test_fit_with_the_histology_recipe_preset(data, capsys):
    """``--preset histology``: the light head at scale 0.5 with stain normalisation, stored in
    the file, and the fitted model segments at the images' own size."""
    out = data["root"] / "recipe.safetensors"
    rc = main(["textdiff", "fit", str(data["ds"]), "--shots", "3", "--preset", "histology",
               "--out", str(out), "--backbone", str(data["bb"]), "--text-encoder",
               str(data["bert"]), "--working-size", "32", "--epochs", "2", "--steps", "10",
               "--max-length", "12", "--device", "cpu"])
    assert rc == 0
    capsys.readouterr()
    c = read_bundle_header(out)["config"]
    assert (c["head"], c["scale"], c["stain_norm"], c["features"]) == \
        ("light", 0.5, "reinhard", "both")
    img = sorted(str(p) for p in (data["ds"] / "images").glob("*.png"))[0]
    rc = main(["segment", img, "--model", str(out), "--text", "x", "--out",
               str(data["root"] / "seg2"), "--device", "cpu"])
    assert rc == 0 and io.read_mask(data["root"] / "seg2" / "im0_mask.tif").shape == (32, 32)

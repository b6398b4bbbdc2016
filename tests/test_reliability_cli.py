"""Issue 18 fault trial, the command-line half: each test is one item of the trial and failed
before its fix (see docs/RELIABILITY.md). Models are tiny and made here."""
import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_textdiff.cli import main
from napari_textdiff.core import io


@pytest.fixture(scope="module")
def mgcc_model(tmp_path_factory):
    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.mgcc.network import MGCCConfig, MGCCNet

    import torch
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("mgcc") / "m.safetensors"
    MGCCModel(MGCCNet(MGCCConfig(in_channels=1, width=0.0625, aux=False)), size=32).save(p)
    return p


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@contextlib.contextmanager
def read_only_folder(path):
    """A folder nobody may write to: chmod for a normal user; root ignores permissions, so
    there a read-only tmpfs is mounted (skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("root without mount rights: cannot make a read-only folder")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


# ---------------------------------------------------------------- 2: inputs of one stem
def test_segment_never_overwrites_another_inputs_result(tmp_path, mgcc_model, capsys):
    rng = np.random.default_rng(0)
    a = _png(tmp_path / "in" / "full.png", rng.integers(0, 255, (40, 40), np.uint8))
    b = _png(tmp_path / "in" / "sub" / "full.png", np.zeros((24, 30), np.uint8))
    c = _png(tmp_path / "in" / "x.png", np.zeros((8, 8), np.uint8))
    d = tmp_path / "in" / "x.tif"
    tifffile.imwrite(d, np.zeros((12, 12), np.uint8))
    out = tmp_path / "out"
    assert main(["segment", str(a), str(b), str(c), str(d), "--model", str(mgcc_model),
                 "--out", str(out), "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    masks = [r["mask"] for r in json.loads(cap.out)["images"]]
    assert len(set(masks)) == 4                                 # four distinct files
    shapes = {os.path.basename(m): io.read_mask(m).shape for m in masks}
    assert shapes == {"full_png_mask.tif": (40, 40), "sub_full_png_mask.tif": (24, 30),
                      "x_png_mask.tif": (8, 8), "x_tif_mask.tif": (12, 12)}
    assert "another input has the stem" in cap.err


def test_output_stems_refuse_what_they_cannot_tell_apart(tmp_path):
    from napari_textdiff.cli._common import output_stems

    assert output_stems(["a/b.png", "c.png"]) == ["b", "c"]
    assert output_stems(["A.png", "a.tif"]) == ["A_png", "a_tif"]      # case-blind disks
    with pytest.raises(ValueError, match="would both write"):
        output_stems(["x.png", "x.tif", "x_png.png"])


# ---------------------------------------------------------------- 3: outputs checked up front
def test_unwritable_outputs_fail_before_any_work(tmp_path, mgcc_model, capsys):
    img = _png(tmp_path / "im.png", np.zeros((16, 16), np.uint8))
    with read_only_folder(tmp_path / "ro") as ro:
        assert main(["segment", str(img), "--model", str(mgcc_model), "--out",
                     str(ro / "pred"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert str(ro / "pred") in err and ".tmp" not in err
        # textdiff fit: refused before the dataset is even read (nothing trained, then lost)
        assert main(["textdiff", "fit", str(tmp_path / "no_data"), "--out",
                     str(ro / "m.safetensors"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert str(ro / "m.safetensors") in err and "no_data" not in err
        # calibrate: refused before predicting (the threshold would have been lost)
        assert main(["calibrate", str(tmp_path / "no_data"), "--model", str(mgcc_model),
                     "--out", str(ro / "c.safetensors"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert str(ro / "c.safetensors") in err and "no_data" not in err
        assert main(["mgcc", "train", str(tmp_path / "no_data"), "--out",
                     str(ro / "g.safetensors"), "--device", "cpu"]) == 2
        assert str(ro / "g.safetensors") in capsys.readouterr().err
        assert main(["evaluate", str(tmp_path / "nopred"), str(tmp_path / "nogt"), "--csv",
                     str(ro / "s.csv")]) == 2
        assert str(ro / "s.csv") in capsys.readouterr().err


# ---------------------------------------------------------------- 4 + 14: disk full mid-write
def _eval_case(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for n in ("one", "two", "three"):
        _png(gt / "images" / f"{n}.png", np.full((8, 8, 3), 100, np.uint8))
        _png(gt / "masks" / f"{n}.png", np.eye(8, dtype=np.uint8) * 255)
        _png(pred / f"{n}.png", np.eye(8, dtype=np.uint8) * 255)
    return gt, pred


def test_evaluate_csv_survives_a_full_disk(tmp_path):
    import resource
    import signal

    gt, pred = _eval_case(tmp_path)
    old = "name,dice\n" + "previous,0.5\n" * 20
    (tmp_path / "o.csv").write_text(old)

    def small_disk():                  # writes past 100 bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    r = subprocess.run([sys.executable, "-m", "napari_textdiff.cli", "evaluate", str(pred),
                        str(gt), "--quiet", "--csv", str(tmp_path / "o.csv")],
                       capture_output=True, text=True, preexec_fn=small_disk,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 2
    assert (tmp_path / "o.csv").read_text() == old            # the old CSV is whole
    assert str(tmp_path / "o.csv") in r.stderr and ".tmp" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["gt", "o.csv", "pred"]   # no temp left


# ---------------------------------------------------------------- 9: thresholds outside [0, 1]
@pytest.mark.parametrize("bad", ["nan", "inf", "2", "-1"])
def test_thresholds_outside_0_1_are_refused(tmp_path, mgcc_model, capsys, bad):
    img = _png(tmp_path / "im.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(SystemExit) as e:
        main(["segment", str(img), "--model", str(mgcc_model), "--out", str(tmp_path / "o"),
              "--threshold", bad])
    assert e.value.code == 2 and "outside [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    if bad in ("nan", "inf"):
        with pytest.raises(SystemExit):
            main(["evaluate", str(tmp_path), str(tmp_path), "--threshold", bad])
        assert "finite" in capsys.readouterr().err


# ---------------------------------------------------------------- 12: --plane / --backbone
def test_segment_has_plane(tmp_path, mgcc_model, capsys):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.stack([np.zeros((20, 20), np.uint8), np.full((20, 20), 9, np.uint8)]))
    assert main(["segment", str(p), "--model", str(mgcc_model), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    assert "--plane" in capsys.readouterr().err
    assert main(["segment", str(p), "--model", str(mgcc_model), "--out", str(tmp_path / "o"),
                 "--plane", "1", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["height"] == 20
    assert main(["segment", str(p), "--model", str(mgcc_model), "--out", str(tmp_path / "o"),
                 "--plane", "2", "--device", "cpu"]) == 2
    assert "plane 2 is out of range" in capsys.readouterr().err


def test_segment_and_calibrate_take_backbone(tmp_path, capsys):
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel
    from textdiff_testkit import make_tiny_backbone

    bb = make_tiny_backbone(tmp_path / "bb")
    cfg = TextDiffConfig.preset("cpu", text_mode="none", working_size=32, steps=[10])
    model_path = tmp_path / "models" / "m.safetensors"
    TextDiffModel.create(cfg, backbone=bb, device="cpu").save(model_path)
    moved = tmp_path / "elsewhere" / "bb"
    moved.parent.mkdir()
    shutil.move(str(bb), str(moved))
    img = _png(tmp_path / "im.png", np.zeros((32, 32, 3), np.uint8))
    args = ["segment", str(img), "--model", str(model_path), "--out", str(tmp_path / "o"),
            "--device", "cpu"]
    assert main(args) == 2
    assert "On the command line: --backbone FOLDER" in capsys.readouterr().err
    assert main(args + ["--backbone", str(moved)]) == 0
    assert (tmp_path / "o" / "im_mask.tif").is_file()


# ---------------------------------------------------------------- 15: AJI of probability maps
def test_evaluate_aji_accepts_probability_maps(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    yy, xx = np.mgrid[:40, :60]
    discs = ((yy - 20) ** 2 + (xx - 15) ** 2 <= 64) | ((yy - 20) ** 2 + (xx - 42) ** 2 <= 64)
    _png(gt / "images" / "a.png", np.zeros((40, 60, 3), np.uint8))
    _png(gt / "masks" / "a.png", (discs * 255).astype(np.uint8))
    pred.mkdir()
    tifffile.imwrite(pred / "a.tif", np.where(discs, 0.9, 0.1).astype(np.float32))
    assert main(["evaluate", str(pred), str(gt), "--aji", "--json",
                 str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())["per_image"][0]
    assert r["aji"] == pytest.approx(1.0) and r["dice"] == pytest.approx(1.0)

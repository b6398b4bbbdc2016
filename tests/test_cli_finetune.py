"""``napari-textdiff finetune MODEL DATA --out NEW`` on corrected masks, and ``textdiff fit``
on the bundled backbone when ``--backbone`` is not given."""
import json

import numpy as np

from napari_textdiff.cli import main
from napari_textdiff.core import io
from napari_textdiff.core.bundle import read_bundle_header
from napari_textdiff.core.finetune_defaults import finetune_defaults
from napari_textdiff.core.models import load_model
from textdiff_testkit import make_tiny_backbone, shapes_set, write_folder_dataset

from conftest import blob_image


def _saved_labels_folder(root, n=3):
    """Images beside ``NAME_labels.tif`` + sidecar, as napari's "Save labels…" leaves them."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = blob_image(seed=i, centers=((14, 14 + 2 * i), (34, 30)))
        io.write_image(root / f"cells{i}.png", img)
        io.write_mask(root / f"cells{i}_labels.tif", mask)
        (root / f"cells{i}_labels.tif.json").write_text(json.dumps(
            {"kind": "labels", "description": f"two bright cells, image {i}"}))
    return root


def test_finetune_mgcc_on_saved_labels_with_the_library_defaults(tiny_mgcc_path, tmp_path,
                                                                 capsys):
    data = _saved_labels_folder(tmp_path / "corrected")
    out = tmp_path / "new.safetensors"
    before = load_model(tiny_mgcc_path, device="cpu").net.main_decoder.head.weight.clone()
    assert main(["finetune", str(tiny_mgcc_path), str(data), "--out", str(out),
                 "--epochs", "2", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["kind"] == "mgcc" and res["images"] == 3
    assert res["settings"] == {**finetune_defaults("mgcc"), "epochs": 2}
    after = load_model(out, device="cpu")
    assert not np.allclose(after.net.main_decoder.head.weight.detach(), before.detach())
    log = read_bundle_header(out)["meta"]["finetunes"]
    assert log[-1]["images"] == ["cells0", "cells1", "cells2"]
    assert read_bundle_header(tiny_mgcc_path)["meta"].get("finetunes") is None  # untouched


def test_finetune_textdiff_reads_the_descriptions(tiny_textdiff_path, tmp_path, capsys):
    ds = write_folder_dataset(tmp_path / "ds", shapes_set(2, seed=3))
    out = tmp_path / "td.safetensors"
    assert main(["finetune", str(tiny_textdiff_path), str(ds), "--out", str(out),
                 "--epochs", "1", "--names", "im1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "no description" not in captured.err
    assert json.loads(captured.out)["settings"] == {**finetune_defaults("textdiff"), "epochs": 1}
    entry = read_bundle_header(out)["meta"]["finetunes"][-1]
    assert entry["images"] == ["im1"] and entry["epochs"] == 1


def test_finetune_checks_the_output_before_any_work(tiny_mgcc_path, tmp_path, capsys):
    data = _saved_labels_folder(tmp_path / "corrected", n=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["finetune", str(tiny_mgcc_path), str(data), "--out",
               str(blocker / "new.safetensors"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write" in err and "fine-tuning" not in err
    assert main(["finetune", str(tiny_mgcc_path), str(data), "--out",
                 str(tmp_path / "n.safetensors"), "--names", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_fit_without_backbone_uses_the_bundled_one_and_says_so(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    make_tiny_backbone(models / "backbone")
    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(models))
    ds = write_folder_dataset(tmp_path / "ds", shapes_set(2, seed=0), descriptions=False)
    out = tmp_path / "m.safetensors"
    assert main(["textdiff", "fit", str(ds), "--out", str(out), "--text-mode", "none",
                 "--working-size", "32", "--epochs", "1", "--steps", "10",
                 "--device", "cpu"]) == 0
    assert f"using the bundled backbone {models / 'backbone'}" in capsys.readouterr().err
    assert read_bundle_header(out)["config"]["backbone"] == str((models / "backbone").resolve())


def test_fit_without_any_backbone_names_the_option(tmp_path, capsys):
    ds = write_folder_dataset(tmp_path / "ds", shapes_set(1, seed=0), descriptions=False)
    assert main(["textdiff", "fit", str(ds), "--out", str(tmp_path / "m.safetensors"),
                 "--text-mode", "none", "--device", "cpu"]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_finetune_part_norm_trains_the_batchnorm_scales_not_the_kernels(tiny_mgcc_path, tmp_path,
                                                                        capsys):
    """`--part norm` (another scanner): BatchNorm scales/shifts + output layer move, convs do not."""
    import torch

    data = _saved_labels_folder(tmp_path / "corrected")
    out = tmp_path / "norm.safetensors"
    start = load_model(tiny_mgcc_path, device="cpu").net
    assert main(["finetune", str(tiny_mgcc_path), str(data), "--out", str(out), "--part", "norm",
                 "--epochs", "2", "--device", "cpu"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings == {**finetune_defaults("mgcc", "norm"), "epochs": 2}   # the part's lr
    assert settings["train"] == "norm" and settings["lr"] == 2e-3
    after = load_model(out, device="cpu").net
    a, b = start.state_dict(), after.state_dict()
    bn = [n for n, m in after.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.allclose(a[f"{n}.weight"], b[f"{n}.weight"]) for n in bn)
    convs = [n for n, m in after.named_modules() if isinstance(m, torch.nn.Conv2d)
             and not n.startswith("main_decoder.head")]
    assert all(torch.allclose(a[f"{n}.weight"], b[f"{n}.weight"]) for n in convs)


def test_finetune_part_auto_decides_from_the_images_and_records_it(tiny_mgcc_path, tmp_path,
                                                                  capsys):
    """`--part auto`: the model's BatchNorm statistics choose the part; the file records which
    one and the score, and the printed settings leave epochs / lr to that choice."""
    data = _saved_labels_folder(tmp_path / "corrected")
    out = tmp_path / "auto.safetensors"
    assert main(["finetune", str(tiny_mgcc_path), str(data), "--out", str(out), "--part", "auto",
                 "--epochs", "1", "--device", "cpu"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["train"] == "auto" and settings["epochs"] == 1 and settings["lr"] is None
    last = load_model(out, device="cpu").meta["last_finetune"]
    assert last["part"] in ("output", "norm") and last["shift"] >= 0


def test_finetune_part_is_refused_for_textdiff(tiny_textdiff_path, tmp_path, capsys):
    ds = write_folder_dataset(tmp_path / "ds", shapes_set(1, seed=3))
    assert main(["finetune", str(tiny_textdiff_path), str(ds), "--out",
                 str(tmp_path / "x.safetensors"), "--part", "norm", "--device", "cpu"]) != 0
    assert "--part applies to MGCC models" in capsys.readouterr().err

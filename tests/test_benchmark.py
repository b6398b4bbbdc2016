"""Benchmark command: tiny synthetic datasets in the real layouts, --quick sizes, tiny models."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from textdiff_testkit import make_tiny_bert  # noqa: E402


def _blobs(rng, size, n=3, gray=False):
    img = rng.normal(0.35, 0.05, (size, size, 3)).clip(0, 1)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        r = rng.integers(size // 10, size // 6 + 1)
        cy, cx = rng.integers(r, size - r, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[m] = 0.85
        mask[m] = 255
    img = (img * 255).astype(np.uint8)
    return (img[..., 0] if gray else img), mask


def make_monuseg(root: Path, n_train=4, n_test=2, size=64):
    import openpyxl

    rng = np.random.default_rng(0)
    for folder, n in (("Train_Folder", n_train), ("Val_Folder", n_test)):
        (root / folder / "img").mkdir(parents=True)
        (root / folder / "labelcol").mkdir()
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(["Image", "Description"])
        for i in range(n):
            name = f"{folder[:2]}-{i}.png"
            img, mask = _blobs(rng, size)
            Image.fromarray(img).save(root / folder / "img" / name)
            Image.fromarray(mask).save(root / folder / "labelcol" / name)
            ws.append([name, "the nuclei density in the upper right is high"])
        wb.save(root / folder / f"{folder}_text.xlsx")
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def monuseg_run(tmp_path_factory, tiny_bert):
    from napari_textdiff.cli import main

    tmp = tmp_path_factory.mktemp("monuseg")
    data = make_monuseg(tmp / "data")
    out = tmp / "out"
    rc = main(["benchmark", "monuseg", "--data", str(data), "--test-split", "Val_Folder",
               "--quick", "--out", str(out), "--size", "32", "--tile-overlap", "8",
               "--text-encoder", str(tiny_bert), "--k", "2", "--seeds", "0,1",
               "--epochs", "2", "--unet-iterations", "6", "--mgcc-iterations", "3",
               "--threads", "1", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out, json.loads((out / "monuseg.json").read_text())


def test_monuseg_quick_writes_all_rows(monuseg_run):
    out, res = monuseg_run
    methods = {"textdiff", "textdiff_no_text", "textdiff_no_xattn", "unet", "mgcc_light"}
    got = {(r["method"], r["protocol"], r["k"], r["seed"]) for r in res["rows"]}
    assert got == {(m, p, k, s) for m in methods for p in ("paper", "tiles")
                   for k in (2,) for s in (0, 1)}
    for r in res["rows"]:
        assert len(r["per_image"]) == 2                     # the 2 Val_Folder images
        assert 0 <= r["metrics"]["dice"] <= 1 and 0 <= r["metrics"]["iou"] <= 1
        assert r["metrics"]["dice"] >= r["metrics"]["iou"] - 1e-9
        assert len(r["train_images"]) == r["k"]
        assert r["curve"]["loss"] and all(np.isfinite(r["curve"]["loss"]))
    # seeds draw different subsets, the same for every method
    by = {}
    for r in res["rows"]:
        by.setdefault((r["protocol"], r["k"], r["seed"]), set()).add(tuple(r["train_images"]))
    assert all(len(v) == 1 for v in by.values())
    assert by[("paper", 2, 0)] == by[("tiles", 2, 0)] != by[("paper", 2, 1)]
    # summary = mean / std over seeds of the per-seed means
    s = next(x for x in res["summary"] if (x["method"], x["protocol"], x["k"]) ==
             ("unet", "paper", 2))
    per = [r["metrics"]["dice"] for r in res["rows"]
           if (r["method"], r["protocol"], r["k"]) == ("unet", "paper", 2)]
    assert s["dice"] == pytest.approx(np.mean(per)) and s["dice_std"] == pytest.approx(np.std(per))
    # provenance
    run = res["run"]
    assert "benchmark monuseg" in run["command"] and run["seeds"] == [0, 1]
    assert run["torch"] and run["device"] == "cpu" and run["config"]["k"] == [2]
    assert res["backbone"]["source"] == "random-init" and res["wall_seconds"] > 0
    # the memo made TextDiff variants / seeds reuse features
    assert res["feature_memo"]["hits"] > res["feature_memo"]["misses"]
    for f in ("monuseg.md", "monuseg_dice_vs_k.png", "monuseg_iou_vs_k.png",
              "monuseg_learning_curves.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "monuseg.md").read_text()
    assert "TextDiff without text" in md and "78.67" in md


def test_report_rewrites_only_the_block(monuseg_run, tmp_path):
    from napari_textdiff.cli import main
    from napari_textdiff.core.benchmark.report import END, START

    out, res = monuseg_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{START}\nold numbers\n{END}\n\n## After\n")
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\n## After\n")
    assert "old numbers" not in text and "MoNuSeg few-shot" in text
    assert res["run"]["device_description"] in text
    first = text
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == first                      # idempotent
    bad = tmp_path / "bad.md"
    bad.write_text("no markers")
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(bad)]) == 2


def test_feature_memo_matches_fresh_features():
    from napari_textdiff.core.benchmark.common import FeatureMemo
    from napari_textdiff.core.textdiff.features import DiffusionFeatures, random_backbone

    feats = DiffusionFeatures(random_backbone("tiny", 3, 32), device="cpu")
    memo = FeatureMemo(feats, ram_mb=0.05)          # tiny RAM: forces the disk spill
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    a = memo(x, batch_size=2)
    b = memo(x[[2, 0]], batch_size=2)
    ref = feats(x)
    for fa, fb, fr in zip(a, b, ref):
        np.testing.assert_allclose(fa.numpy(), fr.numpy(), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(fb.numpy(), fa.numpy()[[2, 0]])
    assert memo.stats()["hits"] == 2 and memo.stats()["misses"] == 3
    assert memo.stats()["disk_entries"] > 0
    memo.close()


def test_unet_baseline_learns_and_crops_cover():
    from napari_textdiff.core.benchmark.baselines import (SupervisedConfig, UNetConfig,
                                                          crops_of, train_unet)
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.progress import run

    rng = np.random.default_rng(1)
    ex = []
    for i in range(3):
        img, m = _blobs(rng, 48)
        ex.append(Example(img.astype(np.float32) / 255, (m > 0).astype(np.uint8), "", str(i)))
    crops = crops_of(ex, 32, 8)
    assert len(crops) == 3 * 4 and all(c.image.shape == (32, 32, 3) for c in crops)
    model, losses = run(train_unet(ex, config=SupervisedConfig(iterations=40, size=32,
                                                              batch_size=3, lr=3e-3),
                                   net_config=UNetConfig(width=0.125), device="cpu"))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    p = model.predict_proba(ex[0].image)
    assert p.shape == (48, 48) and 0 <= p.min() and p.max() <= 1


def test_cli_help_does_not_import_torch():
    import subprocess

    code = ("import sys; from napari_textdiff.cli import build_parser; build_parser(); "
            "import napari_textdiff.cli.benchmark; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr

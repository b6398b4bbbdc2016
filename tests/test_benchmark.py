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
from benchmark_datasets import blobs, make_busi, make_monuseg, make_xray  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def monuseg_run(tmp_path_factory, tiny_bert):
    from napari_textdiff.cli import main

    tmp = tmp_path_factory.mktemp("monuseg")
    data = make_monuseg(tmp / "data")
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:   # module fixture: runs before conftest's isolation
        mp.setenv("NAPARI_TEXTDIFF_MODELS", str(tmp / "no_models"))
        rc = main(["benchmark", "monuseg", "--data", str(data), "--test-split", "Val_Folder",
                   "--quick", "--out", str(out), "--size", "32", "--tile-overlap", "8",
                   "--backbone-preset", "tiny",
                   "--text-encoder", str(tiny_bert), "--k", "2", "--seeds", "0,1",
                   "--epochs", "2", "--unet-iterations", "6", "--mgcc-iterations", "3",
                   "--threads", "1", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out, json.loads((out / "monuseg.json").read_text())


def test_monuseg_quick_writes_all_rows(monuseg_run):
    out, res = monuseg_run
    methods = {"textdiff", "textdiff_no_text", "textdiff_no_xattn", "unet", "mgcc_light",
               "random_forest"}
    got = {(r["method"], r["protocol"], r["k"], r["seed"]) for r in res["rows"]}
    assert got == {(m, p, k, s) for m in methods for p in ("paper", "tiles")
                   for k in (2,) for s in (0, 1)}
    for r in res["rows"]:
        assert len(r["per_image"]) == 2                     # the 2 Val_Folder images
        assert 0 <= r["metrics"]["dice"] <= 1 and 0 <= r["metrics"]["iou"] <= 1
        assert r["metrics"]["dice"] >= r["metrics"]["iou"] - 1e-9
        assert len(r["train_images"]) == r["k"]
        if r["method"] != "random_forest":                  # a forest has no loss curve
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
    assert s["dice"] == pytest.approx(np.mean(per)) and s["dice_std"] == pytest.approx(np.std(per, ddof=1))
    # provenance
    run = res["run"]
    assert "benchmark monuseg" in run["command"] and run["seeds"] == [0, 1]
    assert run["torch"] and run["device"] == "cpu" and run["config"]["k"] == [2]
    assert res["backbone"]["source"] == "random-init" and res["wall_seconds"] > 0
    # the memo made TextDiff variants / seeds reuse features
    assert res["feature_memo"]["hits"] > res["feature_memo"]["misses"]
    # ... and each TextDiff row says how much of its time was fresh features: they add up to
    # the memo's total, and only the first unit per protocol pays for the test images
    fresh = [r["fresh_feature_seconds"] for r in res["rows"] if r["method"].startswith("textdiff")]
    assert len(fresh) == 12 and all(f["train"] >= 0 and f["predict"] >= 0 for f in fresh)
    assert sum(f["train"] + f["predict"] for f in fresh) == pytest.approx(
        res["feature_memo"]["compute_seconds"], abs=0.1)
    assert 1 <= sum(f["predict"] > 0 for f in fresh) <= 2
    assert all("fresh_feature_seconds" not in r for r in res["rows"]
               if not r["method"].startswith("textdiff"))
    for f in ("monuseg.md", "monuseg_dice_vs_k.png", "monuseg_iou_vs_k.png",
              "monuseg_learning_curves.png"):
        assert (out / f).stat().st_size > 0
    md = (out / "monuseg.md").read_text()
    assert "TextDiff without text" in md and "78.67" in md and "classic peer" in md
    # the forest separates the bright blobs: the peer is a real classifier, not a stub
    rf = [r for r in res["rows"] if r["method"] == "random_forest"]
    assert len(rf) == 4 and all(r["metrics"]["dice"] > 0.8 for r in rf)
    assert all(r["features"] == 3 * 20 for r in rf)          # 20 filters per RGB channel


def test_report_rewrites_only_the_block(monuseg_run, tmp_path):
    from napari_textdiff.cli import main
    from napari_textdiff.benchmark.report import END, START

    out, res = monuseg_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{START}\nold numbers\n{END}\n\n## After\n")
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\n## After\n")
    assert "old numbers" not in text and "MoNuSeg few-shot" in text
    assert res["run"]["device_description"] in text
    rel = Path(__import__("os").path.relpath(out, tmp_path)).as_posix()
    assert f"![monuseg_dice_vs_k]({rel}/monuseg_dice_vs_k.png)" in text   # plots, linked
    first = text
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == first                      # idempotent
    bad = tmp_path / "bad.md"
    bad.write_text("no markers")
    assert main(["benchmark", "report", "--results", str(out), "--readme", str(bad)]) == 2


def test_feature_memo_matches_fresh_features():
    from napari_textdiff.benchmark.common import FeatureMemo
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
    from napari_textdiff.benchmark.baselines import (SupervisedConfig, UNetConfig,
                                                          crops_of, train_unet)
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.progress import run

    rng = np.random.default_rng(1)
    ex = []
    for i in range(3):
        img, m = blobs(rng, 48)
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


def test_busi_quick_with_synthetic_folder(tmp_path):
    from napari_textdiff.cli import main

    data = make_busi(tmp_path / "busi")
    synth = tmp_path / "synth"
    synth.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(blobs(rng, 48, 1, gray=True)[0]).save(synth / f"sample_{i:05d}.png")
    out = tmp_path / "out"
    assert main(["benchmark", "busi", "--data", str(data), "--quick", "--out", str(out),
                 "--size", "32", "--iterations", "3", "--synthetic", str(synth),
                 "--seeds", "0,1", "--threads", "1", "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "busi.json").read_text())
    assert {(r["method"], r["seed"]) for r in res["rows"]} == \
        {(m, s) for m in ("mgcc_50", "mgcc_50_synthetic", "unet_full") for s in (0, 1)}
    d = res["data"]
    assert d["n_cases"] == 15 and d["n_test"] == 6 and d["n_train"] + d["n_val"] + 6 == 15
    for r in res["rows"]:
        assert r["n_test"] == 6 and len(r["per_image"]) == 6
        assert {p["class"] for p in r["per_image"]} == {"benign", "malignant", "normal"}
        for k in ("iou", "recall", "precision", "f1"):
            assert 0 <= r["metrics"][k] <= 1
    rows = {(r["method"], r["seed"]): r for r in res["rows"]}
    assert rows[("mgcc_50_synthetic", 0)]["n_unlabeled"] == \
        rows[("mgcc_50", 0)]["n_unlabeled"] + 4
    assert rows[("unet_full", 0)]["n_labeled"] > rows[("mgcc_50", 0)]["n_labeled"]
    assert "no official split" in res["split_note"]
    assert res["synthetic"] == {"source": "folder", "path": str(synth), "n": 4}
    md = (out / "busi.md").read_text()
    assert "68.06" in md and "69.69" in md and (out / "busi_iou.png").is_file()


def test_xray_quick(tmp_path, tiny_bert):
    from napari_textdiff.cli import main

    data = make_xray(tmp_path / "xray")
    out = tmp_path / "out"
    assert main(["benchmark", "xray", "--data", str(data), "--quick", "--out", str(out),
                 "--size", "32", "--k", "2,all", "--text-encoder", str(tiny_bert),
                 "--backbone-preset", "tiny",
                 "--epochs", "2", "--threads", "1", "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "xray.json").read_text())
    assert res["data"]["n_images"] == 6 and res["data"]["n_train"] == 4
    got = {(r["method"], r["k"]) for r in res["rows"]}
    assert got == {(m, k) for m in ("textdiff_notes", "textdiff_no_notes") for k in (2, 4)}
    for r in res["rows"]:
        assert len(r["per_image"]) == 2 and len(r["train_images"]) == r["k"]
        assert set(r["train_images"]).isdisjoint(res["data"]["test_images"])
    fresh = [r["fresh_feature_seconds"] for r in res["rows"]]
    assert sum(f["train"] + f["predict"] for f in fresh) == pytest.approx(
        res["feature_memo"]["compute_seconds"], abs=0.1)
    assert sum(f["predict"] > 0 for f in fresh) == 1      # test features: first unit only
    assert (out / "xray_dice_vs_k.png").is_file()


def test_speed_quick(tmp_path, tiny_bert):
    from napari_textdiff.cli import main

    out = tmp_path / "out"
    assert main(["benchmark", "speed", "--quick", "--out", str(out), "--text-encoder",
                 str(tiny_bert), "--backbone-preset", "tiny", "--tile", "64", "--threads", "1",
                 "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "speed.json").read_text())
    ms = res["measures"]
    tile = [k for k in ms if k.startswith("TextDiff total per 64²")]
    assert tile and ms[tile[0]]["value"] > 0
    assert any(k.startswith("MGCC width 0.25 per 64²") for k in ms)
    assert any(k.startswith("LDM sampling per image") for k in ms)
    assert any(k.startswith("TextDiff fine-tune on 5 images") for k in ms)
    assert ms["peak memory (process peak RSS)"]["value"] > 0
    thr = [k for k in ms if "batched throughput" in k]       # MGCC batch-1 and batched
    assert thr and ms[thr[0]]["unit"] == "images/s" and ms[thr[0]]["value"] > 0
    assert res["precision"].startswith("cpu: fp32")
    assert res["ldm"]["source"] in ("untrained", "bundled") and res["run"]["torch"]
    assert (out / "speed.md").is_file() and (out / "speed_latency.png").is_file()


def test_busi_samples_synthetic_images_from_an_ldm(tmp_path):
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi
    from napari_textdiff.benchmark.speed import _untrained_ldm
    from napari_textdiff.core.progress import run

    ldm = _untrained_ldm("tiny", tmp_path / "ldm", 0, "cpu")
    data = make_busi(tmp_path / "busi", per_class=3)
    cfg = BusiConfig.quick(methods=["mgcc_50_synthetic"], iterations=2, size=32, ldm=str(ldm),
                           n_synthetic=3, ldm_steps=2, device="cpu")
    res = run(run_busi(data, tmp_path / "out", cfg, argv=["test"], write=False))
    assert res["synthetic"]["source"] == "ldm" and res["synthetic"]["n"] == 3
    r = res["rows"][0]
    assert r["method"] == "mgcc_50_synthetic" and r["n_unlabeled"] >= 3

"""Benchmark units: a killed or stopped run keeps finished units, --resume and --merge reuse them,
only result settings separate units, and test leakage is refused."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_datasets import make_busi, make_monuseg  # noqa: E402


def test_killed_run_keeps_finished_units_and_resume_reuses_them(tmp_path):
    """A run killed after its first unit leaves that unit on disk; --resume reuses it (same
    numbers, marked) and runs only the rest; other settings are refused, not mixed."""
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi
    from napari_textdiff.core.progress import run

    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    cfg = dict(seeds=[0], methods=["mgcc_50", "unet_full"], size=32, iterations=3,
               device="cpu")
    gen = run_busi(data, out, BusiConfig.quick(**cfg))
    for ev in gen:                        # "kill" it once the first unit is done
        if ev.stage == "benchmark" and ev.step == 1:
            break
    gen.close()
    partial = json.loads((out / "busi.partial.json").read_text())
    assert partial["complete"] is False and not (out / "busi.json").exists()
    assert [(r["method"], r["seed"]) for r in partial["rows"]] == [("mgcc_50", 0)]

    res = run(run_busi(data, out, BusiConfig.quick(**{**cfg, "seeds": [0, 1]}), resume=True))
    got = {(r["method"], r["seed"]): r for r in res["rows"]}
    assert set(got) == {(m, s) for m in ("mgcc_50", "unet_full") for s in (0, 1)}
    assert got[("mgcc_50", 0)]["resumed"] is True
    assert got[("mgcc_50", 0)]["metrics"] == partial["rows"][0]["metrics"]
    assert not any(r.get("resumed") for k, r in got.items() if k != ("mgcc_50", 0))
    assert res["resumed"]["units"] == 1
    assert not (out / "busi.partial.json").exists() and (out / "busi.json").is_file()

    # a finished run is resumable too (nothing to train), but not with other settings
    again = run(run_busi(data, out, BusiConfig.quick(**{**cfg, "seeds": [0, 1]}), resume=True))
    assert again["resumed"]["units"] == 4
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in res["rows"]]
    # reporting a subset keeps the other units on disk for a later --resume
    one = run(run_busi(data, out, BusiConfig.quick(**{**cfg, "seeds": [1]}), resume=True))
    assert {r["seed"] for r in one["rows"]} == {1}
    kept = json.loads((out / "busi.partial.json").read_text())
    assert len(kept["rows"]) == 4
    with pytest.raises(ValueError, match="--resume: .*iterations: 3 there, 5 now.*drop --resume"):
        run(run_busi(data, out, BusiConfig.quick(**{**cfg, "iterations": 5}), resume=True))


def test_finished_only_reports_a_killed_run_without_training(tmp_path):
    from napari_textdiff.cli import main
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi

    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    gen = run_busi(data, out, BusiConfig.quick(seeds=[0], methods=["mgcc_50", "unet_full"],
                                               size=32, iterations=3, device="cpu"))
    for ev in gen:
        if ev.stage == "benchmark" and ev.step == 1:
            break
    gen.close()
    assert main(["benchmark", "busi", "--data", str(data), "--quick", "--out", str(out),
                 "--size", "32", "--iterations", "3", "--seeds", "0,1", "--threads", "1",
                 "--no-progress", "--device", "cpu", "--finished-only"]) == 0
    res = json.loads((out / "busi.json").read_text())
    assert [(r["method"], r["seed"], r["resumed"]) for r in res["rows"]] == \
        [("mgcc_50", 0, True)]
    assert [(s["method"], s["n_seeds"]) for s in res["summary"]] == [("mgcc_50", 1)]
    assert ("were finished by earlier invocations with the same settings and read back"
            in (out / "busi.md").read_text())


def test_merge_joins_a_grid_split_over_two_folders(tmp_path):
    """Two processes run disjoint seeds in their own folders; --finished-only --merge reports
    the union without training, and a folder run with other settings is refused."""
    from napari_textdiff.cli import main
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi
    from napari_textdiff.core.progress import run

    data = make_busi(tmp_path / "busi")
    cfg = dict(methods=["unet_full"], size=32, iterations=3, device="cpu")
    a = run(run_busi(data, tmp_path / "a", BusiConfig.quick(seeds=[0], **cfg)))
    common = ["--data", str(data), "--quick", "--size", "32", "--iterations", "3",
              "--threads", "1", "--no-progress", "--device", "cpu"]
    assert main(["benchmark", "busi", *common, "--out", str(tmp_path / "b"),
                 "--methods", "unet_full", "--seeds", "1"]) == 0
    b = json.loads((tmp_path / "b" / "busi.json").read_text())
    assert [(r["method"], r["seed"]) for r in b["rows"]] == [("unet_full", 1)]
    assert "--merge" not in b["run"]["command"]   # an unused option is not recorded as ''
    out = tmp_path / "all"
    assert main(["benchmark", "busi", *common, "--out", str(out), "--seeds", "0,1",
                 "--finished-only", "--merge", str(tmp_path / "a"),
                 "--merge", str(tmp_path / "b")]) == 0
    # the command recorded in the result runs as it is (comma-joined folders)
    assert f"--merge {tmp_path / 'a'},{tmp_path / 'b'}" in json.loads(
        (out / "busi.json").read_text())["run"]["command"]
    res = json.loads((out / "busi.json").read_text())
    got = {(r["method"], r["seed"]): r["metrics"] for r in res["rows"]}
    assert got[("unet_full", 0)] == a["rows"][0]["metrics"]
    assert got[("unet_full", 1)] == b["rows"][0]["metrics"]
    assert res["resumed"]["units"] == 2 and len(res["resumed"]["from"]) == 2
    assert "merged from 2 output folders" in (out / "busi.md").read_text()

    run(run_busi(data, tmp_path / "c", BusiConfig.quick(seeds=[0], **{**cfg, "iterations": 4})))
    with pytest.raises(ValueError, match="--merge: .*iterations: 4 there, 3 now.*same settings"):
        run(run_busi(data, out, BusiConfig.quick(seeds=[0, 1], **cfg),
                     merge_from=[tmp_path / "c"]))
    with pytest.raises(ValueError, match="holds no busi.json"):
        run(run_busi(data, out, BusiConfig.quick(seeds=[0, 1], **cfg),
                     merge_from=[tmp_path / "busi"]))


def test_unit_log_ignores_speed_only_settings_but_not_result_settings(tmp_path):
    from napari_textdiff.benchmark.common import UnitLog

    cfg = {"epochs": 10, "seeds": [0], "device": "cpu", "feature_cache_mb": 2048}
    log = UnitLog(tmp_path, "x", cfg, ("method", "seed"))
    log.add({"method": "m", "seed": 0, "metrics": {"dice": 0.5}})
    faster = {**cfg, "seeds": [0, 1], "device": "cuda", "feature_cache_mb": 12000}
    again = UnitLog(tmp_path, "x", faster, ("method", "seed"), resume=True)
    assert again.get("m", 0)["metrics"] == {"dice": 0.5} and again.get("m", 1) is None
    with pytest.raises(ValueError, match="epochs: 10 there, 20 now"):
        UnitLog(tmp_path, "x", {**cfg, "epochs": 20}, ("method", "seed"), resume=True)


def test_unit_log_reads_a_setting_added_later_as_its_old_behaviour(tmp_path):
    """A file saved before ``val_images`` existed ran without validation images: it merges
    with runs at val_images 0 and is refused for runs that validate."""
    from napari_textdiff.benchmark.common import UnitLog

    old = {"epochs": 20, "k": [5], "seeds": [0], "methods": ["a"]}
    log = UnitLog(tmp_path / "old", "x", old, ("method", "seed"))
    log.add({"method": "a", "seed": 0, "metrics": {"dice": 0.5}})
    merged = UnitLog(tmp_path / "new", "x", {**old, "k": [1], "val_images": 0},
                     ("method", "seed"), merge_from=[tmp_path / "old"])
    assert merged.has("a", 0)
    with pytest.raises(ValueError, match="val_images: 0 there, 4 now"):
        UnitLog(tmp_path / "new2", "x", {**old, "val_images": 4}, ("method", "seed"),
                merge_from=[tmp_path / "old"])


def test_unit_log_keeps_run_records_of_finished_files_it_merges(tmp_path):
    """A final NAME.json keeps run-level records (BUSI's synthetic set) at top level; merging
    it must not lose them."""
    from napari_textdiff.benchmark.common import UnitLog

    cfg = {"iterations": 3, "seeds": [0]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text(json.dumps(
        {"run": {"config": cfg}, "synthetic": {"source": "ldm", "n": 4},
         "rows": [{"method": "m", "seed": 0, "metrics": {"iou": 0.3}}]}))
    log = UnitLog(tmp_path / "out", "x", cfg, ("method", "seed"),
                  merge_from=[tmp_path / "a"], extra_keys=("synthetic",))
    assert log.extra == {"synthetic": {"source": "ldm", "n": 4}}
    assert log.get("m", 0)["metrics"] == {"iou": 0.3}


def test_unit_log_merges_units_whose_method_ignores_the_differing_setting(tmp_path):
    """BUSI's LDM settings change only the "+ synthetic" row: units run without an LDM merge
    with a synthetic unit of another call (a GPU session's two calls); a synthetic row made
    with another LDM is not reused, and any other difference is still refused."""
    from napari_textdiff.benchmark.common import UnitLog

    only = {"ldm": ("synth",), "n_synthetic": ("synth",)}
    plain = {"iterations": 3, "ldm": None, "n_synthetic": 725}
    with_ldm = {**plain, "ldm": "L", "n_synthetic": 4}
    for name, cfg, rows, extra in (
            ("a", plain, [("base", 0.3), ("synth", 0.1)],
             {"synthetic": {"source": None, "note": "row skipped"}}),
            ("b", with_ldm, [("synth", 0.4)], {"synthetic": {"source": "ldm", "n": 4}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.json").write_text(json.dumps(
            {"run": {"config": cfg}, "extra": extra,
             "rows": [{"method": m, "seed": 0, "metrics": {"iou": v}} for m, v in rows]}))
    log = UnitLog(tmp_path / "out", "x", with_ldm, ("method", "seed"),
                  merge_from=[tmp_path / "a", tmp_path / "b"], extra_keys=("synthetic",),
                  method_settings=only)
    assert log.get("base", 0)["metrics"] == {"iou": 0.3}
    assert log.get("synth", 0)["metrics"] == {"iou": 0.4}     # a's (no LDM) was not reused
    assert log.extra["synthetic"] == {"source": "ldm", "n": 4}
    assert log.resumed_record()["not_reused"] == {"synth": "run with other ldm, n_synthetic"}
    with pytest.raises(ValueError, match="iterations: 3 there, 5 now"):
        UnitLog(tmp_path / "out2", "x", {**with_ldm, "iterations": 5}, ("method", "seed"),
                merge_from=[tmp_path / "a"], method_settings=only)


def test_monuseg_rows_run_with_each_methods_own_budget_join_one_report(tmp_path):
    """TextDiff rows at 20 epochs and U-Net rows at 600 iterations come from two calls; each
    method's row is reused where the settings it reads agree with the joining call, a row
    trained under other settings of its own is not, and a shared setting still refuses."""
    from napari_textdiff.benchmark.common import UnitLog
    from napari_textdiff.benchmark.fewshot import METHOD_SETTINGS, MonusegConfig

    base = dataclasses.asdict(MonusegConfig(k=[5], seeds=[0]))
    td_call = {**base, "methods": ["textdiff"], "epochs": 20, "unet_iterations": 200}
    unet_call = {**base, "methods": ["unet", "textdiff"], "epochs": 50,
                 "unet_iterations": 600, "val_images": 4, "val_every": 50}
    for name, cfg, rows in (("a", td_call, [("textdiff", 0.7)]),
                            ("b", unet_call, [("unet", 0.6), ("textdiff", 0.5)])):
        log = UnitLog(tmp_path / name, "monuseg", cfg, ("method", "seed"),
                      method_settings=METHOD_SETTINGS)
        for m, v in rows:
            log.add({"method": m, "seed": 0, "metrics": {"dice": v}})
    joint = {**base, "methods": ["textdiff", "unet"], "epochs": 20, "unet_iterations": 600,
             "val_images": 4, "val_every": 50}
    log = UnitLog(tmp_path / "out", "monuseg", joint, ("method", "seed"),
                  merge_from=[tmp_path / "a", tmp_path / "b"], method_settings=METHOD_SETTINGS)
    assert log.get("textdiff", 0)["metrics"] == {"dice": 0.7}     # b's 50-epoch row skipped
    assert log.get("unet", 0)["metrics"] == {"dice": 0.6}
    assert log.resumed_record()["not_reused"] == {"textdiff": "run with other epochs"}
    with pytest.raises(ValueError, match="size: 256 there, 512 now"):
        UnitLog(tmp_path / "out2", "monuseg", {**joint, "size": 512}, ("method", "seed"),
                merge_from=[tmp_path / "a"], method_settings=METHOD_SETTINGS)


def test_variants_feed_each_model_the_noise_steps_of_its_preset(tmp_path):
    """The benchmark's shared feature extractors follow each config's ``steps``: the histology
    recipe's single t = 50 is what its head sees (it used to get the default three steps,
    with a head sized for them, while the config said one)."""
    import torch

    from textdiff_testkit import make_tiny_backbone

    from napari_textdiff.benchmark.textdiff_variants import TextDiffVariants

    v = TextDiffVariants(str(make_tiny_backbone(tmp_path / "bb")), torch.device("cpu"),
                         need_text=False, feature_cache_mb=64)
    one = v.create("none", "light", steps=[50])
    three = v.create("none", "light")
    assert one.features.steps == [50] and three.features.steps == [50, 150, 250]
    assert one.config.steps == [50]
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    f1, f3 = one.features(x), three.features(x)
    assert [t.shape[1] * 3 for t in f1] == [t.shape[1] for t in f3]
    assert v.create("none", "light", steps=[50]).features is one.features    # one memo per set
    assert v.compute_seconds > 0
    assert sorted(v.stats()["step_sets"]) == [[50], [50, 150, 250]]
    v.close()


def test_baselines_keep_their_best_validation_weights_and_record_the_curve(tmp_path):
    """--val-images: the U-Net and MGCC-light rows are scored during training on other
    training-folder images (never the K drawn, never the test folder), keep the best weights
    and record the curve a plateau is read from; the TextDiff rows take no validation."""
    from napari_textdiff.benchmark.fewshot import (MonusegConfig, run_monuseg,
                                                   validation_images)
    from napari_textdiff.core.datasets import kshot, load_monuseg
    from napari_textdiff.core.progress import run

    data = make_monuseg(tmp_path / "data", n_train=6)
    cfg = MonusegConfig.quick(k=[2], seeds=[0, 1], methods=["unet", "mgcc_light"],
                              protocols=["tiles", "paper"], size=32, tile_overlap=8,
                              unet_iterations=6, mgcc_iterations=4, val_images=3,
                              val_every=2, test_split="Val_Folder", device="cpu")
    res = run(run_monuseg(data, tmp_path / "out", cfg))
    pool = load_monuseg(data, split="Train_Folder")
    for r in res["rows"]:
        drawn = set(r["train_images"])
        assert len(r["val_images"]) == 3 and not drawn & set(r["val_images"])
        assert not set(r["val_images"]) & set(res["data"]["test_images"])
        total = 6 if r["method"] == "unet" else 4
        assert [it for it, _ in r["val_curve"]] == list(range(2, total + 1, 2))
        assert all(0.0 <= v <= 1.0 for _, v in r["val_curve"])
        best = max(r["val_curve"], key=lambda p: p[1])
        assert r["best_iteration"] == best[0]
        # the draw is the seed's: the same images again, other ones for another seed
        subset = kshot(pool, 2, seed=r["seed"])
        assert [s.name for s in validation_images(pool, subset, 3, r["seed"])] == \
            r["val_images"]
        if r["protocol"] == "tiles":      # scored on native crops, not on resized images
            assert r["val_examples"] > 3
    with pytest.raises(ValueError, match="only 4 training-folder images are left"):
        validation_images(pool, kshot(pool, 2, seed=0), 5, 0)


def test_a_stopped_unit_is_scored_saved_marked_and_rerun_by_resume(tmp_path):
    """A stop request (Ctrl-C, or SIGINT from a time limit) mid-training: the unit keeps its
    best validated weights, is scored and saved marked stopped with its validation curve; the
    report says so; --resume trains it again; --finished-only reports it as it is."""
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi
    from napari_textdiff.benchmark.report import markdown
    from napari_textdiff.core.progress import run

    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    cfg = BusiConfig.quick(seeds=[0], methods=["unet_full", "mgcc_50"], size=32,
                           iterations=12, val_every=2, device="cpu")
    steps = {"n": 0}

    def stop():
        return steps["n"] >= 5

    gen = run_busi(data, out, cfg, should_stop=stop)
    res = None
    try:
        while True:
            ev = next(gen)
            if ev.stage == "train":
                steps["n"] += 1
    except StopIteration as s:
        res = s.value
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["unet_full"]           # the next unit never began
    r = rows[0]
    assert r["stopped"] is True and r["iterations_done"] == 5 < 12
    assert [it for it, _ in r["val_curve"]] == [2, 4]
    assert "stopped before their budget" in markdown(res) and "at 5 iterations" in markdown(res)

    again = run(run_busi(data, out, cfg, finished_only=True))
    assert again["rows"][0]["stopped"] is True and again["resumed"]["units"] == 1
    full = run(run_busi(data, out, cfg, resume=True))
    done = {r["method"]: r for r in full["rows"]}
    assert not done["unet_full"].get("stopped") and done["unet_full"]["iterations_done"] == 12
    assert [it for it, _ in done["mgcc_50"]["val_curve"]] == list(range(2, 13, 2))
    assert "stopped before" not in markdown(full)


def test_an_ldm_that_saw_test_cases_is_refused_for_the_synthetic_row(tmp_path):
    """The '+ synthetic' row must not get test images back through the LDM's samples: an LDM
    trained on any of the benchmark's test cases is refused, naming one and what to do."""
    from napari_textdiff.benchmark.busi import (BusiConfig, ldm_saw_test_images, run_busi,
                                                split_busi)
    from napari_textdiff.core.datasets import load_busi
    from napari_textdiff.core.progress import run

    data = make_busi(tmp_path / "busi")
    cfg = BusiConfig.quick(methods=["mgcc_50_synthetic"], size=32, device="cpu",
                           ldm=str(tmp_path / "ldm"))
    _, _, val, test, rest = split_busi(load_busi(data), cfg, 0)
    (tmp_path / "ldm").mkdir()
    meta = tmp_path / "ldm" / "ldm.json"
    meta.write_text(json.dumps({"image_names": [s.image_path.name for s in rest + val]}))
    assert ldm_saw_test_images(tmp_path / "ldm", test) == []
    meta.write_text(json.dumps({"image_names": [s.image_path.name for s in rest]
                                + [test[1].image_path.name]}))
    assert ldm_saw_test_images(tmp_path / "ldm", test) == [test[1].name]
    with pytest.raises(ValueError, match=r"trained on 1 of this benchmark's \d+ test cases "
                                         r".*--split benchmark"):
        run(run_busi(data, tmp_path / "out", cfg, write=False))

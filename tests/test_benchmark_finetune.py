"""`benchmark finetune`: before/after Dice of the images not fine-tuned on, on a real tiny model."""
import json

import numpy as np

from conftest import blob_image


def _folder(root, n=5, empty=()):
    from napari_textdiff.core.io import write_image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, mask = blob_image(32, 32, centers=((10 + i, 12), (22, 20 + i)), r=5, seed=i)
        write_image(root / "images" / f"im{i}.png", img)
        write_image(root / "masks" / f"im{i}.png", mask * 255 * (i not in empty))
    return root


def test_finetune_benchmark_scores_the_other_images(tmp_path, tiny_mgcc_path):
    from napari_textdiff.cli import main

    data = _folder(tmp_path / "data")
    out = tmp_path / "res"
    assert main(["benchmark", "finetune", str(tiny_mgcc_path), str(data), "--n", "1,2",
                 "--seeds", "3", "--n-eval", "2", "--device", "cpu", "--threads", "1", "--out", str(out),
                 "--label", "tiny", "--no-progress"]) == 0
    res = json.loads((out / "finetune_tiny.json").read_text())
    assert (out / "finetune_tiny.png").stat().st_size > 1000
    assert [(r["seed"], r["n"]) for r in res["rows"]] == [(3, 1), (3, 2)]
    for r in res["rows"]:
        assert 0 <= r["dice_before"] <= 1 and 0 <= r["dice_after"] <= 1 and r["scored"] == 2
        assert len(r["corrected"]) == r["n"]
    # within a seed, the corrected images of n=1 are the first of n=2 and the scored set is
    # the same, so the "before" score is shared
    a, b = res["rows"][0], res["rows"][1]
    assert b["corrected"][:1] == a["corrected"] and a["dice_before"] == b["dice_before"]
    # fine-tuning really changed the model: some "after" differs from "before"
    assert any(abs(r["dice_after"] - r["dice_before"]) > 1e-6 for r in res["rows"])
    s = res["summary"]["2"]
    assert s["gain"] == round(s["dice_after"] - s["dice_before"], 4)


def test_a_refused_finetune_leaves_the_model_and_says_why(tmp_path, tiny_mgcc_path):
    """Only empty corrected masks: MGCC refuses to fine-tune, the row keeps the 'before' Dice."""
    from napari_textdiff.benchmark.finetune import FinetuneBenchConfig, run_finetune_benchmark
    from napari_textdiff.core.datasets import discover
    from napari_textdiff.core.progress import run

    data = _folder(tmp_path / "data", empty=range(5))
    samples = sorted(discover(data), key=lambda s: s.name)
    cfg = FinetuneBenchConfig(ns=(1,), seeds=(0,), n_eval=2, device="cpu")
    res = run(run_finetune_benchmark(tiny_mgcc_path, samples, None, cfg))
    (row,) = res["rows"]
    assert "empty" in row["refused"] and row["dice_after"] == row["dice_before"]
    assert res["summary"]["1"]["refused"] == 1 and res["summary"]["1"]["runs"] == 0
    assert res["summary"]["1"]["gain"] is None          # no fine-tune ran: nothing to average
    assert res["finetune_settings"]["train"] == "output"

"""`benchmark finetune`: before/after Dice of the images not fine-tuned on, on a real tiny model."""
import json

import numpy as np

from conftest import blob_image


def _folder(root, n=5):
    from napari_textdiff.core.io import write_image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img, mask = blob_image(32, 32, centers=((10 + i, 12), (22, 20 + i)), r=5, seed=i)
        write_image(root / "images" / f"im{i}.png", img)
        write_image(root / "masks" / f"im{i}.png", mask * 255)
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

"""The BatchNorm shift score of 10-case BUSI draws, with and without a scanner change.

Draws ``--n-ft`` unseen cases from the model's validation images (as busi_finetune.py does)
and scores them with ``core.mgcc.shift.batchnorm_shift`` unchanged and under each gain curve
(``gain * image ** gamma``). Used to choose ``SHIFT_THRESHOLD``: in-distribution draws must
fall below it, the shifts that the normalisation fine-tune repairs above it.

    python scripts/busi_shift_score.py --seeds 0 1 2 3 4 5 6 7 8 9 [--dice]

``--dice`` also scores the model on the drawn cases themselves (mean per-image Dice against
their masks, as a user's corrections would show how wrong it was): a second possible signal.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from busi_finetune import _draw, _scores, _shift  # noqa: E402

SHIFTS = [(1.0, 1.0), (2.0, 1.0), (0.5, 1.0), (1.5, 1.0), (0.7, 1.0), (1.0, 0.7), (1.0, 1.3)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="src/napari_textdiff/models/ultrasound_mgcc.safetensors")
    p.add_argument("--data", default="../shared/data/busi")
    p.add_argument("--n-ft", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--shifts", nargs="+", default=None, metavar="GAMMA,GAIN",
                   help="gain curves to score (default: no change and six changes)")
    p.add_argument("--dice", action="store_true",
                   help="also the model's Dice on the drawn cases (before any fine-tune)")
    p.add_argument("--out", default=None, help="write the JSON summary here")
    a = p.parse_args(argv)

    import torch

    from napari_textdiff.core.datasets import discover
    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.mgcc.shift import batchnorm_shift

    torch.set_num_threads(1)
    shifts = ([tuple(float(v) for v in x.split(",")) for x in a.shifts] if a.shifts
              else SHIFTS)
    model = MGCCModel.load(a.model, device="cpu")
    names = set(model.meta.get("validation") or [])
    samples = sorted((s for s in discover(a.data) if s.name in names), key=lambda s: s.name)
    scores: dict[str, list[float]] = {}
    dice: dict[str, list[float]] = {}
    for seed in a.seeds:
        ft, _ = _draw(samples, a.n_ft, 0, seed)
        base = [s.load(channels=model.channels) for s in ft]
        for gamma, gain in shifts:
            shifted = [_shift(ex, gamma, gain) for ex in base]
            v = batchnorm_shift(model, [np.asarray(ex.image) for ex in shifted])
            key = f"gamma {gamma} gain {gain}"
            scores.setdefault(key, []).append(round(v, 5))
            if a.dice:
                d = _scores(model, shifted, [s.meta.get("class", "") for s in ft])["dice"]
                dice.setdefault(key, []).append(d)
        print(seed, {k: v[-1] for k, v in scores.items()},
              {k: v[-1] for k, v in dice.items()} if a.dice else "", flush=True)
    summary = {k: {"min": min(v), "median": float(np.median(v)), "max": max(v), "scores": v}
               for k, v in scores.items()}
    print(json.dumps({k: {x: y for x, y in s.items() if x != "scores"}
                      for k, s in summary.items()}, indent=1))
    if a.out:
        from napari_textdiff.core.bundle import atomic_write_bytes

        atomic_write_bytes(a.out, json.dumps({"model": a.model, "n_ft": a.n_ft, "seeds": a.seeds,
                                              "scores": summary, "dice_on_drawn": dice or None},
                                             indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

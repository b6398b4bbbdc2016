"""Does fine-tuning on a few corrected BUSI cases pay? Before/after Dice on other held-out cases.

Draws ``--n-ft`` cases (stratified by class) from the model's own validation images (never
trained on) to fine-tune on, and ``--n-eval`` other validation images to score, per image at
native resolution with normals included (an empty prediction on a normal scores 1). Each
setting runs from a fresh copy of the model on every draw. Prints one JSON line per run and a
summary; used to choose ``core.mgcc.finetune.FINETUNE_DEFAULTS``. ``--gamma``/``--gain`` make
every image (fine-tune and scored ones alike) look as if from another scanner setting
(``gain * image ** gamma``): the situation the Fine-tune panel is for.

    python scripts/busi_finetune.py --model src/napari_textdiff/models/ultrasound_mgcc.safetensors \
        --seeds 0 1 2 --settings '{}' '{"lr": 1e-4, "epochs": 20}'
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _draw(samples, n_ft: int, n_eval: int, seed: int):
    """Stratified ``n_ft`` fine-tune cases, then ``n_eval`` of the rest (same class mix)."""
    rng = np.random.default_rng(seed)
    by = {}
    for s in samples:
        by.setdefault(s.meta.get("class", ""), []).append(s)
    total = len(samples)
    ft, rest = [], []
    for cls, group in sorted(by.items()):
        idx = rng.permutation(len(group))
        k = max(1, round(n_ft * len(group) / total))
        ft += [group[i] for i in idx[:k]]
        rest += [group[i] for i in idx[k:]]
    ft = ft[:n_ft]
    rest = [rest[i] for i in rng.permutation(len(rest))[:n_eval]]
    return ft, rest


def _scores(model, examples, classes) -> dict:
    """Mean per-image Dice, precision, recall, and Dice per class."""
    from napari_textdiff.core.mgcc.trainer import evaluate_model

    mean, per = evaluate_model(model, examples)
    out = {k: round(float(mean[k]), 4) for k in ("dice", "precision", "recall")}
    for c in sorted(set(classes)):
        out[f"dice_{c}"] = round(float(np.mean([r["dice"] for r, k in zip(per, classes)
                                                if k == c])), 4)
    return out


def _shift(ex, gamma: float, gain: float):
    """Another scanner's gain curve: ``gain * image ** gamma`` (clipped), mask unchanged."""
    from napari_textdiff.core.models import Example

    if gamma == 1 and gain == 1:
        return ex
    img = np.clip(gain * np.asarray(ex.image, np.float32) ** gamma, 0, 1).astype(np.float32)
    return Example(img, ex.mask, ex.text, ex.name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="src/napari_textdiff/models/ultrasound_mgcc.safetensors")
    p.add_argument("--data", default="../shared/data/busi")
    p.add_argument("--n-ft", type=int, default=10)
    p.add_argument("--n-eval", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=["{}"],
                   help="JSON dicts of finetune() options; {} = the library defaults")
    p.add_argument("--gamma", type=float, default=1.0, help="image -> gain * image ** gamma")
    p.add_argument("--gain", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    a = p.parse_args(argv)

    import torch

    from napari_textdiff.core.datasets import discover
    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.progress import run

    torch.set_num_threads(a.threads)
    base = MGCCModel.load(a.model, device="cpu")
    names = set(base.meta.get("validation") or [])
    if not names:
        raise SystemExit(f"{a.model} records no validation images: nothing unseen to use")
    samples = sorted((s for s in discover(a.data) if s.name in names), key=lambda s: s.name)
    rows = []
    for seed in a.seeds:
        ft, ev = _draw(samples, a.n_ft, a.n_eval, seed)
        ft_ex = [_shift(s.load(channels=base.channels), a.gamma, a.gain) for s in ft]
        ev_ex = [_shift(s.load(channels=base.channels), a.gamma, a.gain) for s in ev]
        classes = [s.meta.get("class", "") for s in ev]
        sb = _scores(base, ev_ex, classes)
        before = sb["dice"]
        for setting in a.settings:
            opts = json.loads(setting)
            m = MGCCModel.load(a.model, device="cpu")
            t0 = time.monotonic()
            hist = run(m.finetune(ft_ex, seed=seed, **opts))
            secs = time.monotonic() - t0
            sa = _scores(m, ev_ex, classes)
            after = sa["dice"]
            row = {"seed": seed, "setting": opts, "shift": [a.gamma, a.gain], "dice_before": round(before, 4),
                   "dice_after": round(after, 4), "gain": round(after - before, 4),
                   "seconds": round(secs, 1), "loss_first": round(hist[0], 4) if hist else None,
                   "loss_last": round(hist[-1], 4) if hist else None,
                   "before": sb, "after": sa, "ft_cases": [s.name for s in ft]}
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")
    print("summary (mean over seeds):")
    for setting in a.settings:
        r = [x for x in rows if x["setting"] == json.loads(setting)]
        print(f"  {setting}: before {np.mean([x['dice_before'] for x in r]):.4f} after "
              f"{np.mean([x['dice_after'] for x in r]):.4f} gain "
              f"{np.mean([x['gain'] for x in r]):+.4f} ({min(x['gain'] for x in r):+.4f}.."
              f"{max(x['gain'] for x in r):+.4f}), {np.mean([x['seconds'] for x in r]):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

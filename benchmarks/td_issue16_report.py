"""Learning curves and a results table from ``td_issue16.py``'s JSON lines.

Usage: python benchmarks/td_issue16_report.py [--log /work/ckpt/td/results.jsonl] [--out docs]
Writes OUT/textdiff_curves.csv (one row per run x epoch), OUT/textdiff_curves.png and prints
a Markdown table of every run (last record per tag).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default="/work/ckpt/td/results.jsonl")
    ap.add_argument("--out", default="docs")
    args = ap.parse_args(argv)
    runs = {}
    for line in open(args.log):
        r = json.loads(line)
        runs[r["tag"]] = r
    out = Path(args.out)
    curves = []
    for tag, r in runs.items():
        h = r.get("hist") or {}
        if r["cmd"] == "fit" and h.get("val_dice"):
            for i, (l, v, s) in enumerate(zip(h["loss"], h["val_dice"], h["epoch_seconds"])):
                curves.append({"run": tag, "epoch": i + 1, "train_loss": round(l, 5),
                               "monitor_dice": round(v, 5), "seconds": round(s, 1)})
        if r["cmd"] == "cv":
            for k, c in enumerate(r["curves"]):
                for i, v in enumerate(c):
                    curves.append({"run": f"{tag}/fold{k}", "epoch": i + 1, "train_loss": "",
                                   "monitor_dice": round(v, 5), "seconds": ""})
    if curves:
        with open(out / "textdiff_curves.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(curves[0]))
            w.writeheader()
            w.writerows(curves)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for run in dict.fromkeys(c["run"] for c in curves):
            cs = [c for c in curves if c["run"] == run]
            ep = [c["epoch"] for c in cs]
            if cs[0]["train_loss"] != "":
                a1.plot(ep, [c["train_loss"] for c in cs], label=run)
            a2.plot(ep, [c["monitor_dice"] for c in cs], label=run)
        a1.set(xlabel="epoch (25 steps)", ylabel="training loss (CE + 1.5 Dice)")
        a2.set(xlabel="epoch (25 steps)", ylabel="Dice on held-out tiles (working scale)")
        for a in (a1, a2):
            a.grid(alpha=.3)
            a.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "textdiff_curves.png", dpi=110)
    print("| run | train | scored on | Dice | IoU | precision | recall | AJI | s / image | "
          "fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tag, r in runs.items():
        if r["cmd"] not in ("fit", "cv", "rf"):
            continue
        n_train = len(r.get("train", [])) or f"{r.get('folds')}-fold CV"
        n_eval = r.get("n_eval", "OOF")
        f = lambda k: f"{100 * r[k]:.1f}" if r.get(k) == r.get(k) and k in r else "–"
        print(f"| {tag} | {n_train} | {n_eval} | {f('dice')} ± {100 * r['dice_std']:.1f} | "
              f"{f('iou')} | {f('precision')} | {f('recall')} | {f('aji')} | "
              f"{r['seconds']:.1f} | {r.get('fit_seconds', r.get('seconds', 0)):.0f} |")


if __name__ == "__main__":
    main()

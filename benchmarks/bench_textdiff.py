"""TextDiff on this machine: per-tile latency, 5-image fit time, MoNuSeg end-to-end Dice.

Usage: .venv/bin/python benchmarks/bench_textdiff.py [--backbone DIR] [--epochs 50]
       [--protocol paper|tiles] [--seeds 0] [--skip-monuseg]
Without --backbone a randomly initialised backbone of the trainer's default preset ("small")
is used (no pretrained backbone exists yet). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--preset", default="small", help="random backbone preset")
    ap.add_argument("--head", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--protocol", default="paper", choices=["paper", "tiles"],
                    help="paper: whole image resized to 256²; tiles: 256² tiles at --scale")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seeds", default="0", help="comma-separated 5-image subset seeds")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-monuseg", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from napari_textdiff.core.datasets import kshot, load_monuseg
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.features import random_backbone
    from napari_textdiff.core.textdiff.model import TextDiffModel

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-textdiff-"))
    backbone = args.backbone
    if backbone is None:
        backbone = tmp / "backbone"
        random_backbone(args.preset, in_channels=3, sample_size=256).save_pretrained(backbone)
    over = {"epochs": args.epochs}
    if args.protocol == "paper":
        over["resize_to"] = 256
    else:
        over.update(scale=args.scale, resize_to=None)
    cfg = TextDiffConfig.preset(args.head, **over)
    res = {"device": args.device, "torch_threads": torch.get_num_threads(),
           "backbone": str(args.backbone or f"random-init {args.preset}"),
           "protocol": args.protocol, "config": cfg.to_dict()}
    model = TextDiffModel.create(cfg, backbone=str(backbone), device=args.device)
    res["head_parameters"] = model.num_parameters
    res["backbone_parameters"] = sum(p.numel() for p in model.features.unet.parameters())
    res["taps"] = model.features.taps
    res["feature_channels"] = model.features.out_channels

    # -- per-tile latency (features + head), text cached ---------------------------------
    rng = np.random.default_rng(0)
    tile = rng.random((1, 256, 256, 3), dtype=np.float32)
    fn = model._predict_fn("The nuclei density in the upper right is high.")
    fn(tile)  # warm-up (+ text encoding)
    t_feat, t_all = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        feats = model.features(tile)
        t1 = time.perf_counter()
        fn(tile)
        t2 = time.perf_counter()
        t_feat.append(t1 - t0)
        t_all.append(t2 - t1)
    res["tile256_features_s"] = round(float(np.median(t_feat)), 3)
    res["tile256_features_plus_head_s"] = round(float(np.median(t_all)), 3)
    print(json.dumps(res), file=sys.stderr, flush=True)

    if args.skip_monuseg or not Path(args.data).is_dir():
        print(json.dumps(res, indent=2))
        return 0
    # -- MoNuSeg: 5 Train_Folder images, Dice on Val_Folder -------------------------------
    train_all = load_monuseg(args.data, split="train")
    val = [s.load(channels=3) for s in load_monuseg(args.data, split="val")]
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        model = TextDiffModel.create(TextDiffConfig.preset(args.head, **over, seed=seed),
                                     backbone=str(backbone), device=args.device)
        shots = kshot(train_all, 5, seed=seed)
        train = [s.load(channels=3) for s in shots]
        t0 = time.perf_counter()
        hist = run(model.fit(train))
        fit_s = time.perf_counter() - t0
        dices, pred_s = [], []
        for ex in val:
            t1 = time.perf_counter()
            pred = model.predict(ex.image, ex.text)
            pred_s.append(time.perf_counter() - t1)
            g = ex.mask > 0
            p = pred > 0
            dices.append(2 * (p & g).sum() / max(1, p.sum() + g.sum()))
        r = {"seed": seed, "train": [s.name for s in shots], "fit_s": round(fit_s, 1),
             "feature_s": round(hist["feature_seconds"], 1), "tiles": hist["tiles"],
             "final_loss": round(hist["loss"][-1], 4),
             "val_dice_mean": round(float(np.mean(dices)), 4),
             "val_dice_per_image": [round(float(d), 4) for d in dices],
             "predict_s_per_1000px_image": round(float(np.mean(pred_s)), 2)}
        runs.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    res["monuseg"] = runs
    res["monuseg_val_dice_mean"] = round(float(np.mean([r["val_dice_mean"] for r in runs])), 4)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

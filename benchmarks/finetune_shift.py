"""Does the correction loop pay under a shift the model has not seen? Leave one organ out.

The shipped histology model trains on all 30 MoNuSeg images, so fine-tuning it on more of them
cannot show what a user with another tissue gets. Here, for each organ with six images
(breast, kidney, liver, prostate: the MoNuSeg paper's organ of each TCGA case), the shipped
recipe (preset ``histology``, 6 epochs) is trained on the 24 images of the other organs; then
``benchmark finetune``'s procedure runs on the held-out organ: for 3 seeds, n = 1 and 2 of its
images play the corrected ones (their true masks), the library's ``finetune()`` defaults (what
the Fine-tune panel runs) adapt a fresh copy, and the same 4 other images of that organ are
scored (Dice at native resolution, the model's own threshold) before and after.

    python benchmarks/finetune_shift.py --out docs/benchmarks/finetune_shift.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: MoNuSeg training set (Kumar et al. 2017), organ of each TCGA case (the tissue source site)
ORGANS = {
    "breast": ["TCGA-A7-A13E", "TCGA-A7-A13F", "TCGA-AR-A1AK", "TCGA-AR-A1AS", "TCGA-E2-A14V",
               "TCGA-E2-A1B5"],
    "kidney": ["TCGA-B0-5698", "TCGA-B0-5710", "TCGA-B0-5711", "TCGA-HE-7128", "TCGA-HE-7129",
               "TCGA-HE-7130"],
    "liver": ["TCGA-18-5592", "TCGA-21-5784", "TCGA-21-5786", "TCGA-38-6178", "TCGA-49-4488",
              "TCGA-50-5931"],
    "prostate": ["TCGA-CH-5767", "TCGA-G9-6336", "TCGA-G9-6348", "TCGA-G9-6356",
                 "TCGA-G9-6362", "TCGA-G9-6363"],
}


def organ_of(name: str) -> str | None:
    return next((o for o, ids in ORGANS.items() if any(name.startswith(i) for i in ids)), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "monuseg"))
    p.add_argument("--out", default="docs/benchmarks/finetune_shift.json")
    p.add_argument("--work", default="runs/finetune_shift", help="base models go here")
    p.add_argument("--organs", default=",".join(ORGANS))
    p.add_argument("--epochs", type=int, default=6, help="base model epochs (the shipped 6)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from napari_textdiff.benchmark.finetune import FinetuneBenchConfig, run_finetune_benchmark
    from napari_textdiff.core.bundle import atomic_write_bytes
    from napari_textdiff.core.datasets import load_monuseg
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.feature_memo import FeatureMemo
    from napari_textdiff.core.textdiff.model import TextDiffModel

    torch.set_num_threads(a.threads)
    samples = sorted(load_monuseg(a.data, split=None), key=lambda s: s.name)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    seeds = tuple(int(s) for s in a.seeds.split(","))
    res: dict = {"command": " ".join(sys.argv), "epochs": a.epochs, "organs": {},
                 "load_average_start": os.getloadavg()[0]}
    memo = None
    for organ in a.organs.split(","):
        held = [s for s in samples if organ_of(s.name) == organ]
        train = [s for s in samples if organ_of(s.name) != organ]
        base = work / f"histology_without_{organ}.safetensors"
        t0 = time.monotonic()
        if not base.is_file():
            cfg = TextDiffConfig.preset("histology", epochs=a.epochs, patience=0, seed=0)
            m = TextDiffModel.create(cfg, backbone=str(ROOT / "src" / "napari_textdiff" /
                                                       "models" / "backbone"), device="cpu")
            if memo is None:
                memo = FeatureMemo(m.features, ram_mb=4096)
            m.features = memo
            run(m.fit([s.load(channels=3) for s in train], None))
            m.save(base)
        fit_s = time.monotonic() - t0
        r = run(run_finetune_benchmark(base, held, None, FinetuneBenchConfig(
            ns=(1, 2), seeds=seeds, n_eval=4), label=f"without {organ}"))
        res["organs"][organ] = {"train_images": len(train), "held_out": [s.name for s in held],
                                "base_fit_seconds": round(fit_s, 1), "summary": r["summary"],
                                "rows": r["rows"]}
        print(organ, json.dumps(r["summary"]), flush=True)
    for n in ("1", "2"):
        g = [o["summary"][n]["gain"] for o in res["organs"].values()
             if o["summary"][n]["gain"] is not None]
        res[f"mean_gain_n{n}"] = round(float(np.mean(g)), 4) if g else None
    res["finetune_settings"] = r["finetune_settings"]
    atomic_write_bytes(Path(a.out), json.dumps(res, indent=1).encode())
    print(json.dumps({k: v for k, v in res.items() if k.startswith("mean")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

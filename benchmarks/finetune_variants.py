"""Which fine-tune setting pays under an organ shift? The leave-one-organ-out base models of
``finetune_shift.py``, the same draws (seed → the corrected images and the 4 scored ones), and
several settings side by side: the library defaults, shorter, a lower learning rate, and only
re-picking the threshold on the corrected images.

    python benchmarks/finetune_variants.py --work runs/finetune_shift --organs breast,kidney \\
        --out docs/benchmarks/finetune_variants.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_shift import ORGANS, ROOT, organ_of  # noqa: E402

#: name -> finetune() keywords (None: no training, the threshold re-picked on the corrected)
VARIANTS = {"defaults": {}, "short": {"epochs": 4}, "low_lr": {"lr": 2e-5},
            "threshold_only": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "monuseg"))
    p.add_argument("--work", default="runs/finetune_shift")
    p.add_argument("--organs", default=",".join(ORGANS))
    p.add_argument("--ns", default="1,2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="docs/benchmarks/finetune_variants.json")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from napari_textdiff.benchmark.finetune import _dice, _fresh, draw
    from napari_textdiff.core.bundle import atomic_write_bytes
    from napari_textdiff.core.calibration import tune_threshold
    from napari_textdiff.core.datasets import load_monuseg
    from napari_textdiff.core.progress import run

    torch.set_num_threads(1)
    samples = sorted(load_monuseg(a.data, split=None), key=lambda s: s.name)
    ns = [int(x) for x in a.ns.split(",")]
    rows = []
    for organ in a.organs.split(","):
        base = Path(a.work) / f"histology_without_{organ}.safetensors"
        pool = [s for s in samples if organ_of(s.name) == organ]
        memo: dict = {}
        for seed in (int(x) for x in a.seeds.split(",")):
            ft_all, ev = draw(pool, seed, 2, 4, channels=3)     # finetune_shift.py's draws
            before = float(np.mean(_dice(_fresh(base, "cpu", memo), ev)))
            for n in ns:
                for v in a.variants.split(","):
                    m = _fresh(base, "cpu", memo)
                    t0 = time.monotonic()
                    if VARIANTS[v] is None:
                        run(tune_threshold(m, ft_all[:n]))
                    else:
                        run(m.finetune(ft_all[:n], **VARIANTS[v]))
                    secs = time.monotonic() - t0
                    after = float(np.mean(_dice(m, ev)))
                    rows.append({"organ": organ, "seed": seed, "n": n, "variant": v,
                                 "dice_before": before, "dice_after": after,
                                 "gain": after - before, "seconds": round(secs, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for v in a.variants.split(","):
        for n in ns:
            g = [r["gain"] for r in rows if r["variant"] == v and r["n"] == n]
            summary[f"{v} n={n}"] = {"mean_gain": round(float(np.mean(g)), 4),
                                     "per_organ": {o: round(float(np.mean(
                                         [r["gain"] for r in rows if r["variant"] == v and
                                          r["n"] == n and r["organ"] == o])), 4)
                                         for o in a.organs.split(",")},
                                     "runs": len(g)}
    res = {"command": " ".join(sys.argv), "variants": {k: v for k, v in VARIANTS.items()},
           "summary": summary, "rows": rows}
    atomic_write_bytes(Path(a.out), json.dumps(res, indent=1).encode())
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

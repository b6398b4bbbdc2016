"""Seconds per 1000² image: the shipped histology TextDiff model vs the random-forest peer.

Both predict the same MoNuSeg images in the same process, one after the other, with the same
torch / BLAS thread count, features computed fresh (no memo): the forest is fitted first on
the 5 images of the reference's seed-0 draw (``benchmark.forest`` defaults), then each image is
predicted by both, alternating, so load changes on a shared machine hit both alike.

  python benchmarks/peer_speed.py --threads 1 --out docs/benchmarks/peer_speed.json

``--also MODEL`` times a second TextDiff model the same way (e.g. a head on the classic filter
bank only, to price the diffusion taps); ``--no-forest`` leaves the forest out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from td_issue16 import FIVE  # noqa: E402  (the reference's seed-0 draw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "monuseg"))
    p.add_argument("--images", type=int, default=3, help="images timed (not the 5 fitted)")
    p.add_argument("--model", default=None, help="TextDiff model (default: the bundled one)")
    p.add_argument("--also", default=None, help="a second TextDiff model timed alongside")
    p.add_argument("--no-forest", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from napari_textdiff.benchmark.forest import ForestConfig, train_random_forest
    from napari_textdiff.core.datasets import load_monuseg
    from napari_textdiff.core.defaults import default_model_path
    from napari_textdiff.core.models import load_model
    from napari_textdiff.core.progress import run

    found = {s.name: s for s in load_monuseg(args.data, split=None)}
    train = [found[n].load(channels=3) for n in FIVE]
    others = [found[n].load(channels=3) for n in sorted(found) if n not in FIVE][:args.images]
    t0 = time.monotonic()
    forest = (None if args.no_forest
              else run(train_random_forest(train, ForestConfig(n_jobs=args.threads))))
    fit_s = time.monotonic() - t0
    model_path = Path(args.model or default_model_path("histology"))
    models = {"textdiff": load_model(model_path, device="cpu")}
    if args.also:
        models["also"] = load_model(args.also, device="cpu")
    rows = []
    for ex in others:
        mp = ex.image.shape[0] * ex.image.shape[1] / 1e6
        row = {"name": ex.name, "megapixels": mp}
        for key, m in models.items():
            t = time.monotonic()
            m.predict_proba(ex.image, ex.text)
            row[f"{key}_s_per_1000sq"] = (time.monotonic() - t) / mp
        if forest is not None:
            t = time.monotonic()
            forest.predict_proba(ex.image)
            row["forest_s_per_1000sq"] = (time.monotonic() - t) / mp
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)

    def config(m):
        return {k: m.config.to_dict()[k] for k in (
            "features", "scale", "diffusion_scale", "working_size", "steps", "stain_norm")}

    res = {"threads": args.threads, "load_average_end": os.getloadavg()[0],
           "textdiff_model": model_path.name, "textdiff_config": config(models["textdiff"]),
           "rows": rows, "mean": {k: sum(r[k] for r in rows) / len(rows)
                                  for k in rows[0] if k.endswith("_s_per_1000sq")}}
    if forest is not None:
        res.update(forest_fit_seconds=round(fit_s, 1), forest=forest.config.to_dict())
    if args.also:
        res.update(also_model=str(args.also), also_config=config(models["also"]))
    print(json.dumps(res["mean"]))
    if args.out:
        from napari_textdiff.core.bundle import atomic_write_bytes

        atomic_write_bytes(Path(args.out), (json.dumps(res, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

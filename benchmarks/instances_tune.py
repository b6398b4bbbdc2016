"""Tune the nuclei instance splitting (issue 16 item 3) on out-of-fold probability maps.

The shipped histology head's 5-fold CV (``td_issue16.py cv``) keeps each image's out-of-fold
probability map (``--work``/TAG/NAME.npy, native resolution). Here the splitting parameters
of ``core.instances.binary_to_instances`` (h-maxima depth ``h``, seed merge distance
``min_distance``, smallest object ``min_size``) and plain connected components are scored by
AJI against the MoNuSeg masks' own connected components: the LViT masks keep the thin gaps
between annotated nuclei (686 components on the first image, which has about 700 nuclei), so
their components are the annotated instances up to a few merged clumps. The choice is made
in the same five folds as the CV (nested: each fold scored with the setting best on the
other four), so the reported AJI is not the selection's own.

    python benchmarks/instances_tune.py --maps /work/ckpt/td/oof/CV_hist_stain_step50 \\
        --threshold 0.45 --out docs/benchmarks/instances.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg"
H = [0.5, 1.0, 1.5, 2.0, 3.0]
MIN_DISTANCE = [1, 3, 5, 7]
MIN_SIZE = [10, 30]


def settings(hs=H, distances=MIN_DISTANCE, sizes=MIN_SIZE):
    yield {"split": False}
    yield {"split": True, "h": 1.5, "min_distance": 3, "min_size": 10}      # the old default
    for h, md, ms in itertools.product(hs, distances, sizes):
        if (h, md, ms) != (1.5, 3, 10):
            yield {"split": True, "h": h, "min_distance": md, "min_size": ms}


def key(s: dict) -> str:
    return ("components" if not s["split"]
            else f"h {s['h']} min_distance {s['min_distance']} min_size {s['min_size']}")


def instances(prob, thr, s):
    from scipy import ndimage as ndi

    from napari_textdiff.core.instances import binary_to_instances

    if not s["split"]:
        return ndi.label(prob >= thr)[0].astype(np.int32)
    return binary_to_instances(prob >= thr, min_size=s["min_size"],
                               min_distance=s["min_distance"], h=s["h"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--maps", required=True, help="folder of NAME.npy out-of-fold maps")
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="the CV's fold seed")
    p.add_argument("--h", type=float, nargs="+", default=H)
    p.add_argument("--min-distance", type=int, nargs="+", default=MIN_DISTANCE)
    p.add_argument("--min-size", type=int, nargs="+", default=MIN_SIZE)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    grid = list(settings(a.h, a.min_distance, a.min_size))

    from scipy import ndimage as ndi

    from napari_textdiff.core.datasets import load_monuseg
    from napari_textdiff.core.instances import binary_to_instances
    from napari_textdiff.core.metrics import aji, binary_metrics

    samples = {s.name: s for s in load_monuseg(DATA, split=None)}
    names = sorted(samples)
    # the CV's folds (td_issue16.py cmd_cv: a seeded permutation, every folds-th image)
    order = np.random.default_rng(a.seed).permutation(len(names))
    fold_of = {names[i]: k for k in range(a.folds) for i in order[k::a.folds]}
    table: dict[str, dict[str, float]] = {}      # AJI against the masks' components
    table_ws: dict[str, dict[str, float]] = {}   # ... against the masks split by the old default
    objects: dict[str, dict[str, int]] = {}
    extra: dict[str, dict] = {}
    t0 = time.monotonic()
    for n in names:
        gt_mask = samples[n].load(channels=3).mask > 0
        gt_cc = ndi.label(gt_mask)[0].astype(np.int32)      # 4-connectivity: the annotation
        gt_ws = binary_to_instances(gt_mask)                 # what earlier AJIs compared with
        prob = np.load(Path(a.maps) / f"{n}.npy").astype(np.float32)
        extra[n] = {"fold": fold_of[n], "gt_objects": int(gt_cc.max()),
                    "dice": binary_metrics(prob >= a.threshold, gt_mask)["dice"]}
        extra[n]["gt_objects_split"] = int(gt_ws.max())
        for s in grid:
            lab = instances(prob, a.threshold, s)
            table.setdefault(key(s), {})[n] = aji(lab, gt_cc)
            table_ws.setdefault(key(s), {})[n] = aji(lab, gt_ws)
            objects.setdefault(key(s), {})[n] = int(lab.max())
        print(f"{n}: fold {fold_of[n]} dice {extra[n]['dice']:.3f} "
              f"components {table['components'][n]:.3f} "
              f"best {max(v[n] for v in table.values()):.3f} ({time.monotonic() - t0:.0f}s)",
              flush=True)
    mean = {k: float(np.mean(list(v.values()))) for k, v in table.items()}
    mean_ws = {k: float(np.mean(list(v.values()))) for k, v in table_ws.items()}
    nested = {}
    for k in range(a.folds):
        inner = [n for n in names if fold_of[n] != k]
        best = max(table, key=lambda s: np.mean([table[s][n] for n in inner]))
        nested[k] = {"chosen": best, "aji": float(np.mean([table[best][n] for n in names
                                                            if fold_of[n] == k]))}
    per_image_nested = [table[nested[fold_of[n]]["chosen"]][n] for n in names]
    ranked = sorted(mean.items(), key=lambda kv: -kv[1])
    res = {
        "maps": a.maps, "threshold": a.threshold, "images": len(names),
        "grid": {"h": a.h, "min_distance": a.min_distance, "min_size": a.min_size},
        "ground_truth": "connected components (4-connectivity) of the MoNuSeg masks",
        "dice_mean": float(np.mean([e["dice"] for e in extra.values()])),
        "aji_components": mean["components"],
        "aji_default": mean["h 1.5 min_distance 3 min_size 10"],
        "gt_objects_per_image": {"components": float(np.mean([e["gt_objects"] for e in
                                                                extra.values()])),
                                 "split": float(np.mean([e["gt_objects_split"] for e in
                                                         extra.values()]))},
        "against_split_gt": {k: round(v, 4) for k, v in mean_ws.items()},
        "objects_per_image": {k: float(np.mean(list(v.values()))) for k, v in objects.items()},
        "best_overall": {"setting": ranked[0][0], "aji": ranked[0][1]},
        "nested_cv": {"aji": float(np.mean(per_image_nested)), "folds": nested},
        "top10": ranked[:10], "per_image": extra,
        "table": table, "table_split_gt": table_ws, "seconds": round(time.monotonic() - t0, 1),
    }
    print(json.dumps({k: v for k, v in res.items() if k not in ("per_image", "table")},
                     indent=1))
    if a.out:
        from napari_textdiff.core.bundle import atomic_write_bytes

        atomic_write_bytes(a.out, (json.dumps(res, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the latent diffusion model make new images? A memorisation report and a sample grid.

A model that memorises its (small) training set samples near-copies: each sample is then much
closer to its nearest training image than a *real* image the model never saw is. So this
compares, on the LDM directory's own near-copy thumbnails (RMSE, mirror allowed when training
used flips), the nearest-training-image distances of N samples with those of held-out real
images, and draws a grid: samples, each sample's nearest training image, held-out real images.

    # the split the MGCC default was selected on: held-out = its 109 validation cases
    python benchmarks/ldm_report.py split --busi ../shared/data/busi --out runs/ldm_split
    napari-textdiff train-ldm $(cat runs/ldm_split/train.txt) --channels 1 --out runs/ldm ...
    python benchmarks/ldm_report.py report runs/ldm --held-out @runs/ldm_split/held_out.txt \\
        --n 32 --steps 50 --out docs/benchmarks/ldm

Writes ``ldm_report.json`` (distance statistics of both sets, the near-copy threshold, the
fraction of samples under it) and ``ldm_grid.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _paths(items: list[str]) -> list[str]:
    """Paths, where ``@FILE`` stands for the lines of FILE."""
    out: list[str] = []
    for it in items:
        if it.startswith("@"):
            out += [ln.strip() for ln in Path(it[1:]).read_text().splitlines() if ln.strip()]
        else:
            out.append(it)
    return out


def split(busi: str, out: str, val_fraction: float = 0.2, seed: int = 0,
          which: str = "mgcc") -> dict:
    """``train.txt`` / ``held_out.txt``: the image files of the MGCC default's split (same
    seed/fraction), or with ``which="benchmark"`` of ``benchmark busi``'s split (its training
    part, validation included, and its test part): an LDM whose samples join the benchmark's
    "+ synthetic" row must never have seen the benchmark's test images."""
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    if which == "benchmark":
        from napari_textdiff.benchmark.busi import BusiConfig, split_busi
        from napari_textdiff.core.datasets import load_busi

        _, _, val, test, rest = split_busi(load_busi(busi), BusiConfig(device="cpu"), 0)
        files = {"train": sorted(str(s.image_path) for s in rest + val),
                 "held_out": sorted(str(s.image_path) for s in test)}
    else:
        from napari_textdiff.cli.mgcc import split_for_mgcc
        from napari_textdiff.core.datasets import discover

        lab, unl, val = split_for_mgcc(discover(busi), 1.0, val_fraction, seed)
        files = {"train": sorted(str(s.image_path) for s in lab + unl),
                 "held_out": sorted(str(s.image_path) for s in val)}
    for k, v in files.items():
        (o / f"{k}.txt").write_text("\n".join(v) + "\n")
    return {k: len(v) for k, v in files.items()}


def _as_trained(files: list[str], channels: int, size: int, max_side: int = 2048):
    """(N, C, size, size) in [0, 1]: the images loaded and resized exactly as ``train_ldm``
    loads and resizes its training set."""
    from napari_textdiff.core.diffusion.crops import load_image_set, resize_images

    tensors, _ = load_image_set(files, channels=channels, max_side=max_side)
    return resize_images(tensors, size)


def pack(busi: str, out: str, size: int = 128, channels: int = 1, seed: int = 0,
         which: str = "mgcc") -> dict:
    """The split's images resized as ``train_ldm`` resizes them, as PNGs under their own names
    in ``OUT/train`` and ``OUT/held_out``: a few MB that can travel to a GPU machine."""
    import numpy as np
    from PIL import Image

    lists = Path(out) / "lists"
    counts = split(busi, str(lists), seed=seed, which=which)
    for part in ("train", "held_out"):
        d = Path(out) / part
        d.mkdir(parents=True, exist_ok=True)
        files = [f for f in (lists / f"{part}.txt").read_text().split("\n") if f]
        for f, r in zip(files, _as_trained(files, channels, size)):
            u8 = (r.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(u8[..., 0] if channels == 1 else u8).save(d / (Path(f).stem + ".png"))
    return counts


def _stats(d) -> dict:
    import numpy as np

    d = np.asarray(d, dtype=np.float64)
    return {"n": int(d.size), "median": round(float(np.median(d)), 5),
            "p10": round(float(np.percentile(d, 10)), 5), "min": round(float(d.min()), 5)}


def report(ldm_dir: str, held_out: list[str], out: str, n: int = 32, steps: int = 50,
           seed: int = 0, device: str = "cpu", grid_columns: int = 8) -> dict:
    import torch

    from napari_textdiff.core.diffusion.synthesize import TrainingIndex, synthesize
    from napari_textdiff.core.progress import run

    meta = json.loads((Path(ldm_dir) / "ldm.json").read_text())
    size, channels = meta["size"], meta["channels"]
    index = TrainingIndex.load(ldm_dir)
    known = set(index.names)     # file names (images given as arrays: image0, image1, ...)
    seen = sorted(Path(f).name for f in held_out if {Path(f).name, Path(f).stem} & known)
    if seen:
        raise ValueError(f"{len(seen)} of the held-out images are training images of "
                         f"{ldm_dir} (e.g. {seen[0]}): pass images the model never saw, or "
                         "none (then samples are compared with the training images' own "
                         "nearest-neighbour distances)")
    samples = run(synthesize(ldm_dir, n, steps=steps, eta=0.0, seed=seed, device=device))
    if held_out:
        real_t = _as_trained(held_out, channels, size, meta["config"].get("max_side", 2048))
        d_real = index.query(real_t)[0].numpy()
    else:                 # no unseen images: show training images (the comparison is LOO)
        g = torch.Generator().manual_seed(seed)
        real_t = index.thumbs[torch.randperm(len(index.names), generator=g)[:grid_columns]]
        d_real = None
    d_syn = [s["distance"] for s in samples]
    thr = index.threshold
    res = {
        "ldm": str(ldm_dir), "unet_steps": meta.get("unet_steps_done"),
        "vae_steps": meta.get("vae_steps_done"), "training_images": len(index.names),
        "size": size, "ddim_steps": steps, "seed": seed, "near_copy_threshold": round(thr, 5),
        "training_median_nn_distance": meta.get("median_nn_distance"),
        "samples": {**_stats(d_syn), "near_copies": int(sum(d < thr for d in d_syn))},
        "held_out_real": None if d_real is None else
        {**_stats(d_real), "under_threshold": int((d_real < thr).sum())},
        "reading": ("samples as far from the training images as unseen real images are (or, "
                    "without those, as training images are from each other): not memorised; "
                    "much closer, or under the near-copy threshold: copies"),
    }
    ref = (res["held_out_real"]["median"] if d_real is not None
           else meta.get("median_nn_distance"))
    res["median_ratio_samples_to_reference"] = (round(res["samples"]["median"] / ref, 3)
                                                if ref else None)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    _grid(samples, index, real_t, o / "ldm_grid.png", grid_columns,
          "held-out real images" if d_real is not None else "training images")
    res["grid"] = "ldm_grid.png"
    (o / "ldm_report.json").write_text(json.dumps(res, indent=1))
    return res


def _grid(samples, index, real, path: Path, cols: int, real_title: str) -> None:
    """Rows: samples; the nearest training image of each (index thumbnail); held-out images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = min(cols, len(samples), len(real))
    names = {nm: i for i, nm in enumerate(index.names)}
    rows = [("synthetic samples", [s["image"][..., 0] if s["image"].shape[2] == 1
                                   else s["image"] for s in samples[:cols]]),
            ("nearest training image", [index.thumbs[names[s["nearest"]]].permute(1, 2, 0)
                                        .squeeze(-1).numpy() for s in samples[:cols]]),
            (real_title, [r.permute(1, 2, 0).squeeze(-1).numpy()
                                      for r in real[:cols]])]
    fig, axes = plt.subplots(3, cols, figsize=(1.6 * cols, 5.2), squeeze=False)
    for r, (title, ims) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(np.clip(ims[c], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"d={samples[c]['distance']:.3f}", fontsize=7)
        axes[r][0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="train / held-out file lists (the MGCC split)")
    s.add_argument("--busi", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("pack", help="the split's images at the LDM's size, to carry to a GPU")
    k.add_argument("--busi", required=True)
    k.add_argument("--out", required=True)
    k.add_argument("--size", type=int, default=128)
    k.add_argument("--channels", type=int, default=1)
    k.add_argument("--split", choices=["mgcc", "benchmark"], default="mgcc",
                   help="mgcc: the MGCC default's 437 / 109 split; benchmark: `benchmark "
                        "busi`'s training part / test part (for its + synthetic row)")
    r = sub.add_parser("report", help="memorisation statistics and the sample grid")
    r.add_argument("ldm_dir")
    r.add_argument("--held-out", nargs="+", default=[],
                   help="real images the LDM never saw: files, or @LIST (default: none; the "
                        "samples are then compared with the training images' own "
                        "nearest-neighbour distances)")
    r.add_argument("--out", required=True)
    r.add_argument("-n", "--n", type=int, default=32)
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.cmd == "split":
        print(json.dumps(split(a.busi, a.out, a.val_fraction, a.seed)))
    elif a.cmd == "pack":
        print(json.dumps(pack(a.busi, a.out, a.size, a.channels, which=a.split)))
    else:
        print(json.dumps(report(a.ldm_dir, _paths(a.held_out), a.out, a.n, a.steps, a.seed,
                                a.device), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the diffusion code: crop generation, pretraining images/s, DDIM sampling.

    .venv/bin/python benchmarks/bench_diffusion.py [--presets tiny small] [--steps 6]
        [--threads 1] [--device auto]

Prints one line per measurement. Pretraining throughput is taken from the trainer's own log
(the first logged window, which includes warm-up, is dropped).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def _images(n=8, side=256, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((side, side + 32, c)).astype(np.float32) for _ in range(n)]


def bench_crops(device, batch=64, size=128, reps=5):
    import torch

    from napari_textdiff.core.diffusion.crops import CropSampler

    imgs = [torch.rand(3, 512, 600) for _ in range(16)]
    s = CropSampler(imgs, size, (1.0, 2.0), True, device=device)
    g = torch.Generator(device=s.device).manual_seed(0)
    s.sample(batch, g)
    t = time.perf_counter()
    for _ in range(reps):
        s.sample(batch, g)
    if s.device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    print(f"crops  {size}px batch {batch}: {batch / dt:.0f} crops/s on {s.device}")


def bench_pretrain(preset, steps, device, batch=None, crop=None):
    from napari_textdiff.core.diffusion.pretrain import pretrain_backbone
    from napari_textdiff.core.progress import run

    with tempfile.TemporaryDirectory() as d:
        evs = []
        run(pretrain_backbone(_images(), d, preset=preset, steps=steps, batch_size=batch,
                              crop_size=crop, log_every=max(1, steps // 3), checkpoint_every=10**9,
                              device=device, warmup_steps=0), callback=evs.append)
        ips = [e.metrics["images_per_s"] for e in evs if "images_per_s" in e.metrics]
        first = next(e for e in evs if e.stage == "train")
    val = np.mean(ips[1:]) if len(ips) > 1 else ips[0]
    print(f"pretrain {preset}: {val:.2f} images/s ({first.message})")


def bench_sampling(device):
    from napari_textdiff.core.diffusion.ldm import train_ldm
    from napari_textdiff.core.diffusion.synthesize import synthesize
    from napari_textdiff.core.progress import run

    with tempfile.TemporaryDirectory() as d:
        run(train_ldm(_images(4, 64), d, preset="small", size=128, vae_steps=1, unet_steps=1,
                      vae_batch=2, unet_batch=2, device=device))
        t = time.perf_counter()
        run(synthesize(d, 4, steps=20, device=device, batch_size=4))
        dt = time.perf_counter() - t
    print(f"synthesize ldm-small 128px, 20 DDIM steps: {dt / 4:.2f} s/sample (batch 4)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-sampling", action="store_true")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_crops(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    for p in a.presets:
        bench_pretrain(p, a.steps, a.device)
    if not a.skip_sampling:
        bench_sampling(a.device)


if __name__ == "__main__":
    main()

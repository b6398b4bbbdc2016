"""MGCC speed: inference latency at batch 1 on 256x256 and semi-supervised training throughput.

    .venv/bin/python benchmarks/bench_mgcc.py [--device cpu|cuda] [--widths 0.25 1.0]
        [--size 256] [--train-iters 3] [--batch-labeled 4 --batch-unlabeled 4] [--threads N]

Prints one line per measurement (median of repeats, after warm-up). Training throughput counts
images (labeled + unlabeled) per second through the full 4-decoder model with backward + SGD.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from napari_textdiff.core.device import autocast, resolve_device
from napari_textdiff.core.mgcc.model import MGCCModel
from napari_textdiff.core.mgcc.network import MGCCConfig, MGCCNet, count_parameters
from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig
from napari_textdiff.core.models import Example


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def latency(width: float, size: int, dev, repeats: int, channels: int) -> tuple[float, int]:
    torch.manual_seed(0)
    model = MGCCModel.create(in_channels=channels, width=width, size=size).to(dev)
    x = torch.rand(1, channels, size, size)
    for _ in range(2):
        model.predict_batch(x)
    _sync(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict_batch(x)
        _sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), count_parameters(model.net)


def train_throughput(width: float, size: int, dev, iters: int, bl: int, bu: int,
                     channels: int) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    lab = [Example(rng.random((size, size, channels), dtype=np.float32),
                   (rng.random((size, size)) > 0.7).astype(np.uint8)) for _ in range(bl)]
    unl = [rng.random((size, size, channels), dtype=np.float32) for _ in range(bu)]
    t = MGCCTrainer(lab, unl, net_config=MGCCConfig(in_channels=channels, width=width),
                    config=TrainConfig(iterations=iters + 1, size=size, batch_labeled=bl,
                                       batch_unlabeled=bu), device=dev)
    t.step()                                   # warm-up
    _sync(dev)
    times = []
    for _ in range(iters):
        s = time.perf_counter()
        t.step()
        _sync(dev)
        times.append(time.perf_counter() - s)
    sec = statistics.median(times)
    return sec, (bl + bu) / sec, count_parameters(t.net)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-iters", type=int, default=3)
    p.add_argument("--train-widths", type=float, nargs="*", default=None,
                   help="widths to time training for (default: the smallest width only on CPU)")
    p.add_argument("--batch-labeled", type=int, default=4)
    p.add_argument("--batch-unlabeled", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(f"# MGCC benchmark on {name}, torch {torch.__version__}, {a.size}x{a.size}, "
          f"{a.channels} input channel(s)", flush=True)
    for w in a.widths:
        sec, n = latency(w, a.size, dev, a.repeats, a.channels)
        print(f"inference  width {w:<5} params {n:>11,}  batch 1: {sec * 1000:8.1f} ms", flush=True)
    train_widths = a.train_widths if a.train_widths is not None else (
        a.widths if dev.type != "cpu" else [min(a.widths)])
    for w in train_widths:
        sec, ips, n = train_throughput(w, a.size, dev, a.train_iters, a.batch_labeled,
                                       a.batch_unlabeled, a.channels)
        print(f"training   width {w:<5} params {n:>11,}  batch {a.batch_labeled}+{a.batch_unlabeled}: "
              f"{sec:7.3f} s/it  {ips:7.1f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""BUSI: MGCC with 50 % of the training cases labeled, with and without synthetic unlabeled
images, against a fully supervised U-Net (MGCC's Table: IoU 68.06 / 68.70 / 69.69).

BUSI has no official split: one seeded, class-stratified 70/30 train/test split of the cases
(``split_seed``), the same for every method and seed. From the training part a stratified
``val_fraction`` is held out for checkpoint selection (never the test part); the rest is
split 50/50 (stratified, per seed) into labeled and unlabeled cases. The U-Net gets every
remaining training case labeled. Metrics per test image at its own resolution, normals
included (an empty prediction on an empty mask scores 1), averaged per seed.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from .common import (UnitLog, asdict, resumed_info, run_record, seed_everything, summarize,
                     unit_event)

__all__ = ["BusiConfig", "run_busi", "BUSI_METHODS", "split_busi"]

BUSI_METHODS = ("mgcc_50", "mgcc_50_synthetic", "unet_full")
METRICS = ["iou", "recall", "precision", "f1", "dice"]


@dataclasses.dataclass
class BusiConfig:
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = dataclasses.field(default_factory=lambda: list(BUSI_METHODS))
    test_fraction: float = 0.3
    split_seed: int = 0
    val_fraction: float = 0.1
    labeled_fraction: float = 0.5
    iterations: int = 400              # CPU-sized (the paper: 20 000 at batch 8 on a GPU)
    size: int = 256
    width: float = 0.125               # MGCC-light / U-Net width (1.0 = published 52 M MGCC)
    batch_labeled: int = 4
    batch_unlabeled: int = 4
    val_every: int | None = None       # iterations between validations (default: a fifth)
    unet_lr: float = 1e-3
    synthetic: str | None = None       # folder of synthetic images
    ldm: str | None = None             # or: latent diffusion folder to sample them from
    n_synthetic: int = 725             # the paper's count (capped by the folder's size)
    ldm_steps: int = 50
    max_images: int | None = None      # stratified subset of the cases (speed)
    device: str = "auto"

    def __post_init__(self):
        bad = [m for m in self.methods if m not in BUSI_METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {list(BUSI_METHODS)}")
        if self.synthetic and self.ldm:
            raise ValueError("give --synthetic or --ldm, not both")
        if not 0 < self.labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction must be in (0, 1], got {self.labeled_fraction}")

    @classmethod
    def quick(cls, **kw) -> "BusiConfig":
        base = dict(seeds=[0], iterations=10, size=64, width=0.125, max_images=30,
                    n_synthetic=8, ldm_steps=5)
        return cls(**{**base, **kw})


def split_busi(samples, cfg: BusiConfig, seed: int):
    """(labeled, unlabeled, val, test, all_train) sample lists for one seed."""
    from ..core.datasets import train_val_split

    train, test = train_val_split(samples, cfg.test_fraction, seed=cfg.split_seed,
                                  stratify_key="class")
    rest, val = train_val_split(train, cfg.val_fraction, seed=cfg.split_seed + 1,
                                stratify_key="class") if cfg.val_fraction > 0 else (train, [])
    if cfg.labeled_fraction >= 1:
        lab, unl = rest, []
    else:
        lab, unl = train_val_split(rest, 1 - cfg.labeled_fraction, seed=seed,
                                   stratify_key="class")
    return lab, unl, val, test, rest


def ldm_saw_test_images(ldm_dir, test) -> list[str]:
    """Test cases among the images the latent diffusion model in ``ldm_dir`` was trained on
    (its ``ldm.json`` names them): its samples would carry them into the "+ synthetic" row."""
    import json

    from ..core.diffusion.ldm import LDM_META

    meta_path = Path(ldm_dir) / LDM_META
    try:
        names = json.loads(meta_path.read_text()).get("image_names") or []
    except (OSError, ValueError) as e:
        raise ValueError(f"--ldm {ldm_dir}: cannot read {meta_path.name} ({e}); is it a "
                         "folder written by train-ldm?") from e
    known = {Path(n).name for n in names} | {Path(n).stem for n in names}
    return sorted(s.name for s in test
                  if Path(s.image_path).name in known or Path(s.image_path).stem in known)


def _synthetic_images(cfg: BusiConfig, device):
    """Gray float32 arrays from ``cfg.synthetic`` or sampled from ``cfg.ldm``; (list, record)."""
    from ..core.io import is_image_file, load_image

    if cfg.synthetic:
        d = Path(cfg.synthetic)
        if not d.is_dir():
            raise FileNotFoundError(f"--synthetic {d}: no such folder")
        files = sorted(p for p in d.rglob("*") if is_image_file(p) and "_mask" not in p.stem)
        if not files:
            raise ValueError(f"--synthetic {d}: no images")
        files = files[:cfg.n_synthetic]
        return [load_image(p, channels=1) for p in files], {"source": "folder", "path": str(d),
                                                            "n": len(files)}
    return None, None


def run_busi(data, out_dir, config: BusiConfig | None = None, argv=None,
             should_stop: Callable[[], bool] | None = None, write: bool = True,
             resume: bool = False, finished_only: bool = False,
             merge_from=()):
    """Progress generator; writes ``busi.json``/``.md``/plots; returns the result dict.
    Finished units are saved at once; ``resume`` reuses those of an earlier run in
    ``out_dir`` (``UnitLog``), ``merge_from`` also those of other output folders;
    ``finished_only`` reports those and trains nothing more."""
    from ..core.datasets import load_busi, train_val_split
    from ..core.device import resolve_device
    from ..core.metrics import mean_metrics
    from .baselines import SupervisedConfig, UNetConfig, train_mgcc_light, train_unet
    from ..core.evaluation import iter_evaluate
    from .fewshot import _curve, _recording_validation

    cfg = config or BusiConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.time(), time.monotonic()
    dev = resolve_device(cfg.device)
    samples = load_busi(data)
    if cfg.max_images and cfg.max_images < len(samples):
        _, samples = train_val_split(samples, cfg.max_images / len(samples), seed=cfg.split_seed,
                                     stratify_key="class")
    cache: dict[str, object] = {}

    def load(s):
        if s.name not in cache:
            cache[s.name] = s.load(channels=1)
        return cache[s.name]

    if cfg.ldm and "mgcc_50_synthetic" in cfg.methods and not finished_only:
        test_cases = split_busi(samples, cfg, cfg.seeds[0])[3]     # the same for every seed
        seen = ldm_saw_test_images(cfg.ldm, test_cases)
        if seen:
            raise ValueError(
                f"--ldm {cfg.ldm}: the latent diffusion model was trained on {len(seen)} of "
                f"this benchmark's {len(test_cases)} test cases (e.g. {seen[0]}), so its "
                "samples would carry test images into the '+ synthetic' row. Train one on "
                "the benchmark's training part (python benchmarks/ldm_report.py pack --split "
                "benchmark --busi DATA --out DIR, then napari-textdiff train-ldm DIR/train), "
                "or pass --synthetic with images made without the test cases.")
    synth, synth_rec = _synthetic_images(cfg, dev)
    methods = list(cfg.methods)
    if "mgcc_50_synthetic" in methods and synth is None and not cfg.ldm:
        methods.remove("mgcc_50_synthetic")
        synth_rec = {"source": None, "note": "no --synthetic/--ldm given: row skipped"}
    units = [(s, m) for s in cfg.seeds for m in methods]
    record = run_record(argv, dev, cfg.seeds, asdict(cfg), started)
    log = UnitLog(out, "busi", asdict(cfg), ("method", "seed"), resume or finished_only,
                  run=record, persist=write, merge_from=merge_from,
                  extra_keys=("synthetic",),
                  method_settings={k: ("mgcc_50_synthetic",)
                                   for k in ("synthetic", "ldm", "n_synthetic", "ldm_steps")})
    yield unit_event(0, len(units) + (1 if cfg.ldm else 0), "starting", t0)
    if cfg.ldm and not finished_only and not all(log.has(m, s) for s, m in units
                                                 if m == "mgcc_50_synthetic"):
        from ..core.diffusion.synthesize import synthesize
        gen = synthesize(cfg.ldm, cfg.n_synthetic, steps=cfg.ldm_steps, seed=cfg.split_seed,
                         device=dev)
        payloads = yield from gen
        synth = [p["image"].mean(-1, keepdims=True) if p["image"].shape[-1] == 3 else p["image"]
                 for p in payloads]
        synth_rec = {"source": "ldm", "path": str(cfg.ldm), "n": len(synth),
                     "steps": cfg.ldm_steps,
                     "near_copies": int(sum(p["near_copy"] for p in payloads))}
        log.extra["synthetic"] = synth_rec
    for i, (seed, method) in enumerate(units):
        old = log.get(method, seed, stopped_ok=finished_only)
        if old is not None:
            yield unit_event(i + 1 + (1 if cfg.ldm else 0), len(units) + (1 if cfg.ldm else 0),
                             f"{method} seed={seed}: iou {old['metrics']['iou']:.3f} (resumed)",
                             t0)
            continue
        if finished_only:
            continue
        lab, unl, val, test, rest = split_busi(samples, cfg, seed)
        seed_everything(seed)
        t1 = time.monotonic()
        val_ex = [load(s) for s in val]
        val_curve: list = []
        ck = log.unit_dir(method, seed)
        if method == "unet_full":
            model, losses = yield from _recording_validation(train_unet(
                [load(s) for s in rest],
                config=SupervisedConfig(iterations=cfg.iterations, batch_size=cfg.batch_labeled,
                                        lr=cfg.unet_lr, size=cfg.size, seed=seed),
                net_config=UNetConfig(in_channels=1, width=cfg.width), device=dev, val=val_ex,
                val_every=cfg.val_every, should_stop=should_stop, checkpoint_dir=ck), val_curve)
            n_lab, n_unl = len(rest), 0
        else:
            unl_imgs = [load(s).image for s in unl]
            if method == "mgcc_50_synthetic":
                unl_imgs = unl_imgs + list(synth)
            model, h = yield from _recording_validation(train_mgcc_light(
                [load(s) for s in lab], unl_imgs, val_ex, iterations=cfg.iterations,
                size=cfg.size, width=cfg.width, in_channels=1, batch_labeled=cfg.batch_labeled,
                batch_unlabeled=cfg.batch_unlabeled, seed=seed, device=dev,
                val_every=cfg.val_every, should_stop=should_stop, checkpoint_dir=ck), val_curve)
            losses = h["loss"]
            n_lab, n_unl = len(lab), len(unl_imgs)
        resumed = resumed_info(model)
        train_seconds = (time.monotonic() - t1
                         + resumed.get("training_resumed", {}).get("seconds_before", 0.0))
        test_ex = [load(s) for s in test]
        per = yield from iter_evaluate(
            test_ex, (model.predict_proba(ex.image, mode="resize") for ex in test_ex))
        for r, s in zip(per, test):
            r["class"] = s.meta.get("class")
        metrics = mean_metrics([{k: r[k] for k in METRICS} for r in per])
        by_class = {c: mean_metrics([{k: r[k] for k in METRICS} for r in per
                                     if r["class"] == c])
                    for c in sorted({r["class"] for r in per})}
        log.add({"method": method, "seed": seed, "metrics": metrics, "by_class": by_class,
                     "per_image": per, "n_labeled": n_lab, "n_unlabeled": n_unl,
                     "n_val": len(val), "n_test": len(test),
                     "train_seconds": round(train_seconds, 2),
                     "curve": _curve(losses, "iteration"), "iterations_done": len(losses),
                     "val_curve": val_curve, **resumed},
                stopped=should_stop is not None and should_stop())
        yield unit_event(i + 1 + (1 if cfg.ldm else 0), len(units) + (1 if cfg.ldm else 0),
                         f"{method} seed={seed}: iou {metrics['iou']:.3f}", t0)
        if should_stop is not None and should_stop():
            break
    planned = [(m, s) for s, m in units]
    rows = log.rows(planned)
    _, _, val0, test0, rest0 = split_busi(samples, cfg, cfg.seeds[0])
    res = {
        "benchmark": "busi",
        "run": record,
        "resumed": log.resumed_record(),
        "data": {"folder": str(Path(data).resolve()), "n_cases": len(samples),
                 "n_train": len(rest0), "n_val": len(val0), "n_test": len(test0),
                 "test_images": [s.name for s in test0]},
        "split_note": (f"BUSI has no official split: seeded (split_seed={cfg.split_seed}) "
                       f"class-stratified {1 - cfg.test_fraction:.0%}/{cfg.test_fraction:.0%} "
                       f"train/test split of {len(samples)} cases, {cfg.val_fraction:.0%} of "
                       f"train held out for checkpoint selection; "
                       f"{cfg.labeled_fraction:.0%} of the rest labeled (per seed)."),
        "synthetic": synth_rec or log.extra.get("synthetic"),
        "metrics": METRICS[:4],
        "rows": rows,
        "summary": summarize(rows, ["method"], METRICS),
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    if write:
        from .report import write_outputs
        res["files"] = write_outputs(res, out)
        log.finish(planned)
    return res

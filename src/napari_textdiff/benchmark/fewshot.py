"""MoNuSeg few-shot curves: K training images x seeded subsets, every method on the same images.

Protocols: ``paper`` (whole 1000² image resized to ``size``², as TextDiff's paper) and
``tiles`` (native resolution, ``size``² tiles with overlap; training on at most
``max_train_tiles`` tiles per image, foreground first). Metrics are per image on the test
folder (``core.metrics``), averaged per seed; the summary gives mean ± std over seeds.
No model selection on the test images: every method trains for a fixed budget.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.evaluation import iter_evaluate
from .common import (UnitLog, asdict, resolve_backbone, resumed_info, run_record,
                     seed_everything, summarize, unit_event)
from .textdiff_variants import TextDiffVariants

__all__ = ["MonusegConfig", "run_monuseg", "METHODS", "TEXTDIFF_MODES"]

TEXTDIFF_MODES = {"textdiff": "cross_attention", "textdiff_no_text": "none",
                  "textdiff_no_xattn": "concat"}
METHODS = (*TEXTDIFF_MODES, "unet", "mgcc_light", "random_forest")
PROTOCOLS = ("paper", "tiles")
_TD, _TRAINED = tuple(TEXTDIFF_MODES), ("unet", "mgcc_light")
#: settings that change only these methods' rows: a unit of one method is reused (``--resume``,
#: ``--merge``) when the settings that method reads agree, so rows run with each method's own
#: budget (e.g. the U-Net at 600 iterations, TextDiff at 20 epochs) join one report
METHOD_SETTINGS = {
    **{k: _TD for k in ("max_train_tiles", "head_preset", "textdiff_overrides", "epochs",
                        "min_head_steps", "backbone", "backbone_preset", "text_encoder")},
    "unet_iterations": ("unet",), "unet_width": ("unet",),
    "mgcc_iterations": ("mgcc_light",), "mgcc_width": ("mgcc_light",),
    **{k: _TRAINED for k in ("val_images", "val_every", "batch_size")},
}
#: TextDiff settings that ``--textdiff-set`` may not change: each unit sets them
OWNED_BY_BENCHMARK = frozenset({"text_mode", "epochs", "seed", "taps", "backbone",
                                "text_encoder", "max_length"})


@dataclasses.dataclass
class MonusegConfig:
    k: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 5, 10])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    protocols: list[str] = dataclasses.field(default_factory=lambda: list(PROTOCOLS))
    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    train_split: str = "Train_Folder"
    test_split: str = "Test_Folder"
    size: int = 256                 # paper protocol resize / tile side
    tile_overlap: int = 64
    max_train_tiles: int = 4        # tiles protocol: training tiles per image (TextDiff)
    max_test_images: int | None = None
    head_preset: str = "cpu"
    # TextDiffConfig fields set after the protocol's own (e.g. the shipped histology recipe:
    # scale 0.5, features "both", diffusion_scale 0.5, working_size 512, stain_norm "reinhard")
    textdiff_overrides: dict = dataclasses.field(default_factory=dict)
    epochs: int = 50                # TextDiff head epochs (the paper's 50)...
    min_head_steps: int = 100       # ...but at least this many steps when K is small
    unet_iterations: int = 200      # CPU-sized budgets (REFERENCE's U-Net used 1 500 steps)
    mgcc_iterations: int = 200
    # U-Net / MGCC-light: with val_images > 0, that many other training-folder images (seeded,
    # never the K drawn ones nor the test folder) are cut into native crops and scored every
    # val_every iterations; the best weights are kept and the curve is recorded, so a row's
    # budget can be shown to reach its plateau
    val_images: int = 0
    val_every: int | None = None
    unet_width: float = 0.25
    mgcc_width: float = 0.125       # MGCC's 4 decoders cost ~5x a U-Net step at 0.25
    batch_size: int = 4             # U-Net / MGCC labeled batch
    backbone: str | None = None
    backbone_preset: str = "small"  # random-init backbone when none is given/bundled
    text_encoder: str | None = None
    feature_cache_mb: float = 2048
    device: str = "auto"

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {list(METHODS)}")
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocols {bad}; choose from {list(PROTOCOLS)}")
        if not self.k or min(self.k) < 1:
            raise ValueError(f"K values must be >= 1, got {self.k}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.val_images < 0 or (self.val_every is not None and self.val_every < 1):
            raise ValueError(f"val_images must be >= 0 and val_every >= 1, got "
                             f"{self.val_images} / {self.val_every}")
        if self.size % 16:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        if self.textdiff_overrides:
            from ..core.textdiff.config import TextDiffConfig

            known = {f.name for f in dataclasses.fields(TextDiffConfig)}
            bad = sorted(set(self.textdiff_overrides) - known)
            if bad:
                raise ValueError(f"unknown TextDiff settings {bad}; known: {sorted(known)}")
            owned = sorted(set(self.textdiff_overrides) & OWNED_BY_BENCHMARK)
            if owned:
                raise ValueError(f"--textdiff-set {owned}: the benchmark sets these itself "
                                 "(text mode per method, epochs with --epochs, backbone, taps "
                                 "and text encoder shared by all variants, seed per unit)")

    @classmethod
    def quick(cls, **kw) -> "MonusegConfig":
        """CI size: minutes on a CPU (tiny random backbone unless one is given)."""
        base = dict(k=[1, 2], seeds=[0, 1], epochs=3, min_head_steps=0, unet_iterations=10,
                    mgcc_iterations=10,
                    max_train_tiles=2, max_test_images=2,
                    mgcc_width=0.125, unet_width=0.125)
        return cls(**{**base, **kw})


def _n_tiles(image, cfg) -> int:
    from ..core.tiling import tile_starts

    h, w = image.shape[:2]
    return len(tile_starts(h, cfg.size, cfg.tile_overlap)) * \
        len(tile_starts(w, cfg.size, cfg.tile_overlap))


def _curve(values: Sequence[float], unit: str, max_points: int = 200) -> dict:
    v = np.asarray(values, dtype=np.float64)
    x = np.arange(1, len(v) + 1)
    if len(v) > max_points:    # block means keep the shape of a long curve
        edges = np.linspace(0, len(v), max_points + 1).astype(int)
        x = np.array([edges[i + 1] for i in range(max_points)])
        v = np.array([v[edges[i]:edges[i + 1]].mean() for i in range(max_points)])
    return {"unit": unit, "x": x.tolist(), "loss": [round(float(a), 6) for a in v]}


def _recording_validation(gen, sink: list):
    """Pass a training generator's events through, keeping ``[iteration, val IoU]`` of each
    validation event in ``sink``; returns what the generator returns."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if ev.stage == "validate" and ev.metrics:
            iou = ev.metrics.get("val_iou", ev.metrics.get("iou"))
            if iou is not None:
                sink.append([int(ev.step), round(float(iou), 5)])
        yield ev


def validation_images(pool, subset, n: int, seed: int) -> list:
    """``n`` samples of ``pool`` outside ``subset``, drawn by ``seed`` (sorted by name first,
    so the draw does not depend on the folder's listing order)."""
    taken = {s.name for s in subset}
    rest = sorted((s for s in pool if s.name not in taken), key=lambda s: s.name)
    if n > len(rest):
        raise ValueError(f"{n} validation images asked, but only {len(rest)} training-folder "
                         "images are left outside the draw; lower --val-images")
    order = np.random.default_rng(10_000 + seed).permutation(len(rest))[:n]
    return [rest[i] for i in sorted(order)]


def fit_and_evaluate(method: str, protocol: str, train, test, cfg, variants, seed: int,
                     device, should_stop=None, val=(), checkpoint_dir=None):
    """Generator: train one method on ``train`` examples and score it on ``test``; returns
    the result row (without method/protocol/k keys), or None when stopped before a model
    existed. ``checkpoint_dir``: where the U-Net / MGCC-light units checkpoint and resume."""
    from ..core.metrics import mean_metrics
    from .baselines import (SupervisedConfig, UNetConfig, crops_of, train_mgcc_light,
                            train_unet)

    seed_everything(seed)
    tiles = protocol == "tiles"
    t0 = time.monotonic()
    info: dict = {}
    memo = variants if method in TEXTDIFF_MODES else None      # its compute_seconds
    feat0 = memo.compute_seconds if memo is not None else 0.0
    if method in TEXTDIFF_MODES:
        # small K: at least ``min_head_steps`` optimiser steps (K=1 would get only `epochs`)
        from ..core.textdiff.config import TextDiffConfig
        bs = TextDiffConfig.preset(cfg.head_preset).batch_size
        n_tiles = len(train) * (min(cfg.max_train_tiles, _n_tiles(train[0].image, cfg))
                                if tiles else 1)
        epochs = max(cfg.epochs, math.ceil(cfg.min_head_steps / math.ceil(n_tiles / bs)))
        over = dict(epochs=epochs, seed=seed)
        if tiles:
            over.update(working_size=cfg.size, resize_to=None, scale=1.0,
                        tile_overlap=cfg.tile_overlap)
        else:
            over.update(resize_to=cfg.size)
        over.update(cfg.textdiff_overrides)
        model = variants.create(TEXTDIFF_MODES[method], cfg.head_preset, **over)
        hist = yield from model.fit(train, None, should_stop=should_stop,
                                    max_tiles_per_image=cfg.max_train_tiles if tiles else None)
        curve = _curve(hist["loss"], "epoch")
        info = {"head_parameters": model.num_parameters, "tiles": hist.get("tiles"),
                "epochs": epochs}

        def predict(ex):
            return model.predict_proba(ex.image, ex.text, tiled=tiles)
    elif method == "random_forest":       # the classic peer (ilastik / convpaint's classic mode)
        from .forest import ForestConfig, train_random_forest

        model = yield from train_random_forest(
            train, ForestConfig(seed=seed, resize_to=None if tiles else cfg.size),
            should_stop=should_stop)
        if model is None:                 # stopped: no row for a forest never fitted
            return None
        curve = None
        info = {"forest": model.config.to_dict(), "features": int(model.forest.n_features_in_)}

        def predict(ex):
            return model.predict_proba(ex.image)
    else:
        data = crops_of(train, cfg.size, cfg.tile_overlap, seed=seed) if tiles else list(train)
        mode = "tile" if tiles else "resize"
        # validation is scored per example at the model's input size: native crops for the
        # tiles protocol (what its tiles see), whole images (resized) for the paper protocol
        val_ex = (crops_of(val, cfg.size, cfg.tile_overlap, seed=seed) if tiles else list(val))
        val_curve: list = []
        if method == "unet":
            model, losses = yield from _recording_validation(train_unet(
                data, config=SupervisedConfig(iterations=cfg.unet_iterations,
                                              batch_size=cfg.batch_size, size=cfg.size,
                                              seed=seed),
                net_config=UNetConfig(in_channels=3, width=cfg.unet_width), device=device,
                inference=mode, should_stop=should_stop, val=val_ex,
                val_every=cfg.val_every, checkpoint_dir=checkpoint_dir), val_curve)
        else:
            model, h = yield from _recording_validation(train_mgcc_light(
                data, val=val_ex, iterations=cfg.mgcc_iterations, size=cfg.size,
                width=cfg.mgcc_width, batch_labeled=cfg.batch_size, seed=seed, device=device,
                inference=mode, val_every=cfg.val_every, should_stop=should_stop,
                checkpoint_dir=checkpoint_dir), val_curve)
            losses = h["loss"]
        curve = _curve(losses, "iteration")
        info = {"parameters": int(sum(p.numel() for p in model.net.parameters())),
                "train_crops": len(data), **resumed_info(model)}
        if val_ex:
            best = max(val_curve, key=lambda r: r[1]) if val_curve else None
            info.update(val_images=[e.name for e in val], val_examples=len(val_ex),
                        val_curve=val_curve, best_iteration=best[0] if best else None)

        def predict(ex):
            return model.predict_proba(ex.image, mode=mode, overlap=cfg.tile_overlap)
    train_seconds = (time.monotonic() - t0
                     + info.get("training_resumed", {}).get("seconds_before", 0.0))
    feat1 = memo.compute_seconds if memo is not None else 0.0
    t1 = time.monotonic()
    per_image = yield from iter_evaluate(test, (predict(ex) for ex in test))
    predict_seconds = (time.monotonic() - t1) / max(1, len(test))
    if memo is not None:
        # the memo is shared by units: only the first unit to see an image pays its features,
        # so say how much of this unit's time was fresh diffusion features
        info["fresh_feature_seconds"] = {"train": round(feat1 - feat0, 3),
                                         "predict": round(memo.compute_seconds - feat1, 3)}
    metrics = mean_metrics([{k: v for k, v in r.items() if k != "name"} for r in per_image])
    return {"seed": seed, "train_images": [e.name for e in train], "metrics": metrics,
            "per_image": per_image, "train_seconds": round(train_seconds, 3),
            "predict_seconds_per_image": round(predict_seconds, 3), "curve": curve, **info}


def _labeled(samples, what):
    out = [s for s in samples if s.has_mask]
    if not out:
        raise ValueError(f"{what}: no labeled images")
    return out


def run_monuseg(data, out_dir, config: MonusegConfig | None = None, argv=None,
                should_stop: Callable[[], bool] | None = None, write: bool = True,
                resume: bool = False, finished_only: bool = False,
                merge_from=()):
    """Progress generator; writes ``monuseg.json``/``.md``/plots to ``out_dir`` and returns
    the result dict. Each finished unit is saved at once (``UnitLog``); ``resume`` reuses the
    units an earlier run in ``out_dir`` finished, ``merge_from`` also those of other output
    folders; ``finished_only`` reports those and trains nothing more."""
    from ..core.datasets import kshot, load_monuseg
    from ..core.device import resolve_device

    cfg = config or MonusegConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t0 = time.monotonic()
    dev = resolve_device(cfg.device)
    train_s = _labeled(load_monuseg(data, split=cfg.train_split), f"{data} {cfg.train_split}")
    test_s = _labeled(load_monuseg(data, split=cfg.test_split), f"{data} {cfg.test_split}")
    test_s = sorted(test_s, key=lambda s: s.name)[:cfg.max_test_images or None]
    if max(cfg.k) > len(train_s):
        raise ValueError(f"K={max(cfg.k)} but {cfg.train_split} has only {len(train_s)} "
                         "labeled images")
    overlap = {s.name for s in train_s} & {s.name for s in test_s}
    if overlap:
        raise ValueError(f"train and test splits share images: {sorted(overlap)[:3]}")
    cache: dict[str, object] = {}

    def load(s):
        if s.name not in cache:
            cache[s.name] = s.load(channels=3)
        return cache[s.name]

    test = [load(s) for s in test_s]
    need_td = [m for m in cfg.methods if m in TEXTDIFF_MODES]
    variants, bb_rec = None, None
    if need_td:
        bb_dir, bb_rec = resolve_backbone(cfg.backbone, out, cfg.backbone_preset)
        variants = TextDiffVariants(bb_dir, dev, cfg.text_encoder, cfg.feature_cache_mb,
                                    need_text=any(m != "textdiff_no_text" for m in need_td))
    units = [(p, k, s, m) for p in cfg.protocols for k in cfg.k for s in cfg.seeds
             for m in cfg.methods]
    record = run_record(argv, dev, cfg.seeds, asdict(cfg), started)
    log = UnitLog(out, "monuseg", asdict(cfg), ("method", "protocol", "k", "seed"),
                  resume or finished_only, run=record, persist=write,
                  merge_from=merge_from, method_settings=METHOD_SETTINGS)
    yield unit_event(0, len(units), "starting", t0)
    try:
        for i, (protocol, k, seed, method) in enumerate(units):
            row = log.get(method, protocol, k, seed, stopped_ok=finished_only)
            if row is None and finished_only:
                continue
            if row is None:
                subset = kshot(train_s, k, seed=seed)
                train = [load(s) for s in subset]
                val = ([load(s) for s in validation_images(train_s, subset, cfg.val_images,
                                                           seed)]
                       if cfg.val_images and method in ("unet", "mgcc_light") else [])
                ck = (log.unit_dir(method, protocol, k, seed)
                      if method in ("unet", "mgcc_light") else None)
                row = yield from fit_and_evaluate(method, protocol, train, test, cfg, variants,
                                                  seed, dev, should_stop, val=val,
                                                  checkpoint_dir=ck)
                if row is None:
                    break
                row = {"method": method, "protocol": protocol, "k": k, **row}
                log.add(row, stopped=should_stop is not None and should_stop())
            yield unit_event(i + 1, len(units),
                             f"{method} {protocol} K={k} seed={seed}: dice "
                             f"{row['metrics']['dice']:.3f}"
                             + (" (resumed)" if row.get("resumed") else ""), t0)
            if should_stop is not None and should_stop():
                break
    finally:
        memo_stats = variants.stats() if variants else None
        if variants is not None:
            variants.close()
    planned = [(m, p, k, s) for p, k, s, m in units]
    rows = log.rows(planned)
    result = {
        "benchmark": "monuseg",
        "run": record,
        "resumed": log.resumed_record(),
        "backbone": bb_rec,
        "text_encoder": (variants.text_ref if variants and variants.encoder else None),
        "data": {"folder": str(Path(data).resolve()), "train_split": cfg.train_split,
                 "test_split": cfg.test_split, "n_train_pool": len(train_s),
                 "test_images": [s.name for s in test_s]},
        "metrics": ["dice", "iou"],
        "rows": rows,
        "summary": summarize(rows, ["method", "protocol", "k"], ["dice", "iou"]),
        "feature_memo": memo_stats,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    if write:
        from .report import write_outputs
        result["files"] = write_outputs(result, out)
        log.finish(planned)
    return result

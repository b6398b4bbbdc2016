"""Chest X-ray lesions (ground glass ∪ consolidation): TextDiff with and without the clinical
notes, K ∈ {5, all} training images (the QaTa-COV19-like task of the TextDiff paper).

One seeded split of the annotated images (``split_seed``; default 1/3 test) shared by every
method and seed; K images are drawn per seed from the training part ("all" = all of them, the
seed then only changes the head's initialisation and order). Whole images resized to
``size``² (the paper protocol); images are first downscaled to ``max_side`` (some X-rays are
4000 px) and scored at that resolution.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.evaluation import iter_evaluate
from .common import UnitLog, asdict, resolve_backbone, run_record, summarize, unit_event

__all__ = ["XrayConfig", "run_xray", "XRAY_METHODS"]

XRAY_METHODS = {"textdiff_notes": "cross_attention", "textdiff_no_notes": "none"}


@dataclasses.dataclass
class XrayConfig:
    k: list = dataclasses.field(default_factory=lambda: [5, "all"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = dataclasses.field(default_factory=lambda: list(XRAY_METHODS))
    target: str = "lesion"
    test_fraction: float = 1 / 3
    split_seed: int = 0
    size: int = 256
    max_side: int = 1024
    head_preset: str = "cpu"
    epochs: int = 50
    min_head_steps: int = 200          # at least this many head steps when K is small
    backbone: str | None = None
    backbone_preset: str = "small"
    text_encoder: str | None = None
    feature_cache_mb: float = 2048
    device: str = "auto"

    def __post_init__(self):
        bad = [m for m in self.methods if m not in XRAY_METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {list(XRAY_METHODS)}")
        for k in self.k:
            if k != "all" and (not isinstance(k, int) or k < 1):
                raise ValueError(f"K must be a positive integer or 'all', got {k!r}")

    @classmethod
    def quick(cls, **kw) -> "XrayConfig":
        base = dict(k=[2, "all"], seeds=[0], epochs=3, min_head_steps=0, max_side=512)
        return cls(**{**base, **kw})


def _shrink(ex, max_side: int):
    from skimage.transform import resize

    h, w = ex.mask.shape
    f = max_side / max(h, w)
    if f >= 1:
        return ex
    shape = (max(1, round(h * f)), max(1, round(w * f)))
    img = resize(ex.image, shape, order=1, anti_aliasing=True, preserve_range=True)
    m = resize(ex.mask.astype(np.float32), shape, order=1, preserve_range=True) >= 0.5
    return type(ex)(img.astype(np.float32), m.astype(np.uint8), ex.text, ex.name)


def run_xray(data, out_dir, config: XrayConfig | None = None, argv=None,
             should_stop: Callable[[], bool] | None = None, write: bool = True,
             resume: bool = False, finished_only: bool = False,
             merge_from=()):
    """Progress generator; writes ``xray.json``/``.md``/plots; returns the result dict.
    Finished units are saved at once; ``resume`` reuses those of an earlier run in
    ``out_dir`` (``UnitLog``), ``merge_from`` also those of other output folders;
    ``finished_only`` reports those and trains nothing more."""
    from ..core.datasets import kshot, load_xray, train_val_split
    from ..core.device import resolve_device
    from ..core.metrics import mean_metrics
    from .common import seed_everything
    from ..core.textdiff.config import TextDiffConfig
    from .fewshot import _curve
    from .textdiff_variants import TextDiffVariants

    cfg = config or XrayConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.time(), time.monotonic()
    dev = resolve_device(cfg.device)
    samples = load_xray(data, target=cfg.target)
    if len(samples) < 3:
        raise ValueError(f"{data}: only {len(samples)} annotated images for {cfg.target!r}")
    train_s, test_s = train_val_split(samples, cfg.test_fraction, seed=cfg.split_seed)
    ks = [len(train_s) if k == "all" else int(k) for k in cfg.k]
    if max(ks) > len(train_s):
        raise ValueError(f"K={max(ks)} but the training split has {len(train_s)} images")
    cache: dict[str, object] = {}

    def load(s):
        if s.name not in cache:
            cache[s.name] = _shrink(s.load(channels=3), cfg.max_side)
        return cache[s.name]

    bb_dir, bb_rec = resolve_backbone(cfg.backbone, out, cfg.backbone_preset)
    variants = TextDiffVariants(bb_dir, dev, cfg.text_encoder, cfg.feature_cache_mb,
                                need_text="textdiff_notes" in cfg.methods)
    test = [load(s) for s in test_s]
    units = [(k, lab, s, m) for k, lab in zip(ks, cfg.k) for s in cfg.seeds for m in cfg.methods]
    record = run_record(argv, dev, cfg.seeds, asdict(cfg), started)
    log = UnitLog(out, "xray", asdict(cfg), ("method", "k", "seed"), resume or finished_only,
                  run=record, persist=write,
                  merge_from=merge_from)
    yield unit_event(0, len(units), "starting", t0)
    try:
        for i, (k, k_label, seed, method) in enumerate(units):
            old = log.get(method, k, seed, stopped_ok=finished_only)
            if old is not None:
                yield unit_event(i + 1, len(units), f"{method} K={k} seed={seed}: dice "
                                 f"{old['metrics']['dice']:.3f} (resumed)", t0)
                continue
            if finished_only:
                continue
            subset = train_s if k == len(train_s) else kshot(train_s, k, seed=seed)
            train = [load(s) for s in subset]
            seed_everything(seed)
            t1 = time.monotonic()
            feat0 = variants.compute_seconds
            bs = max(1, TextDiffConfig.preset(cfg.head_preset).batch_size)
            epochs = max(cfg.epochs, math.ceil(cfg.min_head_steps / math.ceil(len(train) / bs)))
            model = variants.create(XRAY_METHODS[method], cfg.head_preset, epochs=epochs,
                                    seed=seed, resize_to=cfg.size)
            hist = yield from model.fit(train, None, should_stop=should_stop)
            train_seconds = time.monotonic() - t1
            feat1 = variants.compute_seconds
            per = yield from iter_evaluate(
                test, (model.predict_proba(ex.image, ex.text) for ex in test))
            fresh = {"train": round(feat1 - feat0, 3),     # the memo is shared by units
                     "predict": round(variants.compute_seconds - feat1, 3)}
            metrics = mean_metrics([{k2: v for k2, v in r.items() if k2 != "name"} for r in per])
            log.add({"method": method, "k": k, "k_label": str(k_label), "seed": seed,
                         "train_images": [e.name for e in train], "metrics": metrics,
                         "per_image": per, "train_seconds": round(train_seconds, 2),
                         "epochs": epochs, "fresh_feature_seconds": fresh,
                         "curve": _curve(hist["loss"], "epoch")},
                    stopped=should_stop is not None and should_stop())
            yield unit_event(i + 1, len(units),
                             f"{method} K={k} seed={seed}: dice {metrics['dice']:.3f}", t0)
            if should_stop is not None and should_stop():
                break
    finally:
        memo = variants.stats()
        variants.close()
    planned = [(m, k, s) for k, _, s, m in units]
    rows = log.rows(planned)
    res = {
        "benchmark": "xray",
        "run": record,
        "resumed": log.resumed_record(),
        "backbone": bb_rec,
        "text_encoder": variants.text_ref if variants.encoder else None,
        "data": {"folder": str(Path(data).resolve()), "target": cfg.target,
                 "n_images": len(samples), "n_train": len(train_s),
                 "test_images": [s.name for s in test_s]},
        "split_note": (f"seeded (split_seed={cfg.split_seed}) split of the {len(samples)} "
                       f"annotated images: {len(train_s)} train / {len(test_s)} test"),
        "metrics": ["dice", "iou"],
        "rows": rows,
        "summary": summarize(rows, ["method", "k"], ["dice", "iou"]),
        "feature_memo": memo,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    if write:
        from .report import write_outputs
        res["files"] = write_outputs(res, out)
        log.finish(planned)
    return res

"""Speed on the chosen device: per-256² tile latency of each model (TextDiff = diffusion
features + head), fine-tune time on 5 images, LDM sampling time per image, peak memory.

Timings use whatever weights are available (bundled backbone / LDM, else randomly initialised
or 1-step-trained ones of the same architecture): speed does not depend on the weights, and the
JSON records which were used. Latency = median of ``repeats`` runs after one warm-up.
Peak memory: CUDA's max allocated memory on a GPU, the process's peak RSS on a CPU.
Timers synchronise the device in use; the precision chosen there is recorded.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .common import Stopwatch, asdict, peak_memory_mb, resolve_backbone, run_record, unit_event

__all__ = ["SpeedConfig", "run_speed"]


@dataclasses.dataclass
class SpeedConfig:
    tile: int = 256
    repeats: int = 5
    backbone: str | None = None
    backbone_preset: str = "small"
    text_encoder: str | None = None
    head_preset: str = "cpu"
    mgcc_widths: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.25])
    throughput_batch: int | None = None   # MGCC batched images/s (default 64 on GPU, 8 on CPU)
    unet_width: float = 0.25
    finetune_images: int = 5
    finetune_epochs: int = 5
    ldm: str | None = None
    ldm_preset: str = "small"
    ldm_steps: int = 50
    large_side: int = 4096                # gray image for bytes/pixel and s/MP (0: skip)
    seed: int = 0
    device: str = "auto"

    @classmethod
    def quick(cls, **kw) -> "SpeedConfig":
        base = dict(repeats=2, mgcc_widths=[0.25], unet_width=0.125,
                    finetune_epochs=1, ldm_preset="tiny", ldm_steps=5, large_side=1024)
        return cls(**{**base, **kw})


def _time(fn, repeats: int, device) -> float:
    fn()   # warm-up
    out = []
    for _ in range(max(1, repeats)):
        with Stopwatch(device) as sw:
            fn()
        out.append(sw.seconds)
    return statistics.median(out)


def _examples(n: int, size: int, seed: int):
    from ..core.models import Example

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        img = rng.normal(0.4, 0.05, (size, size, 3)).clip(0, 1).astype(np.float32)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 8) ** 2)
        img[m] = 0.8
        out.append(Example(img, m.astype(np.uint8), "the nuclei density in the upper right is "
                                                    "high", f"synthetic{i}"))
    return out


def _untrained_ldm(preset: str, dest: Path, seed: int, device):
    """A 1-step LDM of ``preset`` (same architecture, so the same sampling cost)."""
    from ..core.diffusion.ldm import LDMConfig, train_ldm
    from ..core.progress import run

    rng = np.random.default_rng(seed)
    imgs = [rng.random((64, 64, 1)).astype(np.float32) for _ in range(4)]
    run(train_ldm(imgs, dest, LDMConfig(preset=preset, channels=1, vae_steps=1, unet_steps=1,
                                        vae_batch=2, unet_batch=2, seed=seed), device=device))
    return dest


def run_speed(out_dir, config: SpeedConfig | None = None, argv=None,
              should_stop: Callable[[], bool] | None = None, write: bool = True):
    """Progress generator; writes ``speed.json``/``.md``/plot; returns the result dict."""
    import torch

    from ..core.defaults import default_ldm_dir
    from ..core.device import describe_precision, resolve_device
    from ..core.mgcc.model import MGCCModel
    from ..core.progress import run
    from .baselines import UNet, UNetConfig
    from .textdiff_variants import TextDiffVariants

    cfg = config or SpeedConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.time(), time.monotonic()
    dev = resolve_device(cfg.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    measures: dict[str, dict] = {}
    total = 4 + len(cfg.mgcc_widths)
    done = 0

    def put(name, value, unit, **extra):
        measures[name] = {"value": float(value), "unit": unit, **extra}

    yield unit_event(0, total, "starting", t0)
    s = cfg.tile
    tile = _examples(1, s, cfg.seed)[0]
    # --- TextDiff: features + head -------------------------------------------------------
    bb_dir, bb_rec = resolve_backbone(cfg.backbone, out, cfg.backbone_preset, seed=cfg.seed)
    variants = TextDiffVariants(bb_dir, dev, cfg.text_encoder, feature_cache_mb=0)
    model = variants.create("cross_attention", cfg.head_preset, resize_to=s, seed=cfg.seed)
    feats_raw = variants.features
    model.features = feats_raw     # time the real work: no memo
    batch = tile.image[None]
    # what prediction does: features stay on the device between backbone and head
    dev_feats = getattr(type(feats_raw), "device_features", None)   # (class: no proxies)
    feat_fn = feats_raw if dev_feats is None else (lambda b, **k: dev_feats(feats_raw, b, **k))
    t_feat = _time(lambda: feat_fn(batch, batch_size=1), cfg.repeats, dev)
    f = [x.to(dev) for x in feat_fn(batch, batch_size=1)]
    th, tm = model._text_tensors([tile.text])
    t_head = _time(lambda: model._head_proba(f, th, tm, (s, s)), cfg.repeats, dev)
    enc = variants.encoder
    t_text = None if enc.model is None else _time(   # no model: a text table answers (no cost)
        lambda: enc.model(**enc.tokenizer([tile.text], return_tensors="pt", padding="max_length",
                                          truncation=True, max_length=enc.max_length).to(dev)),
        cfg.repeats, dev)
    put(f"TextDiff diffusion features per {s}² tile ({len(feats_raw.steps)} noise steps)",
        1000 * t_feat, "ms")
    put(f"TextDiff head per {s}² tile (text cached)", 1000 * t_head, "ms",
        parameters=model.num_parameters)
    if t_text is not None:
        put("TextDiff text encoding per description (uncached)", 1000 * t_text, "ms")
    put(f"TextDiff total per {s}² tile", 1000 * (t_feat + t_head), "ms")
    # large images: what scales with the image (issue 18); tiled work is tiles x tile time
    stride = s - model.config.tile_overlap
    put(f"TextDiff tiled prediction per megapixel (scale 1, {s}² tiles every {stride} px)",
        1e6 / stride ** 2 * (t_feat + t_head), "s/MP")
    if cfg.large_side:
        from ..core.largeimage import measure_large_image

        big = measure_large_image(model, cfg.large_side, tile.text, cfg.seed)
        put(f"TextDiff whole-image path, {cfg.large_side}² gray image: memory",
            big["bytes_per_pixel"], "bytes/pixel")
        put(f"TextDiff whole-image path, {cfg.large_side}² gray image: time",
            big["seconds_per_mp"], "s/MP")
    done += 1
    yield unit_event(done, total, f"TextDiff tile {1000 * (t_feat + t_head):.0f} ms", t0)
    # fine-tune on 5 images (features of each image computed inside, as a user would)
    ex = _examples(cfg.finetune_images, s, cfg.seed + 1)
    with Stopwatch(dev) as sw:
        for f_ev in _untimed(model.finetune(ex, epochs=cfg.finetune_epochs, lr=1e-4)):
            yield f_ev
    put(f"TextDiff fine-tune on {cfg.finetune_images} images ({cfg.finetune_epochs} epochs, "
        f"features included)", sw.seconds, "s")
    variants.close()
    done += 1
    yield unit_event(done, total, f"TextDiff fine-tune {sw.seconds:.1f} s", t0)
    # --- MGCC and U-Net ------------------------------------------------------------------
    x = torch.from_numpy(tile.image.transpose(2, 0, 1).copy())[None]
    for w in cfg.mgcc_widths:
        m = MGCCModel.create(in_channels=3, width=w, size=s).to(dev)
        n_par = int(sum(p.numel() for p in m.net.parameters()))
        put(f"MGCC width {w} per {s}² tile (inference path, {n_par / 1e6:.2f} M params)",
            1000 * _time(lambda: m.predict_batch(x), cfg.repeats, dev), "ms")
        if w == cfg.mgcc_widths[0]:
            nb = cfg.throughput_batch or (64 if dev.type == "cuda" else 8)
            xb = x.expand(nb, -1, -1, -1).contiguous().to(dev)
            t_b = _time(lambda: m.predict_batch(xb), cfg.repeats, dev)
            put(f"MGCC width {w} batched throughput ({s}² images, batch {nb})", nb / t_b,
                "images/s")
        if w == cfg.mgcc_widths[-1]:
            with Stopwatch(dev) as sw:
                for ev in _untimed(m.finetune(ex, epochs=cfg.finetune_epochs, lr=1e-4)):
                    yield ev
            put(f"MGCC width {w} fine-tune on {cfg.finetune_images} images "
                f"({cfg.finetune_epochs} epochs)", sw.seconds, "s")
        done += 1
        yield unit_event(done, total, f"MGCC width {w}", t0)
    un = MGCCModel(UNet(UNetConfig(in_channels=3, width=cfg.unet_width)).eval(), size=s,
                   device=dev).to(dev)
    put(f"U-Net width {cfg.unet_width} per {s}² tile",
        1000 * _time(lambda: un.predict_batch(x), cfg.repeats, dev), "ms")
    done += 1
    yield unit_event(done, total, "U-Net", t0)
    # --- LDM sampling ------------------------------------------------------------------------
    ldm, ldm_rec = cfg.ldm, None
    tmp = None
    if ldm:
        ldm_rec = {"source": "given", "path": str(ldm)}
    elif default_ldm_dir() is not None:
        ldm = str(default_ldm_dir())
        ldm_rec = {"source": "bundled", "path": ldm}
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-ldm-", dir=out))
        ldm = str(_untrained_ldm(cfg.ldm_preset, tmp / "ldm", cfg.seed, dev))
        ldm_rec = {"source": "untrained", "preset": cfg.ldm_preset,
                   "note": "1-step LDM of the preset: timing only"}
    from ..core.diffusion.synthesize import synthesize

    run(synthesize(ldm, 1, steps=2, seed=cfg.seed, device=dev, batch_size=1))   # warm-up
    with Stopwatch(dev) as sw:
        res = yield from _untimed(synthesize(ldm, 2, steps=cfg.ldm_steps, seed=cfg.seed,
                                             device=dev, batch_size=1))
    size = res[0]["image"].shape[0]
    put(f"LDM sampling per image ({cfg.ldm_steps} DDIM steps, {size}² output)",
        sw.seconds / len(res), "s")
    if tmp is not None:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    put("peak memory (" + ("CUDA max allocated" if dev.type == "cuda" else "process peak RSS")
        + ")", peak_memory_mb(dev), "MiB")
    done += 1
    yield unit_event(done, total, "LDM", t0)
    result = {
        "benchmark": "speed",
        "run": run_record(argv, dev, [cfg.seed], asdict(cfg), started),
        "precision": describe_precision(dev),
        "backbone": bb_rec,
        "ldm": ldm_rec,
        "text_encoder": variants.text_ref,
        "measures": measures,
        "wall_seconds": round(time.monotonic() - t0, 1),
    }
    if write:
        from .report import write_outputs
        result["files"] = write_outputs(result, out)
    return result


def _untimed(gen):
    """Pass a job's events through (returns its value); a separate generator so the timed
    block includes only the job's own work plus negligible yields."""
    return (yield from gen)

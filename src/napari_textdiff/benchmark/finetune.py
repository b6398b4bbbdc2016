"""``napari-textdiff benchmark finetune``: does the correction loop pay?

For a shipped model and a labelled pool of images it never trained on, each seed shuffles the
pool: the first ``n`` images play the corrected ones (their true masks), and a fixed set of
other images (the same for every ``n`` of a seed) is scored before and after fine-tuning a
fresh copy of the model on them with the library's ``finetune()`` defaults — exactly what the
Fine-tune panel does. Scores are per-image Dice at native resolution through the model's own
mask rule (its threshold, and MGCC's image-level "no lesion" rule), normals included.
TextDiff copies share one feature memo, so every image's diffusion features are computed once.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.progress import Progress

__all__ = ["FinetuneBenchConfig", "run_finetune_benchmark", "pool_from", "draw"]


@dataclasses.dataclass
class FinetuneBenchConfig:
    ns: tuple[int, ...] = (1, 2, 5)     # how many corrected images
    seeds: tuple[int, ...] = (0, 1, 2)
    n_eval: int = 60                    # scored images per seed (fewer if the pool is small)
    device: str = "cpu"


def pool_from(model_path, data, split: str | None = None) -> list:
    """The labelled images to draw from: ``split`` of ``data``, else the validation images
    the model records (images it never trained on), else all of ``data``."""
    from ..core.bundle import read_bundle_header
    from ..core.datasets import discover

    kw = {"split": split} if split else {}
    samples = [s for s in discover(data, **kw) if s.has_mask]
    if split:
        return sorted(samples, key=lambda s: s.name)
    meta = read_bundle_header(model_path).get("meta") or {}
    names = set(meta.get("validation") or (meta.get("training") or {}).get("val_names") or [])
    if names:
        samples = [s for s in samples if s.name in names]
    return sorted(samples, key=lambda s: s.name)


def draw(samples: Sequence, seed: int, k: int, n_eval: int, channels: int):
    """Seed ``seed``'s draw: the ``k`` images that play the corrected ones (a run with n uses
    the first n) and the ``n_eval`` others scored for every n, loaded."""
    order = np.random.default_rng(seed).permutation(len(samples))
    return ([samples[i].load(channels=channels) for i in order[:k]],
            [samples[i].load(channels=channels) for i in order[k:k + n_eval]])


def _mask(model, ex) -> np.ndarray:
    """The model's own binary mask (threshold and, for MGCC, its image-level rule)."""
    return np.asarray(model.predict_mask(ex.image, ex.text)) > 0


def _dice(model, examples) -> list[float]:
    from ..core.metrics import binary_metrics

    return [float(binary_metrics(_mask(model, ex), np.asarray(ex.mask) > 0)["dice"])
            for ex in examples]


def _fresh(model_path, device, memo_holder: dict):
    """A new copy of the model; TextDiff copies share the first one's feature memo."""
    from ..core.models import load_model
    from ..core.textdiff.feature_memo import FeatureMemo

    m = load_model(model_path, device=device)
    feats = getattr(m, "features", None)
    if feats is not None and hasattr(feats, "fingerprint"):
        if "memo" not in memo_holder:
            memo_holder["memo"] = FeatureMemo(feats, ram_mb=4096)
        m.features = memo_holder["memo"]
    return m


def run_finetune_benchmark(model_path, samples: Sequence, out=None,
                           cfg: FinetuneBenchConfig | None = None, label: str = ""):
    """Progress generator; returns ``{"rows", "summary", "config"}`` (and writes
    ``finetune_<label>.json`` into ``out`` when given)."""
    from ..core.models import load_model

    cfg = cfg or FinetuneBenchConfig()
    if len(samples) < max(cfg.ns) + 1:
        raise ValueError(f"need at least {max(cfg.ns) + 1} labelled images, got {len(samples)}")
    probe = load_model(model_path, device=cfg.device)
    channels, probe_kind = probe.channels, probe.kind
    del probe
    memo: dict = {}
    rows, t_start = [], time.monotonic()
    total = len(cfg.seeds) * len(cfg.ns)
    for seed in cfg.seeds:
        ft_all, ev = draw(samples, seed, max(cfg.ns), cfg.n_eval, channels)
        base = _fresh(model_path, cfg.device, memo)
        before = _dice(base, ev)
        for n in cfg.ns:
            m = _fresh(model_path, cfg.device, memo)
            t0 = time.monotonic()
            refused = None
            try:
                for _ev in m.finetune(ft_all[:n]):
                    pass
            except ValueError as err:     # e.g. only empty masks: the model stays as it was
                refused = str(err)
            secs = time.monotonic() - t0
            after = before if refused else _dice(m, ev)
            rows.append({"seed": seed, "n": n, "dice_before": float(np.mean(before)),
                         "dice_after": float(np.mean(after)), "seconds": round(secs, 1),
                         "corrected": [e.name for e in ft_all[:n]], "scored": len(ev),
                         "refused": refused})
            yield Progress("benchmark", len(rows), total,
                           message=f"{label} seed {seed} n={n}: Dice {np.mean(before):.3f} → "
                                   f"{np.mean(after):.3f} in {secs:.0f} s",
                           elapsed=time.monotonic() - t_start)
    summary = {}
    for n in cfg.ns:      # refused runs (model unchanged) are counted, not averaged in
        r = [x for x in rows if x["n"] == n and not x["refused"]]
        summary[str(n)] = {k: (round(float(np.mean([x[k] for x in r])), 4) if r else None)
                           for k in ("dice_before", "dice_after", "seconds")}
        summary[str(n)]["gain"] = (round(summary[str(n)]["dice_after"]
                                         - summary[str(n)]["dice_before"], 4) if r else None)
        summary[str(n)]["runs"] = len(r)
        summary[str(n)]["refused"] = sum(x["n"] == n and bool(x["refused"]) for x in rows)
    from ..core.finetune_defaults import finetune_defaults

    res = {"label": label, "model": str(model_path), "pool": len(samples),
           "finetune_settings": finetune_defaults(probe_kind),
           "config": dataclasses.asdict(cfg), "rows": rows, "summary": summary,
           "wall_seconds": round(time.monotonic() - t_start, 1)}
    if out is not None:
        res["files"] = _write(res, Path(out), label)
    return res


def _write(res: dict, out: Path, label: str) -> list[str]:
    """JSON + a Dice-vs-n plot, atomically."""
    from ..core.bundle import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    js = out / f"finetune_{label or 'model'}.json"
    atomic_write_bytes(js, json.dumps(res, indent=1).encode())
    files = [str(js)]
    try:
        import io

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ns = [int(n) for n in res["summary"] if res["summary"][n]["gain"] is not None]
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.axhline(0, color="0.6", lw=1)
        ax.plot(ns, [100 * res["summary"][str(n)]["gain"] for n in ns], "o-")
        ax.set_xlabel("corrected images fine-tuned on")
        ax.set_ylabel("Dice change, other images (points)")
        ax.set_title(f"fine-tuning {label}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        png = out / f"finetune_{label or 'model'}.png"
        atomic_write_bytes(png, buf.getvalue())
        files.append(str(png))
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    return files

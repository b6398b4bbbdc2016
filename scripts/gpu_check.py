"""Steps of scripts/gpu_check.sh (issue 19); each prints one JSON object on its last line.

    python scripts/gpu_check.py texts  OUT.safetensors          # text table (made here)
    python scripts/gpu_check.py preflight --device cuda         # can this python run the check?
    python scripts/gpu_check.py info   --device cuda
    python scripts/gpu_check.py demo   CPU_DIR OTHER_DIR        # Dice of the demo masks
    python scripts/gpu_check.py train  --device cuda [--small]  # fp16-forced short trainings
    python scripts/gpu_check.py oom    --device cuda [--small]  # clear error + one retry
    python scripts/gpu_check.py merge  OUT.json PART.json...    # one file to commit

On ``--device cpu`` (the dry run) the same code runs at tiny sizes; fp16 is forced on the CPU
(autocast + GradScaler("cpu") run for real) and the OOM is injected, not provoked.

The GPU machine has no copy of the text encoder (its package is too large to carry): ``texts``
writes the frozen encoder's outputs for every text the check uses (``check_texts()``: its
own, the speed benchmark's, the sample descriptions) to a small table, made where the encoder is installed; gpu_check.sh points
``NAPARI_TEXTDIFF_TEXT_TABLE`` at it there (see core.textdiff.text_encoder). What the check
compares between CPU and GPU is then exactly the backbone and head.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "src" / "napari_textdiff" / "models"
CHECK_TEXT = "the nuclei density is high"     # the text of the check's synthetic examples


def check_texts() -> list[str]:
    """Every text the GPU check encodes: its own, the speed benchmark's, the samples'."""
    from napari_textdiff.benchmark.speed import _examples
    from napari_textdiff.cli.demo import SAMPLES, sample_path

    return [CHECK_TEXT, _examples(1, 8, 0)[0].text,
            *(sample_path(m)[1]["description"] for m in SAMPLES)]


def texts(args) -> dict:
    """Write the text table of ``check_texts()`` with the default text encoder (CPU, fp32)."""
    from napari_textdiff.core.textdiff.config import DEFAULT_TEXT_ENCODER, TextDiffConfig
    from napari_textdiff.core.textdiff.text_encoder import TextEncoder, save_text_table

    enc = TextEncoder(DEFAULT_TEXT_ENCODER, max_length=TextDiffConfig().max_length, device="cpu")
    if enc.table:
        raise SystemExit(f"the encoder answers from a table ({enc.table}): unset "
                         "NAPARI_TEXTDIFF_TEXT_TABLE to make a new one")
    t = check_texts()
    path = save_text_table(args.out, enc, t)
    return {"ok": True, "file": str(path), "texts": len(t), "bytes": path.stat().st_size,
            "fingerprint": enc.fingerprint()}


def _emit(obj) -> None:
    print(json.dumps(obj, default=float))


# what the check imports (a missing one is named before any step runs)
NEEDED = ["torch", "numpy", "scipy", "safetensors", "accelerate", "skimage", "tifffile", "PIL",
          "matplotlib", "tqdm", "pytest", "diffusers", "diffusers.training_utils",
          "napari_textdiff.cli", "napari_textdiff.cli.demo", "napari_textdiff.benchmark.speed",
          "napari_textdiff.core.textdiff.model", "napari_textdiff.core.mgcc.trainer",
          "napari_textdiff.core.diffusion.ldm", "napari_textdiff.core.diffusion.synthesize"]


def preflight(args) -> dict:
    """Every module the check needs imports, the device is there, and every text it encodes
    has an encoder: the installed one, or the text table (NAPARI_TEXTDIFF_TEXT_TABLE)."""
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as e:   # ImportError, or a broken install failing at import
            missing.append(f"{name} ({type(e).__name__}: {e})")
    try:
        import diffusers   # the classes used: diffusers imports them lazily
        for cls in ("UNet2DModel", "AutoencoderKL", "DDPMScheduler", "DDIMScheduler"):
            getattr(diffusers, cls)
    except Exception as e:
        missing.append(f"diffusers' models ({type(e).__name__}: {e})")
    out = {"python": sys.executable, "missing": missing}
    if not missing:
        import torch

        from napari_textdiff.core.textdiff.text_encoder import TEXT_TABLE_ENV

        out["torch"] = torch.__version__
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            missing.append(f"a CUDA GPU (torch {torch.__version__} sees none)")
        table = os.environ.get(TEXT_TABLE_ENV)
        if table:
            from napari_textdiff.core.textdiff.text_encoder import _load_text_table
            try:
                held = set(_load_text_table(table)["texts"])
                lacking = [t for t in check_texts() if t not in held]
                if lacking:
                    missing.append(f"texts not in {table} (made before they changed: run "
                                   f"`bash scripts/gpu_check.sh prepare` again): {lacking}")
            except FileNotFoundError as e:
                missing.append(str(e))
            out["text_encoder"] = f"table {table}"
        else:
            try:
                importlib.import_module("transformers")
                from napari_textdiff.core.textdiff.config import DEFAULT_TEXT_ENCODER
                from napari_textdiff.core.textdiff.text_encoder import resolve_text_encoder_path
                resolve_text_encoder_path(DEFAULT_TEXT_ENCODER)
                out["text_encoder"] = "installed"
            except Exception as e:
                missing.append(f"the text encoder ({e}), and no text table "
                               f"({TEXT_TABLE_ENV})")
    for m in missing:
        print("gpu_check: missing here:", m, file=sys.stderr)
    out["ok"] = not missing
    return out


def info(args) -> dict:
    import torch

    from napari_textdiff.core.device import describe_precision, resolve_device

    from napari_textdiff.core.textdiff.text_encoder import TEXT_TABLE_ENV

    dev = resolve_device(args.device)
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(dev),
           "precision": describe_precision(dev),
           "text_encoder": (f"precomputed table {os.environ[TEXT_TABLE_ENV]}"
                            if os.environ.get(TEXT_TABLE_ENV) else "the encoder itself")}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        out.update(name=p.name, capability=f"{p.major}.{p.minor}",
                   memory_gib=round(p.total_memory / 2 ** 30, 1),
                   bf16_supported_flag=bool(torch.cuda.is_bf16_supported()))
    return out


def demo(args) -> dict:
    import tifffile

    a_dir, b_dir = Path(args.dirs[0]), Path(args.dirs[1])
    rows = {}
    for fa in sorted(a_dir.glob("*_mask.tif")):
        fb = b_dir / fa.name
        if not fb.is_file():
            rows[fa.name] = {"dice": None, "ok": False, "note": "missing in " + str(b_dir)}
            continue
        a, b = tifffile.imread(fa) > 0, tifffile.imread(fb) > 0
        d = float(2 * (a & b).sum() / max(1, a.sum() + b.sum())) if (a.any() or b.any()) else 1.0
        rows[fa.name] = {"dice": round(d, 4), "ok": d >= 0.98,
                         "foreground": [round(float(a.mean()), 4), round(float(b.mean()), 4)]}
    return {"masks": rows, "ok": bool(rows) and all(r["ok"] for r in rows.values())}


def _blobs(n, size, c=3, seed=0):
    from napari_textdiff.core.models import Example

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(4):
            cy, cx = rng.integers(size // 8, size - size // 8, 2)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 10) ** 2
        img = np.clip(0.3 + 0.45 * m[..., None] + 0.05 * rng.standard_normal((size, size, c)),
                      0, 1).astype(np.float32)
        out.append(Example(img, m.astype(np.uint8), CHECK_TEXT, "blob"))
    return out


def _falling(losses) -> dict:
    v = np.asarray([x for x in losses if x is not None], float)
    q = max(1, len(v) // 4)
    ok = len(v) >= 4 and bool(np.isfinite(v).all()) and bool(v[-q:].mean() < v[:q].mean())
    return {"steps": len(v), "first": round(float(v[:q].mean()), 5) if len(v) else None,
            "last": round(float(v[-q:].mean()), 5) if len(v) else None,
            "finite": bool(np.isfinite(v).all()), "ok": ok}


def train(args) -> dict:
    """Short trainings with fp16 forced (the precision of T4/V100/RTX 20xx users)."""
    import torch

    from napari_textdiff.core.device import set_precision
    from napari_textdiff.core.progress import run

    set_precision(args.precision)
    steps = {"n": 0}
    real = torch.amp.GradScaler.step

    def counted(self, opt, *a, **k):
        steps["n"] += 1
        return real(self, opt, *a, **k)

    torch.amp.GradScaler.step = counted
    s = 32 if args.small else 256     # CPU fp16 is emulated: tiny in the dry run
    res = {"precision": args.precision}

    def job(name, fn):
        before, t0 = steps["n"], time.perf_counter()
        try:
            losses = fn()
            r = _falling(losses)
        except Exception as e:   # record and go on: one report for all jobs
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r.update(scaler_steps=steps["n"] - before, seconds=round(time.perf_counter() - t0, 2))
        if args.precision == "fp16" and r.get("ok") and r["scaler_steps"] == 0:
            r.update(ok=False, error="fp16 in force but no GradScaler step was taken")
        res[name] = r
        print(name, r, file=sys.stderr, flush=True)
        _emit({**res, "ok": False, "complete": False})   # so far (the step may time out)

    def losses_of(gen, stages):
        out = []
        run(gen, callback=lambda ev: out.append(ev.loss) if ev.stage in stages else None)
        return out

    fitted = {}

    def textdiff_fit():
        import tempfile

        from napari_textdiff.core.textdiff.config import TextDiffConfig
        from napari_textdiff.core.textdiff.features import random_backbone
        from napari_textdiff.core.textdiff.model import TextDiffModel

        bb = str(MODELS / "backbone")
        if args.small:   # CPU fp16/bf16 convolutions are emulated (slow): a tiny backbone
            bb = tempfile.mkdtemp(prefix="gpu-check-bb-")
            random_backbone("tiny", sample_size=s).save_pretrained(bb)
        cfg = TextDiffConfig(working_size=s, epochs=6 if args.small else 15, batch_size=4,
                             lr=1e-3, steps=[50, 150])
        m = TextDiffModel.create(cfg, backbone=bb, device=args.device)
        fitted["m"] = m
        return losses_of(m.fit(_blobs(2 if args.small else 8, s)), ("train",))

    def textdiff_finetune():
        from napari_textdiff.core.models import load_model

        m = fitted.get("m") if args.small else \
            load_model(MODELS / "histology.safetensors", device=args.device)
        return losses_of(m.finetune(_blobs(2 if args.small else 5, s, seed=1),
                                    epochs=6 if args.small else 10, lr=1e-3), ("finetune",))

    def mgcc():
        from napari_textdiff.core.mgcc.network import MGCCConfig
        from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig

        ex = _blobs(6, s, c=1, seed=2)
        t = MGCCTrainer(ex, [e.image for e in _blobs(6, s, c=1, seed=3)],
                        net_config=MGCCConfig(in_channels=1, width=0.0625 if args.small else 0.5),
                        config=TrainConfig(iterations=12 if args.small else 120, size=s,
                                           batch_labeled=2 if args.small else 4,
                                           batch_unlabeled=2 if args.small else 4,
                                           lr=0.05, schedule="constant", w_max=1.0),
                        device=args.device)
        return [ev.metrics["sup"] for ev in t.run() if ev.stage == "train"]

    def ldm():
        import tempfile

        from napari_textdiff.core.diffusion.ldm import train_ldm

        imgs = [e.image[..., :1] for e in _blobs(8, 32 if args.small else 64, seed=4)]
        with tempfile.TemporaryDirectory() as d:
            n = 12 if args.small else 150
            return losses_of(train_ldm(imgs, Path(d) / "ldm", preset="tiny", channels=1,
                                       vae_steps=n, unet_steps=4, vae_batch=4, unet_batch=8,
                                       vae_lr=3e-3, log_every=1, device=args.device), ("vae",))

    def ldm_unet():
        import tempfile

        from napari_textdiff.core.diffusion.ldm import train_ldm

        imgs = [e.image[..., :1] for e in _blobs(8, 32 if args.small else 64, seed=4)]
        with tempfile.TemporaryDirectory() as d:
            n = 12 if args.small else 200
            return losses_of(train_ldm(imgs, Path(d) / "ldm", preset="tiny", channels=1,
                                       vae_steps=4, unet_steps=n, vae_batch=4, unet_batch=16,
                                       unet_lr=1e-3, log_every=max(1, n // 16),
                                       device=args.device), ("unet",))

    for name, fn in (("textdiff_fit", textdiff_fit), ("textdiff_finetune", textdiff_finetune),
                     ("mgcc_train", mgcc), ("ldm_autoencoder", ldm), ("ldm_unet", ldm_unet)):
        job(name, fn)
    res["ok"] = all(v["ok"] for v in res.values() if isinstance(v, dict))
    res["complete"] = True
    return res


def oom(args) -> dict:
    """Provoke (GPU) or inject (CPU) out-of-memory during tiled TextDiff prediction."""
    import torch

    from napari_textdiff.core.memory import GPUOutOfMemoryError
    from napari_textdiff.core.models import load_model

    dev = args.device
    if args.small:   # dry run: a tiny untrained TextDiff (same tiling and OOM path, fast on a CPU)
        import tempfile

        from napari_textdiff.core.textdiff.config import TextDiffConfig
        from napari_textdiff.core.textdiff.features import random_backbone
        from napari_textdiff.core.textdiff.model import TextDiffModel

        bb = tempfile.mkdtemp(prefix="gpu-check-bb-")
        random_backbone("tiny", sample_size=32).save_pretrained(bb)
        m = TextDiffModel.create(TextDiffConfig(working_size=32, tile_overlap=8, scale=1.0,
                                                steps=[50]), backbone=bb, device=dev)
        img = _blobs(1, 96, seed=5)[0].image                        # 16 tiles of 32
    else:
        m = load_model(MODELS / "histology.safetensors", device=dev)
        img = _blobs(1, 4096, seed=5)[0].image                      # 25 tiles at scale 0.256
    text = CHECK_TEXT
    big = 4 if args.small else 16
    res = {"tile_batch": big, "simulated": not dev.startswith("cuda")}
    ref = m.predict_proba(img, text, batch_size=1)

    def attempt(limit):
        """Predict at ``big`` under a memory limit; returns (prob | None, error, retries)."""
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
        else:   # inject: tile batches above ``limit`` "run out of memory"
            orig = type(m)._head_proba

            def head(feats, th, tm, size):
                if len(feats[0]) > limit:
                    raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                return orig(m, feats, th, tm, size)
            m._head_proba = head
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                try:
                    return m.predict_proba(img, text, batch_size=big), None, \
                        [str(x.message) for x in w if "retrying" in str(x.message)]
                except GPUOutOfMemoryError as e:
                    return None, str(e), [str(x.message) for x in w
                                          if "retrying" in str(x.message)]
        finally:
            if dev.startswith("cuda"):
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.empty_cache()
            else:
                del m._head_proba

    if dev.startswith("cuda"):
        peaks = {}
        for b in (big // 2, big):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            m.predict_proba(img, text, batch_size=b)
            peaks[b] = torch.cuda.max_memory_allocated()
        res["peak_mib"] = {b: round(v / 2 ** 20) for b, v in peaks.items()}
        fits_half = (peaks[big // 2] + peaks[big]) / 2
        tiny = torch.cuda.memory_allocated() + 8 * 2 ** 20
    else:
        fits_half, tiny = big // 2, 0
    prob, err, retries = attempt(fits_half)
    dice = None
    if prob is not None:
        a, b = prob >= 0.5, ref >= 0.5
        dice = float(2 * (a & b).sum() / max(1, a.sum() + b.sum())) if a.any() or b.any() else 1.0
    res["retry"] = {"ok": dice is not None and len(retries) == 1 and dice >= 0.999,
                    "warnings": retries, "dice_vs_unconstrained": dice, "error": err}
    prob, err, retries = attempt(tiny)
    res["clear_error"] = {"ok": prob is None and bool(err) and "To fix" in err
                          and len(retries) == 1, "message": err, "warnings": retries}
    res["ok"] = res["retry"]["ok"] and res["clear_error"]["ok"]
    return res


def merge(args) -> dict:
    out = {"check": "scripts/gpu_check.sh (issue 19)",
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for p in args.parts:
        p = Path(p)
        try:
            out[p.stem] = json.loads(p.read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as e:
            out[p.stem] = {"ok": False, "error": f"no result ({e})"}
    out["ok"] = all(v.get("ok", True) for v in out.values() if isinstance(v, dict))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return {"ok": out["ok"], "file": str(args.out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("info", "train", "oom", "preflight"):
        q = sub.add_parser(name)
        q.add_argument("--device", default="cuda")
        q.add_argument("--small", action="store_true", help="tiny sizes (CPU dry run)")
        q.add_argument("--precision", default="fp16")
    sub.add_parser("demo").add_argument("dirs", nargs=2)
    sub.add_parser("texts").add_argument("out")
    q = sub.add_parser("merge")
    q.add_argument("out")
    q.add_argument("parts", nargs="*")
    args = p.parse_args(argv)
    res = {"info": info, "demo": demo, "train": train, "oom": oom, "merge": merge,
           "texts": texts, "preflight": preflight}[args.cmd](args)
    _emit(res)
    return 0 if res.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())

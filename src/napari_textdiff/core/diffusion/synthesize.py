"""DDIM sampling from a trained latent diffusion directory, with a near-copy check per sample.

Each sample is compared with every training image (and its mirror, when training used flips)
on small thumbnails; a distance below the directory's ``copy_threshold`` (a fraction of the
typical distance between two different training images) flags a near-copy: small training sets
memorise, and a copied image adds nothing as "new" unlabeled data.

Sample ``i`` of a run with seed ``s`` is drawn from its own generator, seeded with
:func:`sample_seed` ``(s, i)`` (a SeedSequence of the pair): the images do not depend on
``batch_size``, and runs with different seeds never share a sample (``seed + i`` made seed 1
repeat seed 0's samples 1…7).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Generator

from ..progress import Progress
from .ldm import LDM_META, _rmse_matrix, thumbnails
from .ldm_cache import _PIPELINE_CACHE, clear_pipeline_cache

__all__ = ["TrainingIndex", "load_ldm", "synthesize", "write_samples", "clear_pipeline_cache",
           "sample_seed"]

def _ldm_key(d: Path, device) -> tuple:
    files = [d / LDM_META, *sorted((d / "unet").glob("*")), *sorted((d / "vae").glob("*"))]
    return (str(d.resolve()), str(device),
            tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()))


class TrainingIndex:
    """Nearest-training-image lookup on thumbnails stored in an LDM directory."""

    def __init__(self, thumbs, names, flip: bool, threshold: float):
        import torch

        # stored as uint8 (4x smaller to ship); older indexes are float in [0, 1]
        self.thumbs = thumbs.float() / 255.0 if thumbs.dtype == torch.uint8 else thumbs.float()
        self.names = list(names)
        self.flip = flip
        self.threshold = float(threshold)
        self.size = thumbs.shape[-1]
        flat = self.thumbs.reshape(len(thumbs), -1)
        self._bank = torch.cat([flat, self.thumbs.flip(-1).reshape(len(thumbs), -1)]) \
            if flip else flat

    @classmethod
    def load(cls, ldm_dir) -> "TrainingIndex":
        from safetensors.torch import load_file

        ldm_dir = Path(ldm_dir)
        meta = json.loads((ldm_dir / LDM_META).read_text())
        thumbs = load_file(str(ldm_dir / "train_index.safetensors"))["thumbnails"]
        return cls(thumbs, meta["image_names"], meta["config"]["flip"], meta["copy_threshold"])

    def query(self, images):
        """``images`` (N, C, H, W) in [0, 1] -> (distances (N,), nearest indices (N,)) RMSE."""
        th = thumbnails(images.cpu(), self.size).reshape(len(images), -1)
        d = _rmse_matrix(th.double(), self._bank.double())
        dist, idx = d.min(1)
        return dist.float(), idx % len(self.names)


def load_ldm(ldm_dir, device="cpu", cache: bool = False):
    """``(vae, unet, ddpm_scheduler, meta)`` from a :func:`train_ldm` directory (with
    ``cache``, the last one loaded is reused while its files are unchanged)."""
    if cache:
        from ..device import resolve_device

        key = _ldm_key(Path(ldm_dir), resolve_device(device))
        if key not in _PIPELINE_CACHE:
            _PIPELINE_CACHE.clear()          # one LDM at a time: drop the old one first
            _PIPELINE_CACHE[key] = load_ldm(ldm_dir, device)
        return _PIPELINE_CACHE[key]
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    d = Path(ldm_dir)
    if not (d / LDM_META).is_file():
        raise FileNotFoundError(f"{d}: not a latent diffusion directory (no {LDM_META}; make "
                                "one with `napari-textdiff train-ldm`)")
    meta = json.loads((d / LDM_META).read_text())
    if not (d / "unet" / "config.json").is_file() or meta.get("scaling_factor") is None:
        raise FileNotFoundError(f"{d}: has no latent UNet yet (training stopped during the "
                                "autoencoder stage); run train-ldm again to finish it")
    # weights may be shipped fp16 (small bundles): compute in float32
    vae = AutoencoderKL.from_pretrained(d / "vae", torch_dtype=torch.float32).to(device).eval()
    unet = UNet2DModel.from_pretrained(d / "unet", torch_dtype=torch.float32).to(device).eval()
    sched = DDPMScheduler.from_pretrained(d / "scheduler")
    return vae, unet, sched, meta


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a run with ``seed``: its own stream for every pair."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
               >> 1)


def synthesize(ldm_dir, n: int, steps: int = 50, eta: float = 0.0, seed: int = 0,
               device="auto", batch_size: int = 8,
               should_stop: Callable[[], bool] | None = None
               ) -> Generator[Progress, None, list[dict]]:
    """Sample ``n`` images with DDIM; yield each finished sample as it comes.

    Every finished sample yields ``Progress("sample", i + 1, n, payload={...})`` with
    ``image`` float32 (H, W, C) in [0, 1], ``distance`` (thumbnail RMSE to the nearest training
    image), ``nearest`` (its name), ``near_copy`` (bool), ``threshold`` (the near-copy
    threshold), ``index``, ``seed`` (the run's) and ``sample_seed`` (the sample's own stream). Intermediate
    denoising steps yield payload-free events (so a GUI can cancel mid-batch). Returns the list
    of payloads.
    """
    import torch
    from diffusers import DDIMScheduler

    from ..device import autocast, resolve_device

    if n < 1 or steps < 1:
        raise ValueError(f"need n >= 1 and steps >= 1 (got n={n}, steps={steps})")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    dev = resolve_device(device)
    vae, unet, ddpm, meta = load_ldm(ldm_dir, dev, cache=True)
    index = TrainingIndex.load(ldm_dir)
    sched = DDIMScheduler.from_config(ddpm.config, clip_sample=False, set_alpha_to_one=False,
                                      steps_offset=1)
    steps = min(steps, sched.config.num_train_timesteps)
    sf = vae.config.scaling_factor
    lc = unet.config.in_channels
    ls = unet.config.sample_size
    ls = ls if isinstance(ls, int) else ls[0]
    results: list[dict] = []
    t0 = time.monotonic()
    for b0 in range(0, n, batch_size):
        ids = list(range(b0, min(n, b0 + batch_size)))
        gens = [torch.Generator(device=dev).manual_seed(sample_seed(seed, i)) for i in ids]
        z = torch.cat([torch.randn((1, lc, ls, ls), generator=g, device=dev) for g in gens])
        z = z * sched.init_noise_sigma
        sched.set_timesteps(steps, device=dev)
        with torch.no_grad():
            for k, t in enumerate(sched.timesteps):
                if should_stop is not None and should_stop():
                    return results
                with autocast(dev):
                    eps = unet(sched.scale_model_input(z, t), t).sample.float()
                z = sched.step(eps, t, z, eta=eta, generator=gens if len(gens) > 1 else gens[0]
                               ).prev_sample
                yield Progress("sample", b0, n, message=f"denoising {k + 1}/{steps}",
                               elapsed=time.monotonic() - t0)
            with autocast(dev):
                img = vae.decode(z / sf).sample.float()
        img = ((img + 1) / 2).clamp(0, 1).cpu()
        dist, near = index.query(img)
        for j, i in enumerate(ids):
            rec = {"index": i, "seed": seed, "sample_seed": sample_seed(seed, i),
                   "image": img[j].permute(1, 2, 0).contiguous().numpy().astype("float32"),
                   "distance": float(dist[j]), "nearest": index.names[int(near[j])],
                   "near_copy": bool(dist[j] < index.threshold),
                   "threshold": index.threshold}
            results.append(rec)
            yield Progress("sample", i + 1, n, payload=rec, metrics={"distance": rec["distance"]},
                           message="near copy of " + rec["nearest"] if rec["near_copy"] else "",
                           elapsed=time.monotonic() - t0)
    return results


def write_samples(results: list[dict], out_dir, prefix: str = "sample") -> Path:
    """Write PNGs plus ``samples.csv`` / ``samples.json`` (distance, nearest, near_copy), each
    atomically: an interrupted write never leaves a cut image or table in a training pool."""
    import io

    import numpy as np
    from PIL import Image

    from ..bundle import atomic_write_bytes, atomic_write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        a = (np.clip(r["image"], 0, 1) * 255 + 0.5).astype(np.uint8)
        a = a[..., 0] if a.shape[2] == 1 else a
        name = f"{prefix}_{r['index']:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        atomic_write_bytes(out / name, buf.getvalue())
        rows.append({"file": name, "seed": r["seed"], "index": r["index"],
                     "distance": round(r["distance"], 6),
                     "nearest_training_image": r["nearest"], "near_copy": r["near_copy"],
                     "threshold": round(r["threshold"], 6)})
    if rows:
        atomic_write_csv(out / "samples.csv", rows, list(rows[0]))
    atomic_write_bytes(out / "samples.json", json.dumps(rows, indent=2).encode())
    return out

"""Latent diffusion for synthetic training images (MGCC stage 1).

MGCC adds synthetic unlabeled images from a latent diffusion model to its consistency loss.
Stage A trains a diffusers ``AutoencoderKL`` (reconstruction MSE + a small KL term; no
perceptual/GAN loss, which would need downloaded weights); stage B encodes the training images
and trains a latent ``UNet2DModel`` DDPM on the latents scaled to unit variance (the VAE's
``scaling_factor`` is set to 1/std of the data's latents).

Output directory (read by :func:`napari_textdiff.core.diffusion.synthesize.synthesize`)::

    LDM/vae/        AutoencoderKL.save_pretrained (scaling_factor in its config)
    LDM/unet/       UNet2DModel.save_pretrained (EMA weights)
    LDM/scheduler/  DDPMScheduler.save_pretrained
    LDM/train_index.safetensors  thumbnails of the training images (near-copy check)
    LDM/ldm.json    image size, channels, names, copy threshold, losses
    LDM/training_log.csv, .json   loss per logged step of both stages (the learning curves)
    LDM/ldm_state.pt  weights, optimisers, EMA and step of the run (exact resume; not needed
                      for sampling, so a bundled copy may leave it out)

Small training sets memorise: every sample is later compared with its nearest training image.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Generator

from ..bundle import atomic_write_bytes
from ..progress import Progress

from .presets import ldm_preset, unet_config, vae_config
from .pretrain import save_pretrained_atomic

__all__ = ["LDMConfig", "train_ldm", "build_train_index", "thumbnails", "LDM_META"]

LDM_META = "ldm.json"


@dataclasses.dataclass
class LDMConfig:
    preset: str = "small"
    channels: int = 3
    size: int | None = None              # image size (None: the preset's)
    vae_steps: int = 3000
    unet_steps: int = 10_000
    vae_batch: int = 8
    unet_batch: int = 32
    vae_lr: float = 2e-4
    unet_lr: float = 2e-4
    kl_weight: float = 1e-6
    flip: bool = True                    # horizontal flips as augmentation
    ema_decay: float = 0.9999
    num_train_timesteps: int = 1000
    beta_start: float = 0.0015           # LDM's (scaled linear) schedule
    beta_end: float = 0.0195
    thumb_size: int = 64                 # near-copy check resolution
    copy_ratio: float = 0.5              # near copy: distance < ratio x median train NN distance
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    max_side: int = 2048


def thumbnails(images, size: int):
    """(N, C, H, W) in [0, 1] -> (N, C, size, size), anti-aliased."""
    import torch.nn.functional as F

    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def _rmse_matrix(a, b):
    """RMSE between every row of a (N, D) and b (M, D)."""
    import torch

    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2 * a @ b.T
    return (d2.clamp_min(0) / a.shape[1]).sqrt()


def build_train_index(images, thumb_size: int, flip: bool, copy_ratio: float):
    """Thumbnails + near-copy threshold (``copy_ratio`` x median leave-one-out NN distance)."""
    import torch

    th = thumbnails(images, thumb_size).cpu()
    n = th.shape[0]
    flat = th.reshape(n, -1).double()
    d = _rmse_matrix(flat, flat)
    if flip:
        d = torch.minimum(d, _rmse_matrix(flat, th.flip(-1).reshape(n, -1).double()))
    d.fill_diagonal_(float("inf"))
    if n > 1:
        median_nn = float(d.min(1).values.median())
        threshold = copy_ratio * median_nn
    else:
        median_nn, threshold = None, 0.02
    return th, {"median_nn_distance": median_nn, "copy_threshold": threshold}


def train_ldm(images, out_dir, config: LDMConfig | None = None, device="auto",
              should_stop: Callable[[], bool] | None = None, reuse_vae: bool = True,
              resume: bool = True, recursive: bool = False, exclude=(), **overrides
              ) -> Generator[Progress, None, Path]:
    """Train the autoencoder, then the latent DDPM; yields :class:`Progress`, returns ``out_dir``.

    With ``resume`` and an ``OUT/ldm_state.pt`` of an earlier run with the same settings and
    images, training continues exactly where it stopped (more steps may be asked for than
    before; the autoencoder is frozen once the latent UNet has started, since the latents
    depend on it). Without a state, ``reuse_vae`` and a finished ``OUT/vae`` from an earlier
    run on the same images, size and channels skip the autoencoder (retrain the UNet only).
    """
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
    from safetensors.torch import save_file

    from ..amp import Amp
    from ..device import resolve_device

    from .crops import load_image_set, resize_images
    from .ldm_state import load_state, save_state, step_seed, write_log

    cfg = dataclasses.replace(config or LDMConfig(), **overrides)
    vae_preset, unet_preset, default_size = ldm_preset(cfg.preset)
    size = cfg.size or default_size
    cfg = dataclasses.replace(cfg, size=size)
    cfgd = dataclasses.asdict(cfg)
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    prev = {}
    if (out / LDM_META).is_file():
        try:
            prev = json.loads((out / LDM_META).read_text())
        except ValueError:
            prev = {}

    yield Progress("load", 0, None, message="loading images")
    tensors, names = load_image_set(images, channels=cfg.channels, max_side=cfg.max_side,
                                    recursive=recursive, exclude=exclude)
    state = load_state(out, cfgd, names) if resume else None
    vs = (state or {}).get("vae") or {}
    us = (state or {}).get("unet") or {}
    log: list[dict] = list((state or {}).get("log", []))
    elapsed0 = float((state or {}).get("elapsed_s", 0.0))
    elapsed = lambda: elapsed0 + time.monotonic() - t0  # noqa: E731
    data = resize_images(tensors, size).to(dev)
    del tensors
    n = data.shape[0]
    thumbs, index_meta = build_train_index(data, cfg.thumb_size, cfg.flip, cfg.copy_ratio)
    # uint8 thumbnails: 4x smaller than float32, error <= 1/510, far below copy distances
    q = (thumbs.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
    save_file({"thumbnails": q}, str(out / "train_index.safetensors"))
    meta = {"kind": "napari-textdiff latent diffusion", "config": cfgd,
            "channels": cfg.channels, "size": size, "image_names": names, "n_images": n,
            **index_meta, "vae_steps_done": 0, "unet_steps_done": 0, "scaling_factor": None,
            "vae_loss": None, "unet_loss": None, "vae_mse": None,
            "vae_done": False}
    for k in ("vae_loss", "vae_mse", "unet_loss"):
        meta[k] = (state or {}).get("meta", {}).get(k)

    def write_meta():
        atomic_write_bytes(out / LDM_META, json.dumps(meta, indent=2).encode())

    def snapshot(vae_part: dict, unet_part: dict | None = None) -> None:
        """Everything needed to continue: state, log, ldm.json (weights are saved by callers)."""
        meta["elapsed_s"] = round(elapsed(), 1)
        save_state(out, {"config": cfgd, "image_names": names, "vae": vae_part,
                         "unet": unet_part, "log": log, "elapsed_s": meta["elapsed_s"],
                         "meta": {k: meta[k] for k in ("vae_loss", "vae_mse", "unet_loss")}})
        write_log(out, log)
        write_meta()

    write_meta()
    g = torch.Generator(device=dev)

    def batch(bs):
        idx = torch.randint(0, n, (bs,), device=dev, generator=g)
        x = data[idx]
        if cfg.flip:
            f = torch.rand(bs, device=dev, generator=g) < 0.5
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        return x * 2 - 1

    stopped = lambda: should_stop is not None and should_stop()  # noqa: E731

    # --- stage A: autoencoder ------------------------------------------------------------------
    vae_dir = out / "vae"
    torch.manual_seed(cfg.seed)
    if us:                                   # the UNet had started: the autoencoder is final
        vae = AutoencoderKL.from_pretrained(vae_dir).to(dev)
        meta.update(vae_done=True, vae_steps_done=vs.get("step"))
        yield Progress("vae", vs.get("step"), vs.get("step"),
                       message=f"resuming the latent UNet at step {us['step']}")
    elif (not vs and reuse_vae and prev.get("vae_done") and prev.get("size") == size
            and prev.get("channels") == cfg.channels and prev.get("image_names") == names
            and (vae_dir / "config.json").is_file()):
        vae = AutoencoderKL.from_pretrained(vae_dir).to(dev)
        vs = {"step": prev.get("vae_steps_done")}
        meta.update(vae_done=True, vae_steps_done=prev.get("vae_steps_done"),
                    vae_loss=prev.get("vae_loss"), vae_mse=prev.get("vae_mse"))
        yield Progress("vae", cfg.vae_steps, cfg.vae_steps, message=f"reusing {vae_dir}")
    else:
        vae = AutoencoderKL(**vae_config(vae_preset, cfg.channels, size))
        if vs:
            vae.load_state_dict(vs["model"])
        vae.to(dev)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, fused=on_gpu)
        amp = Amp(dev, what="LDM autoencoder training")
        step = int(vs.get("step", 0))
        if vs:
            opt.load_state_dict(vs["optimizer"])
            if amp.scaler is not None and vs.get("scaler"):
                amp.scaler.load_state_dict(vs["scaler"])
            yield Progress("vae", step, cfg.vae_steps, message=f"resuming the autoencoder at "
                           f"step {step}")
        vae.train()

        def save_vae():
            save_pretrained_atomic(vae, vae_dir)
            meta["vae_steps_done"] = step
            snapshot({"step": step, "model": {k: v.detach().cpu()
                                              for k, v in vae.state_dict().items()},
                      "optimizer": opt.state_dict(),
                      "scaler": amp.scaler.state_dict() if amp.scaler is not None else None})

        loss_acc, mse_acc, k = 0.0, 0.0, 0   # device tensors once summed: no sync
        last_saved = step
        try:
            while step < cfg.vae_steps and not stopped():
                g.manual_seed(step_seed(cfg.seed, "vae", step))
                x = batch(cfg.vae_batch)
                with amp.autocast():
                    post = vae.encode(x).latent_dist
                    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g,
                                                           device=dev)
                    rec = vae.decode(z).sample
                mse = F.mse_loss(rec.float(), x)
                loss = mse + cfg.kl_weight * post.kl().float().mean()
                amp.step(loss, opt, clip_norm=1.0)
                step += 1
                loss_acc += loss.detach()
                mse_acc += mse.detach()
                k += 1
                if step % cfg.log_every == 0 or step == cfg.vae_steps:
                    meta.update(vae_loss=float(loss_acc) / k, vae_mse=float(mse_acc) / k,
                                vae_steps_done=step)
                    log.append({"stage": "vae", "step": step, "loss": meta["vae_loss"],
                                "mse": meta["vae_mse"], "elapsed_s": round(elapsed(), 2)})
                    loss_acc, mse_acc, k = 0.0, 0.0, 0
                if step % cfg.checkpoint_every == 0:
                    save_vae()
                    last_saved = step
                if step % cfg.log_every == 0 or step == cfg.vae_steps:
                    yield Progress("vae", step, cfg.vae_steps, loss=meta["vae_loss"],
                                   metrics={"mse": meta["vae_mse"]}, elapsed=elapsed())
        except GeneratorExit:
            if step != last_saved:
                save_vae()
            raise
        meta.update(vae_steps_done=step, vae_done=step >= cfg.vae_steps)
        save_vae()
        vs = {"step": step}
        if stopped() or step < cfg.vae_steps:
            return out

    # --- latents and scaling factor ------------------------------------------------------------
    vae.eval()
    means, stds = [], []
    with torch.no_grad():
        views = [data, data.flip(-1)] if cfg.flip else [data]
        for v in views:
            for i in range(0, n, 16):
                post = vae.encode(v[i:i + 16] * 2 - 1).latent_dist
                means.append(post.mean.float())
                stds.append(post.std.float())
    means, stds = torch.cat(means), torch.cat(stds)
    g.manual_seed(step_seed(cfg.seed, "latents", 0))
    sample = means + stds * torch.randn(means.shape, generator=g, device=dev)
    sf = float(us["scaling_factor"]) if us else float(1.0 / sample.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=sf)
    save_pretrained_atomic(vae, vae_dir)
    meta["scaling_factor"] = sf
    meta["latent_shape"] = list(means.shape[1:])
    write_meta()
    yield Progress("latents", 1, 1, message=f"scaling factor {sf:.4f}, latents "
                   f"{tuple(means.shape[1:])}")

    # --- stage B: latent DDPM ------------------------------------------------------------------
    lc, ls = means.shape[1], means.shape[2]
    torch.manual_seed(cfg.seed)
    unet = UNet2DModel(**unet_config(unet_preset, lc, ls))
    if us:
        unet.load_state_dict(us["model"])
    unet.to(dev)
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps,
                          beta_schedule="scaled_linear", beta_start=cfg.beta_start,
                          beta_end=cfg.beta_end, clip_sample=False, prediction_type="epsilon")
    # the one-kernel-per-list EMA and fused AdamW: at 32² latents a step is launch-bound on a
    # GPU (an H200 ran ~10 steps/s with per-parameter updates)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75,
                   foreach=on_gpu)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, fused=on_gpu)
    amp = Amp(dev, what="LDM latent UNet training")
    step = int(us.get("step", 0))
    if us:
        ema.load_state_dict(us["ema"])
        ema.to(dev)
        opt.load_state_dict(us["optimizer"])
        if amp.scaler is not None and us.get("scaler"):
            amp.scaler.load_state_dict(us["scaler"])
    alphas = sched.alphas_cumprod.to(dev)
    sched.save_pretrained(out / "scheduler")
    meta["unet_steps_done"] = step

    def save_unet():
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        try:
            save_pretrained_atomic(unet, out / "unet")
        finally:
            ema.restore(unet.parameters())
        snapshot({"step": vs.get("step")},
                 {"step": step, "scaling_factor": sf,
                  "model": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
                  "ema": {**ema.state_dict(),
                          "shadow_params": [p.detach().cpu() for p in ema.shadow_params]},
                  "optimizer": opt.state_dict(),
                  "scaler": amp.scaler.state_dict() if amp.scaler is not None else None})

    m = means.shape[0]
    loss_acc, k = 0.0, 0
    save_unet()
    last_saved = step
    unet.train()
    try:
        while step < cfg.unet_steps and not stopped():
            g.manual_seed(step_seed(cfg.seed, "unet", step))
            idx = torch.randint(0, m, (cfg.unet_batch,), device=dev, generator=g)
            z0 = (means[idx] + stds[idx] * torch.randn((len(idx), lc, ls, ls), generator=g,
                                                       device=dev)) * sf
            noise = torch.randn(z0.shape, generator=g, device=dev)
            t = torch.randint(0, cfg.num_train_timesteps, (len(idx),), generator=g, device=dev)
            a = alphas[t].view(-1, 1, 1, 1)
            with amp.autocast():
                pred = unet((a.sqrt() * z0 + (1 - a).sqrt() * noise), t).sample
            loss = F.mse_loss(pred.float(), noise)
            amp.step(loss, opt, clip_norm=1.0)
            ema.step(unet.parameters())
            step += 1
            loss_acc += loss.detach()
            k += 1
            meta["unet_steps_done"] = step
            if step % cfg.log_every == 0 or step == cfg.unet_steps:
                meta["unet_loss"] = float(loss_acc) / k
                log.append({"stage": "unet", "step": step, "loss": meta["unet_loss"],
                            "elapsed_s": round(elapsed(), 2)})
                loss_acc, k = 0.0, 0
            if step % cfg.checkpoint_every == 0:
                save_unet()
                last_saved = step
            if step % cfg.log_every == 0 or step == cfg.unet_steps:
                yield Progress("unet", step, cfg.unet_steps, loss=meta["unet_loss"],
                               elapsed=elapsed())
    except GeneratorExit:
        if step != last_saved:
            save_unet()
        raise
    if step != last_saved:
        save_unet()
    yield Progress("done", step, cfg.unet_steps, message=f"saved {out}")
    return out

"""DDPM pretraining of a diffusers ``UNet2DModel`` backbone on a user's unlabeled images.

The TextDiff feature extractor reads decoder activations of a diffusion UNet; a backbone
trained on the user's own modality (H&E, X-ray, ultrasound) gives better features than a
random one. This trainer is written with Hugging Face Accelerate, so the same code runs on one
CPU, one GPU, or several GPUs/nodes under ``accelerate launch``.

Output directory (the contract with the TextDiff feature extractor)::

    OUT/config.json + diffusion_pytorch_model.safetensors   UNet2DModel.save_pretrained (EMA weights)
    OUT/scheduler_config.json                               DDPMScheduler.save_pretrained
    OUT/training_log.csv, training_log.json                 loss per logged step
    OUT/model_card.json                                     preset, data, steps, throughput
    OUT/checkpoint.pt                                       full training state (resume)

Exact resume: every random draw of step ``k`` (crops, noise, timesteps) comes from a generator
seeded from ``(seed, k, rank)``, and the checkpoint holds model, EMA, optimizer, lr scheduler,
global RNG states and the step. A resumed run reproduces the losses of an uninterrupted one.
Checkpoints are written atomically (temp file + ``os.replace``) every ``checkpoint_every``
steps and when the consumer stops the generator; a crash leaves the last one intact.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Generator

from ..bundle import atomic_write_bytes, atomic_write_csv
from ..progress import Progress

from .backbone import load_backbone  # noqa: F401  (re-exported)

from .presets import BackbonePreset, backbone_preset, unet_config

__all__ = ["PretrainConfig", "pretrain_backbone", "load_backbone", "CHECKPOINT_NAME",
           "save_pretrained_atomic", "write_training_log", "step_seed"]

CHECKPOINT_NAME = "checkpoint.pt"


@dataclasses.dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (stored in the checkpoint and model card)."""

    preset: str = "small"
    channels: int = 3
    crop_size: int | None = None        # None: the preset's
    batch_size: int | None = None       # per device; None: the preset's
    steps: int = 20_000
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_schedule: str = "constant_with_warmup"   # or "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_power: float = 0.75               # EMA warmup: decay reaches 0.999 at ~10k steps
    scale_min: float = 1.0
    scale_max: float = 2.0
    dihedral: bool = True
    max_side: int = 2048
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"          # guided-diffusion's schedule
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    mixed_precision: str = "auto"          # auto = bf16/fp16 on GPU, fp32 on CPU; or no/bf16/fp16
    channels_last: str = "auto"            # auto = on GPU only
    compile: bool = False                  # torch.compile the UNet (GPU, long runs)

    def resolved(self) -> "PretrainConfig":
        p = backbone_preset(self.preset)
        return dataclasses.replace(self, crop_size=self.crop_size or p.crop_size,
                                   batch_size=self.batch_size or p.batch_size)


_ARCH_KEYS = ("preset", "channels", "crop_size", "num_train_timesteps", "beta_schedule", "seed")


def save_pretrained_atomic(model, out_dir: Path) -> None:
    """``save_pretrained`` into a temp folder, then move each file into place atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=out_dir))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def step_seed(seed: int, step: int, rank: int) -> int:
    # splitmix-style mixing so neighbouring steps/ranks get unrelated streams
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    return x >> 1


def write_training_log(out: Path, log: list[dict],
                       fields=("step", "loss", "lr", "images_per_s", "elapsed_s")) -> None:
    """The loss curve as ``training_log.json`` and ``training_log.csv`` (``fields``), atomically."""
    atomic_write_bytes(out / "training_log.json", json.dumps(log, indent=0).encode())
    atomic_write_csv(out / "training_log.csv", log, list(fields), extrasaction="ignore")


def pretrain_backbone(images, out_dir, config: PretrainConfig | None = None, device="auto",
                      resume: bool = True,
                      should_stop: Callable[[], bool] | None = None,
                      image_names: list[str] | None = None,
                      recursive: bool = False, exclude=(), **overrides
                      ) -> Generator[Progress, None, Path]:
    """Train a DDPM backbone on random crops of ``images``; yields :class:`Progress`.

    ``images``: files/folders or arrays (H, W, C) in [0, 1]. ``overrides`` set
    :class:`PretrainConfig` fields. With ``resume`` and an existing ``OUT/checkpoint.pt`` the run
    continues from it (its architecture settings must match). Returns ``out_dir``.
    """
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ..device import autocast_dtype, resolve_device

    cfg = dataclasses.replace(config or PretrainConfig(), **overrides).resolved()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    ckpt = None
    if resume and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RuntimeError(f"{ckpt_path}: unreadable checkpoint ({e}); delete it or use "
                               "--no-resume") from e
        old = ckpt["config"]
        bad = [k for k in _ARCH_KEYS if old.get(k) != getattr(cfg, k)]
        if bad:
            raise ValueError(f"{ckpt_path}: was trained with different settings "
                             + ", ".join(f"{k}={old.get(k)!r} (now {getattr(cfg, k)!r})"
                                         for k in bad)
                             + "; use the same settings, another --out, or --no-resume")

    # --- accelerator / device / precision --------------------------------------------------
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    dev = None if launched and device == "auto" else resolve_device(device)
    mp = cfg.mixed_precision
    if mp == "auto":
        # by compute capability (core.device); accelerate adds the GradScaler for fp16
        dt = autocast_dtype(dev if dev is not None else
                            ("cuda" if torch.cuda.is_available() else "cpu"))
        mp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, "no")
        if mp == "fp16" and (dev is None or dev.type != "cuda") and not torch.cuda.is_available():
            mp = "no"      # accelerate has no fp16 on CPU
    acc = Accelerator(cpu=dev is not None and dev.type == "cpu", mixed_precision=mp)
    device = acc.device
    rank = acc.process_index
    chl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
    fmt = torch.channels_last if chl else torch.contiguous_format

    # --- data --------------------------------------------------------------------------------
    yield Progress("load", 0, None, message="loading images")
    from .crops import CropSampler, load_image_set

    tensors, names = load_image_set(images, channels=cfg.channels, max_side=cfg.max_side,
                                    recursive=recursive, exclude=exclude)
    if image_names:
        names = list(image_names)
    sampler = CropSampler(tensors, cfg.crop_size, (cfg.scale_min, cfg.scale_max),
                          cfg.dihedral, device=device)
    del tensors

    # --- model, EMA, optimizer, schedules -----------------------------------------------------
    torch.manual_seed(cfg.seed)
    unet = UNet2DModel(**unet_config(cfg.preset, cfg.channels, cfg.crop_size))
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps,
                                beta_schedule=cfg.beta_schedule, clip_sample=True,
                                prediction_type="epsilon", variance_type="fixed_small")
    start = 0
    log: list[dict] = []
    if ckpt is not None:
        unet.load_state_dict(ckpt["model"])
        start, log = int(ckpt["step"]), list(ckpt["log"])
    unet.to(device, memory_format=fmt)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                   power=cfg.ema_power, foreach=device.type == "cuda",
                   model_cls=UNet2DModel, model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    lr_sched = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup_steps,
                             num_training_steps=cfg.steps)
    if ckpt is not None:
        ema.load_state_dict(ckpt["ema"])
        ema.to(device)
        opt.load_state_dict(ckpt["optimizer"])
        lr_sched.load_state_dict(ckpt["lr_scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            try:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            except Exception:
                pass
        del ckpt
    model, opt = acc.prepare(unet, opt)
    fwd = torch.compile(model) if cfg.compile else model
    alphas = noise_sched.alphas_cumprod.to(device)
    n_params = sum(p.numel() for p in unet.parameters())

    def export(step: int, images_per_s: float | None) -> None:
        """Checkpoint + EMA weights + scheduler + log + model card (main process only)."""
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        base = acc.unwrap_model(model)
        state = {
            "step": step, "config": dataclasses.asdict(cfg), "log": log,
            "model": {k: v.detach().cpu() for k, v in base.state_dict().items()},
            "ema": {**ema.state_dict(),
                    "shadow_params": [p.detach().cpu() for p in ema.shadow_params]},
            "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())
        ema.store(base.parameters())
        ema.copy_to(base.parameters())
        try:
            save_pretrained_atomic(base, out)
        finally:
            ema.restore(base.parameters())
        tmp = Path(tempfile.mkdtemp(prefix=".sched-", dir=out))
        try:
            noise_sched.save_pretrained(tmp)
            os.replace(tmp / "scheduler_config.json", out / "scheduler_config.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_training_log(out, log)
        card = {"kind": "napari-textdiff diffusion backbone", "framework": "diffusers UNet2DModel",
                "weights": "EMA", "step": step, "config": dataclasses.asdict(cfg),
                "parameters": n_params, "images": len(sampler), "image_names": names[:1000],
                "last_loss": log[-1]["loss"] if log else None,
                "images_per_s": images_per_s, "device": str(device),
                "num_processes": acc.num_processes, "mixed_precision": mp,
                "usage": "UNet2DModel.from_pretrained(dir); DDPMScheduler.from_pretrained(dir)"}
        atomic_write_bytes(out / "model_card.json", json.dumps(card, indent=2).encode())

    out.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process and not (out / "config.json").is_file():
        export(start, None)  # a loadable (untrained) backbone from the first yield on
    t0 = time.monotonic()
    tw, imgs_w, loss_acc, n_acc = time.monotonic(), 0, None, 0
    last_saved, ips = start, None
    g = torch.Generator(device=device)
    yield Progress("train", start, cfg.steps, message=f"{n_params / 1e6:.2f} M params, "
                   f"{len(sampler)} images, {device}, batch {cfg.batch_size}x{acc.num_processes}")
    step = start
    try:
        while step < cfg.steps:
            if should_stop is not None and should_stop():
                break
            g.manual_seed(step_seed(cfg.seed, step, rank))
            x = sampler.sample(cfg.batch_size, g).mul_(2).sub_(1)
            noise = torch.randn(x.shape, generator=g, device=device)
            t = torch.randint(0, cfg.num_train_timesteps, (x.shape[0],), generator=g,
                              device=device)
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * x + (1 - a).sqrt() * noise).contiguous(memory_format=fmt)
            model.train()
            with acc.autocast():
                pred = fwd(noisy, t).sample
            loss = F.mse_loss(pred.float(), noise)
            acc.backward(loss)
            if cfg.grad_clip:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(acc.unwrap_model(model).parameters())
            step += 1
            ld = loss.detach()
            loss_acc = ld if loss_acc is None else loss_acc + ld
            n_acc += 1
            imgs_w += cfg.batch_size * acc.num_processes
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean_loss = acc.reduce(loss_acc / n_acc, "mean").item()
                now = time.monotonic()
                ips = imgs_w / max(now - tw, 1e-9)
                tw, imgs_w, loss_acc, n_acc = now, 0, None, 0
                lr = lr_sched.get_last_lr()[0]
                log.append({"step": step, "loss": mean_loss, "lr": lr, "images_per_s": ips,
                            "elapsed_s": now - t0})
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    export(step, ips)
                    last_saved = step
                yield Progress("train", step, cfg.steps, loss=mean_loss,
                               metrics={"lr": lr, "images_per_s": ips},
                               elapsed=now - t0)
            elif step % cfg.checkpoint_every == 0:
                export(step, ips)
                last_saved = step
    except GeneratorExit:
        # consumer stopped us at a yield: the state is consistent, keep it
        if step != last_saved:
            export(step, ips)
        raise
    if step != last_saved:
        export(step, ips)
    yield Progress("done", step, cfg.steps, loss=log[-1]["loss"] if log else None,
                   message=f"saved {out}")
    return out

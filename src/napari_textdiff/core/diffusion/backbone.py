"""Loading a diffusion backbone: the one loader for every place that needs a UNet.

A backbone is a ``UNet2DModel.save_pretrained`` folder (weights may be stored fp16 to keep
bundles small; they are loaded as float32) with an optional ``scheduler_config.json`` beside
it, or a pipeline folder with ``unet/`` and ``scheduler/``, or a hub id when online.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["load_backbone"]


def load_backbone(ref: str | os.PathLike, device="cpu"):
    """Load ``(unet, scheduler)`` from a local directory (or a hub id when online).

    Errors name the path and what is missing instead of a deep diffusers traceback.
    """
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    ref = str(ref)
    p = Path(ref).expanduser()
    if p.is_dir():
        unet_dir, sched_dir = p, p
        if not (p / "config.json").is_file() and (p / "unet" / "config.json").is_file():
            unet_dir, sched_dir = p / "unet", p / "scheduler"
        if not (unet_dir / "config.json").is_file():
            raise FileNotFoundError(f"{p}: not a diffusion backbone directory (no config.json; "
                                    "expected UNet2DModel.save_pretrained layout)")
        try:
            unet = UNet2DModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32)
        except Exception as e:
            raise ValueError(f"{unet_dir}: cannot load a UNet2DModel ({e})") from e
        if (sched_dir / "scheduler_config.json").is_file():
            sched = DDPMScheduler.from_pretrained(str(sched_dir))
        else:
            sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        return unet.to(device).eval(), sched
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        try:
            unet = UNet2DModel.from_pretrained(ref)
        except Exception:
            unet = None
        if unet is None:
            try:
                unet = UNet2DModel.from_pretrained(ref, subfolder="unet")
            except Exception as e:
                raise FileNotFoundError(f"backbone {ref!r}: not a local directory and could not "
                                        f"be fetched from the hub ({e})") from e
        try:
            sched = DDPMScheduler.from_pretrained(ref, subfolder="scheduler")
        except Exception:
            sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        return unet.to(device).eval(), sched
    raise FileNotFoundError(f"backbone {ref!r}: no such directory")

"""The latent diffusion trainer's resumable state: ``OUT/ldm_state.pt`` and the training log.

Why its own module: an LDM worth sampling takes ~10⁴ latent-UNet steps (CPU-days, GPU-hours),
so a run must survive Ctrl-C, a closed laptop or the end of a session and continue exactly
where it stopped. The state holds, per stage, the raw weights, the optimiser (and the fp16
GradScaler), the EMA and the step; the random draws of step ``k`` come from a generator seeded
from ``(seed, stage, k)``, so a resumed run reproduces the losses of an uninterrupted one.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..bundle import atomic_write_bytes
from .pretrain import step_seed as _mixed_seed, write_training_log

__all__ = ["STATE_NAME", "LOG_FIELDS", "ARCH_KEYS", "load_state", "save_state", "write_log",
           "step_seed"]

STATE_NAME = "ldm_state.pt"
LOG_FIELDS = ("stage", "step", "loss", "mse", "elapsed_s")     # training_log.csv columns

#: settings a resumed run must share with the run that wrote the state (the step counts may grow)
ARCH_KEYS = ("preset", "channels", "size", "flip", "vae_batch", "unet_batch", "vae_lr",
             "unet_lr", "kl_weight", "ema_decay", "num_train_timesteps", "beta_start",
             "beta_end", "seed")

_STAGE = {"vae": 1, "unet": 2, "latents": 3}


def step_seed(seed: int, stage: str, step: int) -> int:
    """An unrelated seed per (run seed, stage, step): pretraining's mixing, the stage in its
    rank slot."""
    return _mixed_seed(seed, step, _STAGE[stage])


def load_state(out: Path, config: dict, image_names: list[str]) -> dict | None:
    """The saved state of an earlier run into ``out``, or None; refuses another run's state."""
    import torch

    path = Path(out) / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"{path}: unreadable training state ({e}); delete it to start over, "
                           "or train into another folder") from e
    old = state.get("config", {})
    bad = [k for k in ARCH_KEYS if old.get(k) != config.get(k)]
    if bad:
        raise ValueError(f"{path}: was trained with different settings "
                         + ", ".join(f"{k}={old.get(k)!r} (now {config.get(k)!r})" for k in bad)
                         + "; use the same settings, another --out, or --no-resume")
    if state.get("image_names") != list(image_names):
        raise ValueError(f"{path}: was trained on other images ({len(state.get('image_names', []))}"
                         f" then, {len(image_names)} now); use the same images, another --out, "
                         "or --no-resume")
    return state


def save_state(out: Path, state: dict) -> None:
    """Write the state atomically (a crash mid-write leaves the previous one intact)."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(out) / STATE_NAME, buf.getvalue())


def write_log(out: Path, log: list[dict]) -> None:
    """The loss curve of both stages as ``training_log.json`` and ``.csv``."""
    write_training_log(Path(out), log, LOG_FIELDS)

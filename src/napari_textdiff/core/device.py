"""Device and precision choice in one place, so every model and widget agrees on it."""
from __future__ import annotations

import contextlib

__all__ = ["resolve_device", "autocast_dtype", "autocast", "available_devices"]


def available_devices() -> list[str]:
    """Devices this machine can run on, best first (for the widgets' device menu)."""
    import torch

    devs = []
    if torch.cuda.is_available():
        devs.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devs.append("mps")
    devs.append("cpu")
    return devs


def resolve_device(name: str | None = "auto"):
    """Turn "auto" / "cuda" / "cuda:1" / "mps" / "cpu" into a ``torch.device``.

    Asking for a device that is not there is an error with a clear message, not a silent
    fallback: a user who picked CUDA should know their torch has no CUDA.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but this torch build sees no CUDA GPU "
                           f"(torch {torch.__version__}); use device='cpu' or 'auto'.")
    if name == "mps" and "mps" not in available_devices():
        raise RuntimeError("MPS was requested but is not available on this machine.")
    if not (name.startswith("cuda") or name in ("mps", "cpu")):
        raise ValueError(f"Unknown device {name!r}: use auto, cuda, cuda:N, mps or cpu.")
    return torch.device(name)


def autocast_dtype(device):
    """Mixed-precision dtype for inference/training on ``device`` (None = full float32).

    bf16 where the GPU supports it (no loss scaling needed), else fp16 on CUDA; CPU stays fp32
    because CPU autocast is slower than fp32 for convolutions on most machines.
    """
    import torch

    device = resolve_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def autocast(device, enabled: bool = True):
    """``torch.autocast`` with the dtype of :func:`autocast_dtype`; a no-op on CPU."""
    import torch

    device = resolve_device(device)
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield

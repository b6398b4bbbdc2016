"""Device and precision choice in one place, so every model and widget agrees on it.

Precision: bf16 autocast on CUDA devices of compute capability >= 8.0 (Ampere and later),
fp16 (with loss scaling in training, see ``core.amp``) on 7.x (Volta/Turing: T4, V100,
RTX 20xx, GTX 16xx), full fp32 below 7.0, on CPU and on MPS. ``is_bf16_supported()`` is not
used: it is true on pre-Ampere cards too (emulation) while cuDNN has no bf16 convolutions
there. ``set_precision("fp32")`` or ``NAPARI_TEXTDIFF_PRECISION=fp32`` forces full precision;
"fp16"/"bf16" force that autocast dtype on CUDA and CPU (tests, checks).
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["resolve_device", "autocast_dtype", "autocast", "available_devices",
           "PRECISIONS", "PRECISION_ENV", "set_precision", "precision_mode",
           "describe_precision", "synchronize", "release"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PRECISION_ENV = "NAPARI_TEXTDIFF_PRECISION"
_forced: str | None = None


def available_devices() -> list[str]:
    """Devices this machine can run on, best first ("auto" resolves to the first).

    The widgets' device menu lists a fixed set instead, so opening a panel imports no torch;
    choosing a device the machine lacks gives a clear error when a job starts."""
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


def set_precision(mode: str | None) -> None:
    """Force a precision for this process: "auto" (by device), "fp32", "fp16" or "bf16".
    ``None`` goes back to the ``NAPARI_TEXTDIFF_PRECISION`` environment variable."""
    global _forced
    if mode is not None and mode.lower() not in PRECISIONS:
        raise ValueError(f"unknown precision {mode!r}: use one of {', '.join(PRECISIONS)}")
    _forced = None if mode is None else mode.lower()


def precision_mode() -> str:
    """The precision setting in force: :func:`set_precision`, else the environment, else auto."""
    mode = _forced or os.environ.get(PRECISION_ENV, "") or "auto"
    mode = mode.strip().lower()
    if mode not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={mode!r}: use one of {', '.join(PRECISIONS)}")
    return mode


def autocast_dtype(device):
    """Mixed-precision dtype for inference/training on ``device`` (None = full float32).

    Chosen by the CUDA device's compute capability (bf16 from 8.0, fp16 from 7.0, else
    fp32); CPU and MPS stay fp32 unless a precision is forced (see :func:`set_precision`).
    """
    import torch

    mode = precision_mode()
    device = resolve_device(device)
    if mode == "fp32":
        return None
    if mode in ("fp16", "bf16"):
        if device.type in ("cuda", "cpu"):
            return torch.float16 if mode == "fp16" else torch.bfloat16
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= (8, 0):
            return torch.bfloat16
        if major >= 7:
            return torch.float16
    return None


def describe_precision(device) -> str:
    """One line: the device (name and capability on CUDA) and the precision used there."""
    import torch

    device = resolve_device(device)
    dt = autocast_dtype(device)
    prec = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + loss scaling",
            None: "fp32"}[dt]
    where = str(device)
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        where += f" ({torch.cuda.get_device_name(device)}, capability {cap[0]}.{cap[1]})"
    return f"{where}: {prec} (precision setting {precision_mode()})"


@contextlib.contextmanager
def autocast(device, enabled: bool = True):
    """``torch.autocast`` with the dtype of :func:`autocast_dtype`; a no-op at fp32."""
    import torch

    device = resolve_device(device)
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (CUDA/MPS); nothing on CPU."""
    import torch

    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def release(*models) -> None:
    """Free accelerator memory: move ``models`` (anything with ``.to``) to the CPU, drop
    cached LDM pipelines, collect garbage and empty the CUDA cache. Call it after replacing
    or dropping a model (restore, reload, close), before loading the next one."""
    import gc

    import torch

    for m in models:
        if m is not None and hasattr(m, "to"):
            try:
                m.to("cpu")
            except Exception:   # a half-built or already closed model: nothing to move
                pass
    try:
        from .diffusion.ldm_cache import clear_pipeline_cache
        clear_pipeline_cache()
    except ImportError:
        pass
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

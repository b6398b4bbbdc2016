"""GPU out-of-memory handling: free, retry once with a smaller tile batch, then say what to do.

``split_on_oom(fn, device)`` wraps a batch prediction function (tiles in, maps out): on a CUDA
out-of-memory error it frees the cache and runs the same tiles again in halves (and keeps the
smaller batch for the rest of the image); a second failure, or one at batch 1, raises
:class:`GPUOutOfMemoryError`, whose message says what to change. ``oom_guard`` turns the raw
torch error into that message for code with nothing to retry (training steps).
"""
from __future__ import annotations

import contextlib
import warnings

__all__ = ["GPUOutOfMemoryError", "is_oom", "oom_message", "oom_guard", "split_on_oom"]


class GPUOutOfMemoryError(RuntimeError):
    """The accelerator ran out of memory; the message says what to change."""


def is_oom(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA, MPS, or the generic RuntimeError text)."""
    import torch

    if isinstance(exc, GPUOutOfMemoryError):
        return False
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _memory_line(device) -> str:
    import torch

    try:
        if str(device).startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(device)
            return (f" ({torch.cuda.get_device_name(device)}: {total / 2**30:.1f} GiB, "
                    f"{free / 2**30:.1f} GiB free after clearing the cache)")
    except Exception:
        pass
    return ""


def oom_message(device, what: str, batch: int | None = None, advice: str | None = None) -> str:
    """The user-facing text of an out-of-memory error."""
    at = f" even with a tile batch of {batch}" if batch else ""
    advice = advice or ("close other programs using the GPU (or other models open in this "
                        "one), predict with a smaller tile batch (batch_size=1), or run on the "
                        "CPU (device cpu: the panel's Device menu, --device cpu)")
    return (f"Out of GPU memory on {device}{_memory_line(device)} during {what}{at}. "
            f"To fix: {advice}.")


@contextlib.contextmanager
def oom_guard(device, what: str, advice: str | None = None):
    """Re-raise an out-of-memory error inside the block as :class:`GPUOutOfMemoryError`
    (after freeing the cache), with a message saying what to change."""
    failed = False
    try:
        yield
    except Exception as e:
        if not is_oom(e):
            raise
        failed = True
        err = e.with_traceback(None)   # drop the frames holding tensors
    if failed:
        _free(device)   # outside the except block: the traceback no longer pins tensors
        raise GPUOutOfMemoryError(oom_message(device, what, advice=advice)) from err


def _in_chunks(fn, batch, size: int):
    import numpy as np

    outs = [fn(batch[i:i + size]) for i in range(0, len(batch), size)]
    if len(outs) == 1:
        return outs[0]
    if hasattr(outs[0], "detach"):
        import torch
        return torch.cat(outs)
    return np.concatenate(outs)


def split_on_oom(fn, device, what: str = "prediction", advice: str | None = None):
    """Wrap ``fn(batch) -> outputs`` (batch on the first axis) to survive one OOM.

    On the first out-of-memory error the cache is emptied and the batch is run again in
    halves; later batches keep the smaller size. A second error (or one at batch 1) raises
    :class:`GPUOutOfMemoryError`. ``wrapped.batch_limit`` is the size in force (None = as
    given) and ``wrapped.retries`` the number of retries made.
    """

    def wrapped(batch):
        n = len(batch)
        size = min(n, wrapped.batch_limit or n)
        failed = False
        try:
            return _in_chunks(fn, batch, size)
        except Exception as e:
            if not is_oom(e):
                raise
            failed, err = True, e.with_traceback(None)
        if failed:
            _free(device)
            if size <= 1 or wrapped.retries:
                raise GPUOutOfMemoryError(oom_message(device, what, size, advice)) from err
            wrapped.retries += 1
            wrapped.batch_limit = max(1, size // 2)
            warnings.warn(f"out of GPU memory on {device} during {what} at a tile batch of "
                          f"{size}; retrying with {wrapped.batch_limit}", RuntimeWarning,
                          stacklevel=2)
        try:
            return _in_chunks(fn, batch, wrapped.batch_limit)
        except Exception as e:
            if not is_oom(e):
                raise
            err = e.with_traceback(None)
        _free(device)
        raise GPUOutOfMemoryError(oom_message(device, what, wrapped.batch_limit, advice)) \
            from err

    wrapped.batch_limit = None
    wrapped.retries = 0
    return wrapped

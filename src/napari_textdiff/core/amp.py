"""One mixed-precision helper for every training loop: autocast, loss scaling, backward, step.

``Amp(device)`` picks the dtype of ``core.device.autocast_dtype`` (bf16 / fp16 / none). With
fp16 it scales the loss through a ``torch.amp.GradScaler`` so small gradients do not underflow
(a step whose gradients overflowed is skipped and the scale lowered). A loss that is not
finite skips the step under autocast (a few fp16 overflows are normal) and raises
``FloatingPointError`` after ``max_bad_steps`` in a row, or at once in fp32, naming the cause
that fits: precision under autocast, the learning rate in fp32. Out-of-memory errors become
``core.memory.GPUOutOfMemoryError`` with advice.

    amp = Amp(device, what="MGCC training")
    with amp.autocast():
        loss = criterion(net(x).float(), y)
    amp.step(loss, opt, clip_norm=1.0)   # zero_grad, backward, (unscale, clip,) step, update
"""
from __future__ import annotations

import contextlib

__all__ = ["Amp"]

_TRAIN_ADVICE = ("use fewer images per batch or a smaller working size, close other programs "
                 "using the GPU, or train on device cpu")


class Amp:
    """Autocast + GradScaler + backward/step for one training loop on one device."""

    def __init__(self, device, *, what: str = "training", max_bad_steps: int = 20):
        import torch

        from .device import autocast_dtype, resolve_device

        self.device = resolve_device(device)
        self.dtype = autocast_dtype(self.device)
        self.what = what
        self.max_bad_steps = int(max_bad_steps)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.dtype == torch.float16 else None)
        self.skipped = 0          # steps skipped (non-finite loss or overflowed gradients)
        self._bad_in_row = 0

    @property
    def precision(self) -> str:
        import torch

        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    @contextlib.contextmanager
    def autocast(self):
        """Autocast in the chosen dtype (a no-op at fp32); OOM becomes a clear error."""
        import torch

        from .memory import oom_guard

        with oom_guard(self.device, self.what, _TRAIN_ADVICE):
            if self.dtype is None:
                yield
            else:
                with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                    yield

    def step(self, loss, optimizer, *, clip_norm: float | None = None, parameters=None,
             zero_grad: bool = True) -> bool:
        """Backward ``loss`` and step ``optimizer`` (through the scaler with fp16).

        ``clip_norm`` clips the (unscaled) gradient norm of ``parameters`` (default: the
        optimizer's). Returns False when the step was skipped.
        """
        import torch

        from .memory import oom_guard

        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss.detach())):
            self._not_finite(loss)
            return False
        with oom_guard(self.device, self.what, _TRAIN_ADVICE):
            if self.scaler is None:
                loss.backward()
                self._clip(optimizer, clip_norm, parameters)
                optimizer.step()
                stepped = True
            else:
                scale = self.scaler.get_scale()
                self.scaler.scale(loss).backward()
                if clip_norm is not None:
                    self.scaler.unscale_(optimizer)
                    self._clip(optimizer, clip_norm, parameters)
                self.scaler.step(optimizer)
                self.scaler.update()
                stepped = self.scaler.get_scale() >= scale   # lowered = overflow, step skipped
        self._bad_in_row = 0
        if not stepped:
            self.skipped += 1
        return stepped

    def _clip(self, optimizer, clip_norm, parameters) -> None:
        import torch

        if clip_norm is None:
            return
        if parameters is None:
            parameters = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, clip_norm)

    def _not_finite(self, loss) -> None:
        self.skipped += 1
        self._bad_in_row += 1
        value = float(loss.detach().float())
        if self.dtype is None:
            raise FloatingPointError(
                f"{self.what}: the loss is not finite ({value}) in full float32 precision: "
                "the training diverged; lower the learning rate")
        if self._bad_in_row >= self.max_bad_steps:
            raise FloatingPointError(
                f"{self.what}: the loss was not finite ({value}) for {self._bad_in_row} steps "
                f"in a row under {self.precision} mixed precision: values overflow it. Train "
                "in full precision (--precision fp32, or NAPARI_TEXTDIFF_PRECISION=fp32); "
                "if that fails too, lower the learning rate")

    def state_dict(self) -> dict:
        """The scaler's state (for checkpoints; empty without fp16)."""
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped = int(state.get("skipped", 0))

"""Progress events: one generator protocol behind the CLI, the Python API and napari workers.

A long job is a generator that ``yield``s :class:`Progress` events and ``return``s its result.
The model it trains is valid at every yield.

Stopping a job — the one story (every job, every front end):

- **Stop, keeping the result**: the job's ``should_stop`` argument, a callable polled between
  steps (the Stop buttons). When it turns true the job *returns* what it has: a fit's history
  with ``stopped=True`` and the best head so far, ``None`` from a prediction (callers keep
  what they had). Where one step is long (a diffusion UNet forward on a CPU), the job also
  polls inside the step: a hook raises :class:`StopRequested`, which the job itself catches —
  it never reaches the caller.
- **Abandon**: ``gen.close()`` (the CLI on Ctrl-C, any consumer that stops iterating). The
  job's ``finally`` blocks run (best validated weights restored, temporary files removed),
  there is no return value, and the model object is still usable and can be saved.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Generator

__all__ = ["Progress", "run", "StopRequested", "print_progress"]


@dataclasses.dataclass
class Progress:
    """One progress event. ``step``/``total`` drive a progress bar; the rest is for plots/logs."""

    stage: str                      # e.g. "features", "train", "validate", "sample"
    step: int = 0
    total: int | None = None
    epoch: int | None = None
    loss: float | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    message: str = ""
    payload: Any = None             # e.g. a synthetic sample to show as it comes
    elapsed: float | None = None    # seconds since the job started

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(1.0, self.step / self.total)

    def describe(self) -> str:
        parts = [self.stage]
        if self.total:
            parts.append(f"{self.step}/{self.total}")
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in self.metrics.items()]
        if self.message:
            parts.append(self.message)
        return "  ".join(parts)


class StopRequested(Exception):
    """Unwinds a long step when ``should_stop()`` turns true inside it; the job that installed
    the check catches it and returns (see the module docstring)."""


def run(gen: Generator[Progress, None, Any],
        callback: Callable[[Progress], None] | None = None) -> Any:
    """Drain a progress generator synchronously and return the job's result.

    Args:
        gen: the job.
        callback: sees every event (e.g. :func:`print_progress`).

    Returns:
        The job's ``return`` value. To stop early, give the job a ``should_stop``.
    """
    try:
        while True:
            ev = next(gen)
            if callback is not None:
                callback(ev)
    except StopIteration as stop:
        return stop.value


def print_progress(every: float = 1.0, stream=None) -> Callable[[Progress], None]:
    """A callback for :func:`run` printing at most one line every ``every`` seconds (and the
    last event) to ``stream`` (default stderr): what the CLI shows as progress."""
    stream = stream or sys.stderr
    last = [0.0]

    def cb(ev: Progress) -> None:
        now = time.monotonic()
        done = ev.total is not None and ev.step >= ev.total
        if now - last[0] >= every or done:
            last[0] = now
            print(ev.describe(), file=stream, flush=True)

    return cb


"""Progress events: one generator protocol behind the CLI, the Python API and napari workers.

A long job is a generator that ``yield``s :class:`Progress` events and ``return``s its result.
Whoever drives it may stop between events (stop iterating, or call ``close()``); the job keeps
whatever it trains valid at every yield, so a stopped run still leaves a usable model.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Generator, Iterable

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
    """Raised inside a job when its ``should_stop`` callback says so (caught by the job)."""


def run(gen: Generator[Progress, None, Any],
        callback: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None) -> Any:
    """Drain a progress generator synchronously and return the job's result.

    ``callback`` sees every event; if ``should_stop()`` turns true the generator is closed at the
    next event (the job's cleanup runs) and ``None`` is returned.
    """
    try:
        while True:
            ev = next(gen)
            if callback is not None:
                callback(ev)
            if should_stop is not None and should_stop():
                gen.close()
                return None
    except StopIteration as stop:
        return stop.value


def print_progress(every: float = 1.0, stream=None) -> Callable[[Progress], None]:
    """A callback that prints at most one line every ``every`` seconds (for the CLI)."""
    stream = stream or sys.stderr
    last = [0.0]

    def cb(ev: Progress) -> None:
        now = time.monotonic()
        done = ev.total is not None and ev.step >= ev.total
        if now - last[0] >= every or done:
            last[0] = now
            print(ev.describe(), file=stream, flush=True)

    return cb


def timed(events: Iterable[Progress], start: float | None = None):
    """Fill ``elapsed`` on events passing through (helper for jobs)."""
    start = time.monotonic() if start is None else start
    for ev in events:
        ev.elapsed = time.monotonic() - start
        yield ev

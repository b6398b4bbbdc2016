"""Shared pieces of every benchmark: the run record, seeding, evaluation, aggregation, and a
per-tile memo of frozen diffusion features.

Why the memo: TextDiff's backbone is frozen and its features of an image do not depend on the
training subset, the seed or the head variant (text / no text / no cross-attention). A few-shot
curve fits dozens of heads on the same 30 images, so computing each tile's features once is the
difference between minutes and a day on a CPU.
"""
from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.configs import config_dict as asdict  # noqa: F401 - the benchmarks' name
from ..core.progress import Progress
from ..core.textdiff.feature_memo import FeatureMemo  # noqa: F401 - one memo for benchmarks and GUI

__all__ = ["run_record", "git_commit", "seed_everything", "summarize", "FeatureMemo",
           "resolve_backbone", "peak_memory_mb", "Stopwatch", "UnitLog"]


def git_commit(cwd=None) -> str | None:
    """HEAD commit of the checkout holding this package (None outside git), '+dirty' marked."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device) -> str:
    import torch

    from ..core.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    if dev.type == "mps":
        return "mps (Apple GPU)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def run_record(argv: Sequence[str] | None, device, seeds: Sequence[int], config: dict,
               started: float | None = None) -> dict:
    """What makes a result reproducible: command line, commit, device, versions, seeds, config."""
    import torch

    argv = list(sys.argv if argv is None else argv)
    return {
        "command": " ".join(shlex.quote(a) for a in argv),
        "git_commit": git_commit(),
        "device": str(device),
        "device_description": device_description(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "seeds": [int(s) for s in seeds],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started or time.time())),
        "config": config,
    }


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated (CUDA) or the process's peak resident set size (CPU), MiB."""
    import torch

    from ..core.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 if sys.platform != "darwin" else kb / 2 ** 20
    except (ImportError, OSError):
        return float("nan")


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` (synchronises CUDA when given a device)."""

    def __init__(self, device=None):
        self.device = device
        self.seconds = float("nan")

    def _sync(self):
        if self.device is not None and str(self.device) != "cpu":
            from ..core.device import synchronize
            synchronize(self.device)     # the device in use, not the default one

    def __enter__(self):
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self._t0


def summarize(rows: Sequence[dict], group: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Aggregate per-seed result rows (each with ``metrics`` = per-image means and
    ``per_image``) into one row per ``group`` key: mean over seeds, ``_std`` over seeds (the
    spread between subsets; the sample std, n - 1, because 3 seeds are a sample of the possible
    subsets and the population formula would understate the spread by a fifth) and
    ``_std_images`` (per-image std pooled over seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[g] for g in group), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(group, key))
        s["n_seeds"] = len(rs)
        s["seeds"] = [r.get("seed") for r in rs]
        s["n_images"] = int(sum(len(r.get("per_image", [])) for r in rs))
        for m in metrics:
            per_seed = np.array([r["metrics"][m] for r in rs], dtype=np.float64)
            pooled = np.array([p[m] for r in rs for p in r.get("per_image", [])],
                              dtype=np.float64)
            s[m] = float(per_seed.mean())
            s[f"{m}_std"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
            s[f"{m}_std_images"] = float(pooled.std()) if len(pooled) else float("nan")
        for extra in ("train_seconds",):
            vals = [r[extra] for r in rs if r.get(extra) is not None]
            if vals:
                s[extra] = float(np.mean(vals))
        out.append(s)
    return out


def resolve_backbone(backbone, out_dir: Path, preset: str, in_channels: int = 3,
                     seed: int = 0) -> tuple[str, dict]:
    """The TextDiff backbone directory to use and a record of where it came from.

    Order: ``backbone`` given -> the bundled one (``models/backbone``) -> a randomly
    initialised backbone of ``preset`` saved under ``out_dir`` (results then measure an
    untrained feature extractor; the record says so).
    """
    from ..core.defaults import default_backbone_dir

    if backbone:
        p = Path(backbone).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"--backbone {backbone}: no such directory")
        return str(p.resolve()), {"source": "given", "path": str(p.resolve())}
    bundled = default_backbone_dir()
    if bundled is not None:
        return str(bundled), {"source": "bundled", "path": str(bundled)}
    from ..core.textdiff.features import random_backbone

    dest = Path(out_dir) / f"random_backbone_{preset}_seed{seed}"
    if not (dest / "config.json").is_file():
        random_backbone(preset, in_channels=in_channels, seed=seed).save_pretrained(dest)
    return str(dest), {"source": "random-init", "preset": preset, "seed": seed,
                       "path": str(dest),
                       "note": "no pretrained backbone bundled: features of an UNTRAINED "
                               "diffusion UNet (a lower bound, not the paper's backbone)"}


def unit_event(done: int, total: int, message: str, t0: float) -> Progress:
    """The benchmark-level progress event (one per finished run of a method)."""
    return Progress("benchmark", step=done, total=total, message=message,
                    elapsed=time.monotonic() - t0)


def resumed_info(model) -> dict:
    """``{"training_resumed": {...}}`` for a row whose training continued a unit checkpoint
    (its iteration and the seconds trained before), else {}."""
    rec = getattr(model, "meta", {}).get("resumed")
    return {"training_resumed": rec} if rec else {}


class UnitLog:
    """The finished units (one method x setting x seed each) of a benchmark run, saved after
    every unit to ``NAME.partial.json`` so a killed run keeps its work.

    With ``resume`` the rows of an earlier run in the same folder (its partial file, else its
    final ``NAME.json``) are reused when every setting that changes a result agrees; the
    swept lists (``SWEEP``: K values, seeds, methods, protocols) and the settings that only
    change speed (device, feature cache size) may differ, so a run can be
    extended with more seeds or K values. Settings that disagree raise a ``ValueError`` naming
    them rather than mixing incomparable rows. ``merge_from`` adds the finished units of other
    output folders (the same grid split over processes or machines); a unit found twice keeps
    its first copy (own folder first, then ``merge_from`` in order).

    ``method_settings`` names settings that change only some methods' rows (BUSI's LDM and
    synthetic count change only the "+ synthetic" row): when only those disagree, the file's
    other rows are reused and the affected methods' rows are not (they run again, or are
    missing from a ``--finished-only`` report), so units trained without synthetic images
    merge with a "+ synthetic" unit of another call. A run-level record (``extra``) that is a
    placeholder (``{"source": None, ...}``, e.g. "no synthetic row") yields to a real one.
    """

    SWEEP = ("k", "seeds", "methods", "protocols", "device", "feature_cache_mb")
    #: settings added after results were saved, with the value that reproduces the runs made
    #: before them: a file without the setting counts as having that value
    ADDED_LATER = {"val_images": 0}

    def __init__(self, out_dir, name: str, config: dict, key: Sequence[str], resume: bool = False,
                 run: dict | None = None, persist: bool = True, merge_from: Sequence = (),
                 extra_keys: Sequence[str] = (), method_settings: dict | None = None):
        self.out = Path(out_dir)
        self.path = self.out / f"{name}.partial.json"
        self.final = self.out / f"{name}.json"
        self.key = tuple(key)
        self.config = config
        self.run = run or {}
        self.persist = persist
        self.extra: dict = {}          # run-level records to keep with the rows (e.g. synthetic)
        self.extra_keys = tuple(extra_keys)   # ...which a final NAME.json keeps at top level
        self._rows: dict[tuple, dict] = {}
        self.reused = 0
        self.resumed_from: list[str] = []
        self.duplicates = 0
        self.method_settings = {k: set(v) for k, v in (method_settings or {}).items()}
        self.not_reused: dict[str, list[str]] = {}   # method -> the settings that differed
        self.resume = resume
        if resume:
            self._load(self.out, "--resume")
        for other in merge_from:
            other = Path(other)
            if not other.is_dir():
                raise ValueError(f"--merge: {other} is not a folder")
            if other.resolve() != self.out.resolve() and not self._load(other, "--merge"):
                raise ValueError(f"--merge: {other} holds no {self.final.name} or "
                                 f"{self.path.name}")

    def _fixed(self, cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k not in self.SWEEP}

    def _load(self, folder: Path, option: str) -> bool:
        """Reuse the rows of ``folder``'s partial file, else its final file; True if found."""
        import json

        for p in (folder / self.path.name, folder / self.final.name):
            if not p.is_file():
                continue
            try:
                old = json.loads(p.read_text())
                old_cfg = old["run"]["config"]
                rows = old["rows"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{option}: {p} is not a readable benchmark file ({e})") from e
            mine, theirs = self._fixed(self.config), self._fixed(old_cfg)
            theirs = {**{k: v for k, v in self.ADDED_LATER.items() if k in mine}, **theirs}
            every = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            soft = [k for k in every if k in self.method_settings]   # only some methods' rows
            skip = {m for k in soft for m in self.method_settings[k]}
            diff = [k for k in every if k not in self.method_settings]
            if diff:
                hint = ("use another --out or drop --resume" if option == "--resume"
                        else "merge only parts run with the same settings")
                raise ValueError(
                    f"{option}: {p} was run with other settings ("
                    + ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now"
                                for k in diff) + f"); {hint}")
            for r in rows:
                if r.get("method") in skip:
                    self.not_reused.setdefault(r["method"], soft)
                    continue
                if self._k(r) in self._rows:
                    self.duplicates += 1
                else:
                    self._rows[self._k(r)] = {**r, "resumed": True}
            found = dict(old.get("extra") or {})
            found.update({k: old[k] for k in self.extra_keys
                          if k not in found and old.get(k) is not None})
            self.extra = {**found, **self.extra}
            for k, v in found.items():      # a real record replaces a placeholder
                mine_v = self.extra.get(k)
                if (isinstance(mine_v, dict) and mine_v.get("source") is None
                        and isinstance(v, dict) and v.get("source") is not None):
                    self.extra[k] = v
            self.resumed_from.append(str(p))
            return True
        return False

    def _k(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key)

    def has(self, *key) -> bool:
        row = self._rows.get(tuple(key))
        return row is not None and not row.get("stopped")

    def get(self, *key, stopped_ok: bool = False) -> dict | None:
        """The earlier row of this unit (counted as reused), or None if it must run. A unit
        stopped before its budget (``stopped``) runs again unless ``stopped_ok`` (reports of
        what a run finished)."""
        row = self._rows.get(tuple(key))
        if row is not None and row.get("stopped") and not stopped_ok:
            return None
        if row is not None:
            self.reused += 1
        return row

    def add(self, row: dict, stopped: bool = False) -> None:
        """Record a finished unit (``stopped``: cut short by a stop request, which the row
        then says) and rewrite the partial file (atomically). A finished unit's training
        checkpoint goes; a stopped one's stays for ``--resume`` to continue."""
        if stopped:
            row = {**row, "stopped": True}
        self._rows[self._k(row)] = row
        if self.persist:
            self._write()
            if not stopped:
                shutil.rmtree(self._unit_path(self._k(row)), ignore_errors=True)

    @property
    def _units_root(self) -> Path:
        return self.out / f"{self.final.stem}.units_in_training"

    def _unit_path(self, key: tuple) -> Path:
        return self._units_root / "-".join(str(v) for v in key).replace("/", "_").replace(" ", "_")

    def unit_dir(self, *key) -> Path | None:
        """Where the unit ``key`` keeps its training checkpoint, so a run cut mid-unit (a
        session's end, a kill) continues it on ``--resume`` instead of starting over; None
        when nothing is written. Without ``--resume`` an old checkpoint is discarded; with
        it, one trained under other settings is refused, as rows are."""
        import json

        if not self.persist:
            return None
        d = self._unit_path(tuple(key))
        method = key[self.key.index("method")] if "method" in self.key else None
        settings = {"key": [str(v) for v in key],
                    "config": {k: v for k, v in self._fixed(self.config).items()
                               if k not in self.method_settings
                               or method in self.method_settings[k]}}
        text = json.dumps(settings, indent=1, sort_keys=True, default=str)
        stamp = d / "unit.json"
        if d.exists() and not self.resume:
            shutil.rmtree(d)
        if stamp.is_file():
            old = json.loads(stamp.read_text())
            if old != json.loads(text):
                new = json.loads(text)["config"]
                diff = sorted(k for k in set(old["config"]) | set(new)
                              if old["config"].get(k) != new.get(k))
                raise ValueError(f"--resume: {d} holds a unit begun with other settings "
                                 f"({', '.join(diff) or 'its key'}); use another --out, "
                                 "drop --resume, or delete that folder")
            return d
        d.mkdir(parents=True, exist_ok=True)
        from ..core.bundle import atomic_write_bytes

        atomic_write_bytes(stamp, text.encode())
        return d

    def _write(self) -> None:
        from .report import write_json

        write_json({"benchmark": self.final.stem, "run": {**self.run, "config": self.config},
                    "complete": False, "extra": self.extra, "rows": list(self._rows.values())},
                   self.path)

    def resumed_record(self) -> dict | None:
        """What the result JSON says about reused units (None when nothing was reused)."""
        if not self.reused:
            return None
        rec = {"from": self.resumed_from[0] if len(self.resumed_from) == 1
               else self.resumed_from, "units": self.reused}
        if self.duplicates:
            rec["duplicates_ignored"] = self.duplicates
        if self.not_reused:
            rec["not_reused"] = {m: f"run with other {', '.join(k)}"
                                 for m, k in self.not_reused.items()}
        return rec

    def rows(self, planned: Sequence[tuple]) -> list[dict]:
        """The rows of the planned units that exist, in plan order."""
        return [self._rows[k] for k in planned if k in self._rows]

    def finish(self, planned: Sequence[tuple]) -> None:
        """The final JSON (the ``planned`` units) is written: the partial file goes, unless it
        holds units outside this plan (e.g. other K values), which a later --resume needs."""
        if not self.persist:
            return
        if set(self._rows) <= set(planned):
            self.path.unlink(missing_ok=True)
        else:
            self._write()
        for k, row in self._rows.items():      # e.g. killed between its row and its cleanup
            if not row.get("stopped"):
                shutil.rmtree(self._unit_path(k), ignore_errors=True)
        try:
            self._units_root.rmdir()           # only when empty
        except OSError:
            pass

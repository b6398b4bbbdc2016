"""Diffusion features remembered per tile: computed once for segment → fine-tune → re-segment.

The frozen backbone's features of a tile never change, and they are the expensive part on a
CPU (seconds per 256² tile, against a fraction of a second for the head). The napari session
and the benchmarks wrap a model's ``DiffusionFeatures`` in a :class:`FeatureMemo`: keys are a
hash of the working-scale tile's pixels (so image content and working geometry are both in
the key) plus what the features compute (:func:`memo_key`: the backbone and how it is read);
values are fp16, kept in RAM up to a bound and spilled to a temporary folder beyond it.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = ["FeatureMemo", "memo_key"]


def memo_key(features) -> str:
    """What ``features`` compute besides the tile: its ``memo_key()`` (backbone and reading
    settings), else its backbone fingerprint, else "" (a plain callable)."""
    for name in ("memo_key", "fingerprint"):
        f = getattr(features, name, None)
        if callable(f):
            return str(f())
    return ""


class FeatureMemo:
    """Drop-in proxy for ``DiffusionFeatures`` that computes each input tile's features once.

    Keys are hashes of the tile bytes; values are fp16 arrays kept in RAM up to ``ram_mb`` and
    spilled to ``.npy`` files in a temporary folder beyond (deleted by :meth:`close`).
    Features of one tile do not depend on the other tiles of its batch (GroupNorm, one fixed
    noise), so memoised and fresh results agree up to float rounding.
    """

    def __init__(self, features, ram_mb: float = 2048, spill_dir=None):
        self._f = features
        self._ram: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self._ram_bytes = 0
        self._ram_limit = float(ram_mb) * 2 ** 20
        self._dir = Path(spill_dir) if spill_dir else None
        self._own_dir = False
        self._disk: dict[str, Path] = {}
        self.hits = 0
        self.misses = 0
        self.compute_seconds = 0.0
        self._prefix = memo_key(features).encode()

    def __getattr__(self, name):   # taps, strides, out_channels, in_channels, fingerprint...
        return getattr(self._f, name)

    def to(self, device):
        self._f.to(device)
        return self

    def _key(self, tile: np.ndarray) -> str:
        a = np.ascontiguousarray(tile, dtype=np.float32)
        return hashlib.sha1(self._prefix + a.tobytes() + str(a.shape).encode()).hexdigest()

    def _get(self, key):
        if key in self._ram:
            self._ram.move_to_end(key)
            return self._ram[key]
        p = self._disk.get(key)
        if p is not None:
            with np.load(p) as z:
                return [z[f"a{i}"] for i in range(len(z.files))]
        return None

    def _put(self, key, arrays: list[np.ndarray]) -> None:
        nb = sum(a.nbytes for a in arrays)
        if self._ram_bytes + nb <= self._ram_limit:
            self._ram[key] = arrays
            self._ram_bytes += nb
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="textdiff-features-"))
            self._own_dir = True
        p = self._dir / f"{key}.npz"
        np.savez(p, **{f"a{i}": a for i, a in enumerate(arrays)})
        self._disk[key] = p

    def __call__(self, images, batch_size: int = 4):
        import torch

        images = np.asarray(images, dtype=np.float32)
        keys = [self._key(t) for t in images]
        found = [self._get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            t0 = time.perf_counter()
            fresh = self._f(images[missing], batch_size=batch_size)
            self.compute_seconds += time.perf_counter() - t0
            for j, i in enumerate(missing):
                arrs = [f[j].numpy().astype(np.float16) for f in fresh]
                if keys[i] not in {keys[m] for m in missing[:j]}:
                    self._put(keys[i], arrs)
                found[i] = arrs
        return [torch.from_numpy(np.stack([f[k] for f in found]).astype(np.float32))
                for k in range(len(found[0]))]

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses,
                "compute_seconds": round(self.compute_seconds, 2),
                "ram_mb": round(self._ram_bytes / 2 ** 20, 1), "disk_entries": len(self._disk)}

    def close(self):
        """Forget every remembered tile (RAM and spill folder); the memo stays usable, empty."""
        self._ram.clear()
        self._ram_bytes = 0
        if self._own_dir and self._dir is not None:
            import shutil
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir, self._own_dir = None, False
        self._disk.clear()

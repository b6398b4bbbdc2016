"""Seeded subsets of a dataset: K-shot draws and train/validation splits."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .sample import Sample

__all__ = ["kshot", "train_val_split"]


def kshot(samples: Sequence[Sample], k: int, seed: int = 0, labeled_only: bool = True,
          ) -> list[Sample]:
    """``k`` samples drawn without replacement, the same for the same seed and sample names
    (the draw is over names sorted, so the input order does not matter)."""
    pool = [s for s in samples if s.has_mask] if labeled_only else list(samples)
    if not 0 < k <= len(pool):
        raise ValueError(f"kshot: k={k} but {len(pool)} "
                         f"{'labeled ' if labeled_only else ''}samples are available")
    pool = sorted(pool, key=lambda s: s.name)
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(idx)]


def train_val_split(samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0,
                    stratify_key: str | Callable[[Sample], Any] | None = None,
                    ) -> tuple[list[Sample], list[Sample]]:
    """Deterministic split. With ``stratify_key`` (a ``meta`` key or a function of the sample)
    each group contributes round(fraction * size) to validation. Both parts keep input order;
    when there are >= 2 samples and 0 < fraction < 1 both are non-empty."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(samples)
    if stratify_key is None:
        key = lambda s: None  # noqa: E731
    elif callable(stratify_key):
        key = stratify_key
    else:
        key = lambda s: s.meta.get(stratify_key)  # noqa: E731
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(items):
        groups.setdefault(key(s), []).append(i)
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for g in sorted(groups, key=repr):
        idx = sorted(groups[g], key=lambda i: items[i].name)
        n = int(round(val_fraction * len(idx)))
        val |= {idx[j] for j in rng.permutation(len(idx))[:n]}
    n = len(items)
    if val_fraction > 0 and n >= 2:
        order = [int(i) for i in rng.permutation(n)]
        if not val:
            val.add(order[0])
        if len(val) == n:
            val.discard(order[0])
    return ([s for i, s in enumerate(items) if i not in val],
            [s for i, s in enumerate(items) if i in val])

""""No lesion" as an answer: an image-level decision applied to MGCC's probability map.

A pixel classifier trained on BUSI puts a faint blob on most normal images (their masks are
empty), which scores IoU ~0 on every normal. The rule here is applied to the whole-image map at
the working size, before it is resized back: optionally keep only the largest connected
component above the threshold (BUSI images mostly hold one lesion), then answer "no lesion"
(an all-zero map) when the kept region's highest probability is below ``min_max_prob``, its
mean probability below ``min_mean_prob``, or its area below ``min_area`` (a fraction of the
image). ``choose_rule`` picks the rule and the
threshold with the best mean per-image IoU on labelled validation images (normals included);
``cross_validate_rule`` estimates what that choice is worth on images it was not chosen on.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

__all__ = ["NO_RULE", "apply_rule", "region_stats", "choose_rule", "cross_validate_rule",
           "rule_ious", "GRID"]

#: The identity rule (what models without a stored decision use).
NO_RULE = {"largest_only": False, "min_max_prob": 0.0, "min_mean_prob": 0.0, "min_area": 0.0}

#: Search grid of :func:`choose_rule`.
GRID = {"threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "largest_only": (False, True),
        "min_max_prob": (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
        "min_mean_prob": (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85),
        "min_area": (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04)}


def region_stats(prob: np.ndarray, threshold: float, largest_only: bool):
    """(kept map, max and mean probability in the kept region, kept area fraction)."""
    fg = prob >= threshold
    if largest_only and fg.any():
        from scipy import ndimage

        lab, n = ndimage.label(fg)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            keep = lab == (1 + int(np.argmax(sizes)))
            prob = np.where(fg & ~keep, 0.0, prob).astype(prob.dtype)  # other blobs -> 0
            fg = keep
    peak = float(prob[fg].max()) if fg.any() else float(prob.max(initial=0.0))
    mean = float(prob[fg].mean()) if fg.any() else 0.0
    return prob, peak, mean, float(fg.mean())


def _empty(rule: dict, peak, mean, area):
    """Whether the rule answers "no lesion" (works on scalars and arrays alike)."""
    return ((peak < rule.get("min_max_prob", 0.0)) | (mean < rule.get("min_mean_prob", 0.0))
            | (area < rule.get("min_area", 0.0)))


def apply_rule(prob: torch.Tensor, rule: dict | None, threshold: float) -> torch.Tensor:
    """(B,1,h,w) probabilities -> the same with the image-level rule applied per image."""
    if not rule or rule == NO_RULE:
        return prob
    out = []
    for p in prob.detach().cpu().numpy():
        kept, peak, mean, area = region_stats(p[0], threshold, bool(rule.get("largest_only")))
        out.append(np.zeros_like(kept) if _empty(rule, peak, mean, area) else kept)
    return torch.from_numpy(np.stack(out)[:, None]).to(prob.device, prob.dtype)


def _table(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float,
           largest_only: bool):
    """Per image: (IoU if kept, IoU if emptied, peak, mean, area) at the mask's resolution."""
    from ..metrics import binary_metrics
    from .preprocess import resize_proba

    rows = []
    for p, m in zip(probs, masks):
        kept, peak, mean, area = region_stats(p, threshold, largest_only)
        full = resize_proba(torch.from_numpy(kept)[None, None], m.shape[:2])[0, 0].numpy()
        gt = np.asarray(m) > 0
        iou = binary_metrics(full >= threshold, gt)["iou"]
        iou_empty = binary_metrics(np.zeros_like(gt), gt)["iou"]
        rows.append((iou, iou_empty, peak, mean, area))
    return np.asarray(rows, dtype=np.float64)


def rule_ious(table: np.ndarray, rule: dict) -> np.ndarray:
    """Per-image IoU under ``rule`` from a :func:`_table` of the rule's threshold."""
    empty = _empty(rule, table[:, 2], table[:, 3], table[:, 4])
    return np.where(empty, table[:, 1], table[:, 0])


def _tables(probs, masks, grid):
    return {(t, lo): _table(probs, masks, t, lo)
            for t, lo in itertools.product(grid["threshold"], grid["largest_only"])}


def _best(tables, grid, idx=None):
    best = None
    for (t, lo), tab in tables.items():
        tab = tab if idx is None else tab[idx]
        for mp, mm, ma in itertools.product(grid["min_max_prob"], grid["min_mean_prob"],
                                            grid["min_area"]):
            rule = {"threshold": t, "largest_only": lo, "min_max_prob": mp,
                    "min_mean_prob": mm, "min_area": ma}
            score = float(rule_ious(tab, rule).mean())
            # ties go to the simpler rule (earlier in the grid): strict improvement only
            if best is None or score > best[0] + 1e-9:
                best = (score, rule)
    return best


def choose_rule(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], grid: dict = GRID,
                _tables_cache=None) -> tuple[dict, float]:
    """Best rule (threshold included) by mean per-image IoU on these images.

    ``probs``: working-size probability maps (h, w); ``masks``: native-resolution masks.
    """
    tables = _tables_cache or _tables(probs, masks, grid)
    score, rule = _best(tables, grid)
    return rule, score


def cross_validate_rule(probs, masks, folds: int = 5, seed: int = 0, grid: dict = GRID,
                        groups: Sequence | None = None) -> dict:
    """K-fold estimate of the chosen rule's per-image IoU on images it was not chosen on.

    Returns ``{"iou": per-image IoUs (list), "rules": the rule chosen for each fold}``; with
    ``groups`` (e.g. classes) the folds are stratified by them.
    """
    n = len(probs)
    rng = np.random.default_rng(seed)
    fold = np.empty(n, int)
    keys = list(groups) if groups is not None else [0] * n
    for g in sorted(set(keys), key=str):
        idx = [i for i in range(n) if keys[i] == g]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        for j, i in enumerate(idx):
            fold[i] = j % folds
    tables = _tables(probs, masks, grid)
    ious, rules = np.zeros(n), []
    for f in range(folds):
        train = np.flatnonzero(fold != f)
        test = np.flatnonzero(fold == f)
        _, rule = _best(tables, grid, train)
        rules.append(rule)
        ious[test] = rule_ious(tables[(rule["threshold"], rule["largest_only"])][test], rule)
    return {"iou": ious.tolist(), "rules": rules}

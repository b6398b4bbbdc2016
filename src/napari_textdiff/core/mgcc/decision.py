""""No lesion" as an answer: an image-level decision applied to MGCC's probability map.

A pixel classifier trained on BUSI puts a faint blob on most normal images (their masks are
empty), which scores IoU ~0 on every normal. The rule here is applied to the whole-image map at
the working size, before it is resized back: optionally keep only the largest connected
component above the threshold (BUSI images mostly hold one lesion), then answer "no lesion"
(an all-zero map) when the kept region's highest probability is below ``min_max_prob``, its
mean probability below ``min_mean_prob``, or its area below ``min_area`` (a fraction of the
image), or when an image-level lesion classifier (logistic regression on the ConvMixer
output pooled by mean and max, plus the map's peak and area, fitted on the training split)
gives a lesion probability below ``min_lesion_prob``. ``choose_rule`` picks the rule and the
threshold with the best mean per-image IoU on labelled validation images (normals included);
``cross_validate_rule`` estimates what that choice is worth on images it was not chosen on.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

__all__ = ["NO_RULE", "apply_rule", "region_stats", "choose_rule", "cross_validate_rule",
           "rule_ious", "GRID", "GRID_CLASSIFIER", "image_features", "fit_lesion_classifier",
           "lesion_probability"]

#: The identity rule (what models without a stored decision use).
NO_RULE = {"largest_only": False, "min_max_prob": 0.0, "min_mean_prob": 0.0, "min_area": 0.0,
           "min_lesion_prob": 0.0}

#: Search grid of :func:`choose_rule`.
GRID = {"threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "largest_only": (False, True),
        "min_max_prob": (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
        "min_mean_prob": (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85),
        "min_area": (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04), "min_lesion_prob": (0.0,)}
#: Grid with an image-level classifier: its probability replaces the hand-made statistics.
GRID_CLASSIFIER = {**GRID, "min_max_prob": (0.0,), "min_mean_prob": (0.0,), "min_area": (0.0,),
                   "min_lesion_prob": tuple(np.round(np.arange(0.0, 0.96, 0.05), 2))}


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


def _empty(rule: dict, peak, mean, area, lesion=1.0):
    """Whether the rule answers "no lesion" (works on scalars and arrays alike)."""
    return ((peak < rule.get("min_max_prob", 0.0)) | (mean < rule.get("min_mean_prob", 0.0))
            | (area < rule.get("min_area", 0.0)) | (lesion < rule.get("min_lesion_prob", 0.0)))


def image_features(prob: torch.Tensor, bottleneck: torch.Tensor) -> np.ndarray:
    """(B, 2C+2) image-level features: bottleneck mean and max pools, map peak and area."""
    pools = [bottleneck.float().mean((2, 3)), bottleneck.float().amax((2, 3)),
             prob.flatten(1).amax(1, keepdim=True), (prob >= 0.5).float().flatten(1).mean(1, True)]
    return torch.cat(pools, 1).detach().cpu().numpy().astype(np.float64)


def fit_lesion_classifier(features: np.ndarray, has_lesion: Sequence[bool], c: float = 0.1,
                          steps: int = 200) -> dict:
    """L2 logistic regression (sklearn's ``C`` convention) on standardised features."""
    x = np.asarray(features, np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.as_tensor(np.asarray(has_lesion, np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="sum")
                + 0.5 / c * (w * w).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return {"mu": mu.tolist(), "sd": sd.tolist(), "w": w.detach().tolist(), "b": float(b.detach())}


def lesion_probability(clf: dict, features: np.ndarray) -> np.ndarray:
    """P(image holds a lesion) for each row of ``features``."""
    z = (np.asarray(features) - np.asarray(clf["mu"])) / np.asarray(clf["sd"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(clf["w"]) + clf["b"])))


def apply_rule(prob: torch.Tensor, rule: dict | None, threshold: float,
               features: np.ndarray | None = None) -> torch.Tensor:
    """(B,1,h,w) probabilities -> the same with the image-level rule applied per image.

    ``features`` (:func:`image_features`) are needed when the rule holds a lesion classifier.
    """
    if not rule or rule == NO_RULE:
        return prob
    clf = rule.get("lesion_classifier")
    if clf is not None and features is None:
        raise ValueError("this rule's lesion classifier needs the image features")
    lesion = lesion_probability(clf, features) if clf is not None else np.ones(len(prob))
    out = []
    for p, les in zip(prob.detach().cpu().numpy(), lesion):
        kept, peak, mean, area = region_stats(p[0], threshold, bool(rule.get("largest_only")))
        out.append(np.zeros_like(kept) if _empty(rule, peak, mean, area, les) else kept)
    return torch.from_numpy(np.stack(out)[:, None]).to(prob.device, prob.dtype)


def _table(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float,
           largest_only: bool, lesion: Sequence[float] | None = None):
    """Per image: (IoU kept, IoU emptied, peak, mean, area, lesion probability), scored at
    the mask's resolution."""
    from ..metrics import binary_metrics
    from .preprocess import resize_proba

    rows = []
    lesion = np.ones(len(probs)) if lesion is None else lesion
    for p, m, les in zip(probs, masks, lesion):
        kept, peak, mean, area = region_stats(p, threshold, largest_only)
        full = resize_proba(torch.from_numpy(kept)[None, None], m.shape[:2])[0, 0].numpy()
        gt = np.asarray(m) > 0
        iou = binary_metrics(full >= threshold, gt)["iou"]
        iou_empty = binary_metrics(np.zeros_like(gt), gt)["iou"]
        rows.append((iou, iou_empty, peak, mean, area, les))
    return np.asarray(rows, dtype=np.float64)


def rule_ious(table: np.ndarray, rule: dict) -> np.ndarray:
    """Per-image IoU under ``rule`` from a :func:`_table` of the rule's threshold."""
    empty = _empty(rule, table[:, 2], table[:, 3], table[:, 4], table[:, 5])
    return np.where(empty, table[:, 1], table[:, 0])


def _tables(probs, masks, grid, lesion=None):
    return {(t, lo): _table(probs, masks, t, lo, lesion)
            for t, lo in itertools.product(grid["threshold"], grid["largest_only"])}


def _best(tables, grid, idx=None):
    best = None
    for (t, lo), tab in tables.items():
        tab = tab if idx is None else tab[idx]
        for mp, mm, ma, ml in itertools.product(grid["min_max_prob"], grid["min_mean_prob"],
                                                grid["min_area"], grid["min_lesion_prob"]):
            rule = {"threshold": t, "largest_only": lo, "min_max_prob": mp,
                    "min_mean_prob": mm, "min_area": ma, "min_lesion_prob": ml}
            score = float(rule_ious(tab, rule).mean())
            # ties go to the simpler rule (earlier in the grid): strict improvement only
            if best is None or score > best[0] + 1e-9:
                best = (score, rule)
    return best


def choose_rule(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray], grid: dict = GRID,
                lesion: Sequence[float] | None = None) -> tuple[dict, float]:
    """Best rule (threshold included) by mean per-image IoU on these images.

    ``probs``: working-size probability maps (h, w); ``masks``: native-resolution masks;
    ``lesion``: the classifier's lesion probabilities (use with ``GRID_CLASSIFIER``).
    """
    tables = _tables(probs, masks, grid, lesion)
    score, rule = _best(tables, grid)
    return rule, score


def cross_validate_rule(probs, masks, folds: int = 5, seed: int = 0, grid: dict = GRID,
                        groups: Sequence | None = None, lesion=None) -> dict:
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
    tables = _tables(probs, masks, grid, lesion)
    ious, rules = np.zeros(n), []
    for f in range(folds):
        train = np.flatnonzero(fold != f)
        test = np.flatnonzero(fold == f)
        _, rule = _best(tables, grid, train)
        rules.append(rule)
        ious[test] = rule_ious(tables[(rule["threshold"], rule["largest_only"])][test], rule)
    return {"iou": ious.tolist(), "rules": rules}

"""Segmentation metrics with the conventions of the TextDiff and MGCC papers.

Per-image scores with a small additive smoothing (``smooth=1e-5``, the MGCC code's convention):
an empty prediction on an empty ground truth scores 1 for every metric, and averages are taken
over images (not over pooled pixels). With these per-image counts Dice = 2·IoU/(1+IoU) = F1
exactly (up to the smoothing), which is how both papers derive their Dice from IoU.
Note the smoothing also makes the precision of an empty prediction 1 (nothing claimed, nothing
wrong); recall then carries the penalty.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

__all__ = ["binary_metrics", "dice_from_iou", "aji", "mean_metrics", "METRIC_KEYS"]

METRIC_KEYS = ("dice", "iou", "precision", "recall", "f1")


def _binary(a, name: str, threshold: float) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind == "f":
        return a > threshold
    if a.dtype.kind in "iu":
        return a != 0
    raise ValueError(f"{name}: unsupported dtype {a.dtype}")


def binary_metrics(pred, gt, smooth: float = 1e-5, threshold: float = 0.5) -> dict[str, float]:
    """Dice, IoU, precision, recall and F1 of one image.

    ``pred``/``gt``: (H, W) masks; integer/bool arrays are foreground where nonzero, float
    arrays (probabilities) where > ``threshold``.
    IoU = (TP+s)/(TP+FP+FN+s), Dice = (2TP+s)/(2TP+FP+FN+s), precision = (TP+s)/(TP+FP+s),
    recall = (TP+s)/(TP+FN+s), F1 = 2PR/(P+R) (MGCC's definition).
    """
    p, g = _binary(pred, "pred", threshold), _binary(gt, "gt", threshold)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    tp = float(np.count_nonzero(p & g))
    fp = float(np.count_nonzero(p & ~g))
    fn = float(np.count_nonzero(~p & g))
    iou = (tp + smooth) / (tp + fp + fn + smooth)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    precision = (tp + smooth) / (tp + fp + smooth)
    recall = (tp + smooth) / (tp + fn + smooth)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall, "f1": f1}


def dice_from_iou(iou):
    """Dice = 2·IoU/(1+IoU), as MGCC and TextDiff report (works on floats and arrays)."""
    iou = np.asarray(iou, dtype=np.float64)
    out = 2 * iou / (1 + iou)
    return float(out) if out.ndim == 0 else out


def aji(pred_labels, gt_labels) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017) of two instance label images.

    For each ground-truth object G_i the predicted object S_j with the highest IoU is taken
    (intersection-less G_i add |G_i| to the union only); C += |G_i ∩ S_j|, U += |G_i ∪ S_j|;
    finally every predicted object never used is added to U. AJI = C / U. As in the original
    definition a predicted object may be matched to several ground-truth objects. Both empty
    -> 1.0.
    """
    p = np.asarray(pred_labels)
    g = np.asarray(gt_labels)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {g.shape}")
    if p.dtype.kind not in "biu" or g.dtype.kind not in "biu":
        raise ValueError("aji needs integer instance label images")
    p = p.astype(np.int64).ravel()
    g = g.astype(np.int64).ravel()
    g_ids, g_inv = np.unique(g, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    g_sizes = np.bincount(g_inv, minlength=len(g_ids))
    p_sizes = np.bincount(p_inv, minlength=len(p_ids))
    g_fg = np.nonzero(g_ids != 0)[0]
    p_fg = np.nonzero(p_ids != 0)[0]
    if len(g_fg) == 0 and len(p_fg) == 0:
        return 1.0
    if len(g_fg) == 0 or len(p_fg) == 0:
        return 0.0
    both = (g != 0) & (p != 0)
    pair = g_inv[both].astype(np.int64) * len(p_ids) + p_inv[both]
    pairs, inter = np.unique(pair, return_counts=True)
    gi, pj = pairs // len(p_ids), pairs % len(p_ids)
    union = g_sizes[gi] + p_sizes[pj] - inter
    iou = inter / union
    C = 0
    U = 0
    used = np.zeros(len(p_ids), dtype=bool)
    order = np.lexsort((-iou, gi))          # by gt object, best IoU first
    gi_s, pj_s, inter_s, union_s = gi[order], pj[order], inter[order], union[order]
    first = np.ones(len(gi_s), dtype=bool)
    first[1:] = gi_s[1:] != gi_s[:-1]
    C += int(inter_s[first].sum())
    U += int(union_s[first].sum())
    used[pj_s[first]] = True
    matched_g = np.zeros(len(g_ids), dtype=bool)
    matched_g[gi_s[first]] = True
    U += int(g_sizes[g_fg][~matched_g[g_fg]].sum())    # gt objects with no overlap at all
    U += int(p_sizes[p_fg][~used[p_fg]].sum())          # unused predicted objects
    return C / U if U else 1.0


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean over images of every numeric key, plus ``KEY_std`` (population std, ddof=0) and
    ``n`` (the number of images). NaN entries are ignored."""
    rows = list(rows)
    out: dict[str, float] = {"n": len(rows)}
    if not rows:
        return out
    keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float, np.floating,
                                                            np.integer))
                                      and not isinstance(r.get(k), bool) for r in rows)]
    for k in keys:
        v = np.array([float(r[k]) for r in rows])
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        out[f"{k}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
    return out

"""Metrics against hand-computed cases (the papers' smoothing and averaging conventions)."""
import numpy as np
import pytest

from napari_textdiff.core.metrics import aji, binary_metrics, dice_from_iou, mean_metrics


def test_hand_computed_counts():
    gt = np.array([[1, 1, 0],
                   [1, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1],
                     [0, 0, 0]], np.uint8)       # TP=2, FP=1, FN=1
    m = binary_metrics(pred, gt, smooth=0)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # with the default smoothing the values move by ~1e-5 only
    ms = binary_metrics(pred, gt)
    assert ms["iou"] == pytest.approx((2 + 1e-5) / (4 + 1e-5))
    # the papers' Dice from IoU equals the per-image Dice and F1
    assert dice_from_iou(m["iou"]) == pytest.approx(m["dice"])
    assert m["f1"] == pytest.approx(m["dice"])


def test_empty_cases_follow_the_smoothing_convention():
    z = np.zeros((8, 8), np.uint8)
    assert binary_metrics(z, z) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0,
                                    "f1": 1.0}
    gt = z.copy()
    gt[2:4, 2:4] = 1
    m = binary_metrics(z, gt)            # nothing predicted on a lesion
    assert m["iou"] < 1e-5 and m["dice"] < 1e-5 and m["recall"] < 1e-5
    assert m["precision"] == 1.0         # (0+s)/(0+0+s): nothing claimed, nothing wrong
    m = binary_metrics(gt, z)            # false alarm on an empty image
    assert m["iou"] < 1e-5 and m["precision"] < 1e-5 and m["recall"] == 1.0


def test_probabilities_bool_and_labels():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    prob = np.where(gt, 0.9, 0.2).astype(np.float32)
    assert binary_metrics(prob, gt)["dice"] == pytest.approx(1.0)
    assert binary_metrics(prob, gt, threshold=0.95)["dice"] < 1e-5
    labels = gt.astype(np.int32) * 7
    assert binary_metrics(labels, gt)["iou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(np.zeros((4, 5)), gt)


def test_dice_from_iou_arrays():
    np.testing.assert_allclose(dice_from_iou(np.array([0, 0.5, 1])), [0, 2 / 3, 1])
    assert dice_from_iou(0.6498) == pytest.approx(0.7878, abs=1e-4)   # TextDiff's 64.98 IoU


def test_aji_hand_cases():
    gt = np.zeros((6, 10), np.int32)
    gt[1:3, 1:3] = 1          # 4 px
    gt[1:3, 6:9] = 2          # 6 px
    assert aji(gt, gt) == 1.0
    # one prediction merging both objects and the gap between (2x8 = 16 px)
    merged = np.zeros_like(gt)
    merged[1:3, 1:9] = 5
    # each gt object matched to the merged one: C = 4 + 6, U = 16 + 16
    assert aji(merged, gt) == pytest.approx(10 / 32)
    # partial overlap plus an unused false positive
    pred = np.zeros_like(gt)
    pred[1:3, 1:2] = 1        # 2 px inside object 1: IoU 2/4
    pred[1:3, 6:9] = 2        # exact object 2
    pred[4:5, 0:3] = 3        # 3 px false positive, never matched
    # C = 2 + 6; U = 4 + 6 + 3
    assert aji(pred, gt) == pytest.approx(8 / 13)
    # a gt object with no overlap at all adds its area to U
    miss = pred.copy()
    miss[1:3, 1:2] = 0
    assert aji(miss, gt) == pytest.approx(6 / (4 + 6 + 3))
    # label ids do not matter
    assert aji(gt * 3, gt) == 1.0


def test_aji_empty_and_errors():
    z = np.zeros((4, 4), np.int32)
    one = z.copy()
    one[0, 0] = 1
    assert aji(z, z) == 1.0
    assert aji(z, one) == 0.0 and aji(one, z) == 0.0
    with pytest.raises(ValueError):
        aji(np.zeros((3, 3), np.int32), z)
    with pytest.raises(ValueError):
        aji(z.astype(float), z)


def test_mean_metrics():
    rows = [{"name": "a", "dice": 1.0, "iou": 1.0}, {"name": "b", "dice": 0.5, "iou": 0.25}]
    m = mean_metrics(rows)
    assert m["n"] == 2
    assert m["dice"] == pytest.approx(0.75) and m["dice_std"] == pytest.approx(0.25)
    assert m["iou"] == pytest.approx(0.625) and m["iou_std"] == pytest.approx(0.375)
    assert "name" not in m
    assert mean_metrics([]) == {"n": 0}
    assert mean_metrics([{"dice": float("nan")}, {"dice": 0.4}])["dice"] == pytest.approx(0.4)

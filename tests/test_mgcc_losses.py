"""MGCC losses on hand-made cases and schedules that never give an invalid value."""
import math

import pytest
import torch
import torch.nn.functional as F

from napari_textdiff.core.losses import soft_dice_loss
from napari_textdiff.core.mgcc.losses import bce_dice_loss, consistency_loss, supervised_loss
from napari_textdiff.core.mgcc.schedules import (authors_consistency_weight, consistency_weight,
                                                 cosine_lr, gaussian_rampup, learning_rate,
                                                 poly_lr)

BIG = 30.0  # sigmoid(30) == 1 in float32


def test_dice_perfect_and_disjoint():
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :] = 1
    perfect = torch.where(t > 0, BIG, -BIG)
    assert soft_dice_loss(torch.sigmoid(perfect), t).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.sigmoid(-perfect), t).item() == pytest.approx(1.0, abs=1e-5)


def test_dice_half_probabilities_by_hand():
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    logits = torch.zeros_like(t)                     # p = 0.5 everywhere
    # 2*|p t| = 2*1 = 2, |p| + |t| = 2 + 2 = 4 -> dice 0.5
    assert soft_dice_loss(torch.sigmoid(logits), t, smooth=0).item() == pytest.approx(0.5)
    bce = math.log(2)
    assert bce_dice_loss(logits, t, smooth=0).item() == pytest.approx(0.5 * bce + 0.5, rel=1e-6)


def test_dice_is_per_image_mean():
    t = torch.zeros(2, 1, 2, 2)
    t[0] = 1                                          # image 0 full, image 1 empty
    logits = torch.full_like(t, BIG)                  # predicts everything foreground
    # image 0: dice 1; image 1: dice ~ 0 (smooth/(4+smooth)) -> mean loss 0.5
    assert soft_dice_loss(torch.sigmoid(logits), t).item() == pytest.approx(0.5, abs=1e-5)


def test_dice_ignores_pixels_outside_valid():
    t = torch.tensor([[[1.0, 0.0]]])
    p = torch.tensor([[[1.0, 1.0]]])                 # a false positive on the right pixel
    assert soft_dice_loss(p, t, smooth=0).item() == pytest.approx(1 - 2 / 3)
    valid = torch.tensor([[[1.0, 0.0]]])             # ... which is padding: ignored
    assert soft_dice_loss(p, t, valid, smooth=0).item() == pytest.approx(0.0)


def test_supervised_loss_averages_decoders():
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    outs = [torch.randn(2, 1, 8, 8) for _ in range(4)]
    expect = sum(0.5 * F.binary_cross_entropy_with_logits(o, t)
                 + soft_dice_loss(torch.sigmoid(o), t)
                 for o in outs) / 4
    torch.testing.assert_close(supervised_loss(outs, t), expect)
    with pytest.raises(ValueError):
        supervised_loss([], t)


def test_consistency_loss_by_hand_and_gradients_reach_both_sides():
    main = torch.zeros(1, 1, 2, 2, requires_grad=True)          # p = 0.5
    a1 = torch.full((1, 1, 2, 2), BIG, requires_grad=True)      # p = 1   -> mse 0.25
    a2 = torch.zeros(1, 1, 2, 2, requires_grad=True)            # p = 0.5 -> mse 0
    loss = consistency_loss(main, [a1, a2])
    assert loss.item() == pytest.approx(0.125)
    loss.backward()
    assert main.grad.abs().sum() > 0                             # no detach on main
    assert torch.equal(consistency_loss(main, [main]), torch.zeros(()))


@pytest.mark.parametrize("schedule", ["poly", "cosine", "constant"])
def test_lr_schedules_valid_even_past_the_end(schedule):
    total = 100
    vals = [learning_rate(schedule, 0.01, it, total) for it in range(-5, 3 * total)]
    assert all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 0.01 for v in vals)
    if schedule != "constant":
        assert vals[5] == pytest.approx(0.01)              # it = 0
        assert learning_rate(schedule, 0.01, total, total) == pytest.approx(0.0, abs=1e-12)
        assert learning_rate(schedule, 0.01, 10 * total, total) == pytest.approx(0.0, abs=1e-12)
        assert all(a >= b for a, b in zip(vals[5:], vals[6:]))   # non-increasing
    with pytest.raises(ValueError):
        learning_rate("step", 0.01, 0, total)


def test_poly_by_hand():
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 150, 100) == 0.0                  # clamped: the authors' got complex
    assert cosine_lr(1.0, 50, 100) == pytest.approx(0.5)


def test_consistency_rampup_reaches_max():
    assert gaussian_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert gaussian_rampup(100, 100) == 1.0 and gaussian_rampup(10_000, 100) == 1.0
    assert consistency_weight(400, 7.0, rampup_iters=400) == pytest.approx(7.0)
    assert consistency_weight(0, 7.0, rampup_iters=0) == 7.0
    ws = [consistency_weight(i, 7.0, 400) for i in range(0, 1000, 10)]
    assert all(a <= b for a, b in zip(ws, ws[1:])) and max(ws) == pytest.approx(7.0)
    # the published ramp stops at ~4 of 7 after the published 20 000 iterations
    assert authors_consistency_weight(19_999) == pytest.approx(4.0, abs=0.05)

"""The BatchNorm shift score and the automatic choice of what an MGCC fine-tune trains."""
import numpy as np
import pytest
import torch

from napari_textdiff.core.finetune_defaults import MGCC_PART_DEFAULTS, finetune_defaults
from napari_textdiff.core.mgcc.model import MGCCModel
from napari_textdiff.core.mgcc.preprocess import image_tensor, normalize_input
from napari_textdiff.core.mgcc.shift import SHIFT_THRESHOLD, batchnorm_shift
from napari_textdiff.core.models import Example
from napari_textdiff.core.progress import run


def _images(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.normal(0.45, 0.12, (32, 32)).clip(0, 1).astype(np.float32)
        img[8:20, 10:22] *= 0.4                                 # a dark "lesion"
        out.append(img)
    return out


def _calibrated_model():
    """A tiny MGCC whose BatchNorm statistics are those of ``_images`` (cumulative averages)."""
    torch.manual_seed(0)
    m = MGCCModel.create(in_channels=1, width=1 / 16, size=32)
    for mod in m.net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.net.train()
    with torch.no_grad():
        x = torch.stack([image_tensor(i, 1, 32) for i in _images(64, 1)])
        m.net(normalize_input(x))
    m.net.eval()
    return m


def _shifted(images, gamma):
    return [np.clip(i ** gamma, 0, 1).astype(np.float32) for i in images]


def test_shift_score_is_small_on_the_training_statistics_and_grows_with_a_gain_change():
    m = _calibrated_model()
    own = batchnorm_shift(m, _images(64, 1))                   # the statistics' own images
    same = batchnorm_shift(m, _images(10, 2))                  # unseen, same "scanner"
    scores = [batchnorm_shift(m, _shifted(_images(10, 2), g)) for g in (1.5, 2.0, 3.0)]
    assert 0 <= own < 0.01 and own < same < 0.1 * scores[0]
    assert scores[0] < scores[1] < scores[2]
    assert batchnorm_shift(m, []) == 0.0
    m.net.train()
    batchnorm_shift(m, _images(2, 3))
    assert m.net.training                                       # the mode is restored
    assert all(float(b.num_batches_tracked) == 1 for b in m.net.modules()
               if isinstance(b, torch.nn.BatchNorm2d))          # statistics untouched


def _examples(images):
    out = []
    for img in images:
        mask = np.zeros(img.shape, np.uint8)
        mask[8:20, 10:22] = 1
        out.append(Example(img, mask, "", "x"))
    return out


@pytest.mark.parametrize("gamma, part", [(1.0, "output"), (3.0, "norm")])
def test_auto_finetune_trains_the_part_the_images_call_for(monkeypatch, gamma, part):
    m = _calibrated_model()
    monkeypatch.setattr("napari_textdiff.core.mgcc.shift.SHIFT_THRESHOLD",
                        (batchnorm_shift(m, _images(6, 4))
                         + batchnorm_shift(m, _shifted(_images(6, 4), 3.0))) / 2)
    seen = {}
    import napari_textdiff.core.mgcc.finetune as ft

    real = ft.finetune_model

    def spy(model, examples, **kw):
        seen.update(kw)
        return (yield from real(model, examples, **kw))

    monkeypatch.setattr(ft, "finetune_model", spy)
    events = list(m.finetune(_examples(_shifted(_images(6, 4), gamma)), train="auto",
                             epochs=None, lr=None))
    assert seen["train"] == part and m.meta["last_finetune"]["part"] == part
    expected = {"epochs": 20, "lr": 2e-3} if part == "norm" else {}
    assert {k: seen.get(k) for k in expected} == expected == \
        {k: v for k, v in MGCC_PART_DEFAULTS[part].items() if k != "train"}
    if part == "output":
        assert "epochs" not in seen and "lr" not in seen     # finetune_model's own defaults
    first = events[0]
    assert first.step == 0 and ("unlike" in first.message) == (part == "norm")
    # given values win over the chosen part's
    run(m.finetune(_examples(_images(2, 5)), train="auto", epochs=1, lr=1e-4))
    assert seen["epochs"] == 1 and seen["lr"] == 1e-4
    # a named part with its own defaults uses them (the CLI's --part norm passes only the part)
    seen.clear()
    run(m.finetune(_examples(_images(2, 5)), train="norm"))
    assert (seen["epochs"], seen["lr"]) == (20, 2e-3)


def test_finetune_defaults_leave_epochs_and_lr_to_an_automatic_choice():
    d = finetune_defaults("mgcc", "auto")
    assert d["train"] == "auto" and d["epochs"] is None and d["lr"] is None
    assert finetune_defaults("mgcc", "norm")["lr"] == 2e-3
    assert SHIFT_THRESHOLD > 0

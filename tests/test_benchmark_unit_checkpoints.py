"""Benchmark units that train for hours keep a checkpoint: a run killed mid-unit (a session's
end) continues it on --resume and ends where an uninterrupted run ends."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_datasets import blobs, make_busi  # noqa: E402


def _examples(n=3, size=32):
    from napari_textdiff.core.models import Example

    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img, m = blobs(rng, size)
        out.append(Example(img.astype(np.float32) / 255, (m > 0).astype(np.uint8), "", str(i)))
    return out


def _trainers():
    from napari_textdiff.benchmark.baselines import (SupervisedConfig, UNetConfig,
                                                     train_mgcc_light, train_unet)

    ex = _examples()
    val = _examples(2)

    def unet(**kw):
        return train_unet(ex, config=SupervisedConfig(iterations=8, size=32, batch_size=2),
                          net_config=UNetConfig(width=0.125), device="cpu", val=val,
                          val_every=2, **kw)

    def mgcc(**kw):
        return train_mgcc_light(ex, val=val, iterations=8, size=32, width=0.125,
                                batch_labeled=2, device="cpu", val_every=2, **kw)

    return {"unet": unet, "mgcc_light": mgcc}


def _drive(gen, kill_after=None):
    """Run a training generator; ``kill_after`` train events abandons it there (as a
    killed process would: no stop request, nothing saved on the way out)."""
    events, n = [], 0
    while True:
        try:
            ev = next(gen)
        except StopIteration as s:
            return s.value, events
        events.append(ev)
        n += ev.stage == "train"
        if kill_after is not None and n >= kill_after:
            gen.close()
            return None, events


def _losses(result):
    model, hist = result
    return hist["loss"] if isinstance(hist, dict) else hist


@pytest.mark.parametrize("method", ["unet", "mgcc_light"])
def test_a_killed_unit_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path,
                                                                               method):
    train = _trainers()[method]
    full, full_events = _drive(train())
    ck = tmp_path / "unit"
    ck.mkdir()
    gone, _ = _drive(train(checkpoint_dir=ck), kill_after=5)   # last checkpoint: iteration 4
    assert gone is None and (ck / "checkpoint.pt").is_file()
    resumed, events = _drive(train(checkpoint_dir=ck))
    # the part before the kill comes back as the validation events of the checkpoint
    replayed = [e for e in events if e.message == "from checkpoint"]
    assert [e.step for e in replayed] == [2, 4]
    assert [e.step for e in events if e.stage == "train"] == [5, 6, 7, 8]
    assert _losses(resumed) == pytest.approx(_losses(full), rel=1e-5)
    assert len(_losses(resumed)) == 8
    a, b = full[0].net.state_dict(), resumed[0].net.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert resumed[0].meta["resumed"]["from_iteration"] == 4
    assert "resumed" not in full[0].meta
    vals = [e.step for e in events if e.stage == "validate"]
    assert vals == [e.step for e in full_events if e.stage == "validate"] == [2, 4, 6, 8]


@pytest.mark.parametrize("method", ["unet", "mgcc_light"])
def test_a_stop_request_saves_where_it_stopped(tmp_path, method):
    train = _trainers()[method]
    n = {"train": 0}
    gen = train(checkpoint_dir=tmp_path, should_stop=lambda: n["train"] >= 3)
    while True:
        try:
            ev = next(gen)
        except StopIteration:
            break
        n["train"] += ev.stage == "train"
    model, hist = _drive(train(checkpoint_dir=tmp_path))[0]
    assert model.meta["resumed"]["from_iteration"] == 3
    assert len(_losses((model, hist))) == 8


def test_busi_resume_continues_a_unit_killed_mid_training(tmp_path):
    """The benchmark keeps each unit's checkpoint under OUT/busi.units_in_training/ while it
    trains; a killed run's --resume continues it (the row says from which iteration and counts
    the seconds before), the folder goes once the unit is finished, a run without --resume
    starts over, and a checkpoint begun under other settings is refused."""
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi
    from napari_textdiff.core.progress import run

    data = make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    cfg = BusiConfig.quick(seeds=[0], methods=["unet_full"], size=32, iterations=12,
                           val_every=2, device="cpu")
    unit = out / "busi.units_in_training" / "unet_full-0"
    _drive(run_busi(data, out, cfg), kill_after=7)
    assert (unit / "checkpoint.pt").is_file() and (unit / "unit.json").is_file()
    with pytest.raises(ValueError, match="begun with other settings.*lr"):
        run(run_busi(data, out, BusiConfig.quick(**{**cfg.__dict__, "unet_lr": 0.5}),
                     resume=True))
    res = run(run_busi(data, out, cfg, resume=True))
    row = res["rows"][0]
    assert row["training_resumed"]["from_iteration"] == 6
    assert row["training_resumed"]["seconds_before"] > 0
    assert row["iterations_done"] == 12 and not row.get("stopped")
    assert [it for it, _ in row["val_curve"]] == list(range(2, 13, 2))
    assert row["train_seconds"] >= row["training_resumed"]["seconds_before"]
    assert not unit.exists() and not unit.parent.exists()
    unit.mkdir(parents=True)            # left by a kill between the row and its cleanup
    (unit / "checkpoint.pt").write_bytes(b"old")
    run(run_busi(data, out, cfg, finished_only=True))
    assert not unit.parent.exists()

    _drive(run_busi(data, tmp_path / "out2", cfg), kill_after=7)
    fresh = run(run_busi(data, tmp_path / "out2", cfg))         # no --resume: from scratch
    assert "training_resumed" not in fresh["rows"][0]

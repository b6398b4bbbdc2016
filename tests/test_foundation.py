"""Device choice, progress protocol and the model bundle format."""
import json

import numpy as np
import pytest
import torch

from napari_textdiff.core import bundle, device, progress
from napari_textdiff.core.models import load_model


def test_resolve_device_cpu_and_errors():
    assert device.resolve_device("cpu").type == "cpu"
    assert device.resolve_device("auto").type in device.available_devices()
    with pytest.raises(ValueError, match="Unknown device"):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            device.resolve_device("cuda")
    assert device.autocast_dtype("cpu") is None
    with device.autocast("cpu"):
        assert not torch.is_autocast_enabled()


def _job(n, log):
    try:
        for i in range(n):
            log.append(i)
            yield progress.Progress("train", step=i + 1, total=n, loss=1.0 / (i + 1))
        return "done"
    finally:
        log.append("cleanup")


def test_progress_run_returns_result_and_closing_runs_cleanup():
    log, seen = [], []
    assert progress.run(_job(3, log), callback=seen.append) == "done"
    assert [e.step for e in seen] == [1, 2, 3] and log[-1] == "cleanup"
    log = []
    gen = _job(10, log)
    next(gen), next(gen)
    gen.close()                                    # abandoning a job runs its cleanup
    assert log == [0, 1, "cleanup"]
    ev = progress.Progress("x", step=1, total=4, loss=0.5, metrics={"dice": 0.7})
    assert ev.fraction == 0.25 and "dice 0.7000" in ev.describe()


def test_bundle_round_trip_bit_exact(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2).half()}
    p = bundle.save_bundle(tmp_path / "m.safetensors", "toy", sd, {"a": 1, "taps": ["x"]},
                           meta={"card": "hi"})
    header, loaded = bundle.load_bundle(p, expect_kind="toy")
    assert header["config"] == {"a": 1, "taps": ["x"]} and header["meta"]["card"] == "hi"
    for k in sd:
        assert torch.equal(sd[k], loaded[k]) and sd[k].dtype == loaded[k].dtype
    assert list(tmp_path.iterdir()) == [p]  # no temp files left behind
    half = bundle.save_bundle(tmp_path / "h.safetensors", "toy", sd, {}, dtype=torch.float16)
    assert bundle.load_bundle(half)[1]["w"].dtype == torch.float16


def test_bundle_errors(tmp_path):
    with pytest.raises(bundle.BundleError, match="not found"):
        bundle.read_bundle_header(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_text("this is not a model")
    with pytest.raises(bundle.BundleError, match="not a readable"):
        bundle.load_bundle(bad)
    p = bundle.save_bundle(tmp_path / "m.safetensors", "toy", {"w": torch.ones(100)}, {})
    with pytest.raises(bundle.BundleError, match="expected 'textdiff'"):
        bundle.load_bundle(p, expect_kind="textdiff")
    data = p.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) - 50])
    with pytest.raises(bundle.BundleError, match="truncated"):
        bundle.load_bundle(trunc)
    with pytest.raises(bundle.BundleError, match="unknown model kind"):
        load_model(p)
    with pytest.raises(bundle.BundleError, match="JSON"):
        bundle.save_bundle(tmp_path / "x.safetensors", "toy", {}, {"a": object()})


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    p = bundle.save_bundle(tmp_path / "m.safetensors", "toy", {"w": torch.ones(3)}, {"v": 1})
    import os

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        bundle.save_bundle(p, "toy", {"w": torch.zeros(3)}, {"v": 2})
    monkeypatch.undo()
    assert bundle.read_bundle_header(p)["config"] == {"v": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]


def test_fingerprint_changes_with_weights():
    a = {"w": torch.ones(4), "b": torch.zeros(2)}
    b = {"w": torch.ones(4), "b": torch.tensor([0.0, 1e-3])}
    assert bundle.state_fingerprint(a) == bundle.state_fingerprint(dict(a))
    assert bundle.state_fingerprint(a) != bundle.state_fingerprint(b)

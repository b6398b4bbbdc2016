"""core.amp / core.memory on the CPU: every training loop goes through the GradScaler when fp16
is in force (forced on the CPU, where autocast fp16 and GradScaler("cpu") run for real),
non-finite losses and out-of-memory errors give clear messages, OOM retries a smaller batch,
and features stay on the device in the backbone's dtype."""
import warnings

import numpy as np
import pytest
import torch

from napari_textdiff.core import device as dv
from napari_textdiff.core.amp import Amp
from napari_textdiff.core.memory import GPUOutOfMemoryError, oom_guard, split_on_oom
from napari_textdiff.core.models import Example
from napari_textdiff.core.progress import run


@pytest.fixture
def fp16(monkeypatch):
    """fp16 autocast + GradScaler forced on the CPU; counts scaler steps."""
    monkeypatch.delenv(dv.PRECISION_ENV, raising=False)
    dv.set_precision("fp16")
    counts = {"scale": 0, "step": 0}
    real_scale, real_step = torch.amp.GradScaler.scale, torch.amp.GradScaler.step

    def scale(self, x):
        counts["scale"] += 1
        return real_scale(self, x)

    def step(self, opt, *a, **k):
        counts["step"] += 1
        return real_step(self, opt, *a, **k)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    yield counts
    dv.set_precision(None)


def _blobs(n, size=32, c=1, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < 36).astype(np.uint8)
        img = np.clip(0.3 + 0.5 * m + 0.05 * rng.standard_normal((size, size)), 0, 1)
        out.append(Example(np.repeat(img[..., None], c, 2).astype(np.float32), m, "a blob"))
    return out


def test_amp_step_goes_through_the_scaler_and_learns(fp16):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=5e-2)
    amp = Amp("cpu")
    assert amp.precision == "fp16" and amp.scaler is not None
    x = torch.rand(4, 1, 16, 16)
    y = (x > 0.5).float()
    losses = []
    for _ in range(30):
        with amp.autocast():
            out = net(x)
            assert out.dtype is torch.float16
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        amp.step(loss, opt, clip_norm=1.0)
        losses.append(float(loss.detach()))
    assert fp16["scale"] == 30 and fp16["step"] == 30
    assert np.isfinite(losses).all() and losses[-1] < 0.85 * losses[0]
    assert amp.state_dict()["scaler"]["scale"] > 0


def test_overflowed_gradients_skip_the_step(fp16):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    amp = Amp("cpu")
    before = p.detach().clone()
    scale = amp.scaler.get_scale()
    assert amp.step((p * 1e38).sum(), opt) is False      # finite loss, scaled grads overflow
    assert torch.equal(p.detach(), before) and amp.scaler.get_scale() < scale
    loss = (p * torch.tensor(float("inf"))).sum()     # inf loss: skipped, weights unchanged
    assert amp.step(loss, opt) is False
    assert torch.equal(p.detach(), before) and amp.skipped >= 1


def test_non_finite_loss_messages(fp16, monkeypatch):
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    amp = Amp("cpu", what="MGCC training", max_bad_steps=3)
    bad = (p * float("nan")).sum()
    assert amp.step(bad, opt) is False and amp.step(bad, opt) is False
    with pytest.raises(FloatingPointError, match=r"MGCC training.*3 steps.*fp16.*--precision fp32"):
        amp.step(bad, opt)
    dv.set_precision("fp32")                          # full precision: at once, lr advice
    amp32 = Amp("cpu", what="U-Net training")
    with pytest.raises(FloatingPointError, match="float32.*lower the learning rate"):
        amp32.step((p * float("inf")).sum(), opt)


def test_every_training_loop_steps_through_the_grad_scaler(fp16, tmp_path):
    from napari_textdiff.benchmark.baselines import SupervisedConfig, UNetConfig, train_unet
    from napari_textdiff.core.diffusion.ldm import train_ldm
    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.mgcc.network import MGCCConfig
    from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig

    ex = _blobs(4)
    seen = {}
    t = MGCCTrainer(ex, [e.image for e in _blobs(2, seed=5)], net_config=MGCCConfig(
        in_channels=1, width=0.0625), config=TrainConfig(iterations=3, size=32, batch_labeled=2,
                                                         batch_unlabeled=2), device="cpu")
    run(t.run())
    seen["mgcc train"] = fp16["step"]
    m = MGCCModel.create(in_channels=1, width=0.0625, size=32)
    run(m.finetune(ex[:2], epochs=2, lr=1e-3))
    seen["mgcc finetune"] = fp16["step"] - sum(seen.values())
    run(train_unet(ex, config=SupervisedConfig(iterations=2, batch_size=2, size=32),
                   net_config=UNetConfig(in_channels=1, width=0.125)))
    seen["unet"] = fp16["step"] - sum(seen.values())
    run(train_ldm([e.image for e in ex], tmp_path / "ldm", preset="tiny", channels=1,
                  vae_steps=2, unet_steps=2, vae_batch=2, unet_batch=2, log_every=1,
                  device="cpu"))
    seen["ldm"] = fp16["step"] - sum(seen.values())
    assert seen == {"mgcc train": 3, "mgcc finetune": 2, "unet": 2, "ldm": 4}, seen


def test_textdiff_training_steps_through_the_grad_scaler(fp16, tmp_path):
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel
    from textdiff_testkit import make_tiny_backbone, make_tiny_bert, shapes_set

    cfg = TextDiffConfig(working_size=32, tile_overlap=8, dim=16, heads=2, decoder=[16, 8],
                         epochs=2, lr=3e-3, batch_size=4, steps=[10, 50], max_length=12)
    m = TextDiffModel.create(cfg, backbone=str(make_tiny_backbone(tmp_path / "bb")),
                             text_encoder=str(make_tiny_bert(tmp_path / "bert")), device="cpu")
    hist = run(m.fit(shapes_set(4, seed=0)))
    assert fp16["step"] == 2 and np.isfinite(hist["loss"]).all()


def test_oom_retries_once_with_half_the_batch_then_says_what_to_do():
    calls = []

    def fn(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.asarray(batch) * 2

    wrapped = split_on_oom(fn, "cpu", "TextDiff prediction")
    x = np.arange(5, dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="retrying with 2"):
        out = wrapped(x[:4])
    assert np.array_equal(out, x[:4] * 2) and calls == [4, 2, 2]
    assert wrapped.batch_limit == 2 and wrapped.retries == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # later batches: the smaller size, silently
        assert np.array_equal(wrapped(x[1:5]), x[1:5] * 2)
    always = split_on_oom(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")), "cpu",
                          "MGCC prediction")
    with pytest.warns(RuntimeWarning), pytest.raises(GPUOutOfMemoryError) as e:
        always(np.zeros((4, 2)))
    msg = str(e.value)
    assert "Out of GPU memory" in msg and "MGCC prediction" in msg and "tile batch of 2" in msg
    assert "To fix" in msg and "device cpu" in msg
    with pytest.raises(GPUOutOfMemoryError, match="tile batch of 1"):   # batch 1: nothing to split
        split_on_oom(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError("x")), "cpu")(
            np.zeros((1, 2)))
    with pytest.raises(ValueError):                    # other errors pass through untouched
        split_on_oom(lambda b: (_ for _ in ()).throw(ValueError("bad")), "cpu")(np.zeros((2,)))


def test_training_oom_becomes_a_clear_error():
    amp = Amp("cpu", what="MGCC fine-tuning")
    with pytest.raises(GPUOutOfMemoryError, match="MGCC fine-tuning.*fewer images per batch"):
        with amp.autocast():
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(GPUOutOfMemoryError):
        with oom_guard("cpu", "x"):
            raise RuntimeError("CUDA error: out of memory")
    with pytest.raises(KeyError):
        with oom_guard("cpu", "x"):
            raise KeyError("k")


def test_features_stay_in_the_backbone_dtype_on_the_device(tmp_path, monkeypatch):
    from napari_textdiff.core.textdiff.features import DiffusionFeatures
    from napari_textdiff.core.textdiff.features import random_backbone

    feats = DiffusionFeatures(random_backbone("tiny", in_channels=3, sample_size=32),
                              steps=[10, 50], device="cpu")
    img = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    ref = feats(img, batch_size=2)
    dv.set_precision("bf16")
    try:
        on_dev = feats.device_features(img, batch_size=2)
        cpu = feats(img, batch_size=2)
    finally:
        dv.set_precision(None)
    assert all(f.dtype is torch.bfloat16 for f in on_dev)       # no float32 copy
    assert all(f.dtype is torch.float32 and f.device.type == "cpu" for f in cpu)
    for a, b in zip(on_dev, ref):
        assert a.shape == b.shape
        assert torch.allclose(a.float(), b, atol=0.1 * float(b.abs().max()) + 1e-3)


def test_no_training_loop_bypasses_the_helper():
    """One helper for every loop: backward/step only in core.amp (backbone pretraining goes
    through accelerate, which scales fp16 losses itself)."""
    import re
    from pathlib import Path

    import napari_textdiff

    root = Path(napari_textdiff.__file__).parent
    # decision.py fits a float64 logistic regression with LBFGS on the CPU: no autocast, no
    # network, nothing for a loss scaler to do
    allowed = {"core/amp.py", "core/diffusion/pretrain.py", "core/mgcc/decision.py"}
    bad = [str(p.relative_to(root)) for p in root.rglob("*.py")
           if str(p.relative_to(root)) not in allowed
           and re.search(r"\.backward\(|\bopt(imizer)?\.step\(\)", p.read_text())]
    assert bad == [], f"training steps outside core.amp.Amp: {bad}"

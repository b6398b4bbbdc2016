"""Precision by compute capability (CUDA queries patched: no GPU needed), the force switch,
device-accurate timing, memory release, CUDA RNG in MGCC checkpoints."""
import numpy as np
import pytest
import torch

from napari_textdiff.core import device as dv
from napari_textdiff.core.amp import Amp


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend a CUDA GPU of a given capability is present (bf16 'supported' everywhere, as
    torch reports on pre-Ampere cards through emulation)."""
    monkeypatch.delenv(dv.PRECISION_ENV, raising=False)
    dv.set_precision(None)

    def make(cap=(7, 5), name="Tesla T4"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: cap)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    yield make
    dv.set_precision(None)


def test_turing_gets_fp16_and_training_uses_a_grad_scaler(fake_cuda):
    fake_cuda((7, 5))
    assert dv.autocast_dtype("cuda") is torch.float16
    amp = Amp("cuda")
    assert amp.precision == "fp16"
    assert isinstance(amp.scaler, torch.amp.GradScaler) and amp.scaler.is_enabled()
    assert "Tesla T4, capability 7.5" in dv.describe_precision("cuda")
    assert "fp16" in dv.describe_precision("cuda")


@pytest.mark.parametrize("cap,dtype", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                       ((8, 6), torch.bfloat16), ((7, 0), torch.float16),
                                       ((6, 1), None)])
def test_dtype_follows_compute_capability(fake_cuda, cap, dtype):
    fake_cuda(cap)
    assert dv.autocast_dtype("cuda") is dtype
    amp = Amp("cuda")
    assert (amp.scaler is not None) == (dtype is torch.float16)


def test_force_fp32_switch_disables_autocast(fake_cuda, monkeypatch):
    fake_cuda((8, 0))
    dv.set_precision("fp32")
    assert dv.autocast_dtype("cuda") is None
    with dv.autocast("cuda"):
        assert not torch.is_autocast_enabled("cuda")
    amp = Amp("cuda")
    assert amp.dtype is None and amp.scaler is None
    with amp.autocast():
        assert not torch.is_autocast_enabled("cuda")
    dv.set_precision(None)
    monkeypatch.setenv(dv.PRECISION_ENV, "fp32")      # the same through the environment
    assert dv.autocast_dtype("cuda") is None and "fp32" in dv.describe_precision("cuda")
    monkeypatch.setenv(dv.PRECISION_ENV, "fp16")      # forced fp16 on an Ampere card
    assert dv.autocast_dtype("cuda") is torch.float16
    monkeypatch.setenv(dv.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="NAPARI_TEXTDIFF_PRECISION"):
        dv.autocast_dtype("cuda")
    with pytest.raises(ValueError, match="unknown precision"):
        dv.set_precision("fp8")


def test_cpu_stays_fp32_unless_forced(monkeypatch):
    monkeypatch.delenv(dv.PRECISION_ENV, raising=False)
    assert dv.autocast_dtype("cpu") is None
    dv.set_precision("bf16")
    try:
        assert dv.autocast_dtype("cpu") is torch.bfloat16
        with dv.autocast("cpu"):
            assert torch.is_autocast_enabled("cpu")
    finally:
        dv.set_precision(None)


def test_cli_precision_flag_sets_the_switch(monkeypatch):
    from napari_textdiff.cli import main

    seen = {}
    monkeypatch.setattr(dv, "set_precision", lambda m: seen.setdefault("mode", m))
    main(["--precision", "fp32", "info", "/nonexistent.safetensors"])   # (fails: no file)
    assert seen["mode"] == "fp32"


def test_stopwatch_synchronises_the_device_in_use(fake_cuda, monkeypatch):
    from napari_textdiff.benchmark.common import Stopwatch

    fake_cuda((9, 0))
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(str(d)))
    with Stopwatch("cuda:1"):
        pass
    assert synced == ["cuda:1", "cuda:1"]
    with Stopwatch("cpu"):
        pass
    assert len(synced) == 2


def test_release_moves_models_off_the_gpu_and_empties_the_cache(monkeypatch):
    from napari_textdiff.core.diffusion import synthesize

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    synthesize._PIPELINE_CACHE["k"] = object()

    class Model:
        def to(self, d):
            calls.append(f"to {d}")
            return self

    dv.release(Model(), None)
    assert calls == ["to cpu", "empty"]
    assert synthesize._PIPELINE_CACHE == {}


def test_ldm_is_loaded_once_per_files_and_device(tmp_path, monkeypatch):
    from napari_textdiff.core.diffusion import synthesize
    from napari_textdiff.core.diffusion.ldm import LDM_META

    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / LDM_META).write_text("{}")
    (tmp_path / "unet" / "w.safetensors").write_bytes(b"1")
    loads = []
    real = synthesize.load_ldm

    def counting(d, device="cpu", cache=False):
        if not cache:
            loads.append(str(device))
            return ("vae", "unet", "sched", {"n": len(loads)})
        return real(d, device, cache=True)

    monkeypatch.setattr(synthesize, "load_ldm", counting)
    synthesize.clear_pipeline_cache()
    a = synthesize.load_ldm(tmp_path, "cpu", cache=True)
    b = synthesize.load_ldm(tmp_path, "cpu", cache=True)
    assert a is b and len(loads) == 1
    (tmp_path / "unet" / "w.safetensors").write_bytes(b"22")     # retrained: reload
    c = synthesize.load_ldm(tmp_path, "cpu", cache=True)
    assert c is not a and len(loads) == 2 and len(synthesize._PIPELINE_CACHE) == 1
    synthesize.clear_pipeline_cache()


def test_mgcc_checkpoint_restores_the_cuda_rng(tmp_path, monkeypatch):
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.mgcc.network import MGCCConfig
    from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    state = [torch.arange(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in state])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append(s))
    rng = np.random.default_rng(0)
    ex = [Example(rng.random((32, 32, 1)).astype(np.float32),
                  (rng.random((32, 32)) > 0.5).astype(np.uint8)) for _ in range(2)]
    cfg = TrainConfig(iterations=2, size=32, batch_labeled=2, batch_unlabeled=0,
                      checkpoint_every=1, val_every=100)
    net = MGCCConfig(in_channels=1, width=0.0625)
    t = MGCCTrainer(ex, net_config=net, config=cfg, device="cpu", run_dir=tmp_path)
    for _ in t.run():
        pass
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert torch.equal(ck["cuda_rng"][0], state[0])
    MGCCTrainer(ex, net_config=net, config=cfg, device="cpu", run_dir=tmp_path, resume=True)
    assert len(restored) == 1 and torch.equal(restored[0][0], state[0])
    assert restored[0][0].device.type == "cpu"


def test_backbone_pretraining_keeps_its_images_as_uint8_on_the_device():
    """The whole image set lives on the training device: as uint8 (a quarter of float32)."""
    from napari_textdiff.core.diffusion.crops import CropSampler

    imgs = [torch.rand(3, 40, 50), torch.rand(3, 30, 30)]
    s = CropSampler(imgs, size=16, device="cpu")
    assert all(t.dtype is torch.uint8 and t.device.type == "cpu" for t in s.images)
    assert sum(t.numel() * t.element_size() for t in s.images) == sum(t.numel() for t in imgs)
    for a, b in zip(s.images, imgs):      # 8-bit steps: within half a grey level
        assert (a.float() / 255 - b).abs().max() <= 0.5 / 255 + 1e-6
    x = s.sample(4, torch.Generator().manual_seed(0))
    assert x.dtype is torch.float32 and x.shape == (4, 3, 16, 16)

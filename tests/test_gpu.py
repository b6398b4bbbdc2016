"""Checks that need a real CUDA GPU (marker ``gpu``; skipped elsewhere, so CI stays green).
``scripts/gpu_check.sh`` runs them on a GPU machine along with the timed checks."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODELS = Path(__file__).resolve().parent.parent / "src" / "napari_textdiff" / "models"


@pytest.fixture
def precision():
    from napari_textdiff.core import device as dv
    yield dv.set_precision
    dv.set_precision(None)


def test_precision_follows_this_gpus_capability():
    from napari_textdiff.core.device import autocast_dtype

    cap = torch.cuda.get_device_capability()
    want = torch.bfloat16 if cap >= (8, 0) else torch.float16 if cap[0] >= 7 else None
    assert autocast_dtype("cuda") is want


@pytest.mark.parametrize("mode", ["fp16", "bf16", "auto"])
def test_mgcc_training_on_cuda_is_finite_and_learns(precision, mode):
    from napari_textdiff.core.models import Example
    from napari_textdiff.core.mgcc.network import MGCCConfig
    from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig

    if mode == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 convolutions need compute capability 8.0")
    precision(mode)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    ex = []
    for _ in range(8):
        cy, cx = rng.integers(16, 48, 2)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < 100).astype(np.uint8)
        ex.append(Example((0.3 + 0.5 * m + 0.05 * rng.standard_normal((64, 64)))
                          .clip(0, 1).astype(np.float32)[..., None], m))
    t = MGCCTrainer(ex, [e.image for e in ex], net_config=MGCCConfig(in_channels=1, width=0.25),
                    config=TrainConfig(iterations=60, size=64, lr=0.05, schedule="constant",
                                       w_max=1.0), device="cuda")
    sups = [ev.metrics["sup"] for ev in t.run() if ev.stage == "train"]
    assert np.isfinite(sups).all() and np.mean(sups[-10:]) < 0.8 * np.mean(sups[:10])
    assert (t.amp.scaler is not None) == (t.amp.dtype is torch.float16)


def test_bundled_models_give_the_same_masks_on_cpu_and_cuda():
    from napari_textdiff.cli.demo import sample_path
    from napari_textdiff.core.io import load_image
    from napari_textdiff.core.models import load_model

    pairs = [("histology", "histology.safetensors"), ("ultrasound", "ultrasound_mgcc.safetensors")]
    for modality, name in pairs:
        if not (MODELS / name).is_file():
            continue
        img_path, info = sample_path(modality)
        masks = []
        for dev in ("cpu", "cuda"):
            m = load_model(MODELS / name, device=dev)
            img = load_image(img_path, channels=m.channels)
            masks.append(m.predict_proba(img, info["description"]) >= 0.5)
        a, b = masks
        dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
        assert dice >= 0.98, (modality, dice)


def test_features_stay_on_the_gpu_in_the_autocast_dtype():
    from napari_textdiff.core.device import autocast_dtype
    from napari_textdiff.core.textdiff.features import DiffusionFeatures, random_backbone

    f = DiffusionFeatures(random_backbone("tiny", sample_size=64), steps=[10], device="cuda")
    out = f.device_features(np.zeros((2, 64, 64, 3), np.float32))
    assert all(t.is_cuda and t.dtype is (autocast_dtype("cuda") or torch.float32) for t in out)


def test_oom_gives_the_clear_error_after_one_retry():
    from napari_textdiff.core.memory import GPUOutOfMemoryError, split_on_oom

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 256 * 2 ** 20 / total))
    try:
        fn = split_on_oom(lambda b: torch.empty(len(b), 2 ** 30, device="cuda").sum(0), "cuda")
        with pytest.warns(RuntimeWarning, match="retrying"), \
                pytest.raises(GPUOutOfMemoryError, match="To fix"):
            fn(np.zeros((4, 1)))
        assert fn.retries == 1 and fn.batch_limit == 2
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()

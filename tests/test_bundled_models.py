"""The models shipped in the package load offline and give sensible masks on the samples."""
import json
import subprocess
import sys

import numpy as np
import pytest

from napari_textdiff.cli.demo import sample_path
from napari_textdiff.core import defaults
from napari_textdiff.core.io import load_image, read_mask
from napari_textdiff.core.metrics import binary_metrics


@pytest.fixture
def shipped_models(monkeypatch):
    """Undo conftest's isolation: these tests are about the real bundled files."""
    monkeypatch.delenv("NAPARI_TEXTDIFF_MODELS", raising=False)
    return defaults.models_dir()


BUNDLED = [(m, f) for m, d in defaults.MODALITIES.items() for f in (d.model_file, *d.extra_models)]


# Dice floors on the samples' ground truth, well under what the shipped models score
# (histology 0.85, ultrasound 0.84 TextDiff / 0.97 MGCC, measured) and far above pure noise
# (0.41 / 0.14) or an all-foreground mask (0.52 / 0.15); the X-ray sample has no mask.
DICE_FLOOR = {"histology": 0.75, "ultrasound": 0.6}


def coherence(mask) -> float:
    """Share of foreground pixels whose four neighbours are foreground too: objects, not
    speckle (the shipped models: 0.87-0.98; a random mask: ~0.06)."""
    m = np.asarray(mask, bool)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return float(inner.sum() / max(1, m[1:-1, 1:-1].sum()))


def test_coherence_tells_objects_from_speckle():
    noise = np.random.default_rng(0).random((128, 128)) > 0.5
    disc = np.hypot(*np.mgrid[-64:64, -64:64]) < 30
    assert coherence(noise) < 0.1 < 0.9 < coherence(disc)


@pytest.mark.parametrize("modality,filename", BUNDLED)
def test_bundled_model_loads_and_segments_its_sample(shipped_models, modality, filename):
    from napari_textdiff.core.calibration import get_threshold
    from napari_textdiff.core.models import load_model

    path = shipped_models / filename
    assert path.is_file(), defaults.missing_model_message(modality)
    assert defaults.bundled_models(modality)[0] == defaults.default_model_path(modality)
    assert path.stat().st_size < 25e6
    model = load_model(path, device="cpu")
    img_path, info = sample_path(modality)
    img = load_image(img_path, channels=model.channels)
    prob = model.predict_proba(img, info["description"] if model.uses_text else None)
    assert prob.shape == img.shape[:2] and prob.dtype == np.float32
    assert np.isfinite(prob).all() and 0 <= prob.min() and prob.max() <= 1
    mask = prob >= get_threshold(model)       # the model's own threshold, as users get it
    assert 0.005 < mask.mean() < 0.9          # neither empty nor everything
    assert coherence(mask) > 0.75             # objects, not noise
    if info.get("mask"):
        gt = read_mask(img_path.parent / info["mask"])
        assert binary_metrics(mask, gt)["dice"] > DICE_FLOOR[modality]


def test_bundled_models_fit_the_size_budget(shipped_models):
    total = sum(f.stat().st_size for f in shipped_models.rglob("*") if f.is_file())
    assert total <= 40e6, f"bundled models take {total / 1e6:.1f} MB (budget 40 MB)"


def test_demo_segments_the_samples(shipped_models, tmp_path):
    out = subprocess.run([sys.executable, "-m", "napari_textdiff.cli", "demo", "--out",
                          str(tmp_path), "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert {r["modality"] for r in summary} == set(defaults.MODALITIES)
    for r in summary:
        m = read_mask(r["mask"], instances=True)
        assert m.shape == tuple(r["shape"]) and m.max() == r["objects"] >= 1
        assert (tmp_path / r["overlay"].split("/")[-1]).is_file()


def test_bundled_ldm_samples_images(shipped_models):
    from napari_textdiff.core.diffusion.synthesize import synthesize
    from napari_textdiff.core.progress import run

    ldm = defaults.default_ldm_dir()
    assert ldm is not None, "no bundled latent diffusion model"
    events = []
    run(synthesize(ldm, n=2, steps=4, eta=0.0, seed=0, device="cpu", batch_size=2),
        callback=events.append)
    samples = [e.payload for e in events if e.payload is not None]
    assert len(samples) == 2
    for s in samples:
        img = s["image"]
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 1
        assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.01
        assert np.isfinite(s["distance"])


@pytest.mark.parametrize("modality", ["histology", "xray"])
def test_the_recipe_presets_are_the_shipped_models_settings(shipped_models, modality):
    """``textdiff fit --preset histology|xray`` trains a head the way the bundled one was
    (the epoch count and threshold aside: those are chosen per data set by cross-validation)."""
    import json

    from safetensors import safe_open

    from napari_textdiff.core.textdiff.config import TextDiffConfig

    with safe_open(str(shipped_models / f"{modality}.safetensors"), "pt") as f:
        shipped = json.loads(f.metadata()["napari_textdiff"])["config"]
    recipe = TextDiffConfig.preset(modality).to_dict()
    skip = {"epochs", "threshold", "taps", "backbone", "text_encoder", "max_length", "seed",
            "patience"}
    differ = {k: (recipe[k], shipped.get(k)) for k in recipe
              if k not in skip and k in shipped and recipe[k] != shipped[k]}
    assert not differ

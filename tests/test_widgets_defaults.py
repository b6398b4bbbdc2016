"""Per-modality defaults, bundled-model lookup and remembered settings (GUI-free)."""
import pytest

from napari_textdiff.core import defaults


def test_modalities_and_bundled_model_lookup(tmp_path, monkeypatch):
    assert defaults.modality_defaults("X-ray").name == "xray"
    assert defaults.modality_defaults("busi").model_file == "ultrasound_mgcc.safetensors"
    assert defaults.modality_defaults("histology").split_instances
    with pytest.raises(ValueError, match="Unknown modality 'mri'"):
        defaults.modality_defaults("mri")
    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(tmp_path))
    assert defaults.default_model_path("histology") is None
    msg = defaults.missing_model_message("histology")
    assert str(tmp_path / "histology.safetensors") in msg and "textdiff train" in msg
    (tmp_path / "xray.safetensors").write_bytes(b"x")
    assert defaults.default_model_path("xray") == tmp_path / "xray.safetensors"
    assert defaults.default_ldm_dir() is None
    (tmp_path / "ldm").mkdir()
    assert defaults.default_ldm_dir() == tmp_path / "ldm"


def test_a_models_own_threshold_beats_the_modality_fallback(tmp_path, monkeypatch):
    import torch

    from napari_textdiff.core.bundle import save_bundle

    monkeypatch.setenv("NAPARI_TEXTDIFF_MODELS", str(tmp_path))
    assert defaults.default_threshold("xray") == defaults.MODALITIES["xray"].threshold
    save_bundle(tmp_path / "xray.safetensors", "mgcc", {"w": torch.zeros(2)},
                {"threshold": 0.35}, {})
    assert defaults.stored_threshold(tmp_path / "xray.safetensors") == pytest.approx(0.35)
    assert defaults.default_threshold("xray") == pytest.approx(0.35)
    (tmp_path / "histology.safetensors").write_bytes(b"not a model")   # unreadable: fallback
    assert defaults.stored_threshold(tmp_path / "histology.safetensors") is None
    assert defaults.default_threshold("histology") == defaults.MODALITIES["histology"].threshold
    save_bundle(tmp_path / "odd.safetensors", "mgcc", {"w": torch.zeros(2)},
                {"threshold": 7}, {})                                # absurd: ignored
    assert defaults.stored_threshold(tmp_path / "odd.safetensors") is None


def test_settings_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_TEXTDIFF_CONFIG_DIR", str(tmp_path / "cfg"))
    assert defaults.load_settings() == {}
    defaults.save_settings(synthetic_pool="/data/pool")
    defaults.save_settings(other=1)
    assert defaults.load_settings() == {"synthetic_pool": "/data/pool", "other": 1}
    (tmp_path / "cfg" / "settings.json").write_text("{broken")
    assert defaults.load_settings() == {}

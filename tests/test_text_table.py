"""Text tables (issue 19's offline GPU check): a frozen encoder's outputs for known texts,
carried instead of its weights. The table answers exactly what the encoder would, keeps the
encoder's fingerprint (model files still check it), and refuses texts it does not hold."""
import warnings

import numpy as np
import pytest
import torch

from napari_textdiff.core.textdiff import text_encoder as te
from textdiff_testkit import make_tiny_backbone, make_tiny_bert, shapes_set


@pytest.fixture
def bert(tmp_path):
    return make_tiny_bert(tmp_path / "bert", max_positions=64)


def test_table_answers_like_the_encoder_and_keeps_its_fingerprint(bert, tmp_path, monkeypatch):
    monkeypatch.delenv(te.TEXT_TABLE_ENV, raising=False)
    enc = te.TextEncoder(str(bert), max_length=8)
    texts = ["the object on the left", "the object on the right", "high " * 20]
    path = te.save_text_table(tmp_path / "t.safetensors", enc, texts)
    monkeypatch.setenv(te.TEXT_TABLE_ENV, str(path))
    tab = te.TextEncoder(str(bert), max_length=8)
    assert tab.model is None and tab.table == str(path)
    assert tab.fingerprint() == enc.fingerprint() and tab.dim == enc.dim
    for t in texts[:2]:
        h, m, tr = tab.encode(t)
        h0, m0, tr0 = enc.encode(t)
        assert torch.equal(h, h0) and torch.equal(m, m0) and tr == tr0 is False
    with pytest.warns(UserWarning, match="truncated"):
        assert tab.encode(texts[2])[2] is True
    assert texts[2] in tab.truncated_texts
    with pytest.raises(ValueError, match="not in the text table"):
        tab.encode("a text nobody encoded")
    tab.max_length = 16
    tab._cache.clear()
    with pytest.raises(ValueError, match="8-token outputs"):
        tab.encode(texts[0])
    other = te.TextEncoder(str(bert), max_length=8, model=enc.model, tokenizer=enc.tokenizer)
    assert other.model is not None        # a given model is used, never the table
    with pytest.raises(ValueError, match="not from another table"):
        te.save_text_table(tmp_path / "u.safetensors", tab, texts)


def test_table_applies_only_to_the_encoder_it_was_made_with(bert, tmp_path, monkeypatch):
    monkeypatch.delenv(te.TEXT_TABLE_ENV, raising=False)
    enc = te.TextEncoder(str(bert), max_length=8)
    path = te.save_text_table(tmp_path / "t.safetensors", enc, ["a"])
    other = make_tiny_bert(tmp_path / "bert2")
    monkeypatch.setenv(te.TEXT_TABLE_ENV, str(path))
    assert te.TextEncoder(str(other), max_length=8).model is not None
    monkeypatch.setenv(te.TEXT_TABLE_ENV, str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="cannot read the text table"):
        te.TextEncoder(str(bert), max_length=8)


def test_a_saved_model_loads_and_predicts_the_same_through_a_table(bert, tmp_path, monkeypatch):
    """The GPU check's path: a model file trained with the encoder, loaded where only its
    table is (the fingerprint check passes, the probabilities are identical)."""
    from napari_textdiff.core.textdiff.config import TextDiffConfig
    from napari_textdiff.core.textdiff.model import TextDiffModel

    monkeypatch.delenv(te.TEXT_TABLE_ENV, raising=False)
    bb = make_tiny_backbone(tmp_path / "bb")
    cfg = TextDiffConfig(working_size=32, tile_overlap=8, dim=16, heads=2, decoder=[16, 8],
                         steps=[50], max_length=16)
    m = TextDiffModel.create(cfg, backbone=str(bb), text_encoder=str(bert), device="cpu")
    ex = shapes_set(2, seed=0)
    m.save(tmp_path / "m.safetensors")
    img, text = ex[0].image, ex[0].text
    ref = TextDiffModel.load(tmp_path / "m.safetensors", device="cpu").predict_proba(img, text)
    enc = te.TextEncoder(str(bert), max_length=16)
    path = te.save_text_table(tmp_path / "t.safetensors", enc, [text])
    monkeypatch.setenv(te.TEXT_TABLE_ENV, str(path))
    loaded = TextDiffModel.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.text_encoder.model is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = loaded.predict_proba(img, text)
    assert np.array_equal(got, ref)

"""Text encoder (token states, mask, cache, edge cases) and the head (masking, modes)."""
import warnings

import numpy as np
import pytest
import torch

from napari_textdiff.core.textdiff.config import TextDiffConfig
from napari_textdiff.core.textdiff.head import TextDiffHead
from napari_textdiff.core.textdiff.text_encoder import TextEncoder
from textdiff_testkit import make_tiny_bert


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert"))


def test_token_states_mask_and_cache(bert_dir):
    enc = TextEncoder(str(bert_dir), max_length=12)
    h, m, trunc = enc.encode("the object on the left")
    assert h.shape == (12, 16) and m.dtype == torch.bool
    assert int(m.sum()) == 7 and not m[7:].any() and not trunc   # CLS + 5 words + SEP
    assert enc.encode("the object on the left")[0] is h          # cached per text
    hb, mb = enc.encode_batch(["left", "right"])
    assert hb.shape == (2, 12, 16) and not torch.equal(hb[0], hb[1])


@pytest.mark.parametrize("text", ["", "   ", None, "Éléments ü nucléaires — 肺", "left\nright"])
def test_edge_case_texts(bert_dir, text):
    enc = TextEncoder(str(bert_dir), max_length=12)
    h, m, trunc = enc.encode(text)
    assert torch.isfinite(h).all() and m[0] and not trunc


def test_long_text_truncated_with_warning(bert_dir):
    enc = TextEncoder(str(bert_dir), max_length=8)
    with pytest.warns(UserWarning, match="truncated to 8"):
        h, m, trunc = enc.encode("left right " * 20)
    assert trunc and bool(m.all()) and h.shape[0] == 8
    assert "left right " * 20 in enc.truncated_texts


def test_padding_length_does_not_change_real_tokens(bert_dir):
    a = TextEncoder(str(bert_dir), max_length=10).encode("the object on the right")
    b = TextEncoder(str(bert_dir), max_length=30).encode("the object on the right")
    n = int(a[1].sum())
    torch.testing.assert_close(a[0][:n], b[0][:n], atol=1e-5, rtol=1e-5)


def _feats(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 12, 4, 4, generator=g), torch.randn(b, 6, 8, 8, generator=g)]


def test_head_padding_tokens_are_masked():
    torch.manual_seed(0)
    head = TextDiffHead([12, 6], text_dim=16, dim=16, heads=2, decoder=[8]).eval()
    feats = _feats()
    text = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    out = head(feats, text, mask, out_size=(8, 8))
    assert out.shape == (2, 2, 8, 8)
    # garbage in padded slots and extra padding change nothing
    text2 = text.clone()
    text2[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16)
    text3 = torch.cat([text2, torch.randn(2, 7, 16)], 1)
    mask3 = torch.cat([mask, torch.zeros(2, 7, dtype=torch.bool)], 1)
    torch.testing.assert_close(head(feats, text2, mask, (8, 8)), out)
    torch.testing.assert_close(head(feats, text3, mask3, (8, 8)), out)
    # real tokens do matter
    text4 = text.clone()
    text4[0, 1] += 3
    assert not torch.allclose(head(feats, text4, mask, (8, 8))[0], out[0])
    # an all-padding row does not produce NaN
    assert torch.isfinite(head(feats, text, torch.zeros_like(mask), (8, 8))).all()


def test_text_modes():
    feats = _feats()
    t1, t2 = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    m = torch.ones(2, 5, dtype=torch.bool)
    torch.manual_seed(0)
    none = TextDiffHead([12, 6], 16, dim=16, heads=2, decoder=[8], text_mode="none").eval()
    torch.testing.assert_close(none(feats, t1, m), none(feats, t2, m))
    assert none(feats).shape == (2, 2, 8, 8)
    concat = TextDiffHead([12, 6], 16, dim=16, heads=2, decoder=[8], text_mode="concat").eval()
    assert not torch.allclose(concat(feats, t1, m), concat(feats, t2, m))
    with pytest.raises(ValueError, match="text_mode"):
        TextDiffConfig(text_mode="film")


def _expected_parameters(chans, text_dim, dim, ff_mult, decoder) -> int:
    """The head's parameter count from its definition (core/textdiff/head.py)."""
    proj = sum(c * dim + dim for c in chans)                       # 1x1 conv per tap
    attn = 2 * dim * dim + 2 * dim * text_dim + 3 * dim + dim      # q, out; k, v; biases
    ff = dim * ff_mult * dim + ff_mult * dim + ff_mult * dim * dim + dim
    block = 2 * dim + attn + 2 * dim + ff                          # + the two LayerNorms
    cls, c = 0, dim * len(chans)
    for w in decoder:                                              # 3x3 conv (no bias) + BN
        cls += 9 * c * w + 2 * w
        c = w
    return proj + block + cls + 2 * c + 2                          # + the 1x1 classifier


def test_param_counts_cpu_and_paper_presets():
    """Exact counts on the paper's MoNuSeg feature channels (4 taps, 768-d text)."""
    chans = [1536, 1536, 768, 768]
    counts = {}
    for name in ("cpu", "paper"):
        c = TextDiffConfig.preset(name)
        h = TextDiffHead(chans, 768, dim=c.dim, heads=c.heads, ff_mult=c.ff_mult,
                         cross_attention_layers=c.cross_attention_layers, decoder=c.decoder)
        counts[name] = h.num_parameters()
        assert counts[name] == _expected_parameters(chans, 768, c.dim, c.ff_mult, c.decoder)
    # the shared block is applied cross_attention_layers times but counted once
    assert round(counts["paper"] / 1e6, 1) == 14.2      # the paper reports 9.68 M
    assert round(counts["cpu"] / 1e6, 2) == 0.58


def test_real_minilm_encoder():
    enc = TextEncoder()                      # offline all-MiniLM-L6-v2 from the PyPI package
    h, m, _ = enc.encode("The nuclei density in the upper right is high.")
    assert enc.dim == 384 and h.shape == (64, 384) and 8 <= int(m.sum()) <= 14
    a, b = enc.encode_batch(["nuclei in the upper left", "nuclei in the lower right"])[0]
    assert not torch.allclose(a, b)

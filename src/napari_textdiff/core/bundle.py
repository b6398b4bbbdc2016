"""The one model file format: a single ``.safetensors`` file with a JSON header.

Weights are safetensors tensors; the model's kind, config and metadata are JSON stored in the
safetensors header (key ``napari_textdiff``), so a bundle is one self-describing file that can
be inspected without torch (``read_bundle_header``). Writes go to a temporary file in the same
folder followed by ``os.replace``: an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["BundleError", "save_bundle", "load_bundle", "read_bundle_header", "FORMAT_VERSION",
           "state_fingerprint", "atomic_write", "atomic_write_bytes"]

FORMAT_VERSION = 1
_KEY = "napari_textdiff"


class BundleError(ValueError):
    """A model file that is missing, corrupt, of another kind, or made for another backbone."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then ``os.replace`` it into place.

    The one way every file of ours is written (models, masks, checkpoints, logs): a crash or a
    Stop mid-write leaves the previous file intact and no stray temp file. The result gets the
    usual permissions (``0666 & ~umask``), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def save_bundle(path, kind: str, state_dict: dict, config: dict, meta: dict | None = None,
                dtype=None) -> Path:
    """Save tensors + JSON config as one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for small shipped bundles; the
    loader casts back to the model's dtype.
    """
    import torch
    from safetensors.torch import save

    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    header = {"format": FORMAT_VERSION, "kind": kind, "config": config, "meta": meta or {}}
    try:
        blob = json.dumps(header)
    except TypeError as e:
        raise BundleError(f"bundle config is not JSON-serialisable: {e}") from e
    data = save(tensors, metadata={_KEY: blob})
    atomic_write_bytes(path, data)
    return Path(path)


def read_bundle_header(path) -> dict:
    """Return ``{"format", "kind", "config", "meta"}`` without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        blob = header.get("__metadata__", {}).get(_KEY)
        if blob is None:
            raise BundleError(f"{path}: a safetensors file, but not a napari-textdiff model "
                              "(no napari_textdiff header)")
        out = json.loads(blob)
    except BundleError:
        raise
    except Exception as e:  # truncated, not safetensors, bad JSON
        raise BundleError(f"{path}: not a readable napari-textdiff model file ({e})") from e
    if out.get("format", 0) > FORMAT_VERSION:
        raise BundleError(f"{path}: made by a newer napari-textdiff (format {out['format']})")
    return out


def load_bundle(path, expect_kind: str | None = None, device="cpu") -> tuple[dict, dict]:
    """Return ``(header, state_dict)``; check the kind if ``expect_kind`` is given."""
    from safetensors.torch import load_file

    header = read_bundle_header(path)
    if expect_kind is not None and header["kind"] != expect_kind:
        raise BundleError(f"{path}: is a {header['kind']!r} model, expected {expect_kind!r}")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as e:
        raise BundleError(f"{path}: corrupt model weights ({e})") from e
    return header, state


def state_fingerprint(state_dict: dict, max_tensors: int = 64) -> str:
    """A short, stable hash of a model's weights (names, shapes and values).

    Used to check that a head is loaded on the backbone it was trained on. Hashes every tensor's
    bytes for the first ``max_tensors`` tensors (sorted by name) plus all names and shapes.
    """
    import torch

    h = hashlib.sha256()
    keys = sorted(state_dict)
    for i, k in enumerate(keys):
        v = state_dict[k]
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        if i < max_tensors:
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

"""The one model file format: a single ``.safetensors`` file with a JSON header.

Weights are safetensors tensors; the model's kind, config and metadata are JSON stored in the
safetensors header (key ``napari_textdiff``), so a bundle is one self-describing file that can
be inspected without torch (``read_bundle_header``). Writes go to a temporary file in the same
folder followed by ``os.replace``: an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["BundleError", "save_bundle", "load_bundle", "read_bundle_header", "FORMAT_VERSION",
           "state_fingerprint", "same_file", "atomic_write", "atomic_write_bytes",
           "atomic_write_csv", "check_writable", "WriteError", "check_bundle_complete"]

FORMAT_VERSION = 1
_KEY = "napari_textdiff"


class BundleError(ValueError):
    """A model file that is missing, corrupt, of another kind, or made for another backbone."""


class WriteError(OSError):
    """Writing one of the user's files failed; the message names that file (never our temp
    file), the reason, and what to do."""

    def __str__(self) -> str:  # OSError would prefix "[Errno N]"
        return self.strerror or super().__str__()


_HINTS = {errno.ENOSPC: "free some disk space or choose another location",
          errno.EDQUOT: "free some space in your quota or choose another location",
          errno.EFBIG: "the file is larger than this disk allows; choose another location",
          errno.EACCES: "choose a folder you can write to",
          errno.EPERM: "choose a folder you can write to",
          errno.EROFS: "the disk is read-only; choose another location"}


def _write_error(path: Path, e: BaseException) -> WriteError:
    code = getattr(e, "errno", None)
    if code is None and "write" in str(e).lower():  # torch.save: RuntimeError on a full disk
        code = errno.EIO
    reason = os.strerror(code) if code else str(e)
    hint = _HINTS.get(code, "check the location and try again")
    err = WriteError(code or errno.EIO, f"cannot write {path}: {reason} ({hint})")
    err.filename = str(path)
    return err


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clean_stale_temps(path: Path) -> None:
    """Remove temp files of ``path`` left by a writer that died (kill -9, power loss).

    Temp names carry the writer's PID (``.NAME.PID.XXXX.tmpSUFFIX``): a temp file whose process
    is gone is litter. Temps of another live process (a concurrent save) are left alone.
    """
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for e in entries:
        name = e.name
        if not (name.startswith(prefix) and name.endswith(".tmp" + path.suffix)):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(e.path)
            except OSError:
                pass


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: equal once resolved (links, ``..``), or
    ``os.path.samefile`` (hard links, case-blind disks) when both exist."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.resolve() == b.resolve():
            return True
    except OSError:
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(path, what: str = "output", folder: bool = False) -> Path:
    """Fail fast, before any work, when ``path`` cannot be written (a file, or a folder when
    ``folder``): creates missing parent folders and writes/removes a probe file there. The
    error names the user's path and what to do, so no training or calibration is lost at the
    end for want of a writable ``--out``."""
    path = Path(path).expanduser()
    d = path if folder else path.parent
    if not folder and path.is_dir():
        raise WriteError(errno.EISDIR, f"{what} {path} is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise WriteError(errno.ENOTDIR, f"{what} {path} is a file; give a folder")
    blocker = next((a for a in (d, *d.parents) if a.exists()), None)
    if blocker is not None and not blocker.is_dir():   # mkdir would say "File exists"
        raise WriteError(errno.ENOTDIR, f"cannot write {what} {path}: {blocker} is a file, not "
                                        "a folder (choose another location)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".probe",
                                     dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _write_error(path, e) from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then ``os.replace`` it into place.

    The one way every file of ours is written (models, masks, checkpoints, logs): a crash or a
    Stop mid-write leaves the previous file intact; the temp file is removed on any error, and
    one left by a killed process (kill -9) is removed by the next save of that file. Errors
    (read-only folder, full disk) are :class:`WriteError` naming ``path``, not the temp file.
    The result gets the usual permissions (``0666 & ~umask``), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "writ" in str(e).lower()):
            raise _write_error(path, e) from e
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


def atomic_write_csv(path: str | os.PathLike, rows: list[dict], fieldnames: list[str],
                     extrasaction: str = "raise") -> Path:
    """Write ``rows`` as a CSV table (header ``fieldnames``, UTF-8) atomically."""
    import csv
    import io

    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction=extrasaction)
    w.writeheader()
    w.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def save_bundle(path, kind: str, state_dict: dict, config: dict, meta: dict | None = None,
                dtype=None) -> Path:
    """Save tensors + JSON config as one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) casts floating tensors for small shipped bundles; the
    loader casts back to the model's dtype. ``dtype="int8"`` stores the large kernels as int8
    with per-channel scales (:mod:`.weight_quant`); :func:`load_bundle` dequantises them.
    """
    from safetensors.torch import save

    if dtype == "int8":
        from .weight_quant import quantize_state

        state_dict, dtype = quantize_state(state_dict), None
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


def _check_complete(path: Path, header: dict, start: int) -> None:
    """Refuse a truncated file (an interrupted copy or download): the header says where the
    last tensor ends, and the file must be that long."""
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = start + max(ends, default=0)
    have = path.stat().st_size
    if have < need:
        raise BundleError(f"{path}: the file is truncated ({have:,} of {need:,} bytes; "
                          f"{need - have:,} bytes of weights missing): copy or download it "
                          "again, or re-save the model")


def check_bundle_complete(path) -> None:
    """:class:`BundleError` if the model file at ``path`` is truncated (see ``read_bundle_header``)."""
    read_bundle_header(path)


def read_bundle_header(path) -> dict:
    """Return ``{"format", "kind", "config", "meta"}`` without loading tensors (the file's
    length is checked against the header, so a truncated model is refused here already)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(f.name for f in path.glob("*.safetensors"))[:3]
        raise BundleError(f"{path} is a folder, not a model file: give a .safetensors model "
                          "file" + (f" (in it: {', '.join(found)})" if found else ""))
    if not path.is_file():
        raise BundleError(f"{path}: model file not found")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        _check_complete(path, header, 8 + n)
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
    from .weight_quant import dequantize_state

    try:
        state = load_file(str(path), device=str(device))
    except Exception as e:
        raise BundleError(f"{path}: corrupt model weights ({e})") from e
    return header, dequantize_state(state)


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

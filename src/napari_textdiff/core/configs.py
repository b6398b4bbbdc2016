"""Config dataclasses to and from the JSON stored in model files and checkpoints.

Why one definition: TextDiff's, MGCC's and the trainer's configs are all written into files
that outlive the code; reading one must ignore keys a newer version added and turn JSON lists
back into the tuples the dataclass declares, the same way for every config.
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["JsonConfig", "config_dict"]


def config_dict(cfg) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (tuple fields become lists)."""
    d = dataclasses.asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


class JsonConfig:
    """Mixin for config dataclasses: :meth:`to_dict` / :meth:`from_dict`."""

    def to_dict(self) -> dict[str, Any]:
        return config_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The config from a stored dict: unknown keys are ignored, lists become tuples where
        the field's default is a tuple; missing keys take their defaults."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in fields:
                continue
            if isinstance(fields[k].default, tuple) and isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)

"""``napari-textdiff info MODEL``: print a model file's kind, config and metadata."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="show a model file's kind, config and model card metadata")
    p.add_argument("model", help="a .safetensors model bundle")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from napari_textdiff.core.bundle import read_bundle_header

    print(json.dumps(read_bundle_header(args.model), indent=2))
    return 0

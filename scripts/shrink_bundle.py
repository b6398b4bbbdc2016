"""Store shipped model files smaller: floating tensors as fp16 (the default), or with ``--int8``
the large kernels as int8 with per-channel scales (core.weight_quant); the loader restores
float32 either way.
Usage: python scripts/shrink_bundle.py [--int8] FILE.safetensors..."""
import sys

import torch

from napari_textdiff.core.bundle import load_bundle, save_bundle

args = sys.argv[1:]
int8 = "--int8" in args
for path in [a for a in args if a != "--int8"]:
    header, state = load_bundle(path)
    save_bundle(path, header["kind"], state, header["config"], header.get("meta"),
                dtype="int8" if int8 else torch.float16)
    print(path, "stored", "int8 (per-channel scales)" if int8 else "fp16")

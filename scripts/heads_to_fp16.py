"""Store bundled TextDiff heads in fp16 (the loader casts back to float32): halves their size.
Usage: python scripts/heads_to_fp16.py FILE.safetensors..."""
import sys

import torch

from napari_textdiff.core.bundle import load_bundle, save_bundle

for path in sys.argv[1:]:
    header, state = load_bundle(path)
    save_bundle(path, header["kind"], state, header["config"], header.get("meta"),
                dtype=torch.float16)
    print(path, "stored fp16")

"""Export a pretrained backbone folder for shipping: EMA UNet weights as fp16 + scheduler + card.

Usage: python scripts/export_backbone.py RUN_DIR OUT_DIR
The loader (core.diffusion.backbone.load_backbone) reads them back as float32.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
unet = UNet2DModel.from_pretrained(src, torch_dtype=torch.float32)
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
unet.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
for name in ("scheduler_config.json", "model_card.json", "training_log.csv"):
    if (src / name).is_file():
        shutil.copy2(src / name, tmp / name)
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
card = json.loads((dst / "model_card.json").read_text()) if (dst / "model_card.json").is_file() else {}
print(f"exported {src} (step {card.get('step')}) -> {dst} as fp16:",
      sum(f.stat().st_size for f in dst.iterdir()) // 1024, "KiB")

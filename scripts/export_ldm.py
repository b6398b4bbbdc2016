"""Export a train-ldm folder for shipping: VAE and latent UNet as fp16, the rest copied.

Usage: python scripts/export_ldm.py RUN_DIR OUT_DIR   (core.diffusion.synthesize loads float32)
"""
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DModel
from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.pt", "vae", "unet",
                                                       "train_index.safetensors"))
# near-copy thumbnails as uint8 (the loader reads float or uint8)
thumbs = load_file(str(src / "train_index.safetensors"))["thumbnails"]
if thumbs.dtype != torch.uint8:
    thumbs = (thumbs.clamp(0, 1) * 255).round().to(torch.uint8)
save_file({"thumbnails": thumbs.contiguous()}, str(tmp / "train_index.safetensors"))
for sub, cls in (("vae", AutoencoderKL), ("unet", UNet2DModel)):
    m = cls.from_pretrained(src / sub, torch_dtype=torch.float32)
    m.to(torch.float16).save_pretrained(tmp / sub, safe_serialization=True)
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
print(f"exported {src} -> {dst} (fp16): {size // 1024} KiB")

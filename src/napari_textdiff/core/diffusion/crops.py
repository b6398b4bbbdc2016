"""Unlabeled image sets and random crops generated on the training device.

Diffusion pretraining needs many random crops per second. Instead of a CPU dataloader, the
images live on the device (GPU memory or RAM) and each batch is cut by ``grid_sample`` with one
affine matrix per crop: position, scale (multi-scale crops resized to the training size) and one
of the 8 dihedral transforms (rot90 x flip) in a single resampling, one call per distinct source
image in the batch. All randomness comes from an explicit ``torch.Generator``, so a batch is a
pure function of the generator state (exact resume).
"""
from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["IMAGE_EXTENSIONS", "collect_image_paths", "load_image_set", "CropSampler",
           "resize_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")


def collect_image_paths(inputs: Iterable[str | os.PathLike], recursive: bool = False,
                        exclude: Sequence[str] = ()) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    ``exclude`` holds glob patterns matched against file names (e.g. ``"*_mask*"`` to skip BUSI
    masks). A missing path, or a folder with no images, is an error naming it.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            found = [f for f in found if not any(fnmatch.fnmatch(f.name, e) for e in exclude)]
            if not found:
                raise FileNotFoundError(f"{p}: folder contains no images "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.is_file():
            if not any(fnmatch.fnmatch(p.name, e) for e in exclude):
                out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    if not out:
        raise FileNotFoundError("no input images")
    return out


def load_image_set(inputs, channels: int = 3, max_side: int | None = 2048,
                   recursive: bool = False, exclude: Sequence[str] = ()):
    """Load images as a list of float32 tensors ``(C, H, W)`` in [0, 1] plus their names.

    ``inputs`` are paths/folders or arrays ``(H, W, C)``/``(H, W)`` in [0, 1]. Images whose long
    side exceeds ``max_side`` are downscaled (anti-aliased) so a set of 4000 px X-rays fits.
    """
    import numpy as np
    import torch

    items = list(inputs)
    if items and all(isinstance(x, (str, os.PathLike)) for x in items):
        from ..io import load_image

        paths = collect_image_paths(items, recursive=recursive, exclude=exclude)
        arrays = [load_image(p, channels=channels) for p in paths]
        names = [p.name for p in paths]
    else:
        arrays = [np.asarray(a, dtype=np.float32) for a in items]
        names = [f"image{i}" for i in range(len(arrays))]
    if not arrays:
        raise ValueError("no input images")
    tensors = []
    for a, name in zip(arrays, names):
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(f"{name}: expected an (H, W, C) image, got shape {a.shape}")
        if a.shape[2] != channels:
            if a.shape[2] == 1 and channels == 3:
                a = np.repeat(a, 3, axis=2)
            elif a.shape[2] == 3 and channels == 1:
                a = a @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
            else:
                raise ValueError(f"{name}: has {a.shape[2]} channels, expected {channels}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)
        if max_side and max(t.shape[1:]) > max_side:
            f = max_side / max(t.shape[1:])
            size = (max(1, round(t.shape[1] * f)), max(1, round(t.shape[2] * f)))
            t = torch.nn.functional.interpolate(t[None], size=size, mode="bilinear",
                                                antialias=True, align_corners=False)[0]
        tensors.append(t.clamp_(0, 1).contiguous())
    return tensors, names


def resize_images(images, size: int):
    """Stack images resized (anti-aliased, aspect not kept) to ``(N, C, size, size)``."""
    import torch
    import torch.nn.functional as F

    return torch.cat([F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False) for t in images]).clamp_(0, 1)


def _dihedral_matrices():
    import torch

    mats = []
    for flip in (1.0, -1.0):
        for k in range(4):
            c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
            mats.append([[c * flip, -s], [s * flip, c]])
    return torch.tensor(mats, dtype=torch.float32)  # (8, 2, 2)


class CropSampler:
    """Random multi-scale, dihedral-augmented square crops of a fixed image set, on a device.

    A crop covers ``size * s`` source pixels (``s`` log-uniform in ``scale``, capped by the
    image's short side) and is resampled to ``size`` (bilinear). Draw a batch with
    :meth:`sample`; the result is ``(B, C, size, size)`` float32 in [0, 1]. The images are
    kept as uint8 on the device (4x less GPU memory than float32; 8-bit steps are far below
    the noise the model is trained with) and converted per crop source.
    """

    def __init__(self, images, size: int, scale: tuple[float, float] = (1.0, 2.0),
                 dihedral: bool = True, device="cpu"):
        import torch

        if not images:
            raise ValueError("CropSampler needs at least one image")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"bad crop scale range {scale}")
        self.device = torch.device(device)
        self.images = [(t.float().clamp(0, 1) * 255).round().to(torch.uint8).to(self.device)
                       for t in images]
        self.channels = self.images[0].shape[0]
        if any(t.shape[0] != self.channels for t in self.images):
            raise ValueError("all images must have the same number of channels")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.dihedral = dihedral
        self._hw = torch.tensor([t.shape[1:] for t in self.images], dtype=torch.float32,
                                device=self.device)
        self._dih = _dihedral_matrices().to(self.device)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, batch: int, generator=None):
        import torch
        import torch.nn.functional as F

        dev, g = self.device, generator
        idx = torch.randint(0, len(self.images), (batch,), device=dev, generator=g)
        u = torch.rand(batch, 4, device=dev, generator=g)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        side = self.size * torch.exp(lo + (hi - lo) * u[:, 0])          # source pixels
        hw = self._hw[idx]                                                 # (B, 2) = H, W
        side = torch.minimum(side, hw.min(dim=1).values)
        half = torch.stack([side / hw[:, 1], side / hw[:, 0]], dim=1)      # normalised x, y
        centre = (2 * u[:, 1:3] - 1) * (1 - half)
        if self.dihedral:
            k = torch.randint(0, 8, (batch,), device=dev, generator=g)
            rot = self._dih[k]
        else:
            rot = self._dih[:1].expand(batch, 2, 2)
        theta = torch.cat([rot * half[:, :, None], centre[:, :, None]], dim=2)  # (B, 2, 3)
        out = torch.empty(batch, self.channels, self.size, self.size, device=dev)
        for i in torch.unique(idx).tolist():
            sel = (idx == i).nonzero(as_tuple=True)[0]
            grid = F.affine_grid(theta[sel], [len(sel), self.channels, self.size, self.size],
                                 align_corners=False)
            img = (self.images[i].float() / 255)[None].expand(len(sel), -1, -1, -1)
            out[sel] = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection",
                                     align_corners=False)
        return out.clamp_(0, 1)

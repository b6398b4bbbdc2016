"""Frozen diffusion features: decoder activations of a ``UNet2DModel`` at a few noise steps.

Why this shape: TextDiff (after Baranchuk et al.) noises the image with ONE fixed noise tensor
at t in {50, 150, 250}, runs the denoising UNet once per step and keeps decoder activations
(forward hooks); per tapped layer the steps are concatenated on channels. Here all steps of
an image run as one batched forward, under bf16/fp16 autocast on a GPU.

Backbone convention (shared with the backbone trainer): a backbone directory is
``UNet2DModel.save_pretrained(DIR)``; the noise schedule is ``DDPMScheduler.from_pretrained(DIR)``
when ``DIR/scheduler_config.json`` exists, else the default linear 1000-step schedule. A
diffusers pipeline folder (``DIR/unet`` + ``DIR/scheduler``) is accepted too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["DiffusionFeatures", "load_backbone", "default_taps", "paper_block_tap",
           "random_backbone"]


from ..diffusion.backbone import load_backbone  # noqa: E402  (re-exported)


def random_backbone(preset: str = "small", in_channels: int = 3, sample_size: int = 256,
                    seed: int = 0):
    """A randomly initialised ``UNet2DModel`` of a backbone preset of
    ``core.diffusion.presets`` (the trainer's presets; for tests, benchmarks, baselines)."""
    import torch
    from diffusers import UNet2DModel

    from ..diffusion.presets import unet_config

    torch.manual_seed(seed)
    return UNet2DModel(**unet_config(preset, channels=in_channels,
                                     sample_size=sample_size)).eval()


def default_taps(unet) -> list[str]:
    """Paper-like taps: the MoNuSeg blocks {6, 8, 12, 16} of guided diffusion are the first
    layer at stride 8, the upsampler into stride 4, the first layer at stride 2 and the second
    at stride 1. The same positions are picked in any UNet2DModel (missing strides skipped)."""
    n = len(unet.up_blocks)
    taps = []
    for stride, kind in ((8, "first"), (4, "upsampler_into"), (2, "first"), (1, "second")):
        if kind == "upsampler_into":
            k = n - 1 - int(np.log2(stride * 2))
            if 0 <= k < n and getattr(unet.up_blocks[k], "upsamplers", None):
                taps.append(f"up_blocks.{k}.upsamplers.0")
            continue
        k = n - 1 - int(np.log2(stride))
        if not 0 <= k < n:
            continue
        j = 0 if kind == "first" else min(1, len(unet.up_blocks[k].resnets) - 1)
        taps.append(_layer_name(unet, k, j))
    if not taps:
        taps = [_layer_name(unet, n - 1, 0)]
    return list(dict.fromkeys(taps))


def _layer_name(unet, k: int, j: int) -> str:
    blk = unet.up_blocks[k]
    if getattr(blk, "attentions", None) is not None and len(blk.attentions) > j:
        return f"up_blocks.{k}.attentions.{j}"   # output of resnet j + its attention
    return f"up_blocks.{k}.resnets.{j}"


def paper_block_tap(unet, index: int) -> str:
    """Map guided-diffusion ``output_blocks[index]`` to a diffusers module name of ``unet``
    (the one mapping, shared with the guided-diffusion importer)."""
    from ..diffusion.presets import guided_output_block_to_tap

    try:
        return guided_output_block_to_tap(int(index), unet.config)
    except ValueError as e:
        raise ValueError(f"block:{index}: {e}") from None


class DiffusionFeatures:
    """Frozen UNet + hooks. ``__call__(images)`` -> list of (B, C_tap * n_steps, h, w) tensors."""

    def __init__(self, unet, scheduler=None, taps: Sequence[str] | None = None,
                 steps: Sequence[int] = (50, 150, 250), noise_seed: int = 40, device="cpu"):
        import torch
        from diffusers import DDPMScheduler

        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler or DDPMScheduler(num_train_timesteps=1000,
                                                    beta_schedule="linear")
        self.steps = [int(s) for s in steps]
        nt = self.scheduler.config.num_train_timesteps
        bad = [s for s in self.steps if not 0 <= s < nt]
        if bad:
            raise ValueError(f"noise steps {bad} outside the backbone's schedule [0, {nt})")
        self.noise_seed = int(noise_seed)
        self.in_channels = int(unet.config.in_channels)
        self.taps = self._resolve_taps(taps)
        modules = dict(self.unet.named_modules())
        missing = [t for t in self.taps if t not in modules]
        if missing:
            raise ValueError(f"unknown decoder taps {missing}; valid names look like "
                             f"{default_taps(self.unet)} (see unet.named_modules())")
        self._acts: dict[str, object] = {}
        self._hooks = [modules[t].register_forward_hook(self._hook(t)) for t in self.taps]
        self._noise: dict[tuple, object] = {}
        ac = self.scheduler.alphas_cumprod
        self._ab = torch.as_tensor(ac)[torch.tensor(self.steps)].float()
        self.multiple = 2 ** (len(self.unet.down_blocks) - 1)
        self.device = torch.device("cpu")
        self.to(device)
        self.channels, self.strides = self._probe()

    # -- setup ----------------------------------------------------------------------------
    def _resolve_taps(self, taps):
        if not taps:
            return default_taps(self.unet)
        out = []
        for t in taps:
            t = str(t)
            out.append(paper_block_tap(self.unet, int(t.split(":", 1)[1]))
                       if t.startswith("block:") else t)
        return out

    def _hook(self, name):
        def hook(_m, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if hasattr(out, "sample"):
                out = out.sample
            self._acts[name] = out
        return hook

    def to(self, device):
        from ..device import resolve_device

        self.device = resolve_device(device)
        self.unet.to(self.device)
        return self

    def _probe(self):
        """Channels and strides of each tap (one tiny forward)."""
        import torch

        s = self.multiple * 2
        feats = self._forward(torch.zeros(1, self.in_channels, s, s), raw=True)
        chans = [int(f.shape[1]) for f in feats]
        strides = [s // int(f.shape[-1]) for f in feats]
        return chans, strides

    @property
    def out_channels(self) -> list[int]:
        """Channels per tap after concatenating the steps."""
        return [c * len(self.steps) for c in self.channels]

    def fingerprint(self) -> str:
        """The backbone's identity (weights only): what a head's file is checked against."""
        from ..bundle import state_fingerprint
        return state_fingerprint(self.unet.state_dict())

    def memo_key(self) -> str:
        """What these features compute: the backbone *and* how it is read (noise steps, taps,
        noise seed, schedule). Two models on one backbone read at other steps must not share
        remembered features."""
        import json

        sched = dict(self.scheduler.config)
        how = json.dumps([self.steps, self.taps, self.noise_seed]
                         + [sched.get(k) for k in ("num_train_timesteps", "beta_schedule",
                                                   "beta_start", "beta_end")], default=str)
        return f"{self.fingerprint()}|{how}"

    def noise(self, h: int, w: int):
        """The fixed noise for an (h, w) input: seeded, identical for every image and step."""
        import torch

        key = (h, w)
        if key not in self._noise:
            g = torch.Generator().manual_seed(self.noise_seed)
            self._noise[key] = torch.randn(self.in_channels, h, w, generator=g)
        return self._noise[key]

    # -- forward --------------------------------------------------------------------------
    def _forward(self, x, raw=False):
        """x: (B, C, H, W) in [-1, 1], H and W multiples of ``self.multiple``."""
        import torch
        from ..device import autocast

        b, _, h, w = x.shape
        n = len(self.steps)
        x = x.to(self.device, torch.float32)
        eps = self.noise(h, w).to(self.device)
        ab = self._ab.to(self.device).view(1, n, 1, 1, 1)
        xt = ab.sqrt() * x[:, None] + (1 - ab).sqrt() * eps  # (B, n, C, H, W)
        xt = xt.reshape(b * n, -1, h, w)
        t = torch.tensor(self.steps, device=self.device).repeat(b)
        self._acts.clear()
        with torch.inference_mode(), autocast(self.device):
            self.unet(xt, t)
        feats = []
        for name in self.taps:
            a = self._acts[name]     # autocast dtype on a GPU: converted only when leaving it
            if raw:
                feats.append(a)
                continue
            c, fh, fw = a.shape[1:]
            feats.append(a.reshape(b, n * c, fh, fw))  # steps concatenated on channels
        self._acts.clear()
        return feats

    def __call__(self, images, batch_size: int = 4):
        """Features of (B, H, W, C) images in [0, 1] (any channel count, any size).

        Sizes that are not a multiple of the UNet's total stride are reflect-padded and the
        features cropped back. Returns a list (one per tap) of float32 CPU tensors.
        """
        return self.device_features(images, batch_size, on_device=False)

    def device_features(self, images, batch_size: int = 4, on_device: bool = True):
        """As ``__call__`` but the tensors stay on ``self.device`` in the dtype the backbone
        produced them (bf16/fp16 under GPU autocast): no GPU -> CPU -> GPU round trip and no
        float32 copy between backbone and head (prediction). ``on_device=False``: float32 CPU."""
        import torch
        import torch.nn.functional as F

        from ..normalize import to_model_channels

        x = to_model_channels(images, self.in_channels)
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        out: list[list] = [[] for _ in self.taps]
        for i in range(0, x.shape[0], batch_size):
            for k, f in enumerate(self._forward(x[i:i + batch_size])):
                if ph or pw:
                    s = self.strides[k]
                    f = f[..., :-(-h // s), :-(-w // s)]
                out[k].append(f if on_device else f.cpu().float())
        return [torch.cat(o) if len(o) > 1 else o[0] for o in out]

    def close(self):
        for hk in self._hooks:
            hk.remove()
        self._hooks = []


class FeatureStack:
    """Diffusion taps and/or the classic filter bank behind the ``DiffusionFeatures`` interface.

    Why: the head takes a list of (B, C, h, w) maps with their strides; the classic bank is
    one more map at stride 1, so training, caching and prediction handle it unchanged.
    ``taps`` lists the diffusion taps only (what the config stores); ``out_channels`` and
    ``strides`` cover every map, diffusion first, classic last.
    """

    def __init__(self, diffusion=None, classic=None, diffusion_scale: float = 1.0):
        if diffusion is None and classic is None:
            raise ValueError("FeatureStack needs diffusion features, classic ones, or both")
        self.diffusion = diffusion
        self.classic = classic
        # the UNet sees the tile resized by this (e.g. 0.5): its cost is what limits the
        # working scale on a CPU, while the filter bank is cheap at full working resolution
        self.diffusion_scale = float(diffusion_scale)
        if not 0 < self.diffusion_scale <= 1 or (1 / self.diffusion_scale) % 1:
            raise ValueError(f"diffusion_scale must be 1/n, got {diffusion_scale}")

    def __getattr__(self, name):   # unet, steps, noise_seed, multiple... of the diffusion part
        if name in ("diffusion", "classic") or self.__dict__.get("diffusion") is None:
            raise AttributeError(name)
        return getattr(self.diffusion, name)

    @property
    def in_channels(self) -> int:
        src = self.diffusion if self.diffusion is not None else self.classic
        return int(src.in_channels)

    @property
    def taps(self) -> list[str]:
        return list(self.diffusion.taps) if self.diffusion is not None else []

    @property
    def out_channels(self) -> list[int]:
        out = list(self.diffusion.out_channels) if self.diffusion is not None else []
        return out + ([self.classic.channels] if self.classic is not None else [])

    @property
    def strides(self) -> list[int]:
        f = round(1 / self.diffusion_scale)
        out = [s * f for s in self.diffusion.strides] if self.diffusion is not None else []
        return out + ([1] if self.classic is not None else [])

    def fingerprint(self) -> str:
        return self.diffusion.fingerprint() if self.diffusion is not None else "classic-only"

    def memo_key(self) -> str:
        """Everything the stack's output depends on besides the tile (see
        :meth:`DiffusionFeatures.memo_key`): both parts and the diffusion scale."""
        diff = self.diffusion.memo_key() if self.diffusion is not None else "-"
        classic = (f"{self.classic.in_channels}:{self.classic.sigmas}"
                   if self.classic is not None else "-")
        return f"{diff}|scale {self.diffusion_scale}|classic {classic}"

    def to(self, device):
        for part in (self.diffusion, self.classic):
            if part is not None:
                part.to(device)
        return self

    def __call__(self, images, batch_size: int = 4):
        out = []
        if self.diffusion is not None:
            small = images
            if self.diffusion_scale != 1:
                import torch
                import torch.nn.functional as F

                x = torch.as_tensor(np.asarray(images, dtype=np.float32))
                x = x[..., None] if x.ndim == 3 else x
                f = round(1 / self.diffusion_scale)
                h, w = -(-x.shape[1] // f), -(-x.shape[2] // f)
                small = F.interpolate(x.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                      antialias=True, align_corners=False).permute(0, 2, 3, 1)
                small = small.clamp(0, 1).numpy()
            out += list(self.diffusion(small, batch_size=batch_size))
        if self.classic is not None:
            out += list(self.classic(images, batch_size=batch_size))
        return out

    def close(self):
        if self.diffusion is not None and hasattr(self.diffusion, "close"):
            self.diffusion.close()


def build_features(config, unet=None, scheduler=None, device="cpu"):
    """The feature extractor a config asks for (``config.features``): plain
    ``DiffusionFeatures`` for "diffusion" (as before), a :class:`FeatureStack` otherwise."""
    from .classic import ClassicFeatures

    kind = getattr(config, "features", "diffusion")
    diff = None
    if kind in ("diffusion", "both"):
        if unet is None:
            raise ValueError(f"features={kind!r} needs a diffusion backbone")
        diff = DiffusionFeatures(unet, scheduler, taps=config.taps, steps=config.steps,
                                 noise_seed=config.noise_seed, device=device)
        if kind == "diffusion" and getattr(config, "diffusion_scale", 1.0) == 1:
            return diff
    in_ch = diff.in_channels if diff is not None else int(config.in_channels)
    classic = None if kind == "diffusion" else ClassicFeatures(in_ch, config.classic_sigmas,
                                                               device=device)
    return FeatureStack(diff, classic, getattr(config, "diffusion_scale", 1.0))

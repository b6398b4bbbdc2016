"""Model size presets for the diffusion backbone, the latent UNet and the autoencoder.

Backbones follow the layout of OpenAI guided-diffusion (the TextDiff paper's backbone): 2 res
blocks per level, scale-shift norm, resnet down/up-sampling, so decoder taps have the same
meaning for a pretrained preset and for a converted ``256x256_diffusion_uncond.pt``
(see :func:`guided_output_block_to_tap`). Attention is kept at low resolutions only: attention
at 128² makes a forward ~10x slower on CPU.

No torch import here: the CLI and widgets read presets for their menus.
"""
from __future__ import annotations

import dataclasses

__all__ = ["BackbonePreset", "BACKBONE_PRESETS", "backbone_preset", "unet_config",
           "VAEPreset", "VAE_PRESETS", "vae_config", "LDM_PRESETS", "ldm_preset",
           "guided_output_block_to_tap", "count_output_blocks"]


@dataclasses.dataclass(frozen=True)
class BackbonePreset:
    """One UNet size: channels per level, which levels have attention, training defaults."""

    name: str
    block_out_channels: tuple[int, ...]
    attention: tuple[bool, ...]        # per level (encoder order): self-attention after each resnet
    crop_size: int                     # default training crop
    batch_size: int                    # default batch (per device)
    norm_num_groups: int = 32
    attention_head_dim: int = 64
    layers_per_block: int = 2
    description: str = ""


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    "tiny": BackbonePreset("tiny", (16, 32), (False, True), 32, 4, norm_num_groups=8,
                           attention_head_dim=8, description="for tests: ~0.3 M params"),
    "small": BackbonePreset("small", (32, 64, 128, 128), (False, False, False, True), 64, 16,
                            description="CPU-friendly default: ~7 M params, attention at 8² "
                                        "for 64² crops"),
    "base": BackbonePreset("base", (64, 128, 128, 256, 256), (False, False, False, True, True),
                           128, 64, description="~33 M params, attention at 16² and 8² for "
                                                "128² crops (GPU)"),
    "large": BackbonePreset("large", (128, 128, 256, 256, 512, 512),
                            (False, False, False, True, True, True), 256, 32,
                            description="guided-diffusion layout at half width: ~140 M params, "
                                        "attention at 32/16/8 for 256² (GPU)"),
}


def backbone_preset(name: str) -> BackbonePreset:
    try:
        return BACKBONE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of "
                         f"{', '.join(BACKBONE_PRESETS)}") from None


def unet_config(preset: str | BackbonePreset, channels: int = 3, sample_size: int | None = None,
                out_channels: int | None = None) -> dict:
    """``UNet2DModel(**unet_config(...))`` kwargs in the guided-diffusion layout."""
    p = backbone_preset(preset) if isinstance(preset, str) else preset
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    n = len(p.block_out_channels)
    down = tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in p.attention)
    up = tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(p.attention))
    assert len(p.attention) == n
    return dict(
        sample_size=sample_size or p.crop_size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=tuple(p.block_out_channels),
        layers_per_block=p.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        downsample_type="resnet",
        upsample_type="resnet",
        resnet_time_scale_shift="scale_shift",
        attention_head_dim=p.attention_head_dim,
        norm_num_groups=p.norm_num_groups,
        attn_norm_num_groups=p.norm_num_groups,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        add_attention=True,
    )


# --- latent diffusion (MGCC stage 1) ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VAEPreset:
    name: str
    block_out_channels: tuple[int, ...]   # len-1 = number of x2 downsamplings
    latent_channels: int
    norm_num_groups: int
    layers_per_block: int = 1
    mid_block_add_attention: bool = True


VAE_PRESETS = {
    "tiny": VAEPreset("tiny", (8, 16), 4, 8),
    "small": VAEPreset("small", (32, 64, 64), 4, 16),
    "base": VAEPreset("base", (64, 128, 256, 256), 8, 32, layers_per_block=2),
}


def vae_config(preset: str | VAEPreset, channels: int, sample_size: int) -> dict:
    p = VAE_PRESETS[preset] if isinstance(preset, str) else preset
    n = len(p.block_out_channels)
    return dict(
        in_channels=channels, out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(p.block_out_channels), layers_per_block=p.layers_per_block,
        latent_channels=p.latent_channels, norm_num_groups=p.norm_num_groups,
        sample_size=sample_size, mid_block_add_attention=p.mid_block_add_attention,
    )


#: LDM preset -> (vae preset, latent UNet preset, default image size)
LDM_PRESETS = {
    "tiny": ("tiny", BackbonePreset("ldm-tiny", (16, 32), (False, True), 16, 4, norm_num_groups=8,
                                    attention_head_dim=8), 32),
    "small": ("small", BackbonePreset("ldm-small", (64, 128, 128), (False, True, True), 32, 16,
                                      norm_num_groups=32, attention_head_dim=32), 128),
    "base": ("base", BackbonePreset("ldm-base", (128, 256, 512, 512), (False, False, True, True),
                                    32, 32), 256),
}


def ldm_preset(name: str):
    try:
        return LDM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown LDM preset {name!r}; choose one of {', '.join(LDM_PRESETS)}") \
            from None


# --- decoder tap names ----------------------------------------------------------------------

_GUIDED_256 = dict(block_out_channels=(256, 256, 512, 512, 1024, 1024), layers_per_block=2,
                   up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3)


def _cfg_get(config, key):
    if isinstance(config, dict):
        return config[key]
    return getattr(config, key, None) if not hasattr(config, "get") else config.get(key)


def count_output_blocks(config=None) -> int:
    config = config if config is not None else _GUIDED_256
    return len(_cfg_get(config, "block_out_channels")) * (_cfg_get(config, "layers_per_block") + 1)


def guided_output_block_to_tap(i: int, config=None) -> str:
    """Diffusers module name whose output equals guided-diffusion's ``output_blocks[i]`` output.

    guided-diffusion's decoder is a flat list of ``TimestepEmbedSequential`` blocks, each a
    resblock (+ attention at attention levels) (+ an upsampling resblock at the end of a level).
    In diffusers level ``u = i // (layers+1)`` is ``up_blocks[u]`` and ``j = i % (layers+1)`` the
    resnet within it, so the tap is the *last* module of that sequence:
    ``up_blocks.u.upsamplers.0`` for the last block of a level that upsamples, else
    ``up_blocks.u.attentions.j`` at attention levels, else ``up_blocks.u.resnets.j``.

    For the paper's 256x256 uncond model (``config=None``): 4 -> up_blocks.1.attentions.1
    (1024@16²), 5 -> up_blocks.1.upsamplers.0 (1024@32²), 6 -> up_blocks.2.attentions.0
    (512@32²), 8 -> up_blocks.2.upsamplers.0 (512@64²), 12 -> up_blocks.4.resnets.0 (256@128²),
    16 -> up_blocks.5.resnets.1 (256@256²).
    """
    config = config if config is not None else _GUIDED_256
    layers = _cfg_get(config, "layers_per_block") + 1
    up_types = tuple(_cfg_get(config, "up_block_types"))
    n = count_output_blocks(config)
    if not 0 <= i < n:
        raise ValueError(f"output block index {i} out of range: this UNet has {n} output blocks")
    u, j = divmod(i, layers)
    if j == layers - 1 and u < len(up_types) - 1:
        return f"up_blocks.{u}.upsamplers.0"
    if up_types[u].startswith("Attn"):
        return f"up_blocks.{u}.attentions.{j}"
    return f"up_blocks.{u}.resnets.{j}"

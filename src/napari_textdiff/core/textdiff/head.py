"""The trainable part of TextDiff: multi-scale text cross-attention + a pixel classifier.

Per tapped scale a 1x1 conv projects the diffusion features to ``dim``; every pixel (query)
attends to the text tokens (keys/values) with padding tokens masked out, in a transformer block
shared by all scales (pre-norm residual cross-attention, applied ``cross_attention_layers``
times as in the authors' code, then a residual feed-forward). Each scale is bilinearly
upsampled to the output size, the scales are concatenated and a small conv net (3x3 conv-BN-ReLU
blocks, then a 1x1 conv) classifies each pixel into background/foreground.

Every operation is per pixel or a small convolution, so the head is fully convolutional.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TextDiffHead", "LightHead", "CrossAttentionBlock", "build_head"]


class CrossAttentionBlock(nn.Module):
    """Pixels attend to text tokens: Softmax(h Wq (t Wk)^T / sqrt(d)) t Wv, PAD masked."""

    def __init__(self, dim: int, text_dim: int, heads: int, ff_mult: int = 2, layers: int = 2):
        super().__init__()
        self.layers = layers
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, kdim=text_dim, vdim=text_dim,
                                          batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(),
                                nn.Linear(ff_mult * dim, dim))

    def forward(self, x, text, text_mask):
        """x: (B, N, dim) pixel tokens; text: (B, L, Dt); text_mask: (B, L) True = real token."""
        pad = ~text_mask
        # a row with every token masked would give NaN: keep its first token ([CLS])
        pad = pad.clone()
        pad[pad.all(1), 0] = False
        for _ in range(self.layers):
            q = self.norm_q(x)
            a, _ = self.attn(q, text, text, key_padding_mask=pad, need_weights=False)
            x = x + a
        return x + self.ff(self.norm_ff(x))


class TextDiffHead(nn.Module):
    """``forward(features, text, text_mask, out_size) -> logits (B, 2, H, W)``."""

    def __init__(self, in_channels: list[int], text_dim: int, dim: int = 64, heads: int = 4,
                 ff_mult: int = 2, cross_attention_layers: int = 2,
                 decoder: list[int] = (64, 32), text_mode: str = "cross_attention"):
        super().__init__()
        self.text_mode = text_mode
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        if text_mode == "cross_attention":
            self.fuse = CrossAttentionBlock(dim, text_dim, heads, ff_mult, cross_attention_layers)
        elif text_mode == "concat":
            # text without cross-attention: the pooled description is concatenated to every
            # pixel's features and mixed back to ``dim`` (shared across scales)
            self.fuse = nn.Sequential(nn.Linear(dim + text_dim, dim), nn.GELU(),
                                      nn.Linear(dim, dim))
        elif text_mode != "none":
            raise ValueError(f"unknown text_mode {text_mode!r}")
        layers, c = [], dim * len(in_channels)
        for w in decoder:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, 2, 1))
        self.classifier = nn.Sequential(*layers)

    def _fuse(self, x, text, text_mask):
        b, d, h, w = x.shape
        if self.text_mode == "none":
            return x
        tokens = x.flatten(2).transpose(1, 2)                      # (B, N, d)
        if self.text_mode == "cross_attention":
            tokens = self.fuse(tokens, text, text_mask)
        else:
            m = text_mask.unsqueeze(-1).to(text.dtype)
            pooled = (text * m).sum(1) / m.sum(1).clamp_min(1)     # mean over real tokens
            cat = torch.cat([tokens, pooled[:, None].expand(-1, tokens.shape[1], -1)], -1)
            tokens = tokens + self.fuse(cat)
        return tokens.transpose(1, 2).reshape(b, d, h, w)

    def forward(self, features, text=None, text_mask=None, out_size=None):
        if out_size is None:
            out_size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        ups = []
        for proj, f in zip(self.proj, features):
            x = self._fuse(proj(f), text, text_mask)
            if tuple(x.shape[-2:]) != tuple(out_size):
                x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
            ups.append(x)
        return self.classifier(torch.cat(ups, 1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LightHead(TextDiffHead):
    """The CPU-minutes head: same text fusion, a decoder that does less work at full size.

    Why: the ``conv`` decoder's first 3x3 conv runs over every scale concatenated at full
    resolution (19 GFLOP per 256² tile at 4x64 channels). Here each input map is standardised
    (BatchNorm: diffusion activations and filter responses differ by orders of magnitude)
    and projected by 1x1. Text is fused at coarse resolution only: a map finer than
    ``text_stride`` is average-pooled to it, goes through the shared cross-attention block,
    and the block's update (output minus input) is upsampled and added back — pixel attention
    to text tokens at full size was most of the cost. The upsampled scales are then mixed by a
    1x1 conv to ``decoder[0]`` channels before 3x3 convs (``decoder[1:]``).
    """

    def __init__(self, in_channels: list[int], text_dim: int, dim: int = 32, heads: int = 4,
                 ff_mult: int = 2, cross_attention_layers: int = 2,
                 decoder: list[int] = (32, 32), text_mode: str = "cross_attention",
                 text_stride: int = 8):
        super().__init__(in_channels, text_dim, dim, heads, ff_mult, cross_attention_layers,
                         decoder, text_mode)
        self.text_stride = int(text_stride)
        self.norm = nn.ModuleList(nn.BatchNorm2d(c) for c in in_channels)
        c = dim * len(in_channels)
        layers = [nn.Conv2d(c, decoder[0], 1, bias=False), nn.BatchNorm2d(decoder[0]),
                  nn.ReLU(inplace=True)]
        c = decoder[0]
        for w in decoder[1:]:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            c = w
        layers.append(nn.Conv2d(c, 2, 1))
        self.classifier = nn.Sequential(*layers)

    def forward(self, features, text=None, text_mask=None, out_size=None):
        if out_size is None:
            out_size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        ups = []
        for norm, proj, f in zip(self.norm, self.proj, features):
            x = proj(norm(f))
            k = max(1, self.text_stride * x.shape[-2] // out_size[0])
            if k > 1 and self.text_mode != "none":
                p = F.avg_pool2d(x, k, ceil_mode=True)
                x = x + F.interpolate(self._fuse(p, text, text_mask) - p, size=x.shape[-2:],
                                      mode="bilinear", align_corners=False)
            else:
                x = self._fuse(x, text, text_mask)
            if tuple(x.shape[-2:]) != tuple(out_size):
                x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
            ups.append(x)
        return self.classifier(torch.cat(ups, 1))


def build_head(config, in_channels: list[int], text_dim: int) -> TextDiffHead:
    """The head ``config.head`` names ("conv": the paper's layout; "light": :class:`LightHead`)."""
    kw = dict(text_dim=text_dim, dim=config.dim, heads=config.heads, ff_mult=config.ff_mult,
              cross_attention_layers=config.cross_attention_layers, decoder=config.decoder,
              text_mode=config.text_mode)
    if getattr(config, "head", "conv") == "light":
        return LightHead(list(in_channels), text_stride=config.text_stride, **kw)
    return TextDiffHead(list(in_channels), **kw)

"""The MGCC network: U-Net encoder, ConvMixer bottleneck, main + three auxiliary decoders.

Faithful to the published design (Tang et al.; authors' code, see REFERENCE.md): encoder
double-conv blocks 64..1024, a 9-layer ConvMixer (k=7) on the bottleneck read at cumulative
depths 0/3/6/9, one decoder per depth, each with its own weights and its own four multi-scale
attention gates. Depth 9 feeds the main decoder (the only one run at inference); depths 0, 3, 6
feed the auxiliary decoders through FeatureDropout, Dropout and FeatureNoise, applied to all five
features (bottleneck and the four skips). ``width`` scales every channel count to give a light
variant; at width 1 and 3 input channels the inference path has 52,142,145 parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from ..configs import JsonConfig
from .attention_gate import MultiScaleAttentionGate
from .perturbations import Dropout, FeatureDropout, FeatureNoise

__all__ = ["MGCCConfig", "MGCCNet", "ConvMixerLayer", "Decoder", "count_parameters"]

BASE_CHANNELS = (64, 128, 256, 512, 1024)


@dataclasses.dataclass
class MGCCConfig(JsonConfig):
    """Everything needed to rebuild the network (stored in bundles as JSON)."""

    in_channels: int = 3
    width: float = 1.0                       # channel multiplier (0.25 = light variant)
    kernel_size: int = 7                     # ConvMixer depthwise kernel
    depths: tuple[int, ...] = (3, 6, 9)      # cumulative ConvMixer depths: aux2, aux3, main
    aux: bool = True                         # build the auxiliary decoders (training only)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(max(4, int(round(c * self.width))) for c in BASE_CHANNELS)



def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2, the U-Net block."""

    def __init__(self, cin: int, cout: int):
        super().__init__(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout))


class UpConv(nn.Sequential):
    """Nearest x2 upsample -> conv3x3 -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn_relu(cin, cout))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class ConvMixerLayer(nn.Sequential):
    """residual(depthwise kxk -> GELU -> BN) then pointwise 1x1 -> GELU -> BN."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__(
            _Residual(nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2),
                nn.GELU(), nn.BatchNorm2d(dim))),
            nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))


class Encoder(nn.Module):
    """Five double-conv stages with 2x2 max-pooling between them; returns all five features."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        super().__init__()
        chs = [in_channels, *channels]
        self.stages = nn.ModuleList(DoubleConv(chs[i], chs[i + 1]) for i in range(len(channels)))
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """U-Net decoder with a multi-scale attention gate on each of its four skips."""

    def __init__(self, channels: Sequence[int], out_channels: int = 1):
        super().__init__()
        c = list(channels)
        # from deep to shallow: (c[4] -> c[3]), (c[3] -> c[2]), ...
        self.ups = nn.ModuleList(UpConv(c[i + 1], c[i]) for i in reversed(range(4)))
        self.gates = nn.ModuleList(MultiScaleAttentionGate(c[i]) for i in reversed(range(4)))
        self.convs = nn.ModuleList(DoubleConv(2 * c[i], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], out_channels, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[4]
        for j, (up, gate, conv) in enumerate(zip(self.ups, self.gates, self.convs)):
            skip = gate(feats[3 - j])
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


class _Perturb(nn.Module):
    """Apply one perturbation independently to each of the five features."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, feats):
        return [self.fn(f) for f in feats]


class MGCCNet(nn.Module):
    """Encoder + ConvMixer + decoders.

    ``forward(x)`` runs the inference path only (main decoder, no perturbation) and returns
    logits (B,1,H,W). ``forward_all(x)`` returns ``[main, aux1, aux2, aux3]`` logits for training
    (aux1 <- FeatureDropout at depth 0, aux2 <- Dropout at depth 3, aux3 <- FeatureNoise at
    depth 6 with the default depths). H and W must be multiples of 16.
    """

    def __init__(self, config: MGCCConfig | None = None, **kw):
        super().__init__()
        self.config = config = config or MGCCConfig(**kw)
        if len(config.depths) != 3 or list(config.depths) != sorted(config.depths):
            raise ValueError(f"depths must be 3 increasing cumulative depths, got {config.depths}")
        ch = config.channels
        self.encoder = Encoder(config.in_channels, ch)
        self.mixer = nn.ModuleList(ConvMixerLayer(ch[4], config.kernel_size)
                                   for _ in range(config.depths[-1]))
        self.main_decoder = Decoder(ch)
        if config.aux:
            self.aux_decoders = nn.ModuleList(Decoder(ch) for _ in range(3))
            self.perturbations = nn.ModuleList([
                _Perturb(FeatureDropout()), _Perturb(Dropout(0.3)), _Perturb(FeatureNoise())])
        else:
            self.aux_decoders = None
            self.perturbations = None

    # ------------------------------------------------------------------ paths
    def _check(self, x):
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (B,{self.config.in_channels},H,W), got {tuple(x.shape)}")
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input H and W must be multiples of 16, got {tuple(x.shape[-2:])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_bottleneck(x)[0]

    def forward_with_bottleneck(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference path: (main logits, ConvMixer output) — the latter feeds image-level heads."""
        self._check(x)
        feats = self.encoder(x)
        b = feats[4]
        for layer in self.mixer:
            b = layer(b)
        return self.main_decoder([*feats[:4], b]), b

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.aux_decoders is None:
            raise RuntimeError("this MGCC network was built without auxiliary decoders (aux=False)")
        self._check(x)
        feats = self.encoder(x)
        skips = feats[:4]
        taps = {}
        b = feats[4]
        taps[0] = b
        for i, layer in enumerate(self.mixer, start=1):
            b = layer(b)
            taps[i] = b
        aux_depths = (0, *self.config.depths[:2])
        outs = [self.main_decoder([*skips, taps[self.config.depths[-1]]])]
        for d, pert, dec in zip(aux_depths, self.perturbations, self.aux_decoders):
            outs.append(dec(pert([*skips, taps[d]])))
        return outs

    # ------------------------------------------------------------------ parts
    def inference_state_dict(self) -> dict:
        """Weights of the inference path only (what a bundle ships)."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith(("aux_decoders.", "perturbations."))}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

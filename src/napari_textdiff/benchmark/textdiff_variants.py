"""TextDiff models of every benchmark variant (with text, without, without cross-attention)."""
from __future__ import annotations

from .common import FeatureMemo

__all__ = ["TextDiffVariants"]


class TextDiffVariants:
    """Builds TextDiff models (any ``text_mode``) over ONE shared backbone and text encoder, with
    one memoised feature extractor per set of noise steps, so variants, seeds and K values never
    recompute features — and a preset's ``steps`` (the histology recipe's single t = 50) is
    what its models are fed."""

    def __init__(self, backbone_dir: str, device, text_encoder: str | None = None,
                 feature_cache_mb: float = 2048, need_text: bool = True, max_length: int = 64):
        from ..core.textdiff.config import DEFAULT_TEXT_ENCODER, TextDiffConfig
        from ..core.textdiff.features import load_backbone
        from ..core.textdiff.text_encoder import TextEncoder

        base = TextDiffConfig()
        self._backbone = load_backbone(backbone_dir)
        self._cache_mb = feature_cache_mb
        self._memos: dict[tuple, FeatureMemo] = {}
        self._raw: dict[tuple, object] = {}          # the unmemoised extractors (speed timing)
        self.device = device
        self.memo = self._memo_for(base.steps, base.noise_seed)     # the default steps
        self.features = self._raw[self._key(base.steps, base.noise_seed)]
        self.text_ref = text_encoder or DEFAULT_TEXT_ENCODER
        self.encoder = TextEncoder(self.text_ref, max_length=max_length, device=device) \
            if need_text else None
        self.backbone_dir = backbone_dir

    @staticmethod
    def _key(steps, noise_seed) -> tuple:
        return tuple(int(t) for t in steps), int(noise_seed)

    def _memo_for(self, steps, noise_seed) -> FeatureMemo:
        from ..core.textdiff.features import DiffusionFeatures

        key = self._key(steps, noise_seed)
        if key not in self._memos:
            unet, sched = self._backbone
            self._raw[key] = DiffusionFeatures(unet, sched, taps=None, steps=list(key[0]),
                                               noise_seed=key[1], device=self.device)
            self._memos[key] = FeatureMemo(self._raw[key], ram_mb=self._cache_mb)
        return self._memos[key]

    @property
    def compute_seconds(self) -> float:
        """Seconds spent computing (not recalling) diffusion features, all step sets."""
        return sum(m.compute_seconds for m in self._memos.values())

    def stats(self) -> dict:
        """The memos' counters, summed over the step sets used."""
        out: dict = {}
        for m in self._memos.values():
            for k, v in m.stats().items():
                out[k] = round(out.get(k, 0) + v, 2)
        return {**out, "step_sets": [list(k[0]) for k in self._memos]}

    def create(self, text_mode: str, preset: str = "cpu", **overrides):
        from ..core.textdiff.config import TextDiffConfig
        from ..core.textdiff.model import TextDiffModel

        cfg = TextDiffConfig.preset(preset, text_mode=text_mode, **overrides)
        memo = self._memo_for(cfg.steps, cfg.noise_seed)
        cfg.taps = list(memo.taps)
        cfg.backbone = self.backbone_dir
        cfg.text_encoder = self.text_ref
        if self.encoder is not None:
            cfg.max_length = self.encoder.max_length
        enc = self.encoder if text_mode != "none" else None
        if text_mode != "none" and enc is None:
            raise ValueError("this TextDiffVariants was built without a text encoder")
        return TextDiffModel(cfg, memo, enc, device=self.device)

    def close(self):
        for m in self._memos.values():
            m.close()

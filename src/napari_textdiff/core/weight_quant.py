"""Weight-only int8 storage for shipped model files (the 40 MB budget for all bundled models).

Each large weight (a conv or linear kernel) is stored as int8 with one float scale per output
channel (symmetric, zero point 0: the per-channel scheme of ``torch.ao`` weight quantisation,
whose quantised tensor types torch is deprecating, so done here in two lines); biases and
norm parameters stay fp16. Loading dequantises to float32, so the model still computes in
float: only storage shrinks (about 2x below fp16), at the cost of a rounding error of at most
half a step (scale / 2) per weight.
"""
from __future__ import annotations

SCALE_SUFFIX = ".__int8_scale"


def quantize_state(state: dict, min_numel: int = 1024) -> dict:
    """int8 + per-channel scales for float tensors with >= 2 dims and >= ``min_numel`` values;
    every other float tensor as fp16; the rest unchanged."""
    import torch

    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if v.is_floating_point() and v.ndim >= 2 and v.numel() >= min_numel:
            w = v.float()
            scale = (w.abs().amax(dim=tuple(range(1, w.ndim))) / 127).clamp_min(1e-12)
            s = scale.view(-1, *([1] * (w.ndim - 1)))
            out[k] = torch.round(w / s).clamp(-127, 127).to(torch.int8)
            out[k + SCALE_SUFFIX] = scale
        elif v.is_floating_point():
            out[k] = v.half()
        else:
            out[k] = v
    return out


def dequantize_state(state: dict) -> dict:
    """The inverse of :func:`quantize_state` (float32 kernels); a state without int8 entries
    is returned as it is."""
    import torch

    if not any(k.endswith(SCALE_SUFFIX) for k in state):
        return state
    out = {}
    for k, v in state.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        s = state.get(k + SCALE_SUFFIX)
        if s is not None and v.dtype == torch.int8:
            v = v.float() * s.float().view(-1, *([1] * (v.ndim - 1)))
        out[k] = v
    return out

"""The last loaded latent diffusion pipeline, kept by ``synthesize.load_ldm(cache=True)``.

Why its own module: ``device.release`` must drop it when models are replaced, and importing
the sampler from ``device`` would close an import cycle (the sampler needs ``device``).
"""
from __future__ import annotations

__all__ = ["clear_pipeline_cache"]

# the last loaded LDM, so repeated Generate clicks do not reload it (``device.release`` clears it)
_PIPELINE_CACHE: dict = {}


def clear_pipeline_cache() -> None:
    """Forget the cached LDM (frees its memory once nothing else holds it)."""
    _PIPELINE_CACHE.clear()

"""TextDiff prediction as a progress generator: one event per tile batch, Stop within a block.

Why a generator: the GUI, the CLI and the API all drive the same code; the GUI shows tiles
done/total with the image's name and honours Stop. A 256² tile costs seconds of diffusion
features on a CPU, so waiting for the tile to end would make Stop feel broken: while a job
runs, a pre-hook on each UNet block checks ``should_stop`` and aborts the forward pass
(:func:`interruptible`), so Stop takes effect within one block (well under a second).
A stopped prediction returns ``None``: callers keep what they had, nothing partial.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from ..progress import Progress, StopRequested

__all__ = ["iter_proba", "interruptible"]


@contextlib.contextmanager
def interruptible(features, should_stop: Callable[[], bool] | None):
    """While active, the backbone's blocks raise :class:`StopRequested` once ``should_stop()``.

    Works on anything exposing the diffusers ``unet`` (``DiffusionFeatures`` or a proxy of
    it); without one (or without ``should_stop``) it does nothing.
    """
    unet = getattr(features, "unet", None) if should_stop is not None else None
    if unet is None:
        yield
        return
    blocks = [*getattr(unet, "down_blocks", []), *getattr(unet, "up_blocks", [])]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)

    def check(_module, _inputs):
        if should_stop():
            raise StopRequested("stopped during the diffusion features")

    handles = [b.register_forward_pre_hook(check) for b in blocks]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


def iter_proba(model, image, text: str | None = None, *, tiled: bool = True, device=None,
               batch_size: int = 1, should_stop: Callable[[], bool] | None = None,
               name: str = "", stain_stats=None):
    """Progress generator of ``model``'s foreground probability (H, W) float32.

    ``stain_stats``: LAB (mean, std) to normalise stain from (a slide's, ``core.wsi``);
    None = the image's own statistics at working scale. Yields ``Progress("predict", tiles_done, tiles_total, message=name)``; returns the map,
    or ``None`` when stopped.
    """
    from ..largeimage import lazy_image, resize_lowmem
    from ..stain import apply_stain_norm
    from ..tiling import iter_tiled

    if device is not None:
        model.to(device)
    t0 = time.monotonic()
    # large images: normalised tile by tile and resized channel by channel (core.largeimage)
    img = lazy_image(image, channels=model.channels, name=name or "image")
    h, w = img.shape[:2]
    c = model.config
    fn = model._predict_fn(text)
    with interruptible(model.features, should_stop):
        try:
            if c.resize_to or not tiled:
                s = c.resize_to or c.working_size
                yield Progress("predict", 0, 1, message=name)
                if should_stop is not None and should_stop():
                    return None
                small = apply_stain_norm(np.asarray(resize_lowmem(img, (s, s), 1)), c.stain_norm,
                                         stain_stats)
                prob = fn(small[None])[0, 0]
                yield Progress("predict", 1, 1, message=name)
            else:
                work = resize_lowmem(img, model._working_shape(img.shape), 1)
                if c.stain_norm:   # the image's statistics at working scale, or the slide's
                    work = apply_stain_norm(np.asarray(work), c.stain_norm, stain_stats)
                out = yield from iter_tiled(work, fn, tile=c.working_size,
                                            overlap=c.tile_overlap, batch_size=batch_size,
                                            should_stop=should_stop, message=name)
                if out is None:
                    return None
                prob = np.asarray(out)[0]
        except StopRequested:
            return None
    prob = resize_lowmem(np.asarray(prob, np.float32), (h, w), 1)
    prob = np.clip(prob, 0, 1, out=prob if prob.flags.writeable else None)
    model.last_timings = {"predict_seconds": time.monotonic() - t0}
    return prob

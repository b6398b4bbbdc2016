"""The widgets' long jobs as progress generators (no Qt here: they run in worker threads).

Each job yields :class:`~napari_textdiff.core.progress.Progress` events whose ``payload`` carries
what the GUI must show (a finished label image, a synthetic sample); the GUI thread applies
payloads to layers. Jobs check ``should_stop`` between units of work.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from ..core.progress import Progress

__all__ = ["SegmentItem", "Segmented", "segment_job", "finetune_job", "synthesize_job",
           "Sample", "unpack_sample"]


@dataclasses.dataclass
class SegmentItem:
    """One image to segment: ``raw`` is the layer data (converted once the model is known)."""

    name: str
    raw: np.ndarray
    text: str = ""


@dataclasses.dataclass
class Segmented:
    name: str
    labels: np.ndarray     # int32 (H, W): {0,1} or instance ids
    foreground: float      # fraction of foreground pixels


def segment_job(get_model: Callable[[], Any], items: Sequence[SegmentItem], *,
                threshold: float = 0.5, split: bool = False, tiled: bool = True,
                device=None, should_stop: Callable[[], bool] | None = None):
    """Load the model (first use) and segment ``items`` one by one; returns the count done.

    Per image: ``Progress("predict", tiles_done, tiles_total, message=name)`` per tile, then
    ``Progress("segment", i, n, payload=Segmented)``. A stopped image yields no payload, so
    its labels stay exactly as they were; no image after it is started.
    """
    from ..core.prediction import iter_predict, probability_to_labels
    from ._layers import to_model_input

    total = len(items)
    yield Progress("load", 0, 0, message="loading the model")
    model = get_model()
    done = 0
    for i, it in enumerate(items):
        if should_stop is not None and should_stop():
            break
        image = to_model_input(it.raw, model.channels)
        label = it.name if total == 1 else f"{it.name} ({i + 1}/{total})"
        prob = yield from iter_predict(model, image, it.text, tiled=tiled, device=device,
                                       should_stop=should_stop, name=label)
        if prob is None:
            break
        labels = probability_to_labels(prob, threshold, split, model)
        done += 1
        yield Progress("segment", i + 1, total, message=it.name,
                       payload=Segmented(it.name, labels, float((labels > 0).mean())))
    return done


def finetune_job(session, pairs: Sequence[tuple[str, np.ndarray, np.ndarray, str]], *,
                 epochs: int, lr: float, should_stop: Callable[[], bool] | None = None,
                 key: tuple | None = None, scale: float | None = None, **kw):
    """Fine-tune the session's model ``key`` (default: the current choice) on
    ``(name, image_raw, labels, text)`` pairs. ``scale``: regions read from a slide level are
    trained at the resize their prediction used (``core.wsi.at_scale``).

    Saves a snapshot first; if training raises, the snapshot is restored (the previous model is
    kept) and the error re-raised. Returns the finetune generator's own return value.
    """
    from ..core.models import Example
    from ._layers import to_model_input

    yield Progress("load", 0, epochs, message="loading model")
    key = key or session.current_key()
    model = session.ensure_model(key)
    examples = [Example(to_model_input(img, model.channels),
                        (np.asarray(lab) > 0).astype(np.uint8), text, name)
                for name, img, lab, text in pairs]
    snap = session.snapshot(key)
    try:
        from ..core.wsi import at_scale

        with at_scale(model, scale):
            result = yield from model.finetune(examples, epochs=epochs, lr=lr,
                                               should_stop=should_stop, **kw)
    except GeneratorExit:
        raise                               # the consumer stopped at a yield: model is valid
    except BaseException:
        session.restore(snap, key)
        raise
    session.mark_finetuned(key)
    return result


@dataclasses.dataclass
class Sample:
    image: np.ndarray                  # float32 (H, W, C) in [0, 1]
    distance: float | None = None      # to the nearest training image
    nearest: str | None = None         # that image's name
    near_copy: bool = False            # closer than the LDM's near-copy threshold
    threshold: float | None = None     # that threshold
    index: int = 0                     # position in its run
    seed: int = 0                      # the run's seed


def unpack_sample(payload) -> Sample | None:
    """The synthesizer's per-sample payload (a dict with every field, see
    ``core.diffusion.synthesize``) as a :class:`Sample`; ``None`` for payload-free events."""
    if not isinstance(payload, dict):
        return None
    return Sample(np.asarray(payload["image"], dtype=np.float32), float(payload["distance"]),
                  payload["nearest"], bool(payload["near_copy"]), float(payload["threshold"]),
                  int(payload["index"]), int(payload["seed"]))


def synthesize_job(ldm_dir, n: int, steps: int, eta: float, seed: int, device="auto",
                   should_stop: Callable[[], bool] | None = None):
    """Run the latent-diffusion sampler; yields its events with the payload as :class:`Sample`."""
    from ..core.diffusion.synthesize import synthesize

    yield Progress("load", 0, n, message="loading the diffusion model")
    gen = synthesize(ldm_dir, n=n, steps=steps, eta=eta, seed=seed, device=device,
                     batch_size=1, should_stop=should_stop)     # samples appear one by one
    count = 0
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value if stop.value is not None else count
            s = unpack_sample(ev.payload)
            if s is not None:
                count += 1
                ev = dataclasses.replace(ev, payload=s)
            yield ev
            if should_stop is not None and should_stop():
                return count
    finally:
        gen.close()

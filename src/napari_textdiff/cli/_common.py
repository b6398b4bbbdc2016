"""Argument checks shared by the commands: refuse bad values and unwritable outputs up front,
before any training or prediction, with messages that name the user's input."""
from __future__ import annotations

import argparse
import math
import sys


def probability(text: str) -> float:
    """argparse type: a finite number in [0, 1] (NaN, inf, 2 or -1 would give empty or full
    masks and JSON that strict parsers reject)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]: give a probability "
                                         "such as 0.5")
    return v


def finite(text: str) -> float:
    """argparse type: any finite number."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0 (a size or a count)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a whole number > 0")
    return v


def output_file(path, what: str, suffixes: tuple[str, ...], inputs=(), allowed=()):
    """The output file ``path``, checked before any work: it must end in one of ``suffixes``,
    must not be one of the user's ``inputs`` (unless it is one of ``allowed``) and must be
    writable (:func:`writable_file`). Refusals name the path, the problem and what to do."""
    from pathlib import Path

    from napari_textdiff.core.bundle import same_file

    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        alt = p.with_suffix(suffixes[0]).name if p.name and p.stem else f"OUT{suffixes[0]}"
        raise ValueError(f"{what} {path}: expected a {' or '.join(suffixes)} file name (this "
                         f"writes {suffixes[0][1:]}); give e.g. {alt}")
    if not any(same_file(p, a) for a in allowed):
        hit = next((f for f in inputs if same_file(p, f)), None)
        if hit is not None:
            raise ValueError(f"{what} {path} is one of the inputs ({hit}): writing there would "
                             "destroy it; give another file name")
    return writable_file(p, what)


def writable_file(path, what: str = "--out"):
    """The output file ``path`` after checking its folder can be written (creates it)."""
    from napari_textdiff.core.bundle import check_writable

    return check_writable(path, what)


def writable_folder(path, what: str = "--out"):
    """The output folder ``path`` after checking it can be written (creates it)."""
    from napari_textdiff.core.bundle import check_writable

    return check_writable(path, what, folder=True)


def json_safe(obj):
    """``obj`` with NaN/inf floats replaced by None: strict JSON parsers reject ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def add_model_location_args(p) -> None:
    """``--backbone`` / ``--text-encoder``: where a TextDiff model's frozen parts are, when
    they are not where the model file says (the load error names these options)."""
    p.add_argument("--backbone", default=None,
                   help="TextDiff: the diffusion backbone folder the model was trained on, "
                        "when it is not found next to the model file")
    p.add_argument("--text-encoder", default=None,
                   help="TextDiff: the text encoder folder the model was trained with, when "
                        "it is not found next to the model file")


def load_model(args):
    """``core.models.load_model`` honouring ``--backbone`` / ``--text-encoder``."""
    from napari_textdiff.core.bundle import BundleError, read_bundle_header
    from napari_textdiff.core.models import load_model as _load

    backbone = getattr(args, "backbone", None)
    encoder = getattr(args, "text_encoder", None)
    if backbone is None and encoder is None:
        try:
            return _load(args.model, device=args.device)
        except BundleError as e:     # the core's message names the API argument
            hint = [opt for key, opt in (("backbone=", "--backbone FOLDER"),
                                         ("text_encoder=", "--text-encoder FOLDER"))
                    if key in str(e)]
            if hint:
                raise BundleError(f"{e} On the command line: {', '.join(hint)}.") from e
            raise
    kind = read_bundle_header(args.model)["kind"]
    if kind != "textdiff":
        raise ValueError(f"{args.model} is a {kind} model, which has no diffusion backbone or "
                         "text encoder: drop --backbone / --text-encoder")
    from napari_textdiff.core.textdiff.model import TextDiffModel

    return TextDiffModel.load(args.model, device=args.device, backbone=backbone,
                              text_encoder=encoder)


def output_stems(paths) -> list[str]:
    """One output name stem per input, never shared by two inputs.

    Inputs with a unique stem keep it (``in/a.png`` -> ``a``). Inputs whose stems clash
    (``in/full.png`` and ``in/sub/full.png``, or ``a.png`` and ``a.tif``; compared ignoring
    case, as on macOS/Windows disks) are named by their path below the folder they share,
    suffix included (``full_png``, ``sub_full_png``; ``a_png``, ``a_tif``). A clash that
    remains is refused naming both inputs, before any work.
    """
    import collections
    import os
    from pathlib import Path

    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    count = collections.Counter(s.lower() for s in stems)
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(stems):
        if count[s.lower()] > 1:
            groups[s.lower()].append(i)
    for idx in groups.values():
        full = [os.path.abspath(paths[i]) for i in idx]
        base = os.path.commonpath([os.path.dirname(f) for f in full])
        for i, f in zip(idx, full):
            rel = os.path.relpath(f, base)
            stems[i] = rel.replace(os.sep, "_").replace(".", "_")
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):
        j = seen.setdefault(s.lower(), i)
        if j != i:
            raise ValueError(f"{paths[j]} and {paths[i]} would both write {s}_mask: rename "
                             "one, or segment them into different --out folders")
    return stems


def run_keeping_work(model, gen, out, record: dict, which: str, original=None):
    """Drive a training job with a progress line and return its result; on Ctrl-C close it
    (its cleanup leaves the model ``which`` describes, e.g. the best validated head) and save
    that model to ``out`` (atomic) before re-raising, saying so.

    ``record`` (a dict inside ``model.meta``) gets ``interrupted``, ``steps_run`` and
    ``epochs_run``. Interrupted before any training step: nothing is saved. ``original``: the
    file a finished run would replace, left as it is by an interrupted one (``out`` is then
    another name); the message says so.
    """
    from napari_textdiff.core.progress import print_progress

    show = print_progress(every=2.0)
    last = {"step": 0, "epoch": None}
    try:
        while True:
            ev = next(gen)
            if ev.loss is not None:          # a training step or a validation after one
                last.update(step=ev.step, epoch=ev.epoch)
            show(ev)
    except StopIteration as stop:
        return stop.value
    except KeyboardInterrupt:
        gen.close()                          # the job's cleanup runs (core.progress)
        if not last["step"]:
            print(f"interrupted before training started: nothing to save; "
                  f"{original or out} is unchanged", file=sys.stderr)
            raise
        record.update(interrupted=True, steps_run=last["step"], epochs_run=last["epoch"])
        model.save(out)
        kept = "" if original is None else (
            f"; {original} is unchanged (the run did not finish: rename {out} to it to keep "
            "the interrupted model)")
        print(f"interrupted at epoch {last['epoch']} (step {last['step']}): saved {which} "
              f"to {out}{kept}", file=sys.stderr, flush=True)
        raise


def key_values(items, flag: str) -> dict:
    """``["scale=0.5", 'stain_norm="reinhard"']`` -> dict; values are JSON, else strings."""
    import json

    out = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {it!r}: expected KEY=VALUE, e.g. {flag} scale=0.5")
        try:
            out[key.strip()] = json.loads(val)
        except ValueError:
            out[key.strip()] = val
    return out


class StopOnCtrlC:
    """First Ctrl-C asks a long job to stop at its next step boundary (it saves its state there,
    so nothing half-updated is written); a second Ctrl-C aborts at once.

    Why not catch ``KeyboardInterrupt``: it can land inside an optimiser step and leave weights
    and optimiser moments out of step; a job that stops between steps resumes exactly.
    Use as ``with StopOnCtrlC("training") as stop: run(job(..., should_stop=stop))``.
    Outside the main thread (where signals cannot be handled) it never asks to stop.
    """

    def __init__(self, what: str = "the job"):
        self.what = what
        self.requested = False
        self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        import signal

        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nstopping {self.what} after the current step and saving its state "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnCtrlC":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal
        import threading

        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

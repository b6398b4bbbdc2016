"""``napari-textdiff benchmark {monuseg,busi,xray,speed,report}``: reproducible benchmarks.

Each run writes ``NAME.json`` (command line, git commit, device, torch version, seeds, config,
per-image results, loss curves), ``NAME.md`` and plots into ``--out``; ``--quick`` is a CI size.
``benchmark report --results DIR --readme README.md`` rewrites the README block between
``<!-- results:start -->`` and ``<!-- results:end -->`` from those JSON files.
Torch is imported only when a command runs.
"""
from __future__ import annotations

import sys
import time

from napari_textdiff.cli._common import writable_folder


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {s!r}") from None


def _strs(s: str) -> list[str]:
    return [x for x in s.replace(",", " ").split() if x]


def _common(p, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--quick", action="store_true", help="CI size (minutes on a CPU)")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: plain time-stamped lines instead (one per finished "
                        "unit, at most one a minute while training), for logs")


def _resumable(p) -> None:
    p.add_argument("--resume", action="store_true",
                   help="reuse the units an earlier run with the same settings finished in "
                        "--out (its NAME.partial.json or NAME.json) and continue a U-Net/MGCC "
                        "unit it left mid-training from its checkpoint "
                        "(NAME.units_in_training/); more seeds/K may be added")
    p.add_argument("--finished-only", action="store_true",
                   help="like --resume, but only report the units already finished (e.g. of a "
                        "killed run); trains nothing")
    p.add_argument("--merge", type=_strs, action="extend", default=[], metavar="DIR[,DIR]",
                   help="also reuse the units finished in other output folders with the same "
                        "settings (a grid split over processes or machines); repeatable")


def _textdiff_opts(p) -> None:
    from napari_textdiff.core.textdiff.config import PRESETS   # torch-free

    p.add_argument("--backbone", default=None,
                   help="TextDiff diffusion backbone directory (default: the bundled one, else "
                        "a random-init backbone of --backbone-preset, recorded as such)")
    p.add_argument("--backbone-preset", default=None,
                   help="preset of the random-init backbone (default small; tiny is for tests: "
                        "it has attention at half resolution, slow at 256²)")
    p.add_argument("--text-encoder", default=None,
                   help="BERT-family directory (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--head-preset", default=None, choices=list(PRESETS),
                   help="TextDiff head preset (light: the shipped models' 84 k-parameter head; "
                        "histology / xray: with the bundled model's geometry; epochs still "
                        "come from --epochs, default 50)")
    p.add_argument("--epochs", type=int, default=None, help="TextDiff head epochs")
    p.add_argument("--min-head-steps", type=int, default=None,
                   help="at least this many head optimiser steps (small K gets more epochs)")
    p.add_argument("--size", type=int, default=None, help="working size (default 256)")
    p.add_argument("--feature-cache-mb", type=float, default=None,
                   help="RAM for memoised diffusion features before spilling to disk")


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="reproducible benchmarks (JSON + Markdown + plots)",
                       description=__doc__.split("\n\n")[0])
    bsub = p.add_subparsers(dest="benchmark_command", metavar="BENCHMARK")

    m = bsub.add_parser("monuseg", help="MoNuSeg few-shot curves (TextDiff, ablations, U-Net, "
                                        "MGCC-light)")
    m.add_argument("--data", required=True, help="LViT layout folder (Train_Folder, Test_Folder)")
    m.add_argument("--train-split", default=None, help="training folder (default Train_Folder)")
    m.add_argument("--test-split", default=None,
                   help="test folder (default Test_Folder; e.g. Val_Folder)")
    m.add_argument("--k", type=_ints, default=None, help="K values (default 1,2,5,10)")
    m.add_argument("--protocols", type=_strs, default=None, help="paper,tiles")
    m.add_argument("--methods", type=_strs, default=None,
                   help="textdiff,textdiff_no_text,textdiff_no_xattn,unet,mgcc_light,"
                        "random_forest (the classic peer: skimage filters + scikit-learn)")
    m.add_argument("--textdiff-set", action="append", default=None, metavar="KEY=VALUE",
                   help="TextDiff config field set after the protocol's (JSON value), e.g. "
                        "--textdiff-set scale=0.5 --textdiff-set stain_norm='\"reinhard\"'")
    m.add_argument("--unet-iterations", type=int, default=None)
    m.add_argument("--mgcc-iterations", type=int, default=None)
    m.add_argument("--val-images", type=int, default=None,
                   help="U-Net / MGCC-light: score this many other training-folder images "
                        "(never the K drawn, never the test folder) during training, keep the "
                        "best weights and record the validation curve (default 0: none)")
    m.add_argument("--val-every", type=int, default=None,
                   help="iterations between validations (default: a fifth of the budget)")
    m.add_argument("--max-train-tiles", type=int, default=None,
                   help="tiles protocol: TextDiff training tiles per image (default 4)")
    m.add_argument("--max-test-images", type=int, default=None)
    m.add_argument("--tile-overlap", type=int, default=None)
    _textdiff_opts(m)
    _common(m, "benchmark_results")
    _resumable(m)
    m.set_defaults(func=_monuseg)

    b = bsub.add_parser("busi", help="BUSI: MGCC 50 %% labels ± synthetic, supervised U-Net")
    b.add_argument("--data", required=True, help="BUSI folder (benign/ malignant/ normal/)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--synthetic", default=None, help="folder of synthetic images")
    g.add_argument("--ldm", default=None, help="latent diffusion folder to sample them from")
    b.add_argument("--n-synthetic", type=int, default=None, help="images to sample with --ldm")
    b.add_argument("--ldm-steps", type=int, default=None,
                   help="DDIM steps per sampled image (default 50)")
    b.add_argument("--methods", type=_strs, default=None,
                   help="mgcc_50,mgcc_50_synthetic,unet_full (default all)")
    b.add_argument("--iterations", type=int, default=None, help="training iterations")
    b.add_argument("--width", type=float, default=None, help="MGCC / U-Net width multiplier")
    b.add_argument("--batch-labeled", type=int, default=None, help="labeled images per step")
    b.add_argument("--batch-unlabeled", type=int, default=None,
                   help="unlabeled images per step (MGCC)")
    b.add_argument("--val-every", type=int, default=None,
                   help="iterations between validations on the held-out part of the training "
                        "split (best weights kept; the curve is recorded; default a fifth)")
    b.add_argument("--size", type=int, default=None, help="working size (default 256)")
    b.add_argument("--max-images", type=int, default=None,
                   help="use a seeded stratified subset of the cases (speed)")
    _common(b, "benchmark_results")
    _resumable(b)
    b.set_defaults(func=_busi)

    x = bsub.add_parser("xray", help="chest X-ray lesions: TextDiff with / without notes")
    x.add_argument("--data", required=True, help="X-ray folder (images/, structure.csv, ...)")
    x.add_argument("--k", default=None, help="K values, integers or 'all' (default 5,all)")
    x.add_argument("--test-fraction", type=float, default=None)
    x.add_argument("--methods", type=_strs, default=None,
                   help="textdiff_notes,textdiff_no_notes (default both)")
    _textdiff_opts(x)
    _common(x, "benchmark_results")
    _resumable(x)
    x.set_defaults(func=_xray)

    s = bsub.add_parser("speed", help="latency, fine-tune time, LDM sampling, peak memory")
    s.add_argument("--backbone", default=None)
    s.add_argument("--backbone-preset", default=None)
    s.add_argument("--text-encoder", default=None)
    s.add_argument("--ldm", default=None, help="latent diffusion folder (default: bundled, "
                                               "else an untrained one of --ldm-preset)")
    s.add_argument("--ldm-preset", default=None)
    s.add_argument("--repeats", type=int, default=None)
    s.add_argument("--tile", type=int, default=None, help="tile side (default 256)")
    _common(s, "benchmark_results")
    s.set_defaults(func=_speed)

    f = bsub.add_parser("finetune", help="does fine-tuning pay? Dice of the other images "
                                         "before/after fine-tuning on n corrected ones")
    f.add_argument("model", help="model file (e.g. src/napari_textdiff/models/histology.safetensors)")
    f.add_argument("data", help="labelled images the model never trained on (any layout)")
    f.add_argument("--split", default=None,
                   help="dataset split to draw from (e.g. Val_Folder); default: the model's "
                        "recorded validation images, else all")
    f.add_argument("--n", type=_ints, default=None, help="corrected-image counts (default 1,2,5)")
    f.add_argument("--n-eval", type=int, default=None, help="scored images per seed (default 60)")
    f.add_argument("--label", default=None, help="name in the output files (default: model stem)")
    _common(f, "benchmark_results")
    f.set_defaults(func=_finetune)

    r = bsub.add_parser("report", help="rewrite the README results block from the JSON files")
    r.add_argument("--results", default="benchmark_results", help="folder of benchmark JSON")
    r.add_argument("--readme", default="README.md")
    r.add_argument("--output", default=None, help="write here instead of editing --readme")
    r.add_argument("--print", action="store_true", help="print the block, write nothing")
    r.set_defaults(func=_report)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


# ------------------------------------------------------------------------------ running
def _setup(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _drive(gen, enabled: bool, log_every: float = 60.0):
    """Drain a benchmark generator with a tqdm bar (runs done / planned, current stage).

    Without the bar (``--no-progress``, runs in the background) plain time-stamped lines go to
    stderr instead: one per finished unit and at most one every ``log_every`` seconds for
    the training inside a unit, so a log shows how far a multi-hour unit has got.
    """
    from tqdm import tqdm

    bar = tqdm(total=None, unit="run", file=sys.stderr, disable=not enabled,
               dynamic_ncols=True, desc="benchmark")
    last = 0.0
    logged = time.monotonic()

    def plain(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    try:
        while True:
            ev = next(gen)
            if not enabled:
                if ev.stage == "benchmark":
                    plain(f"unit {ev.step}/{ev.total}: {ev.message}")
                elif time.monotonic() - logged >= log_every:
                    logged = time.monotonic()
                    plain(ev.describe())
                continue
            if ev.stage == "benchmark":
                bar.total = ev.total
                bar.n = ev.step
                bar.set_postfix_str(ev.message[:70], refresh=False)
                bar.refresh()
            elif time.monotonic() - last > 0.5:
                last = time.monotonic()
                bar.set_description(ev.describe()[:60], refresh=True)
    except StopIteration as stop:
        return stop.value
    finally:
        bar.close()


#: options given once per value (``action="append"``), not as one comma-separated list
REPEATED = frozenset({"textdiff_set"})


def _command(args) -> list[str]:
    """The canonical command line of this run (every option that is set), for the JSON."""
    argv = ["napari-textdiff", "benchmark", args.benchmark_command]
    for key, val in vars(args).items():
        if key in ("func", "command", "benchmark_command") or val is None or val is False:
            continue
        if isinstance(val, (list, tuple)) and not val:   # an unused repeatable option
            continue
        flag = "--" + key.replace("_", "-")
        if val is True:
            argv.append(flag)
        elif key in REPEATED:                           # action="append": one flag each
            for v in val:
                argv += [flag, str(v)]
        elif isinstance(val, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in val)]
        else:
            argv += [flag, str(val)]
    return argv


def _overrides(args, names: dict[str, str]) -> dict:
    return {key: getattr(args, attr) for attr, key in names.items()
            if getattr(args, attr, None) is not None}


def _finish(res) -> int:
    import json

    print(json.dumps({"files": res.get("files"), "wall_seconds": res.get("wall_seconds")},
                     indent=1))
    return 0


def _resume(args) -> dict:
    return {"resume": args.resume, "finished_only": args.finished_only,
            "merge_from": args.merge}


def _unit_stop():
    """First Ctrl-C (or ``timeout -s INT``): the unit in training stops at its next step with
    its best validated weights, is scored and saved marked ``stopped`` (reported as such,
    continued from its checkpoint by ``--resume``), and the run writes its report; a second
    Ctrl-C aborts."""
    from napari_textdiff.cli._common import StopOnCtrlC

    return StopOnCtrlC("the benchmark's current unit (it is scored and saved, marked stopped)")


def _monuseg(args) -> int:
    from napari_textdiff.benchmark.fewshot import MonusegConfig, run_monuseg

    _setup(args)
    over = _overrides(args, {
        "k": "k", "seeds": "seeds", "protocols": "protocols", "methods": "methods",
        "train_split": "train_split", "test_split": "test_split", "epochs": "epochs",
        "unet_iterations": "unet_iterations", "mgcc_iterations": "mgcc_iterations",
        "val_images": "val_images", "val_every": "val_every",
        "max_train_tiles": "max_train_tiles", "max_test_images": "max_test_images",
        "tile_overlap": "tile_overlap", "backbone": "backbone",
        "backbone_preset": "backbone_preset", "text_encoder": "text_encoder",
        "head_preset": "head_preset", "size": "size", "feature_cache_mb": "feature_cache_mb",
        "min_head_steps": "min_head_steps", "device": "device"})
    if args.textdiff_set:
        from napari_textdiff.cli._common import key_values

        over["textdiff_overrides"] = key_values(args.textdiff_set, "--textdiff-set")
    cfg = MonusegConfig.quick(**over) if args.quick else MonusegConfig(**over)
    writable_folder(args.out)
    with _unit_stop() as stop:
        res = _drive(run_monuseg(args.data, args.out, cfg, argv=_command(args),
                                should_stop=stop, **_resume(args)), not args.no_progress)
    return _finish(res)


def _busi(args) -> int:
    from napari_textdiff.benchmark.busi import BusiConfig, run_busi

    _setup(args)
    over = _overrides(args, {"seeds": "seeds", "methods": "methods",
                             "synthetic": "synthetic", "ldm": "ldm",
                             "n_synthetic": "n_synthetic", "ldm_steps": "ldm_steps",
                             "iterations": "iterations",
                             "width": "width", "size": "size", "max_images": "max_images",
                             "batch_labeled": "batch_labeled",
                             "batch_unlabeled": "batch_unlabeled",
                             "val_every": "val_every", "device": "device"})
    cfg = BusiConfig.quick(**over) if args.quick else BusiConfig(**over)
    writable_folder(args.out)
    with _unit_stop() as stop:
        res = _drive(run_busi(args.data, args.out, cfg, argv=_command(args),
                                should_stop=stop, **_resume(args)), not args.no_progress)
    return _finish(res)


def _xray(args) -> int:
    from napari_textdiff.benchmark.xray import XrayConfig, run_xray

    _setup(args)
    over = _overrides(args, {"seeds": "seeds", "methods": "methods",
                             "test_fraction": "test_fraction",
                             "backbone": "backbone", "backbone_preset": "backbone_preset",
                             "text_encoder": "text_encoder", "head_preset": "head_preset",
                             "epochs": "epochs", "size": "size",
                             "min_head_steps": "min_head_steps",
                             "feature_cache_mb": "feature_cache_mb", "device": "device"})
    if args.k is not None:
        over["k"] = [x if x == "all" else int(x) for x in _strs(args.k)]
    cfg = XrayConfig.quick(**over) if args.quick else XrayConfig(**over)
    writable_folder(args.out)
    with _unit_stop() as stop:
        res = _drive(run_xray(args.data, args.out, cfg, argv=_command(args),
                                should_stop=stop, **_resume(args)), not args.no_progress)
    return _finish(res)


def _speed(args) -> int:
    from napari_textdiff.benchmark.speed import SpeedConfig, run_speed

    _setup(args)
    over = _overrides(args, {"seeds": "seeds", "backbone": "backbone",
                             "backbone_preset": "backbone_preset",
                             "text_encoder": "text_encoder", "ldm": "ldm",
                             "ldm_preset": "ldm_preset", "repeats": "repeats", "tile": "tile",
                             "device": "device"})
    if "seeds" in over:
        over["seed"] = over.pop("seeds")[0]
    cfg = SpeedConfig.quick(**over) if args.quick else SpeedConfig(**over)
    writable_folder(args.out)
    res = _drive(run_speed(args.out, cfg, argv=_command(args)), not args.no_progress)
    return _finish(res)


def _finetune(args) -> int:
    from pathlib import Path

    from napari_textdiff.benchmark.finetune import (FinetuneBenchConfig, pool_from,
                                                         run_finetune_benchmark)

    _setup(args)
    over = _overrides(args, {"n": "ns", "seeds": "seeds", "n_eval": "n_eval",
                             "device": "device"})
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}
    if args.quick:
        over = {"ns": (1,), "seeds": (0,), "n_eval": 2, **over}
    cfg = FinetuneBenchConfig(**over)
    writable_folder(args.out)
    samples = pool_from(args.model, args.data, args.split)
    res = _drive(run_finetune_benchmark(args.model, samples, args.out, cfg,
                                        label=args.label or Path(args.model).stem),
                 not args.no_progress)
    for n, s in res["summary"].items():
        print(f"n={n}: Dice {s['dice_before']:.4f} -> {s['dice_after']:.4f} "
              f"({s['gain']:+.4f}) in {s['seconds']:.0f} s", file=sys.stderr)
    return _finish(res)


def _report(args) -> int:
    from napari_textdiff.benchmark.report import readme_section, update_readme

    if args.print:
        print(readme_section(args.results))
        return 0
    dest = update_readme(args.readme, args.results, out=args.output)
    print(f"results section written to {dest}", file=sys.stderr)
    return 0

"""``napari-textdiff mgcc train``: semi-supervised MGCC training from a dataset folder.

    napari-textdiff mgcc train DATA --labeled-fraction 0.5 [--unlabeled DIR ...]
        [--synthetic DIR ...] [--val-fraction 0.2] [--width 1.0] [--iterations 2000]
        [--device auto] --out BUNDLE

DATA is any layout ``core.datasets.discover`` knows (BUSI, MoNuSeg, chest X-ray, a generic
images/ + masks/ folder). Its labeled images are split into train / validation (stratified by
class where the layout has one, e.g. BUSI); ``--labeled-fraction`` of the train part keeps its
masks, the rest is used as unlabeled images, together with images in DATA that have no mask and
every image under ``--unlabeled`` / ``--synthetic`` folders. The best checkpoint on the
validation split is written to ``--out`` (segment with ``napari-textdiff segment``); checkpoints
for ``--resume`` go to ``--run-dir`` (default: next to the bundle). Torch is only imported
when the command runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_textdiff.cli._common import probability


def register(sub) -> None:
    p = sub.add_parser("mgcc", help="MGCC: semi-supervised ConvMixer U-Net (train)")
    msub = p.add_subparsers(dest="mgcc_command", metavar="MGCC_COMMAND")
    t = msub.add_parser("train", help="semi-supervised training on labeled + unlabeled images",
                        description=__doc__.split("\n\n")[0])
    t.add_argument("data", help="dataset folder (BUSI, MoNuSeg, X-ray or images/ + masks/)")
    t.add_argument("--out", required=True, help="output model bundle (.safetensors)")
    t.add_argument("--labeled-fraction", type=float, default=0.5,
                   help="fraction of the training split that keeps its masks (default 0.5)")
    t.add_argument("--unlabeled", nargs="*", default=[], metavar="DIR",
                   help="folders of real unlabeled images (searched recursively; *_mask* skipped)")
    t.add_argument("--synthetic", nargs="*", default=[], metavar="DIR",
                   help="folders of synthetic images used as unlabeled data")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="labeled images held out for validation / checkpoint selection")
    t.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier: 1.0 = published 52.1 M model, 0.25 = light CPU variant")
    t.add_argument("--channels", default="auto", choices=["auto", "1", "3"],
                   help="network input channels (auto: 1 when the images are gray)")
    t.add_argument("--size", type=int, default=256, help="working size (square, multiple of 16)")
    t.add_argument("--iterations", type=int, default=2000)
    t.add_argument("--batch-labeled", type=int, default=4)
    t.add_argument("--batch-unlabeled", type=int, default=4)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--schedule", default="poly", choices=["poly", "cosine", "constant"])
    t.add_argument("--w-max", type=float, default=7.0, help="max consistency weight")
    t.add_argument("--rampup-fraction", type=float, default=0.4,
                   help="consistency warm-up length as a fraction of --iterations (default 0.4: "
                        "w reaches --w-max at 40%% of the run)")
    t.add_argument("--rampup-iters", type=int, default=None,
                   help="explicit warm-up length (30000 reproduces the authors' ramp)")
    t.add_argument("--val-every", type=int, default=200)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--no-augment", action="store_true", help="disable rot90/flip augmentation")
    t.add_argument("--threshold", type=probability, default=0.5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--run-dir", default=None, help="checkpoint folder (default: OUT_run/)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    t.add_argument("--fp16", action="store_true", help="store the bundle's weights as float16")
    t.add_argument("--main-only", action="store_true",
                   help="supervised: train the main decoder only (no aux decoders, no unlabeled)")
    t.add_argument("--init", default=None, metavar="BUNDLE",
                   help="warm start from an MGCC bundle of the same width and channels")
    t.set_defaults(func=_train)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _image_files(folder: Path) -> list[Path]:
    from napari_textdiff.core.io import is_image_file

    if not folder.is_dir():
        raise FileNotFoundError(f"unlabeled image folder not found: {folder}")
    files = sorted(f for f in folder.rglob("*") if is_image_file(f) and "_mask" not in f.stem)
    if not files:
        raise ValueError(f"{folder}: no images found")
    return files


def _gray(paths, n: int = 5) -> bool:
    import numpy as np

    from napari_textdiff.core.io import load_image

    for p in list(paths)[:n]:
        a = load_image(p)
        if a.shape[-1] >= 3 and not (np.allclose(a[..., 0], a[..., 1], atol=1 / 255)
                                     and np.allclose(a[..., 0], a[..., 2], atol=1 / 255)):
            return False
    return True


def split_for_mgcc(samples, labeled_fraction: float, val_fraction: float, seed: int):
    """(labeled, unlabeled, val) sample lists: val held out first, then the labeled fraction
    of the rest keeps masks. Stratified by ``meta['class']`` where present (BUSI)."""
    from napari_textdiff.core.datasets import train_val_split

    if not 0 < labeled_fraction <= 1:
        raise ValueError(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}")
    labeled = [s for s in samples if s.has_mask]
    unl = [s for s in samples if not s.has_mask]
    if not labeled:
        raise ValueError("the dataset has no labeled images (no masks found)")
    strat = "class" if any("class" in s.meta for s in labeled) else None
    train, val = train_val_split(labeled, val_fraction, seed=seed, stratify_key=strat)
    if labeled_fraction < 1:
        lab, rest = train_val_split(train, 1 - labeled_fraction, seed=seed + 1, stratify_key=strat)
    else:
        lab, rest = train, []
    return lab, rest + unl, val


def _train(args) -> int:
    import torch

    from napari_textdiff.core.datasets import discover
    from napari_textdiff.core.io import load_image
    from napari_textdiff.core.mgcc.network import MGCCConfig
    from napari_textdiff.cli._common import writable_file, writable_folder
    from napari_textdiff.core.mgcc.trainer import MGCCTrainer, TrainConfig
    from napari_textdiff.core.progress import print_progress

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.stem + "_run")
    writable_file(out)               # before any work: a bad path must not cost a training
    writable_folder(run_dir, "--run-dir")
    samples = discover(args.data)
    lab, unl_samples, val = split_for_mgcc(samples, args.labeled_fraction, args.val_fraction,
                                           args.seed)
    extra = {"unlabeled": [f for d in args.unlabeled for f in _image_files(Path(d))],
             "synthetic": [f for d in args.synthetic for f in _image_files(Path(d))]}
    channels = (int(args.channels) if args.channels != "auto" else
                (1 if _gray([s.image_path for s in lab]) else 3))
    print(f"MGCC: {len(lab)} labeled, {len(unl_samples)} unlabeled from {args.data}, "
          f"{len(extra['unlabeled'])} extra unlabeled, {len(extra['synthetic'])} synthetic, "
          f"{len(val)} validation; {channels} channel(s), width {args.width}, {args.size}px",
          file=sys.stderr, flush=True)
    lab_ex = [s.load(channels=channels) for s in lab]
    val_ex = [s.load(channels=channels) for s in val]
    unl_img = ([] if args.main_only else [s.load_image(channels=channels) for s in unl_samples]
               + [load_image(f, channels=channels) for f in extra["unlabeled"] + extra["synthetic"]])
    init_state = None
    if args.init:
        from napari_textdiff.core.bundle import load_bundle

        init_state = load_bundle(args.init, expect_kind="mgcc")[1]
    cfg = TrainConfig(iterations=args.iterations, size=args.size, batch_labeled=args.batch_labeled,
                      batch_unlabeled=args.batch_unlabeled, lr=args.lr, schedule=args.schedule,
                      w_max=args.w_max, rampup_fraction=args.rampup_fraction,
                      rampup_iters=args.rampup_iters, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, augment=not args.no_augment,
                      threshold=args.threshold, seed=args.seed, main_only=args.main_only)
    meta = {"data": str(args.data), "labeled": len(lab_ex), "unlabeled_real": len(unl_samples)
            + len(extra["unlabeled"]), "synthetic": len(extra["synthetic"]),
            "validation": [s.name for s in val], "command": " ".join(sys.argv),
            "init": args.init}
    trainer = MGCCTrainer(lab_ex, unl_img, val_ex,
                          net_config=MGCCConfig(in_channels=channels, width=args.width),
                          config=cfg, device=args.device, run_dir=run_dir, resume=args.resume,
                          meta=meta, init_state=init_state)
    gen = trainer.run()
    every = print_progress(every=10.0)

    def show(ev):  # validation results always; training steps at most every 10 s
        if ev.stage == "validate":
            print(ev.describe(), file=sys.stderr, flush=True)
        else:
            every(ev)

    dtype = torch.float16 if args.fp16 else None
    try:
        while True:
            show(next(gen))
    except StopIteration as stop:
        model = stop.value
    except KeyboardInterrupt:
        # Ctrl-C: keep the work: the best validated model (else the latest) at --out, and a
        # checkpoint for --resume
        gen.close()
        if trainer.it == 0:
            print(f"interrupted before the first step: nothing to save; {out} is unchanged",
                  file=sys.stderr)
            raise
        trainer.meta["interrupted"] = True
        trainer.save_checkpoint()
        trainer.result().save(out, dtype=dtype)
        which = ("the best validated model" if trainer.best_state is not None
                 else "the latest model")
        print(f"interrupted at iteration {trainer.it}: saved {which} to {out} (continue with "
              f"--resume; checkpoint in {run_dir})", file=sys.stderr, flush=True)
        raise
    model.save(out, dtype=dtype)
    hist = model.meta.get("history", [])
    best = next((h for h in hist if h.get("it") == model.meta.get("best_iteration")), None)
    summary = {"out": str(out), "iterations": model.meta.get("iterations"),
               "best_iteration": model.meta.get("best_iteration"),
               "val_iou": model.meta.get("val_iou"), "best": best,
               "last": hist[-1] if hist else None}
    print(json.dumps(summary, indent=2))
    return 0

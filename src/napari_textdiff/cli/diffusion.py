"""Diffusion commands: ``pretrain-backbone``, ``convert-guided``, ``train-ldm``, ``synthesize``.

No torch import at module import time (``--help`` stays instant); handlers import the core.
``pretrain-backbone`` runs unchanged under ``accelerate launch -m napari_textdiff.cli ...`` for
several GPUs/nodes.
"""
from __future__ import annotations

import json
import sys

from napari_textdiff.cli._common import StopOnCtrlC


def _common_images(p) -> None:
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = gray, 3 = RGB")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip files whose name matches (repeatable), e.g. '*_mask*'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0)


def register(sub) -> None:
    from napari_textdiff.core.diffusion.presets import BACKBONE_PRESETS, LDM_PRESETS

    p = sub.add_parser("pretrain-backbone",
                       help="DDPM-pretrain a diffusers UNet backbone on unlabeled images",
                       description="Train a UNet2DModel DDPM on random multi-scale, dihedral "
                                   "crops. Resumes from OUT/checkpoint.pt when present.")
    _common_images(p)
    p.add_argument("--preset", default="small", choices=list(BACKBONE_PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in BACKBONE_PRESETS.items()))
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, help="per device (default: the preset's)")
    p.add_argument("--crop-size", type=int, help="training crop (default: the preset's)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-schedule", default="constant_with_warmup",
                   choices=("constant_with_warmup", "cosine"))
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--scale-min", type=float, default=1.0)
    p.add_argument("--scale-max", type=float, default=2.0)
    p.add_argument("--no-dihedral", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-side", type=int, default=2048,
                   help="downscale larger images to this long side on load")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("convert-guided",
                       help="convert an OpenAI guided-diffusion .pt to a diffusers UNet directory")
    p.add_argument("checkpoint", help="e.g. 256x256_diffusion_uncond.pt")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--num-head-channels", type=int, default=64)
    p.add_argument("--num-heads", type=int, help="fixed head count (when num_head_channels=-1)")
    p.add_argument("--new-attention-order", action="store_true",
                   help="the checkpoint used use_new_attention_order=True")
    p.set_defaults(func=_convert)

    p = sub.add_parser("train-ldm", help="train a latent diffusion model (AutoencoderKL + "
                                         "latent UNet) for synthetic images")
    _common_images(p)
    p.add_argument("--preset", default="small", choices=list(LDM_PRESETS))
    p.add_argument("--size", type=int, help="image size (default: the preset's)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--unet-steps", type=int, default=10_000)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument("--retrain-vae", action="store_true",
                   help="train the autoencoder again even if OUT/vae is finished")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="save the resumable state every N steps (and on Ctrl-C)")
    p.add_argument("--no-resume", action="store_true",
                   help="ignore OUT/ldm_state.pt and start over (by default a run continues "
                        "where an earlier one with the same settings stopped)")
    p.set_defaults(func=_train_ldm)

    p = sub.add_parser("synthesize", help="sample images from a latent diffusion directory "
                                          "and flag near-copies of training images")
    p.add_argument("ldm_dir")
    p.add_argument("-n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_synthesize)


def _pretrain(args) -> int:
    from napari_textdiff.core.diffusion.pretrain import PretrainConfig, pretrain_backbone
    from napari_textdiff.core.progress import print_progress, run

    cfg = PretrainConfig(preset=args.preset, channels=args.channels, crop_size=args.crop_size,
                         batch_size=args.batch_size, steps=args.steps, lr=args.lr,
                         lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
                         scale_min=args.scale_min, scale_max=args.scale_max,
                         dihedral=not args.no_dihedral, checkpoint_every=args.checkpoint_every,
                         log_every=args.log_every, max_side=args.max_side, seed=args.seed,
                         mixed_precision=args.mixed_precision, compile=args.compile)
    _check_out(args.out)
    with StopOnCtrlC("the backbone pretraining") as stop:
        out = run(pretrain_backbone(args.images, args.out, cfg, device=args.device,
                                    resume=not args.no_resume, should_stop=stop,
                                    recursive=args.recursive, exclude=args.exclude),
                  callback=print_progress())
    if stop.requested:
        print(f"stopped: the checkpoint is saved in {out}; run the same command again to "
              "continue", file=sys.stderr)
        return 130
    print(out)
    return 0


def _convert(args) -> int:
    _check_out(args.out)
    from napari_textdiff.core.diffusion.guided_import import convert_guided_checkpoint

    out, unet = convert_guided_checkpoint(
        args.checkpoint, args.out, image_size=args.image_size,
        num_head_channels=None if args.num_heads else args.num_head_channels,
        num_heads=args.num_heads, use_new_attention_order=args.new_attention_order)
    n = sum(p.numel() for p in unet.parameters())
    print(f"{out}: diffusers UNet2DModel, {n / 1e6:.1f} M params")
    return 0


def _train_ldm(args) -> int:
    _check_out(args.out)
    from napari_textdiff.core.diffusion.ldm import LDMConfig, train_ldm
    from napari_textdiff.core.progress import print_progress, run

    cfg = LDMConfig(preset=args.preset, channels=args.channels, size=args.size,
                    vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                    vae_batch=args.vae_batch, unet_batch=args.unet_batch,
                    flip=not args.no_flip, seed=args.seed,
                    checkpoint_every=args.checkpoint_every)
    with StopOnCtrlC("the LDM training") as stop:
        out = run(train_ldm(args.images, args.out, cfg, device=args.device, should_stop=stop,
                            reuse_vae=not args.retrain_vae, resume=not args.no_resume,
                            recursive=args.recursive, exclude=args.exclude),
                  callback=print_progress())
    if stop.requested:
        print(f"stopped: the state is saved in {out}; run the same command again to continue",
              file=sys.stderr)
        return 130
    print(out)
    return 0


def _synthesize(args) -> int:
    _check_out(args.out)
    from napari_textdiff.core.diffusion.synthesize import synthesize, write_samples
    from napari_textdiff.core.progress import print_progress, run

    results = run(synthesize(args.ldm_dir, args.n, steps=args.steps, eta=args.eta,
                             seed=args.seed, device=args.device, batch_size=args.batch_size),
                  callback=print_progress())
    out = write_samples(results or [], args.out)
    copies = sum(r["near_copy"] for r in results or [])
    print(json.dumps({"out": str(out), "samples": len(results or []), "near_copies": copies}))
    return 0


def _check_out(out) -> None:
    """Refuse an unwritable --out folder before hours of training or sampling."""
    from napari_textdiff.cli._common import writable_folder

    writable_folder(out)

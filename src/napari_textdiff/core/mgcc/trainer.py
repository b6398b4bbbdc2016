"""Semi-supervised MGCC training: labeled + unlabeled (real and synthetic) images in one batch.

Each step forwards ``batch_labeled`` labeled and ``batch_unlabeled`` unlabeled images together
through the encoder, the ConvMixer and all four decoders. Loss = mean over the four decoders of
0.5*BCE + Dice on the labeled part + ``w(it)`` * mean over aux decoders of
MSE(sigmoid(main), sigmoid(aux)) on the unlabeled part. SGD + clamped poly (or cosine)
schedule, dihedral augmentation, per-image validation with best-checkpoint selection on a
validation split (never on the test split), atomic checkpoints and resume.

Consistency warm-up: ``w = w_max * exp(-5 (1 - t)^2)`` with ``t = it / rampup_iters``; by
default ``rampup_iters = rampup_fraction * iterations`` (0.4), so w reaches ``w_max`` (7) at
40 % of the run and holds it, whatever the run length (the authors' fixed 30 000-iteration ramp
leaves their 20 000-iteration runs at w ~ 4).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from ..augment import random_dihedral
from ..bundle import atomic_write
from ..configs import JsonConfig
from ..models import Example
from ..progress import Progress
from .losses import consistency_loss, supervised_loss
from .model import MGCCModel
from .network import MGCCConfig, MGCCNet
from .preprocess import image_tensor, mask_tensor, normalize_input, resize_proba
from .schedules import consistency_weight, learning_rate

__all__ = ["TrainConfig", "MGCCTrainer", "train_mgcc", "atomic_torch_save", "evaluate_model"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"


@dataclasses.dataclass
class TrainConfig(JsonConfig):
    iterations: int = 2000
    size: int = 256
    batch_labeled: int = 4
    batch_unlabeled: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"             # poly (clamped) | cosine | constant
    w_max: float = 7.0
    rampup_fraction: float = 0.4       # consistency ramp length as a fraction of the run
    rampup_iters: int | None = None    # explicit ramp length (overrides the fraction)
    val_every: int = 200
    checkpoint_every: int = 200
    augment: bool = True
    threshold: float = 0.5
    seed: int = 0
    main_only: bool = False            # supervised: main decoder only (no aux, no unlabeled)

    @property
    def ramp_length(self) -> float:
        return float(self.rampup_iters if self.rampup_iters is not None
                     else self.rampup_fraction * self.iterations)


def atomic_torch_save(obj, path) -> Path:
    """``torch.save`` through :func:`core.bundle.atomic_write` (never half-written)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def evaluate_model(model: MGCCModel, examples: Sequence[Example], threshold: float | None = None,
                   batch_size: int = 8) -> tuple[dict, list[dict]]:
    """Per-image metrics at each image's own resolution (``core.evaluation``), predicted
    ``batch_size`` images per forward pass; returns ``(mean, per_image)``."""
    from ..evaluation import evaluate

    thr = model.threshold if threshold is None else threshold

    def probs():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            x = torch.stack([image_tensor(e.image, model.channels, model.size) for e in chunk])
            for e, p in zip(chunk, model.predict_batch(x).cpu()):
                yield resize_proba(p[None], np.asarray(e.mask).shape[:2])[0, 0].numpy()

    return evaluate(examples, probs(), thr)


class MGCCTrainer:
    """Holds the training state; :meth:`run` is the progress generator.

    ``trainer.model`` is an :class:`MGCCModel` over the live network (usable at every yield);
    after ``run`` returns it holds the best-on-validation weights (or the last ones without a
    validation split).
    """

    def __init__(self, labeled: Sequence[Example], unlabeled: Sequence[np.ndarray] = (),
                 val: Sequence[Example] = (), *, net_config: MGCCConfig | None = None,
                 config: TrainConfig | None = None, device="auto", run_dir=None,
                 resume: bool = False, meta: dict | None = None, init_state: dict | None = None):
        from ..device import resolve_device

        self.cfg = config or TrainConfig()
        if self.cfg.size % 16:
            raise ValueError(f"working size must be a multiple of 16, got {self.cfg.size}")
        if not labeled:
            raise ValueError("MGCC training needs at least one labeled image")
        if self.cfg.main_only and len(unlabeled):
            raise ValueError("main_only (supervised) training uses no unlabeled images")
        self.net_config = dataclasses.replace(net_config or MGCCConfig(),
                                              aux=not self.cfg.main_only)
        self.device = resolve_device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.val = list(val)
        self.meta = dict(meta or {})
        c, s = self.net_config.in_channels, self.cfg.size
        # keep the resized data in memory as uint8: 256^2 gray is 64 KiB an image
        self.X_lab = torch.stack([(image_tensor(e.image, c, s) * 255).round().to(torch.uint8)
                                  for e in labeled])
        self.Y_lab = torch.stack([mask_tensor(e.mask, s).to(torch.uint8) for e in labeled])
        self.X_unl = (torch.stack([(image_tensor(u, c, s) * 255).round().to(torch.uint8)
                                   for u in unlabeled]) if len(unlabeled) else None)
        self.n_unl_batch = self.cfg.batch_unlabeled if self.X_unl is not None else 0
        torch.manual_seed(self.cfg.seed)
        self.net = MGCCNet(self.net_config).to(self.device)
        if init_state is not None:  # warm start of the inference path (aux decoders stay fresh)
            missing, unexpected = self.net.load_state_dict(
                {k: v.float() for k, v in init_state.items()}, strict=False)
            if unexpected or any(not k.startswith(("aux_decoders.", "perturbations."))
                                 for k in missing):
                raise ValueError(f"init weights do not fit the network: missing {missing}, "
                                 f"unexpected {unexpected}")
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.cfg.lr,
                                   momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        from ..amp import Amp
        self.amp = Amp(self.device, what="MGCC training")
        self.rng = np.random.default_rng(self.cfg.seed)
        self.it = 0
        self.best_score = -1.0
        self.best_it = -1
        self.best_state: dict | None = None
        self.history: list[dict] = []
        self.extra_state: dict = {}     # a caller's own records, saved with the checkpoint
        self.model = MGCCModel(self.net, size=s, threshold=self.cfg.threshold, meta=self.meta,
                               device=self.device)
        self._perm = {"lab": ([], 0), "unl": ([], 0)}
        if resume:
            self._resume()

    # ------------------------------------------------------------------ state
    def _checkpoint_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT if self.run_dir is not None else None

    def save_checkpoint(self) -> Path | None:
        p = self._checkpoint_path()
        if p is None:
            return None
        return atomic_torch_save({
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "it": self.it,
            "best_score": self.best_score, "best_it": self.best_it,
            "best_state": self.best_state, "history": self.history,
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            # Dropout on a GPU draws from the CUDA generators: exact resume needs them too
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "amp": self.amp.state_dict(),
            "perm": {k: (np.asarray(o).tolist(), int(pos)) for k, (o, pos) in self._perm.items()},
            "net_config": self.net_config.to_dict(), "train_config": dataclasses.asdict(self.cfg),
            "extra": self.extra_state,
        }, p)

    def _resume(self) -> None:
        p = self._checkpoint_path()
        if p is None or not p.is_file():
            raise FileNotFoundError(f"nothing to resume: no {CHECKPOINT} in {self.run_dir}")
        ck = torch.load(p, map_location=self.device, weights_only=False)
        if MGCCConfig.from_dict(ck["net_config"]) != self.net_config:
            raise ValueError(f"{p}: checkpoint network {ck['net_config']} differs from the "
                             f"requested {self.net_config.to_dict()}")
        self.net.load_state_dict(ck["net"])
        self.opt.load_state_dict(ck["opt"])
        self.it, self.history = int(ck["it"]), list(ck["history"])
        self.best_score, self.best_it = float(ck["best_score"]), int(ck["best_it"])
        self.best_state = ck["best_state"]
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"].cpu())
        if ck.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ck["cuda_rng"]])
        self.amp.load_state_dict(ck.get("amp"))
        self._perm = {k: (np.asarray(o, dtype=np.int64), pos) for k, (o, pos) in ck["perm"].items()}
        self.extra_state = dict(ck.get("extra") or {})

    def _draw(self, key: str, n_items: int, k: int) -> np.ndarray:
        """``k`` indices from an epoch-wise shuffled stream (every item once per epoch)."""
        order, pos = self._perm[key]
        out = []
        while len(out) < k:
            if pos >= len(order):
                order, pos = self.rng.permutation(n_items), 0
            take = min(k - len(out), len(order) - pos)
            out.extend(order[pos:pos + take])
            pos += take
        self._perm[key] = (order, pos)
        return np.asarray(out)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg = self.cfg
        li = self._draw("lab", len(self.X_lab), cfg.batch_labeled)
        x, y = self.X_lab[li].float() / 255, self.Y_lab[li].float()
        if self.n_unl_batch:
            ui = self._draw("unl", len(self.X_unl), self.n_unl_batch)
            xu = self.X_unl[ui].float() / 255
        if cfg.augment:
            x, y = random_dihedral(x, y, self.rng)
            if self.n_unl_batch:
                xu, _ = random_dihedral(xu, None, self.rng)
        nl = x.shape[0]
        if self.n_unl_batch:
            x = torch.cat([x, xu])
        x, y = normalize_input(x.to(self.device)), y.to(self.device)
        lr = learning_rate(cfg.schedule, cfg.lr, self.it, cfg.iterations)
        for g in self.opt.param_groups:
            g["lr"] = lr
        w = consistency_weight(self.it, cfg.w_max, cfg.ramp_length)
        self.net.train()
        with self.amp.autocast():
            outs = [self.net(x)] if cfg.main_only else self.net.forward_all(x)
        outs = [o.float() for o in outs]
        sup = supervised_loss([o[:nl] for o in outs], y)
        if self.n_unl_batch:
            cons = consistency_loss(outs[0][nl:], [o[nl:] for o in outs[1:]])
        else:
            cons = torch.zeros((), device=self.device)
        loss = sup + w * cons
        self.amp.what = f"MGCC training (iteration {self.it})"
        self.amp.step(loss, self.opt)   # not finite: skipped under fp16/bf16, error in fp32
        self.it += 1
        return {"loss": float(loss.detach()), "sup": float(sup.detach()),
                "cons": float(cons.detach()), "w": w, "lr": lr}

    def validate(self) -> dict:
        mean, _ = evaluate_model(self.model, self.val, self.cfg.threshold)
        score = float(mean.get("iou", mean.get("IoU", -1.0)))
        rec = {"it": self.it, **{f"val_{k}": float(v) for k, v in mean.items()}}
        self.history.append(rec)
        if score > self.best_score:
            self.best_score, self.best_it = score, self.it
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in self.net.inference_state_dict().items()}
            if self.run_dir is not None:
                self._best_model().save(self.run_dir / BEST)
        return mean

    def _best_model(self) -> MGCCModel:
        # building a network draws init weights: keep that off the training's random stream,
        # so saving the best model (run_dir) does not change the run
        with torch.random.fork_rng(devices=[]):
            net = MGCCNet(dataclasses.replace(self.net_config, aux=False))
        net.load_state_dict(self.best_state)
        meta = {**self.meta, "iterations": self.it, "best_iteration": self.best_it,
                "val_iou": self.best_score, "train_config": dataclasses.asdict(self.cfg),
                "history": self.history[-50:]}
        return MGCCModel(net, size=self.cfg.size, threshold=self.cfg.threshold, meta=meta)

    # ------------------------------------------------------------------ loop
    def run(self, should_stop: Callable[[], bool] | None = None
            ) -> Generator[Progress, None, MGCCModel]:
        cfg, t0 = self.cfg, time.monotonic()
        stopped = False
        while self.it < cfg.iterations:
            if should_stop is not None and should_stop():
                stopped = True
                break
            stats = self.step()
            yield Progress("train", step=self.it, total=cfg.iterations, loss=stats["loss"],
                           metrics={k: stats[k] for k in ("sup", "cons", "w", "lr")},
                           elapsed=time.monotonic() - t0)
            last = self.it == cfg.iterations
            if self.val and (self.it % cfg.val_every == 0 or last):
                mean = self.validate()
                yield Progress("validate", step=self.it, total=cfg.iterations,
                               metrics={k: float(v) for k, v in mean.items()},
                               message=f"best iou {self.best_score:.4f} @ {self.best_it}",
                               elapsed=time.monotonic() - t0)
            if self.run_dir is not None and (self.it % cfg.checkpoint_every == 0 or last):
                self.save_checkpoint()
        if stopped and self.run_dir is not None:
            self.save_checkpoint()
        return self.result()

    def result(self) -> MGCCModel:
        """Best-on-validation model (or the current weights without validation), eval mode."""
        if self.best_state is not None:
            m = self._best_model()
        else:
            net = copy.deepcopy(self.net).cpu()
            net.aux_decoders, net.perturbations = None, None
            net.config = dataclasses.replace(net.config, aux=False)
            meta = {**self.meta, "iterations": self.it, "train_config": dataclasses.asdict(self.cfg)}
            m = MGCCModel(net, size=self.cfg.size, threshold=self.cfg.threshold, meta=meta)
        m.net.eval()
        return m.to(self.device)


def train_mgcc(labeled: Sequence[Example], unlabeled: Sequence[np.ndarray] = (),
               val: Sequence[Example] = (), *, net_config: MGCCConfig | None = None,
               config: TrainConfig | None = None, device="auto", run_dir=None,
               resume: bool = False, should_stop=None, meta: dict | None = None,
               init_state: dict | None = None) -> Generator[Progress, None, MGCCModel]:
    """Progress generator training MGCC; returns the best-on-validation :class:`MGCCModel`."""
    trainer = MGCCTrainer(labeled, unlabeled, val, net_config=net_config, config=config,
                          device=device, run_dir=run_dir, resume=resume, meta=meta,
                          init_state=init_state)
    return (yield from trainer.run(should_stop))

"""LightningModule that trains a student of any model family towards strength-blended targets."""
from __future__ import annotations

import copy
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..checkpoint import load
from ..tools.lpips_offline import LPIPSLoss, lpips_distance
from .. import registry
from .distill import make_distiller
from .families import check_init_family, differentiable, family_name, student_config
from ..machine import machine_summary
from .export import CKPT_KEY
from .targets import TargetSource, make_target_source

#: Validation strengths: name -> s (s = 0 is scored against the photo itself).
VAL_STRENGTHS = {"s1": 1.0, "s05": 0.5, "s0": 0.0}


class CartoonModule(pl.LightningModule):
    """Train a student network (any family of :mod:`dctnet_lite.registry`) with L1 + LPIPS
    towards ``target(photo, s)``.

    Every sample gets its own strength ``s``: exactly 0 with probability ``strength_edge_prob``,
    exactly 1 with the same probability, else uniform in [0, 1]. The target source (see
    :mod:`.targets`) is chosen by ``target``; subclasses can override :meth:`build_target_source`.

    The student: ``arch`` (a registered architecture: ``dctnet_w48``, ``official_c32n4``), or
    ``family`` (default ``dctnet``) with ``arch_config`` (the family's config as a dict) or
    ``width`` (base width; ``None``: the family's default, dctnet width 64 / official c32 n4); see
    :func:`~dctnet_lite.train.families.student_config`. ``init_checkpoint`` starts from a
    dctnet_lite checkpoint of either family, whose architecture (a pruned non-uniform channel
    table included) wins over ``width``/``arch``/``arch_config``; a ``family`` given or implied
    by ``arch`` must be the checkpoint's.

    ``target="teacher"`` distils a frozen teacher of either family (:mod:`.distill`):
    ``module.distiller`` then adds ``renderer_weight`` (L1 + LPIPS to the renderer's target too)
    and ``feature_weight`` (fused features vs the teacher's through learned 1x1 projections;
    dctnet student and dctnet teacher only), and validation scores s=1 and s=0.5 against the
    teacher only. Both weights must stay 0 for the other targets.

    With ``ema_decay > 0`` an EMA copy of the student (``self.ema``) is kept; validation, sample
    grids and export use it. Its decay ramps up as ``min(ema_decay, (1 + t) / (10 + t))``. The
    frozen LPIPS network is never registered, so it is in neither the optimizer nor the checkpoint.
    """

    def __init__(
        self,
        width: Optional[int] = None,
        init_checkpoint: Optional[str] = None,
        arch: Optional[str] = None,
        family: Optional[str] = None,
        arch_config: Optional[Dict[str, Any]] = None,
        target: str = "renderer",
        teacher_checkpoint: Optional[str] = None,
        feature_weight: float = 0.0,
        renderer_weight: float = 0.0,
        l1_weight: float = 1.0,
        lpips_weight: float = 1.0,
        lpips_net: str = "alex",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: Tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.05,
        ema_decay: float = 0.999,
        strength_edge_prob: float = 0.2,
        val_sample_count: int = 4,
    ):
        super().__init__()
        self.save_hyperparameters()
        if init_checkpoint:
            self.student = load(init_checkpoint).train()
            check_init_family(family_name(self.student), arch, family, init_checkpoint)
        else:
            self.student = registry.build(student_config(width, arch, family, arch_config))
        self.ema = copy.deepcopy(self.student).requires_grad_(False) if ema_decay > 0 else None
        self.lpips_loss = LPIPSLoss(lpips_net) if lpips_weight > 0 else None  # holds no tensors
        self.target_source = self.build_target_source()
        self.distiller = make_distiller(self)  # None unless target == "teacher"
        self.recipe: Optional[dict] = None  # the full run config, set by the CLI, saved for export
        self.val_metrics: Dict[str, float] = {}
        self._samples: list = []
        self._seconds, self._t0, self._machines = 0.0, None, []

    # ------------------------------------------------------------------ pieces to override
    def build_target_source(self) -> TargetSource:
        return make_target_source(self.hparams.target, self.hparams.teacher_checkpoint)

    @property
    def eval_net(self) -> nn.Module:
        """The network used for validation and export: the EMA copy if any."""
        return self.ema if self.ema is not None else self.student

    def student_forward(self, x: torch.Tensor, strength) -> torch.Tensor:
        """The student on ``x`` in [-1, 1], in the form that back-propagates (whatever its family)."""
        with differentiable(self.student):
            return self.student(x, strength)

    def sample_strength(self, n: int) -> torch.Tensor:
        p = self.hparams.strength_edge_prob
        u, r = torch.rand(n, device=self.device), torch.rand(n, device=self.device)
        return torch.where(r < p, 0.0, torch.where(r < 2 * p, 1.0, u))

    def make_target(self, batch, strength: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self.target_source(batch, strength).float()

    # ------------------------------------------------------------------ training
    def forward(self, photo01: torch.Tensor, strength) -> torch.Tensor:
        """Student output in [0, 1] for photos in [0, 1]."""
        return (self.student_forward(photo01 * 2 - 1, strength).float() + 1) / 2

    def training_step(self, batch, batch_idx):
        photo = batch["photo"]
        s = self.sample_strength(photo.shape[0])
        if self.distiller is not None:
            return self.distiller.training_step(self, batch, s)
        target = self.make_target(batch, s) * 2 - 1
        out = self.student_forward(photo * 2 - 1, s).float()
        l1 = F.l1_loss(out, target)
        loss = self.hparams.l1_weight * l1
        logs = {"train/l1": l1}
        if self.lpips_loss is not None:
            lp = self.lpips_loss(out, target)
            loss = loss + self.hparams.lpips_weight * lp
            logs["train/lpips"] = lp
        self.log_dict(logs, batch_size=photo.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=photo.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self):
        t = self.trainer.global_step + 1 if self._trainer is not None else 1
        decay = min(self.hparams.ema_decay, (1 + t) / (10 + t))
        for e, p in zip(self.ema.parameters(), self.student.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.student.buffers()):
            e.copy_(b)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]  # the student (+ distillation projections)
        opt = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas),
                                weight_decay=hp.weight_decay)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches

        def lr_lambda(step: int) -> float:  # linear warm-up, then cosine to min_lr_ratio at `total`
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx):
        photo, net = batch["photo"], self.eval_net
        n = photo.shape[0]
        outs, dists = {}, {}
        strengths = self.distiller.val_strengths if self.distiller is not None else VAL_STRENGTHS
        for name, s in strengths.items():
            strength = torch.full((n,), s, device=photo.device)
            target = photo if s == 0 else self.make_target(batch, strength)
            out = ((net(photo * 2 - 1, strength).float() + 1) / 2).clamp(0, 1)
            with torch.autocast(self.device.type, enabled=False):  # the metric in fp32 whatever the precision
                dists[name] = lpips_distance(out, target, net="alex")
            self.log(f"val/lpips_{name}", dists[name].mean(), batch_size=n, sync_dist=True)
            outs[name] = (target, out)
        self.log("val/lpips", torch.stack(list(dists.values())).mean(), prog_bar=True, batch_size=n,
                 sync_dist=True)
        need = self.hparams.val_sample_count - sum(len(x) for x in self._samples)
        if need > 0 and not self.trainer.sanity_checking:
            target1, out1 = outs["s1"]
            cols = [photo, target1, out1, outs["s05"][1]]  # photo | target s=1 | output s=1 | output s=0.5
            self._samples.append(torch.cat(cols, dim=-1)[:need].float().cpu())

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        self.val_metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        self.val_metrics["val_step"] = self.global_step
        if self._samples:
            self.log_sample_grid(torch.cat(self._samples, dim=0))
        self._samples = []

    def log_sample_grid(self, rows: torch.Tensor) -> None:
        """Rows of (photo | target s=1 | output s=1 | output s=0.5) -> TensorBoard and a PNG."""
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, before the rank check
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "samples"
        if not self.trainer.is_global_zero:  # under DDP every rank validates; one writes
            return
        grid = torch.cat(list(rows), dim=-2).clamp(0, 1)  # (3, n*H, 4*W)
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("val/samples", grid, self.global_step)
        out_dir.mkdir(parents=True, exist_ok=True)
        img = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        Image.fromarray(img).save(out_dir / f"val_step{self.global_step:07d}.png")

    # ------------------------------------------------------------------ bookkeeping for export
    def on_fit_start(self):
        self._t0 = time.monotonic()
        machine = machine_summary()
        if machine not in self._machines:
            self._machines.append(machine)

    def on_train_start(self):
        # Lightning 2.x keeps each submodule's mode at fit start (and restores it after validation)
        # instead of calling .train(): set the modes explicitly. The teacher is never registered.
        self.student.train()
        if self.ema is not None:
            self.ema.eval()
        if self.distiller is not None:
            self.distiller.on_train_start(self)

    def on_save_checkpoint(self, checkpoint):
        elapsed = time.monotonic() - self._t0 if self._t0 is not None else 0.0
        dm = self.trainer.datamodule if self._trainer is not None else None
        checkpoint[CKPT_KEY] = {
            "family": family_name(self.student),
            "arch": self.student.config.to_dict(),
            "recipe": self.recipe if self.recipe is not None else dict(self.hparams),
            "data": dm.describe() if hasattr(dm, "describe") else None,
            "val_metrics": dict(self.val_metrics),
            "train_seconds": self._seconds + elapsed,
            "machines": list(self._machines),
            "init_checkpoint": self.hparams.init_checkpoint,
            "ema": self.ema is not None,
        }
        if self.distiller is not None:  # the teacher by reference (path, sha256), never its weights
            self.distiller.add_provenance(checkpoint[CKPT_KEY])

    def on_load_checkpoint(self, checkpoint):
        info = checkpoint.get(CKPT_KEY, {})
        self._seconds = float(info.get("train_seconds", 0.0))
        self._machines = list(info.get("machines", []))
        self.val_metrics = dict(info.get("val_metrics", {}))
        # A resumed run must not replay the random crops/strengths of its first steps.
        seed = (int(os.environ.get("PL_GLOBAL_SEED", 0)) + int(checkpoint.get("global_step", 0))) % 2 ** 32
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

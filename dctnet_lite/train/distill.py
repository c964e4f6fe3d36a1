"""Distillation: a frozen teacher into a smaller, usually pruned, student, of either family.

``CartoonModule(target="teacher", teacher_checkpoint="dctnet_w64.toon", init_checkpoint=<pruned>)`` -- or
``model.target: teacher`` in a recipe (``finetune/distill_w48*.yaml``, ``finetune/distill_official_c24*.yaml``)
-- distils: the module then
holds a :class:`Distiller` (``module.distiller``) that supplies the training loss, the validation
strengths and the teacher's bookkeeping. Per sample, at the module's random strength ``s``:

    loss = l1_weight * L1(student, teacher) + lpips_weight * LPIPS(student, teacher)
         + renderer_weight * (l1_weight * L1 + lpips_weight * LPIPS)(student, renderer target)
         + feature_weight  * mean_i NMSE(P_i(fused_i(student)), fused_i(teacher))

Teacher and student may be of either family (``dctnet``, ``official``, and across: an official
student taught by a dctnet teacher, or the reverse): the output terms compare images only.
The feature term is DCTNet-to-DCTNet only (a ValueError otherwise): ``fused_i`` are the outputs
of the four adaptive fusions (scales 1/2 .. 1/16) of the two-branch network, which the official
generator does not have. ``dctnet_lite.tools.prune``
does not record which channels it kept, so the student's features are mapped to the teacher's
channels by a learned 1x1 convolution per scale (:class:`FeatureProjection`, FitNets-style);
NMSE is the mean squared error divided by the teacher feature's mean square (scale-free).

The teacher:

- is loaded once (fp32, eval mode, ``requires_grad=False``) inside the target source
  (:class:`~dctnet_lite.train.targets.TeacherTarget`), which is *not* a registered module: it is in
  no ``parameters()``, so in neither the optimizer nor DDP's parameter set, and in no
  ``state_dict``, so in no Lightning checkpoint; Lightning's ``.train()``/``.eval()`` never reach it;
- runs under ``torch.no_grad()`` with autocast disabled (fp32 targets whatever the precision);
- is recorded by reference only: its checkpoint as given, the resolved path, the file's sha256,
  the payload sha256 and its architecture (:meth:`Distiller.reference`), under ``teacher`` in the
  checkpoint's ``dctnet_lite`` entry and in its ``recipe`` (which export copies into the
  provenance of the exported file).

The projections are trained (optimizer), checkpointed (resume) and never exported
(:func:`~dctnet_lite.train.export.export_checkpoint` takes only ``student.``/``ema.`` weights).
Validation scores the (EMA) student against the teacher at ``s = 1`` and ``s = 0.5``
(``val/lpips_s1``, ``val/lpips_s05``, ``val/lpips`` = their mean).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import file_sha256
from ..fileutil import portable_path
from ..model import ArchConfig, DCTNet
from .families import family_name, net_device
from .targets import RendererTarget, TeacherTarget

#: Validation strengths of a distillation run: scored against the teacher's output.
DISTILL_VAL_STRENGTHS = {"s1": 1.0, "s05": 0.5}
SCALES = (1, 2, 3, 4)


@contextlib.contextmanager
def fused_features(net: DCTNet, enabled: bool = True) -> Iterator[List[torch.Tensor]]:
    """Collect the outputs of ``net``'s four fusions (scale 1..4) during the forwards in the block."""
    feats: List[torch.Tensor] = []
    if not enabled:
        yield feats
        return
    handles = [f.register_forward_hook(lambda _m, _i, out: feats.append(out)) for f in net.fusions]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


class FeatureProjection(nn.Module):
    """A 1x1 convolution per fusion scale, student channels -> teacher channels (training only).

    Zero-initialised: the feature loss starts at exactly 1 (NMSE of a zero prediction) and sends no
    gradient into the student until the projections have learned something, so a pruned student's
    inherited features are not pulled around by random projections in the first steps.
    """

    def __init__(self, student: ArchConfig, teacher: ArchConfig):
        super().__init__()
        ws, wt = student.widths, teacher.widths
        self.convs = nn.ModuleList(nn.Conv2d(ws[f"scale{i}"], wt[f"scale{i}"], 1) for i in SCALES)
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


def feature_loss(projected: List[torch.Tensor], teacher: List[torch.Tensor]) -> torch.Tensor:
    """Mean over scales of MSE(projected, teacher) / mean(teacher ** 2)."""
    if len(projected) != len(SCALES) or len(teacher) != len(SCALES):
        raise RuntimeError(f"expected {len(SCALES)} fused feature maps each, got {len(projected)} (student) "
                           f"and {len(teacher)} (teacher)")
    terms = []
    for p, t in zip(projected, teacher):
        t = t.float()
        terms.append(F.mse_loss(p.float(), t) / t.pow(2).mean().clamp_min(1e-6))
    return torch.stack(terms).mean()


class Distiller(nn.Module):
    """What ``target="teacher"`` adds to :class:`~dctnet_lite.train.module.CartoonModule`.

    Registered as ``module.distiller``: its only registered state is the optional
    :class:`FeatureProjection` (``feature_weight > 0``); the teacher is reached through the
    unregistered target source.
    """

    val_strengths = DISTILL_VAL_STRENGTHS

    def __init__(self, source: TeacherTarget, student, feature_weight: float = 0.0,
                 renderer_weight: float = 0.0):
        """``student``: the student's config (any family)."""
        super().__init__()
        for name, w in (("feature_weight", feature_weight), ("renderer_weight", renderer_weight)):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self._source = source  # a plain object: the teacher stays unregistered
        self.feature_weight, self.renderer_weight = float(feature_weight), float(renderer_weight)
        self.teacher.eval().requires_grad_(False)
        if feature_weight > 0:
            pair = (family_name(student), family_name(self.teacher))
            if not (isinstance(student, ArchConfig) and isinstance(self.teacher, DCTNet)):
                raise ValueError(f"feature_weight > 0 (fused-feature distillation) needs a dctnet student and "
                                 f"a dctnet teacher (this pair: {pair[0]} student, {pair[1]} teacher); set "
                                 f"feature_weight 0 (output distillation, L1 + LPIPS, works for every pair)")
        self.projection = FeatureProjection(student, self.teacher.config) if feature_weight > 0 else None
        self._renderer = RendererTarget() if renderer_weight > 0 else None
        self._reference: Optional[dict] = None

    @property
    def teacher(self) -> nn.Module:
        return self._source.teacher

    def ready_teacher(self, device: torch.device) -> nn.Module:
        """The teacher on ``device``, in eval mode (whatever happened to it)."""
        t = self.teacher
        if net_device(t) != device:
            t.to(device)
        if t.training:
            t.eval()
        return t

    def reference(self) -> dict:
        """The teacher by reference: checkpoint as given, resolved path, sha256s, architecture."""
        if self._reference is None:
            info = getattr(self.teacher, "checkpoint_info", None)
            path = Path(info.path) if info is not None else None
            self._reference = {
                "checkpoint": str(self._source.checkpoint),
                "path": portable_path(path) if path is not None else None,
                "weights": info.name if info is not None and info.weights is not None else None,
                "sha256": file_sha256(path) if path is not None and path.is_file() else None,
                "payload_sha256": info.sha256 if info is not None else None,
                "family": family_name(self.teacher),
                "arch": self.teacher.config.to_dict(),
            }
        return dict(self._reference)

    # ------------------------------------------------------------------ hooks called by CartoonModule
    def on_train_start(self, module) -> None:
        self.ready_teacher(module.device)

    def add_provenance(self, info: dict) -> None:
        """Add the teacher reference to a checkpoint's ``dctnet_lite`` entry (and to its recipe)."""
        ref = self.reference()
        info["teacher"] = ref
        if isinstance(info.get("recipe"), dict):
            info["recipe"] = {**info["recipe"], "teacher": ref}

    def training_step(self, module, batch: Dict[str, torch.Tensor], strength: torch.Tensor) -> torch.Tensor:
        photo = batch["photo"]
        n, x = photo.shape[0], photo * 2 - 1
        use_feats = self.projection is not None
        teacher = self.ready_teacher(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            with fused_features(teacher, use_feats) as t_feats:
                target = teacher(x.float(), strength).float()
            render = self._renderer(batch, strength).float() * 2 - 1 if self._renderer is not None else None
        with fused_features(module.student, use_feats) as s_feats:
            out = module.student_forward(x, strength).float()
        loss, logs = image_loss(module, out, target, "train/")
        if render is not None:
            r_loss, r_logs = image_loss(module, out, render, "train/renderer_")
            loss = loss + self.renderer_weight * r_loss
            logs.update(r_logs)
        if use_feats:
            feat = feature_loss(self.projection(s_feats), t_feats)
            loss = loss + self.feature_weight * feat
            logs["train/feature"] = feat
        module.log_dict(logs, batch_size=n)
        module.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss


def image_loss(module, out: torch.Tensor, target: torch.Tensor, prefix: str) -> Tuple[torch.Tensor, dict]:
    """``l1_weight * L1 + lpips_weight * LPIPS`` of the module, inputs in [-1, 1]."""
    hp = module.hparams
    l1 = F.l1_loss(out, target)
    loss, logs = hp.l1_weight * l1, {f"{prefix}l1": l1}
    if module.lpips_loss is not None:
        lp = module.lpips_loss(out, target)
        loss = loss + hp.lpips_weight * lp
        logs[f"{prefix}lpips"] = lp
    return loss, logs


def make_distiller(module) -> Optional[Distiller]:
    """The module's :class:`Distiller` when it distils (``target="teacher"``), else ``None``."""
    hp, source = module.hparams, module.target_source
    extra = {k: hp[k] for k in ("feature_weight", "renderer_weight") if hp.get(k)}
    if hp.target != "teacher" or not isinstance(source, TeacherTarget):
        if extra:
            raise ValueError(f"{', '.join(extra)} apply to distillation only (target: teacher with a "
                             f"TeacherTarget source), not to target {hp.target!r}")
        return None
    return Distiller(source, module.student.config, feature_weight=hp.get("feature_weight", 0.0),
                     renderer_weight=hp.get("renderer_weight", 0.0))

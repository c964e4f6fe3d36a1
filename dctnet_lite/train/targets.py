"""Target sources: what the student is trained to produce for a batch at given strengths.

A target source is any callable ``source(batch, strength) -> Tensor`` returning RGB in [0, 1] of
the photo's shape, where ``batch`` is a dataset batch (``photo`` (B,3,H,W) in [0, 1], optionally
``target``) and ``strength`` a (B,) tensor in [0, 1]. ``strength == 0`` must give the photo.
Sources hold no trainable state and nothing that ends up in a checkpoint.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..checkpoint import load
from ..render import blend_target, render_toon
from .families import net_device

TargetSource = Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


class RendererTarget:
    """``(1 - s) * photo + s * render_toon(photo)``: the classical toon renderer as teacher."""

    def __call__(self, batch, strength):
        photo = batch["photo"]
        return blend_target(photo, render_toon(photo), strength)


class PairedTarget:
    """``(1 - s) * photo + s * target`` with the dataset's own per-photo target."""

    def __call__(self, batch, strength):
        if "target" not in batch:
            raise KeyError("target='paired' needs a paired dataset: set data.target_root")
        return blend_target(batch["photo"], batch["target"], strength)


class TeacherTarget:
    """A frozen teacher's output at the same strengths (distillation); a checkpoint of any
    family (``dctnet``, ``official``).

    The teacher lives outside the LightningModule's registered modules, so it is neither trained
    nor saved; it follows the batch's device on first use.
    """

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.teacher = load(checkpoint).requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch, strength):
        photo = batch["photo"]
        if net_device(self.teacher) != photo.device:
            self.teacher.to(photo.device)
        return (self.teacher(photo * 2 - 1, strength).float() + 1) / 2


def make_target_source(kind: str, teacher_checkpoint: Optional[str] = None) -> TargetSource:
    if kind == "renderer":
        return RendererTarget()
    if kind == "paired":
        return PairedTarget()
    if kind == "teacher":
        if not teacher_checkpoint:
            raise ValueError("target='teacher' needs teacher_checkpoint")
        return TeacherTarget(teacher_checkpoint)
    raise ValueError(f"unknown target {kind!r}: use 'renderer', 'paired' or 'teacher'")

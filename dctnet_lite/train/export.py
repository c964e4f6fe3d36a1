"""Lightning ``.ckpt`` -> dctnet_lite safetensors checkpoint, with provenance."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import torch
from torch.torch_version import TorchVersion

from .. import __version__, registry
from ..checkpoint import CheckpointError, CheckpointInfo, read_info, save_checkpoint
from ..fileutil import portable_path

CKPT_KEY = "dctnet_lite"  # our entry in a Lightning checkpoint (written by CartoonModule)


def _parent(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    try:
        info = read_info(path)
        return {"path": portable_path(path), "name": info.name, "sha256": info.sha256, "family": info.family,
                "arch": info.arch.describe()}
    except (CheckpointError, OSError):
        return {"path": portable_path(path)}


def export_checkpoint(ckpt_path: str, out_path: str, dtype: str = "fp16", use_ema: bool = True,
                      metrics: Optional[dict] = None, extra_provenance: Optional[dict] = None) -> CheckpointInfo:
    """Write the (EMA) student of a training checkpoint as a dctnet_lite checkpoint.

    The student's family and architecture come from the ``.ckpt`` (``dctnet`` when it names none:
    checkpoints written before the official family trained), so the file loads with
    :func:`dctnet_lite.checkpoint.load` as that family. The ``.ckpt`` is read with
    ``torch.load(weights_only=True)`` (nothing arbitrary is unpickled).
    Provenance: recipe (the full CLI config), data (folder, file counts and names), steps, parent
    checkpoint, teacher (distillation: by reference, also under ``recipe.teacher``; else
    ``None``), wall time, machine(s), source checkpoint. Metrics: the last validation of the
    exported weights (``val/...``, ``val_step``) updated with ``metrics``.
    """
    # TorchVersion (a str subclass) is allowed: Lightning's own hyper-parameters and older
    # dctnet_lite provenance may hold torch.__version__ as it is.
    with torch.serialization.safe_globals([TorchVersion]):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    info = ckpt.get(CKPT_KEY)
    if not isinstance(info, dict) or "arch" not in info:
        raise CheckpointError(f"{ckpt_path} was not written by dctnet_lite.train (no {CKPT_KEY!r} entry)")
    weights = "ema" if use_ema and info.get("ema") else "student"
    prefix = weights + "."
    state = {k[len(prefix):]: v.float() for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        family = registry.get_family(info.get("family", registry.DCTNET.name))
        model = family.build(family.config_from_dict(info["arch"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_path}: cannot rebuild the student's architecture: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{ckpt_path}: the {prefix[:-1]} weights do not fit {model.config.describe()} "
                              f"({first})") from None
    val = dict(info.get("val_metrics") or {})
    if use_ema != bool(info.get("ema")):
        val = {}  # validation scored the EMA weights (or the student when there is no EMA)
    provenance = {
        "recipe": info.get("recipe"),
        "data": info.get("data"),
        "steps": int(ckpt.get("global_step", 0)),
        "epochs": int(ckpt.get("epoch", 0)),
        "parent_checkpoint": _parent(info.get("init_checkpoint")),
        "teacher": info.get("teacher"),
        "wall_time_s": round(float(info.get("train_seconds", 0.0)), 1),
        "machine": info.get("machines"),
        "weights": weights,
        "source_checkpoint": portable_path(ckpt_path),
        "lightning_version": ckpt.get("pytorch-lightning_version"),
        "exported": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "dctnet_lite": __version__, "dtype": dtype},
        **(extra_provenance or {}),
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(out_path, model, dtype=dtype, provenance=provenance, metrics={**val, **(metrics or {})})

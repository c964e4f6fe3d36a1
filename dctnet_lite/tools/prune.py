"""Structured channel pruning with torch-pruning, for both model families.

``prune(parent, width=48)`` removes whole channels from a trained network and returns a *plain*
model of the parent's family (no masks, no pickled modules) whose config is read off the pruned
layers, so it saves and loads like any other checkpoint: a :class:`~dctnet_lite.model.DCTNet`
with its :class:`ArchConfig` (family ``dctnet``), or an
:class:`~dctnet_lite.official.OfficialGenerator` with its :class:`OfficialConfig` channel table
(family ``official``; ``width`` is then the base channel count ``c``).

How the channels are chosen
---------------------------
torch-pruning's ``DependencyGraph`` traces ``model(x, 1.0)`` and groups every coupled channel:
content/texture encoder outputs of a scale, the fusion gate's output and both halves of its
concatenated input, the bottleneck's residual stream and the decoder convs that read the
concatenated skips all fall in one group (``scale1..4``); the stage ``mid`` convs, the
bottleneck's inner width and each decoder ``up``/``merge`` conv are groups of their own -- the
19 groups of :func:`dctnet_lite.model.channel_groups`. The output head is in ``ignored_layers``
(its 3 output channels are never pruned) and the network input is not a prunable node, so the
stems keep their 3 input channels and the full-resolution ``[up, x]`` concat keeps ``x``.

The official generator (:mod:`dctnet_lite.official`) is traced under
:func:`~dctnet_lite.official.plain_ops` (every conv through its module, so the graph sees it) on a
:data:`OFFICIAL_TRACE_SIZE` px input. Its additive skips couple ``conv_in`` with ``dec1b``
(``x0``), ``enc1b`` with ``dec2`` (``x1``) and ``enc2b`` with every residual block's ``conv2``
(``res``); the other groups (``down1``, ``down2``, ``block<i>``, ``dec1``, ``dec0``) are free --
the groups of :func:`dctnet_lite.official.channel_groups`. ``conv_out`` (3 RGB outputs) is
ignored; the guided filter has no parameters. :func:`channel_table` reads every group off all the
convs that produce or consume it and fails if they disagree.

Targets (exactly one):

- ``width=48``: uniform; every group is scaled by ``width / parent_width`` (parent must be uniform;
  for the official family the width is the base channel count ``c`` and the table becomes
  :func:`~dctnet_lite.official.widths_from_channels`).
- ``ratio=0.25``: remove that fraction of every group (kept counts rounded *down* to
  ``round_to``), or, with ``global_pruning=True``, of all channels ranked together.
- ``macs_budget``: a fraction of the parent's MACs (``0.5``, ``"50%"``) or absolute GMACs at
  512 px (``"20G"``, or any number >= 1). Global (non-uniform) by default: torch-pruning ranks all
  groups' channels together and removes a little more each step until the MACs fit. MACs are
  :func:`dctnet_lite.profile.count_macs` for ``dctnet`` and the generator's convolutions counted
  by forward hooks under ``plain_ops()`` for ``official`` (:func:`family_macs`).

Criteria: ``l1``/``l2`` (group weight magnitude), ``lamp`` and ``fpgm`` (torch-pruning's LAMP and
geometric-median scores), ``taylor`` (first-order Taylor ``|w * dL/dw|``) and ``random`` (control).
``taylor`` needs calibration images: no renderer target exists at pruning time, so the loss is a
self-supervised reconstruction -- ``L1(model(x + n, s=1), parent(x, s=1))`` with Gaussian input
noise ``n`` of std :data:`TAYLOR_NOISE` (in [-1, 1] units) -- whose gradient at the parent
measures how much each weight carries the network's own output. The gradients are computed once
on the unpruned network; torch-pruning slices ``.grad`` along with the weights, so iterative
(MACs budget) steps keep using them.

Everything is seeded: the same inputs give bit-identical pruned weights.

Recipes: :func:`prune_main` and ``dctnet-lite prune`` (:func:`cli_main`) read the keys of
:data:`RECIPE_OPTIONS` with jsonargparse: ``--config FILE`` (repeatable, later files overlay
earlier ones), then ``--key VALUE`` flags, ``--print_config`` for the merged recipe. The report and
the checkpoint's provenance hold no absolute path (:func:`dctnet_lite.tools.recipes.portable_path`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from .. import __version__
from ..checkpoint import file_sha256, load, resolve, save_checkpoint
from ..images import list_images, read_image
from ..model import CHANNEL_MULTIPLE, ArchConfig, DCTNet, channel_groups
from ..official import OfficialConfig, OfficialGenerator, plain_ops, widths_from_channels
from ..official import channel_groups as official_channel_groups
from ..profile import count_macs, count_params
from .lpips_offline import lpips_distance
from .recipes import (as_argv, check_keys, config_files, parse,
                      portable_path, rewrite_argv, run_verb, sources)

CRITERIA = ("l1", "l2", "taylor", "lamp", "fpgm", "random")
NEEDS_CALIBRATION = frozenset({"taylor"})
TAYLOR_NOISE = 0.05
TRACE_SIZE = 32            # example input side for the dependency graph and the MACs proxy (>= 16)
OFFICIAL_TRACE_SIZE = 64   # the same for the official generator (a multiple of its stride 4)
BUDGET_MAX_RATIO = 0.9     # schedule of the MACs-budget search: up to 90% of the channels ...
BUDGET_STEPS = 90          # ... in 1% steps; it stops as soon as the budget is met
MAX_GROUP_RATIO = 0.95     # torch-pruning's max_pruning_ratio per layer in the budget search
TARGET_KEYS = ("width", "ratio", "macs_budget")
_EPS = 1e-9  # keeps torch-pruning's int(n * (1 - ratio)) from truncating 47.9999 to 47

PathLike = Union[str, os.PathLike]
Prunable = Union[DCTNet, OfficialGenerator]
PRUNABLE = (DCTNet, OfficialGenerator)


@dataclasses.dataclass
class PruneResult:
    """A pruned plain model (:class:`DCTNet` or :class:`OfficialGenerator`), its architecture
    (:class:`ArchConfig` or :class:`OfficialConfig`) and the report (provenance + metrics)."""

    model: Prunable
    config: Union[ArchConfig, OfficialConfig]
    report: dict

    @property
    def provenance(self) -> dict:
        return self.report["provenance"]

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    def save(self, path: PathLike, dtype: str = "fp32"):
        """Write a checkpoint with the provenance and metrics in its metadata."""
        info = save_checkpoint(path, self.model, dtype=dtype, provenance=self.provenance,
                               metrics=self.metrics)
        self.report["output"] = str(path)
        return info


# ---------------------------------------------------------------------------------------------
# Architecture bookkeeping
# ---------------------------------------------------------------------------------------------
def _family_name(model: nn.Module) -> str:
    if isinstance(model, DCTNet):
        return "dctnet"
    if isinstance(model, OfficialGenerator):
        return "official"
    raise ValueError(f"cannot prune a {type(model).__name__}: prune() takes a model of the dctnet "
                     f"family (DCTNet) or the official family (OfficialGenerator), or a checkpoint of one")


def _num_blocks(model: Prunable) -> int:
    return len(model.bottleneck) if isinstance(model, DCTNet) else len(model.blocks)


def _head(model: Prunable) -> nn.Conv2d:
    """The output conv (3 RGB channels, never pruned)."""
    return model.head if isinstance(model, DCTNet) else model.conv_out


def _trace_size(model: nn.Module) -> int:
    return OFFICIAL_TRACE_SIZE if isinstance(model, OfficialGenerator) else TRACE_SIZE


def _official_readings(num_blocks: int) -> Dict[str, List[Tuple[str, str]]]:
    """Every conv side that carries each channel group of the official generator: (module, "out"
    or "in"). The groups joined by the additive skips list all their producers."""
    r = {
        "x0": [("conv_in", "out"), ("dec1b", "out"), ("enc1a", "in"), ("dec0", "in")],
        "down1": [("enc1a", "out"), ("enc1b", "in")],
        "x1": [("enc1b", "out"), ("dec2", "out"), ("enc2a", "in"), ("dec1a", "in")],
        "down2": [("enc2a", "out"), ("enc2b", "in")],
        "res": [("enc2b", "out"), ("dec2", "in")],
    }
    for i in range(num_blocks):
        r["res"] += [(f"blocks.{i}.conv2", "out"), (f"blocks.{i}.conv1", "in")]
        r[f"block{i}"] = [(f"blocks.{i}.conv1", "out"), (f"blocks.{i}.conv2", "in")]
    r["dec1"] = [("dec1a", "out"), ("dec1b", "in")]
    r["dec0"] = [("dec0", "out"), ("conv_out", "in")]
    return r


def _conv_side(conv: nn.Conv2d, side: str) -> Tuple[int, ...]:
    """The sizes a conv holds for one side (attribute, weight and bias), to check they agree."""
    w = conv.weight
    if side == "out":
        sizes = (conv.out_channels, w.shape[0]) + ((conv.bias.shape[0],) if conv.bias is not None else ())
    else:
        sizes = (conv.in_channels, w.shape[1] * conv.groups)
    return tuple(int(v) for v in sizes)


def official_channel_table(model: OfficialGenerator) -> Dict[str, int]:
    """Channel count of every group of an official generator, read off all the convs that produce
    or consume it; RuntimeError when they disagree (e.g. a skip's two sides pruned differently)."""
    mods = dict(model.named_modules())
    t = {}
    for group, sides in _official_readings(len(model.blocks)).items():
        seen = {f"{name}.{side}": _conv_side(mods[name], side) for name, side in sides}
        values = {v for sizes in seen.values() for v in sizes}
        if len(values) != 1:
            raise RuntimeError(f"channel group {group!r} is inconsistent: "
                               + ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in seen.items()))
        t[group] = values.pop()
    ends = {"conv_in.in": _conv_side(model.conv_in, "in"), "conv_out.out": _conv_side(model.conv_out, "out")}
    if any(v != 3 for sizes in ends.values() for v in sizes):
        raise RuntimeError(f"the RGB input/output convs must keep 3 channels: {ends}")
    return {k: t[k] for k in official_channel_groups(len(model.blocks))}


def _graph_groups(DG, model: OfficialGenerator) -> Dict[str, List[str]]:
    """torch-pruning's channel groups of an official generator, named after
    :func:`dctnet_lite.official.channel_groups`: ``{group: ["conv_in.out", "dec1b.out", ...]}``.

    RuntimeError when a group of the graph couples other convs than the family's table says (the
    additive skips: ``x0``, ``x1``, ``res``) or maps its indices other than one to one."""
    expected = {frozenset(f"{n}.{side}" for n, side in sides): g
                for g, sides in _official_readings(len(model.blocks)).items()}
    found: Dict[str, List[str]] = {}
    for group in DG.get_all_groups(ignored_layers=[model.conv_out], root_module_types=[nn.Conv2d]):
        convs = set()
        for dep, idxs in group:
            if not isinstance(dep.target.module, nn.Conv2d):
                continue
            side = "out" if DG.is_out_channel_pruning_fn(dep.handler) else \
                "in" if DG.is_in_channel_pruning_fn(dep.handler) else "?"
            name = f"{DG._module2name[dep.target.module]}.{side}"
            if list(idxs) != list(range(len(idxs))):
                raise RuntimeError(f"torch-pruning maps the channels of {name} other than one to one")
            convs.add(name)
        name = expected.get(frozenset(convs))
        if name is None:
            raise RuntimeError(f"torch-pruning couples {sorted(convs)}: not a channel group of the "
                               f"official generator ({', '.join(expected.values())})")
        found[name] = sorted(convs)
    missing = [g for g in expected.values() if g not in found]
    if missing:
        raise RuntimeError(f"torch-pruning found no group for {missing}")
    return {g: found[g] for g in official_channel_groups(len(model.blocks))}


def official_dependency_groups(model: OfficialGenerator) -> Dict[str, List[str]]:
    """The channel groups torch-pruning's ``DependencyGraph`` finds in an official generator
    (traced under ``plain_ops()`` on a :data:`OFFICIAL_TRACE_SIZE` px input, ``conv_out``
    ignored), checked against the family's groups (see :func:`_graph_groups`)."""
    import torch_pruning as tp

    x = torch.zeros(1, 3, OFFICIAL_TRACE_SIZE, OFFICIAL_TRACE_SIZE)
    with plain_ops():
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=(x, 1.0))
    return _graph_groups(DG, model)


def channel_table(model: Prunable) -> Dict[str, int]:
    """Channel count of every group, read off the (possibly pruned) layers of ``model`` (either
    family: the groups of :func:`dctnet_lite.model.channel_groups` or
    :func:`dctnet_lite.official.channel_groups`)."""
    if _family_name(model) == "official":
        return official_channel_table(model)
    t = {"scale1": model.content.stem[0].out_channels}
    for i in (2, 3, 4):
        t[f"scale{i}"] = model.content.stages[i - 2][2].out_channels
    for b in ("content", "texture"):
        enc = getattr(model, b)
        for i in (2, 3, 4):
            t[f"{b}.mid{i}"] = enc.stages[i - 2][0].out_channels
    for j, block in enumerate(model.bottleneck):
        t[f"bottleneck.mid{j}"] = block.body[0].out_channels
    for k, i in enumerate((3, 2, 1, 0)):
        t[f"up{i}"] = model.decoder[k].up[0].out_channels
        t[f"merge{i}"] = model.decoder[k].merge[0].out_channels
    return {k: int(t[k]) for k in channel_groups(len(model.bottleneck))}


def config_from_table(family: str, table: Mapping[str, int], num_blocks: int):
    """The family's config of a channel table (collapses to a width / base channels when uniform)."""
    if family == "official":
        return OfficialConfig.from_table(table, num_blocks)
    return ArchConfig.from_channels(dict(table), num_res_blocks=num_blocks)


def config_of(model: Prunable) -> Union[ArchConfig, OfficialConfig]:
    """The config of the layers as they are: an :class:`ArchConfig` for a DCTNet, an
    :class:`OfficialConfig` for an official generator (both collapse to a width when uniform)."""
    return config_from_table(_family_name(model), channel_table(model), _num_blocks(model))


def _num_blocks_of(config) -> int:
    return config.num_blocks if isinstance(config, OfficialConfig) else config.num_res_blocks


def _base_width(config) -> Optional[int]:
    """The uniform base width (DCTNet) or base channels ``c`` (official); None when non-uniform."""
    if not config.is_uniform:
        return None
    return config.channels if isinstance(config, OfficialConfig) else config.base_width


def _uniform_table(config, width: int) -> Dict[str, int]:
    """The channel table of the uniform architecture of ``config``'s family at ``width``."""
    if isinstance(config, OfficialConfig):
        return widths_from_channels(width, config.num_blocks)
    return ArchConfig.from_width(width, config.num_res_blocks).widths


def conv_macs(model: nn.Module, size: int = TRACE_SIZE) -> int:
    """MACs of the convolutions of one forward at ``size`` px, by forward hooks (fast).

    Proportional to :func:`dctnet_lite.profile.count_macs` (which costs ~0.4 s a call) for sides
    that are multiples of 16; used as the stopping test of the MACs-budget search. The official
    generator runs under ``plain_ops()`` so that every conv goes through its hooked module (its
    MACs at sides that are multiples of 4 are exactly proportional to the side squared).
    """
    total = [0]

    def hook(m, inp, out):
        total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    p = next(model.parameters())
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad(), plain_ops():  # every conv through its hooked module
            model(torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device), 1.0)
    finally:
        for h in handles:
            h.remove()
    return total[0]


_MACS_CACHE: Dict[Tuple[str, str, int], int] = {}


def family_macs(config: Union[ArchConfig, OfficialConfig], size: int) -> int:
    """MACs of one square forward at ``size`` px (batch 1), as the pruning report counts them.

    ``dctnet``: :func:`dctnet_lite.profile.count_macs`. ``official``: the generator's convolutions
    by forward hooks under ``plain_ops()`` (:func:`conv_macs` on a ``meta``-device model: no
    memory, no arithmetic); the guided filter's fixed box filters (no parameters, ~0.045 GMACs at
    512 px whatever the widths) are not counted. Memoised per architecture.
    """
    key = (type(config).__name__, config.to_json(), size)
    if key not in _MACS_CACHE:
        if isinstance(config, OfficialConfig):
            with torch.device("meta"):
                model = OfficialGenerator(config)
            _MACS_CACHE[key] = conv_macs(model, size)
        else:
            _MACS_CACHE[key] = count_macs(config, size)
    return _MACS_CACHE[key]



def _floor_to(n: float, multiple: int) -> int:
    return int(n + _EPS) // multiple * multiple


# ---------------------------------------------------------------------------------------------
# Calibration images and output drift
# ---------------------------------------------------------------------------------------------
def load_calibration(folder: Optional[PathLike], count: int = 8, size: int = 256,
                     seed: int = 0, why: str = "") -> Tuple[torch.Tensor, List[Path]]:
    """Up to ``count`` images of ``folder`` (a seeded sample when there are more), resized so the
    short side is ``size`` and centre-cropped square -> ``(N, 3, size, size)`` in [-1, 1]."""
    need = f" ({why})" if why else ""
    if folder is None:
        raise ValueError(f"a calibration folder is required{need}: pass calibration=DIR / --calibration DIR")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"calibration folder {root} does not exist{need}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"calib_images must be a positive integer, got {count!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"calib_size must be an integer >= 16, got {size!r}")
    files = list_images(root)
    if not files:
        raise ValueError(f"calibration folder {root} holds no images{need}")
    if len(files) > count:
        files = sorted(random.Random(seed).sample(files, count))
    batch = []
    for f in files:
        rgb, _ = read_image(f)
        img = Image.fromarray(rgb, "RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
        batch.append(arr / 127.5 - 1.0)
    return torch.stack(batch), files


@torch.no_grad()
def _outputs(model: nn.Module, images: torch.Tensor, batch: int = 2) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch], 1.0) for i in range(0, len(images), batch)])


@torch.no_grad()
def output_drift(pruned_out: torch.Tensor, parent_out: torch.Tensor) -> dict:
    """LPIPS(alex) and L1 between two batches of outputs in [-1, 1] (both measured in [0, 1])."""
    a = ((pruned_out.float() + 1) / 2).clamp(0, 1)
    b = ((parent_out.float() + 1) / 2).clamp(0, 1)
    l1 = (a - b).abs().flatten(1).mean(1)
    out = {"drift_l1": float(l1.mean()), "drift_l1_max": float(l1.max())}
    try:
        d = torch.cat([lpips_distance(a[i:i + 4], b[i:i + 4], net="alex") for i in range(0, len(a), 4)])
        out.update(drift_lpips_alex=float(d.mean()), drift_lpips_alex_max=float(d.max()))
    except Exception as e:  # weights unavailable offline: keep L1, say why LPIPS is missing
        warnings.warn(f"LPIPS drift not measured: {type(e).__name__}: {e}", stacklevel=2)
        out.update(drift_lpips_alex=None, drift_lpips_error=f"{type(e).__name__}: {e}")
    return out


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def parse_macs_budget(value: Union[float, int, str], parent_macs_512: int) -> Tuple[float, int]:
    """A MACs budget -> (fraction of the parent, absolute MACs at 512 px).

    Numbers in (0, 1) and ``"NN%"`` are fractions of the parent's MACs; numbers >= 1 and strings
    ending in ``G``/``GMACs`` are absolute GMACs at 512 px (``"0.5"`` reads as the number 0.5).
    """
    parent_g = parent_macs_512 / 1e9
    hint = "use a fraction of the parent's MACs (0.5 or '50%') or GMACs at 512 px ('20G')"
    frac = absolute = num = None
    if isinstance(value, str):
        s = value.strip().lower().replace(" ", "")
        try:
            if s.endswith("%"):
                frac = float(s[:-1]) / 100.0
            elif s.endswith("gmacs"):
                absolute = float(s[:-5]) * 1e9
            elif s.endswith("g"):
                absolute = float(s[:-1]) * 1e9
            else:
                num = float(s)
        except ValueError:
            raise ValueError(f"cannot read macs_budget {value!r}: {hint}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        num = float(value)
    else:
        raise ValueError(f"macs_budget must be a number or a string, got {value!r}: {hint}")
    if num is not None:
        if num < 1:
            frac = num
        else:
            absolute = num * 1e9
    if frac is not None:
        if not 0.0 < frac < 1.0:
            raise ValueError(f"macs_budget {value!r} must lie strictly between 0 and 1 of the parent's "
                             f"MACs ({parent_g:.3f} GMACs at 512 px)")
        return frac, int(frac * parent_macs_512)
    if not 0.0 < absolute < parent_macs_512:
        raise ValueError(f"macs_budget {value!r} = {absolute / 1e9:.3f} GMACs at 512 px must lie in "
                         f"(0, {parent_g:.3f}) GMACs, the parent's MACs at 512 px")
    return absolute / parent_macs_512, int(absolute)


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _importance(criterion: str):
    import torch_pruning as tp

    imp = tp.importance
    return {
        "l1": lambda: imp.MagnitudeImportance(p=1),
        "l2": lambda: imp.MagnitudeImportance(p=2),
        "taylor": lambda: imp.TaylorImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
        "fpgm": lambda: imp.FPGMImportance(p=2),
        "random": lambda: imp.RandomImportance(),
    }[criterion]()


def _resolve_parent(model_or_checkpoint) -> Tuple[Prunable, dict]:
    """-> (fp32 parent in eval mode, provenance fields about it).

    Paths are stored portably (:func:`dctnet_lite.tools.report.portable_path`: relative to the
    current directory when inside it, else the file name); the sha256 identifies the file.
    """
    if isinstance(model_or_checkpoint, PRUNABLE):
        parent = model_or_checkpoint
        info = getattr(parent, "checkpoint_info", None)
        prov = {"parent_checkpoint": None, "parent_sha256": None}
        if info is not None:
            prov = {"parent_checkpoint": portable_path(info.path), "parent_payload_sha256": info.sha256,
                    "parent_sha256": file_sha256(info.path) if Path(info.path).is_file() else None}
        # a private fp32 CPU copy in eval mode: the caller's model (dtype, device, mode) is left alone
        return copy.deepcopy(parent).to("cpu", torch.float32).eval(), prov
    if isinstance(model_or_checkpoint, nn.Module):
        _family_name(model_or_checkpoint)  # raises: a model of no prunable family
    path = resolve(model_or_checkpoint)
    parent = load(path, device="cpu", dtype=torch.float32)
    _family_name(parent)
    return parent.eval(), {"parent_checkpoint": portable_path(path), "parent_sha256": file_sha256(path),
                           "parent_payload_sha256": parent.checkpoint_info.sha256}


# ---------------------------------------------------------------------------------------------
# Pruning: check the options, resolve the target, run the pruner, rebuild, report
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TargetPlan:
    """A pruning target resolved against the parent.

    ``step_ratio`` is the single-step pruning ratio (``None``: the MACs-budget search);
    ``expected`` the exact channel table a single per-group step must produce (``None`` when the
    result is not known in advance: global ranking); ``target`` the provenance record.
    """

    target: Dict[str, Any]
    global_pruning: bool
    step_ratio: Optional[float]
    expected: Optional[Dict[str, int]]


def check_options(*, width, ratio, macs_budget, criterion: str, calibration, seed: int, round_to: int,
                  global_pruning, drift) -> None:
    """The checks that need no model (ValueError with the reason)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    given = [k for k, v in (("width", width), ("ratio", ratio), ("macs_budget", macs_budget)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one pruning target (width, ratio or macs_budget), got "
                         f"{', '.join(given) if given else 'none'}")
    _check_int("seed", seed, low=0)
    _check_int("round_to", round_to)
    if round_to % CHANNEL_MULTIPLE:
        raise ValueError(f"round_to must be a multiple of {CHANNEL_MULTIPLE} (the library's channel "
                         f"multiple: every group of an ArchConfig is one), got {round_to}")
    if global_pruning is not None and not isinstance(global_pruning, bool):
        raise ValueError(f"global_pruning must be true, false or unset, got {global_pruning!r}")
    if drift is not None and not isinstance(drift, bool):
        raise ValueError(f"drift must be true, false or unset, got {drift!r}")
    if calibration is None and (criterion in NEEDS_CALIBRATION or drift):
        why = f"criterion {criterion!r} computes gradients on it" if criterion in NEEDS_CALIBRATION \
            else "drift=True measures the output drift on it"
        raise ValueError(f"a calibration folder of images is required: {why}")


def resolve_target(parent_config: Union[ArchConfig, OfficialConfig], before: Dict[str, int], *, width=None,
                   ratio=None, macs_budget=None, global_pruning: Optional[bool] = None,
                   round_to: int = CHANNEL_MULTIPLE) -> TargetPlan:
    """Step 1: validate the one target against the parent (of either family) and turn it into a
    :class:`TargetPlan`. For the official family ``width`` is the base channel count ``c``."""
    official = isinstance(parent_config, OfficialConfig)
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0 or width % CHANNEL_MULTIPLE:
            raise ValueError(f"width must be a positive multiple of {CHANNEL_MULTIPLE}, got {width!r}")
        if not parent_config.is_uniform:
            raise ValueError(f"a width target needs a uniform parent; this one is "
                             f"{parent_config.describe()}: use ratio or macs_budget")
        pw = _base_width(parent_config)
        if width >= pw:
            what = f"base channels {pw} ({parent_config.describe()})" if official else f"width {pw}"
            raise ValueError(f"width {width} must be smaller than the parent's {what}")
        if width % round_to:
            raise ValueError(f"width {width} is not a multiple of round_to={round_to}")
        if global_pruning:
            raise ValueError("a width target is uniform: global_pruning=True does not apply "
                             "(use ratio or macs_budget for a non-uniform result)")
        return TargetPlan({"width": width, "parent_width": pw}, False, (pw - width) / pw - _EPS,
                          _uniform_table(parent_config, width))
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must lie strictly between 0 and 1, got {ratio!r}")
        expected = None
        if not global_pruning:
            expected = {k: _floor_to(v * (1 - ratio), round_to) for k, v in before.items()}
            empty = {k: before[k] for k, v in expected.items() if v < round_to}
            if empty:
                raise ValueError(f"ratio {ratio} would leave fewer than {round_to} channels in "
                                 f"{', '.join(f'{k} ({v} -> {v * (1 - ratio):.1f})' for k, v in empty.items())}")
            if expected == before:
                raise ValueError(f"ratio {ratio} removes no channel once counts are rounded to "
                                 f"multiples of {round_to}")
        return TargetPlan({"ratio": float(ratio)}, bool(global_pruning), float(ratio) - _EPS, expected)
    parent_macs_512 = family_macs(parent_config, 512)
    frac, budget_macs = parse_macs_budget(macs_budget, parent_macs_512)
    floor_cfg = config_from_table("official" if official else "dctnet", {k: round_to for k in before},
                                  _num_blocks_of(parent_config))
    floor_macs = family_macs(floor_cfg, 512)
    if budget_macs < floor_macs:
        raise ValueError(f"macs_budget {macs_budget!r} = {budget_macs / 1e9:.3f} GMACs at 512 px is "
                         f"below the smallest reachable network ({floor_macs / 1e9:.3f} GMACs, every "
                         f"group at {round_to} channels; parent {parent_macs_512 / 1e9:.3f})")
    target = {"macs_budget": macs_budget if isinstance(macs_budget, str) else float(macs_budget),
              "macs_budget_fraction": frac, "macs_budget_512": budget_macs}
    return TargetPlan(target, True if global_pruning is None else global_pruning, None, None)


def run_pruner(parent: Prunable, plan: TargetPlan, *, criterion: str, round_to: int, seed: int,
               images: Optional[torch.Tensor] = None,
               parent_out: Optional[torch.Tensor] = None) -> Tuple[Prunable, int]:
    """Step 2: torch-pruning on a copy of ``parent`` -> (the pruned module, steps taken).

    The dependency graph is traced on a ``(1, 3, S, S)`` zero input with strength 1.0
    (:data:`TRACE_SIZE`, :data:`OFFICIAL_TRACE_SIZE`); the official generator is traced, and its
    Taylor gradients computed, under ``plain_ops()``. The output conv is ignored."""
    import torch_pruning as tp

    work = copy.deepcopy(parent).requires_grad_(True)
    work.zero_grad(set_to_none=True)
    size = _trace_size(parent)
    example = torch.zeros(1, 3, size, size)
    Pruner = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner
    steps_done = 0
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), plain_ops():  # tracing needs autograd
        torch.manual_seed(seed)
        common = dict(importance=_importance(criterion), global_pruning=plan.global_pruning,
                      ignored_layers=[_head(work)], round_to=round_to)
        if plan.step_ratio is not None:
            pruner = Pruner(work, (example, 1.0), pruning_ratio=plan.step_ratio, iterative_steps=1, **common)
        else:
            pruner = Pruner(work, (example, 1.0), pruning_ratio=BUDGET_MAX_RATIO,
                            iterative_steps=BUDGET_STEPS, max_pruning_ratio=MAX_GROUP_RATIO, **common)
        if isinstance(work, OfficialGenerator):
            _graph_groups(pruner.DG, work)  # the skips couple exactly the family's groups, 1:1
        if criterion == "taylor":
            _taylor_gradients(work, images, parent_out, seed)
        if plan.step_ratio is not None:
            pruner.step()
            steps_done = 1
        else:
            ref = _step_macs(parent, size)
            frac_now = 1.0
            for _ in range(BUDGET_STEPS):
                pruner.step()
                steps_done += 1
                frac_now = _step_macs(work, size) / ref
                if frac_now <= plan.target["macs_budget_fraction"]:
                    break
            else:
                raise ValueError(f"macs_budget {plan.target['macs_budget']!r} not reached: after "
                                 f"{steps_done} steps the network keeps {frac_now:.3f} of the parent's MACs")
    work.zero_grad(set_to_none=True)
    work.eval()
    return work, steps_done


def _step_macs(model: Prunable, size: int) -> int:
    """The MACs-budget search's stopping measure. DCTNet: :func:`conv_macs` of the module.
    Official: :func:`family_macs` of the table read off the module (the same hooks, on a ``meta``
    model: every step has new conv shapes, and a real forward would pay oneDNN's set-up for each)."""
    if isinstance(model, OfficialGenerator):
        return family_macs(config_of(model), size)
    return conv_macs(model, size)


def rebuild_plain(work: Prunable, plan: TargetPlan, num_res_blocks: int,
                  images: Optional[torch.Tensor] = None) -> Tuple[Prunable, Any, float]:
    """Step 3: a fresh model of the pruned layers' config (same family: :class:`DCTNet` /
    :class:`ArchConfig` or :class:`OfficialGenerator` / :class:`OfficialConfig` from the table),
    loaded strictly and checked to give the pruned module's outputs -> (model, config, max |diff|).
    ``num_res_blocks`` is the parent's number of residual blocks (either family)."""
    family = _family_name(work)
    after = channel_table(work)  # the official table also checks every coupled group agrees
    if plan.expected is not None and after != plan.expected:
        diffs = ", ".join(f"{k}: {after[k]} (expected {plan.expected[k]})"
                          for k in after if after[k] != plan.expected[k])
        raise RuntimeError(f"torch-pruning did not produce the requested channel counts: {diffs}")
    head = _head(work)
    if min(after.values()) <= 0 or head.out_channels != 3:
        raise RuntimeError(f"pruning broke the network: {head}, channels {after}")
    config = config_from_table(family, after, num_res_blocks)
    model = (OfficialGenerator if family == "official" else DCTNet)(config)
    model.load_state_dict({k: v.detach().clone() for k, v in work.state_dict().items()}, strict=True)
    model.eval().requires_grad_(True)
    size = _trace_size(work)
    check_x = images[:2] if images is not None else \
        torch.linspace(-1, 1, 2 * 3 * size * size).reshape(2, 3, size, size)
    with torch.no_grad():
        diff = float((model(check_x, 1.0) - work(check_x, 1.0)).abs().max())
    if diff > 1e-6:
        raise RuntimeError(f"the rebuilt {config.describe()} {type(model).__name__} differs from the pruned module "
                           f"(max |diff| {diff:.3g})")
    return model, config, diff


def prune_report(parent: Prunable, parent_prov: dict, model: Prunable, plan: TargetPlan, *, criterion: str,
                 round_to: int, seed: int, steps: int, diff: float, calibration=None, files=(),
                 calib_size: int = 256, drift: Optional[dict] = None, seconds: float = 0.0) -> dict:
    """Step 4: the report (provenance, metrics, channel tables). No absolute path goes in it:
    the calibration folder as given (relative paths stay relative) and its files relative to it."""
    parent_config, config = config_of(parent), config_of(model)
    metrics = {
        "params_before": count_params(parent), "params_after": count_params(model),
        "macs_512_before": family_macs(parent_config, 512), "macs_512_after": family_macs(config, 512),
        "macs_1024_before": family_macs(parent_config, 1024), "macs_1024_after": family_macs(config, 1024),
    }
    metrics["params_ratio"] = round(metrics["params_after"] / metrics["params_before"], 4)
    metrics["macs_ratio"] = round(metrics["macs_512_after"] / metrics["macs_512_before"], 4)
    if drift is not None:
        metrics.update(drift)
        metrics.update(drift_images=len(files), drift_size=calib_size, drift_strength=1.0)
    root = Path(calibration).expanduser() if calibration is not None else None
    provenance = {
        "stage": "prune",
        "family": _family_name(model),
        **parent_prov,
        "parent_arch": parent_config.to_dict(),
        "criterion": criterion,
        "target": plan.target,
        "global_pruning": plan.global_pruning,
        "round_to": round_to,
        "seed": seed,
        "calibration": portable_path(root),
        "calibration_count": len(files),
        "calib_size": calib_size if files else None,
        "torch_pruning": _torch_pruning_version(),
        "torch": torch.__version__,
    }
    if criterion == "taylor":
        provenance["taylor_loss"] = (f"L1(model(x + N(0, {TAYLOR_NOISE}^2), s=1), parent(x, s=1)), "
                                     f"gradients once on the parent")
    provenance["dctnet_lite"] = __version__
    return {
        "provenance": provenance,
        "metrics": metrics,
        "family": _family_name(model),
        "arch": config.to_dict(),
        "description": config.describe(),
        "parent_description": parent_config.describe(),
        "channels_before": channel_table(parent),
        "channels_after": channel_table(model),
        "steps": steps,
        "rebuild_max_abs_diff": diff,
        "calibration_files": [Path(f).relative_to(root).as_posix() for f in files],
        "seconds": round(seconds, 3),
    }


def _torch_pruning_version() -> str:
    import torch_pruning as tp

    return getattr(tp, "__version__", "unknown")


def prune(model_or_checkpoint: Union[Prunable, PathLike], *, width: Optional[int] = None,
          ratio: Optional[float] = None, macs_budget: Union[float, str, None] = None,
          criterion: str = "l1", calibration: Optional[PathLike] = None, calib_images: int = 8,
          calib_size: int = 256, seed: int = 0, global_pruning: Optional[bool] = None,
          round_to: int = CHANNEL_MULTIPLE, drift: Optional[bool] = None) -> PruneResult:
    """Prune a model (a :class:`DCTNet` or an :class:`OfficialGenerator`, or a checkpoint name/path
    of either family) to a plain, smaller model of the same family.

    Give exactly one target: ``width`` (uniform: the base width, or the official family's base
    channels ``c``), ``ratio`` (per group, or over all channels with
    ``global_pruning=True``) or ``macs_budget`` (global by default; see :func:`parse_macs_budget`).
    ``calibration`` is a folder of images: required by ``criterion="taylor"``; when given, the
    drift (LPIPS alex and L1 between the pruned and the parent outputs at s=1, before any
    fine-tuning) is measured on ``calib_images`` of them at ``calib_size`` px. ``drift=True``
    insists on measuring it, ``drift=False`` skips it. The parent is not modified.

    The steps: :func:`check_options`, :func:`resolve_target`, :func:`run_pruner`,
    :func:`rebuild_plain`, :func:`prune_report`.
    """
    t0 = time.perf_counter()
    check_options(width=width, ratio=ratio, macs_budget=macs_budget, criterion=criterion,
                  calibration=calibration, seed=seed, round_to=round_to,
                  global_pruning=global_pruning, drift=drift)
    parent, parent_prov = _resolve_parent(model_or_checkpoint)
    plan = resolve_target(config_of(parent), channel_table(parent), width=width, ratio=ratio,
                          macs_budget=macs_budget, global_pruning=global_pruning, round_to=round_to)

    # calibration images (Taylor gradients, drift)
    want_drift = calibration is not None if drift is None else drift
    images, files = None, []
    if calibration is not None and (want_drift or criterion in NEEDS_CALIBRATION):
        why = "Taylor importance" if criterion in NEEDS_CALIBRATION else "output drift"
        images, files = load_calibration(calibration, calib_images, calib_size, seed, why=why)
    parent_out = _outputs(parent, images) if images is not None else None

    work, steps = run_pruner(parent, plan, criterion=criterion, round_to=round_to, seed=seed,
                             images=images, parent_out=parent_out)
    model, config, diff = rebuild_plain(work, plan, _num_blocks(parent), images)
    drift_metrics = output_drift(_outputs(model, images), parent_out) \
        if want_drift and images is not None else None
    report = prune_report(parent, parent_prov, model, plan, criterion=criterion, round_to=round_to,
                          seed=seed, steps=steps, diff=diff, calibration=calibration, files=files,
                          calib_size=calib_size, drift=drift_metrics, seconds=time.perf_counter() - t0)
    return PruneResult(model=model, config=config, report=report)


def _taylor_gradients(model: Prunable, images: torch.Tensor, parent_out: torch.Tensor, seed: int,
                      batch: int = 2) -> None:
    """Fill ``.grad`` with d/dw of ``mean L1(model(x + noise, 1), parent(x, 1))`` over the images."""
    gen = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    n = len(images)
    with torch.enable_grad():
        for i in range(0, n, batch):
            x, y = images[i:i + batch], parent_out[i:i + batch]
            noisy = (x + TAYLOR_NOISE * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
            loss = (model(noisy, 1.0) - y).abs().mean() * (len(x) / n)
            loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    if missing:
        raise RuntimeError(f"Taylor importance: no gradient reached {missing[:3]}")


# ---------------------------------------------------------------------------------------------
# Recipes: one jsonargparse parser for `dctnet-lite prune` and prune_main()
# ---------------------------------------------------------------------------------------------
#: Every recipe key: (key, type, default, help). ``--config FILE`` (repeatable: later files overlay
#: earlier ones) and the command line set them; ``--print_config`` shows the merged recipe.
RECIPE_OPTIONS: Tuple[Tuple[str, Any, Any, str], ...] = (
    ("checkpoint", Optional[str], None,
     "parent: a checkpoint name (dctnet_w64.toon) or a path, of the dctnet or the official family"),
    ("width", Optional[int], None,
     "target: uniform base width / official base channels c (a multiple of 8, below the parent's)"),
    ("ratio", Optional[float], None, "target: fraction of the channels to remove, in (0, 1)"),
    ("macs_budget", Union[float, str, None], None,
     "target: fraction of the parent's MACs (0.5, '50%') or GMACs at 512 px ('20G'); global"),
    ("criterion", str, "l1", f"channel importance: {', '.join(CRITERIA)}"),
    ("calibration", Optional[str], None,
     "folder of images (--data): needed by taylor; when given, the output drift is measured on it"),
    ("calib_images", int, 8, "calibration images used (a seeded sample of the folder)"),
    ("calib_size", int, 256, "calibration crop side in px"),
    ("seed", int, 0, "seeds the calibration sample, the Taylor noise and the random criterion"),
    ("global_pruning", Optional[bool], None,
     "rank all channel groups together (default: on for macs_budget, off otherwise)"),
    ("round_to", int, CHANNEL_MULTIPLE, "channel counts stay multiples of this"),
    ("drift", Optional[bool], None, "measure LPIPS/L1 drift on the calibration images (default: when given)"),
    ("output", Optional[str], None,
     "checkpoint to write; {width}, {ratio}, {criterion}, ... are replaced by the options' values"),
    ("dtype", str, "fp32", "stored precision of the checkpoint: fp32, fp16 or bf16"),
)
RECIPE_KEYS = tuple(k for k, *_ in RECIPE_OPTIONS)
_YES_NO = ("global_pruning", "drift")
#: Spellings of the argparse CLI that came before the recipes (still accepted).
_LEGACY_FLAGS = {"--recipe": "--config", "--global": "--global_pruning", "--no-global": "--no_global_pruning",
                 "--no-drift": "--no_drift"}


def build_parser(prog: str = "dctnet-lite prune"):
    """The jsonargparse parser of a pruning recipe (the ``dctnet-lite prune`` command line)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    parser = ArgumentParser(
        prog=prog, exit_on_error=False,
        description="Prune a checkpoint's channels with torch-pruning to a plain, smaller model of its "
                    "family (DCTNet or the official generator) "
                    "(prune/README.md). Options come from --config FILE (repeatable: later files "
                    "overlay earlier ones) and the command line, in that order; a target given later "
                    "(width, ratio or macs_budget) replaces an earlier one.")
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a recipe YAML (prune/*.yaml); --recipe FILE is a deprecated alias")
    for key, typ, default, help_text in RECIPE_OPTIONS:
        flags = [f"--{key}"]
        if "_" in key:
            flags.append(f"--{key.replace('_', '-')}")
        if key == "calibration":
            flags.append("--data")
        if key == "output":
            flags.insert(0, "-o")
        if key in _YES_NO:
            parser.add_argument(f"--{key}", action=ActionYesNo, default=None, help=help_text)
        else:
            parser.add_argument(*flags, type=typ, default=default, help=help_text)
    parser.add_argument("--json", action=ActionYesNo, default=False, help="print the report as JSON")
    return parser


def parse_recipe(argv: Sequence[str]) -> dict:
    """A pruning recipe from command-line arguments (``--config FILE`` ..., ``--width 48`` ...).

    Returns the merged options (every key of :data:`RECIPE_KEYS`, plus ``json`` and ``config``,
    the files read, portable). The last source (a config or a flag, in command-line order) that
    names a target decides it: targets that source does not set are cleared, so
    ``--config prune/uniform.yaml --macs_budget 30G`` replaces the recipe's width. Raises
    ValueError (one line) on an unknown key or a bad value.
    """
    argv = rewrite_argv(argv, "prune", _LEGACY_FLAGS)
    show = [a for a in argv if str(a).split("=")[0] == "--print_config"]
    argv = [a for a in argv if a not in show]
    known = {k: None for k in RECIPE_KEYS + ("json",)}
    last: set = set()
    for source, mapping in sources(argv):
        keys = {source[2:].replace("-", "_")} if mapping is None else {k for k, v in mapping.items() if v is not None}
        if mapping is not None:
            check_keys(mapping, known, "pruning option", source)
        if keys & set(TARGET_KEYS):
            last = keys & set(TARGET_KEYS)
    parser = build_parser()
    cfg = parse(parser, argv)
    for k in TARGET_KEYS:
        if last and k not in last:
            cfg[k] = None
    if show:  # after the target rule, so that it prints the recipe that would run
        print(parser.dump(cfg, skip_unset=False), end="")
        raise SystemExit(0)
    opts = cfg.as_dict()
    opts["config"] = [portable_path(p) for p in config_files(cfg)]
    return opts


def output_path(template: Optional[str], opts: Mapping) -> Optional[str]:
    """``output`` with ``{width}``, ``{criterion}``, ... replaced by the recipe's values."""
    if template is None:
        return None
    try:
        return str(template).format(**{k: opts.get(k) for k in RECIPE_KEYS})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"output {template!r}: cannot fill in {e}; use {{width}}, {{ratio}}, "
                         f"{{macs_budget}}, {{criterion}}, {{seed}} ...") from None


def run_recipe(opts: Mapping) -> PruneResult:
    """Prune as a parsed recipe says (see :func:`parse_recipe`); save when it names an output."""
    opts = dict(opts)
    checkpoint = opts.get("checkpoint")
    if checkpoint is None:
        raise ValueError("no parent checkpoint: give checkpoint (recipe) or --checkpoint")
    output = output_path(opts.get("output"), opts)
    kwargs = {k: opts[k] for k in RECIPE_KEYS if k in opts and k not in ("checkpoint", "output", "dtype")}
    result = prune(checkpoint, **kwargs)
    if output is not None:
        result.save(output, dtype=opts.get("dtype") or "fp32")
    return result


def prune_main(recipe_or_kwargs: Union[PathLike, Mapping, Sequence, None] = None, **overrides) -> PruneResult:
    """Run a recipe (a YAML path, a mapping, or a list of them: later ones overlay earlier ones)
    with ``overrides`` on top; save if it names an output.

    Keys: :data:`RECIPE_KEYS` (``checkpoint`` is the parent, ``output`` the file to write,
    ``dtype`` its precision). An override that sets a target (width, ratio, macs_budget) replaces
    the recipe's target; ``None`` overrides are ignored. Relative paths are relative to the
    current directory. The same parser as ``dctnet-lite prune --config FILE`` checks every key.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    opts = parse_recipe(as_argv(recipe_or_kwargs) + (as_argv(overrides) if overrides else []))
    return run_recipe(opts)


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``dctnet-lite prune``: exit 0 on success, 1 when pruning fails, 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    rc, done = run_verb("prune", argv, parse_recipe, lambda opts: (opts, run_recipe(opts)))
    if done is None:
        return rc
    opts, result = done
    r, m = result.report, result.metrics
    if opts.get("json"):
        print(json.dumps(r, indent=2, sort_keys=True))
        return 0
    print(f"pruned {r['parent_description']} -> {r['description']} "
          f"(criterion {r['provenance']['criterion']}, {r['steps']} step(s), {r['seconds']:.1f} s)")
    print(f"parameters : {m['params_before']:,} -> {m['params_after']:,} ({m['params_ratio']:.3f}x)")
    print(f"GMACs @512 : {m['macs_512_before'] / 1e9:.2f} -> {m['macs_512_after'] / 1e9:.2f} "
          f"({m['macs_ratio']:.3f}x); @1024: {m['macs_1024_before'] / 1e9:.2f} -> "
          f"{m['macs_1024_after'] / 1e9:.2f}")
    if "drift_l1" in m:
        lp = m.get("drift_lpips_alex")
        print(f"drift      : LPIPS(alex) {'n/a' if lp is None else f'{lp:.4f}'}, L1 {m['drift_l1']:.4f} "
              f"on {m['drift_images']} image(s) at {m['drift_size']} px (s=1, before fine-tuning)")
    print(f"wrote {r['output']}" if r.get("output") else "not saved (no -o/--output)")
    return 0

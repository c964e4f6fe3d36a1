"""Static cost of a network: parameters and multiply-accumulates at a resolution.

MACs are counted by torch's own ``FlopCounterMode`` on the ``meta`` device, so counting a
width-64 network at 2048 px costs no memory and well under a second.
"""
from __future__ import annotations

from typing import Any

import torch

from . import registry


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _config(arch: Any):
    """A config from a config, a model of any family, or a registered architecture name."""
    if isinstance(arch, str):
        return registry.get_arch(arch).config()
    return arch.config if isinstance(arch, torch.nn.Module) else arch


def count_macs(arch: Any, height: int, width: int = None, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (convolutions and matmuls), any family."""
    config = _config(arch)
    width = height if width is None else width
    with torch.device("meta"):
        model = registry.build(config)
        x = torch.empty(batch, 3, height, width)
    # imported here: torch.utils.flop_counter imports triton (about 0.35 s), which a CLI call that
    # counts nothing should not pay at start-up
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, 1.0)
    return counter.get_total_flops() // 2


def model_info(arch: Any, resolution: int = 1024) -> dict:
    """Family, parameters, MACs and channel table of an architecture at ``resolution`` px (square)."""
    config = _config(arch)
    with torch.device("meta"):
        params = count_params(registry.build(config))
    macs = count_macs(config, resolution)
    return {"family": registry.family_of(config).name, "arch": config.to_dict(), "description": config.describe(), "params": params,
            "resolution": resolution, "macs": macs, "gmacs": round(macs / 1e9, 3),
            "fp16_megabytes": round(params * 2 / 1e6, 2)}

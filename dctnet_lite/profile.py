"""Static cost of a network: parameters and multiply-accumulates at a resolution.

MACs are counted by torch's own ``FlopCounterMode`` on the ``meta`` device, so counting a
width-64 network at 2048 px costs no memory and well under a second.
"""
from __future__ import annotations

from typing import Union

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import ArchConfig, DCTNet


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(arch: Union[ArchConfig, DCTNet], height: int, width: int = None, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (convolutions and matmuls)."""
    config = arch.config if isinstance(arch, DCTNet) else arch
    width = height if width is None else width
    with torch.device("meta"):
        model = DCTNet(config)
        x = torch.empty(batch, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, 1.0)
    return counter.get_total_flops() // 2


def model_info(arch: Union[ArchConfig, DCTNet], resolution: int = 1024) -> dict:
    """Parameters, MACs and channel table of an architecture at ``resolution`` px (square)."""
    config = arch.config if isinstance(arch, DCTNet) else arch
    with torch.device("meta"):
        params = count_params(DCTNet(config))
    macs = count_macs(config, resolution)
    return {"arch": config.to_dict(), "description": config.describe(), "params": params,
            "resolution": resolution, "macs": macs, "gmacs": round(macs / 1e9, 3),
            "fp16_megabytes": round(params * 2 / 1e6, 2)}

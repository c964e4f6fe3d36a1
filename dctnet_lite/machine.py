"""Where a process runs: platform, CPU, memory, library versions and GPU (benchmarks, provenance)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Union

import torch

from . import __version__

#: The stable subset stored in a trained checkpoint's provenance (one entry per machine).
PROVENANCE_KEYS = ("platform", "cpu", "cpu_count", "gpu", "python", "torch")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def machine_info(device: Union[str, torch.device] = "cpu") -> dict:
    """Platform, CPU model, cores, memory, torch/CUDA versions and GPU name (if any)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpu_cores_logical": os.cpu_count(), "cpu_cores_usable": usable,
        "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
        "device": str(device), "gpu": None,
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info["dctnet_lite"] = __version__
    if torch.cuda.is_available():
        idx = torch.device(device).index or 0 if torch.device(device).type == "cuda" else 0
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu=torch.cuda.get_device_name(idx), gpu_memory_gb=round(props.total_memory / 1e9, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def machine_summary() -> dict:
    """The subset of :func:`machine_info` recorded in training provenance (:data:`PROVENANCE_KEYS`)."""
    info = machine_info()
    info["cpu_count"] = info["cpu_cores_logical"]
    return {k: info.get(k) for k in PROVENANCE_KEYS}

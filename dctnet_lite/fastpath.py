"""GPU fast path helpers: precision resolution, shape buckets and a CUDA-graph runner.

- :func:`resolve_precision`: ``"auto"`` -> ``bf16`` on a CUDA device with native bf16
  (Ampere and newer) and on a CPU with native bf16 (AVX512_BF16 or AMX: :func:`cpu_bf16_supported`),
  ``fp32`` elsewhere; the names are those of the one table, :data:`dctnet_lite.precision.PRECISIONS`.
- :func:`retain_cpu_memory`: keep freed CPU activation memory in the process (no page faults).
- :func:`bucket_shape`: round an image up to one of a few fixed sizes, so that a
  ``torch.compile``-d network (which recompiles for new shapes) or a captured CUDA graph (which
  is only valid for the shapes it was captured with) is reused across images of nearby sizes.
  The image is padded to its bucket by the one padding rule,
  :func:`dctnet_lite.model.pad_to_shape` (reflect where possible, else replicate; re-exported
  here), and the output is cropped back. Padding gives the pixels near the bottom/right border a
  different context than the plain multiple-of-16 padding, so bucketed outputs agree with
  unbucketed ones closely but not bit for bit (exactly when the bucket equals the
  multiple-of-16 padded size).
- :class:`GraphRunner`: captures ``fn(x, strength)`` once per (input shape, strides, dtype) in a
  :class:`torch.cuda.CUDAGraph` with static input, strength and output buffers, and replays it.
  The strength is a static ``(B,)`` device tensor that each call copies into (checked by the one
  strength rule, :func:`dctnet_lite.model.strength_vector`), so a new strength never forces a new
  capture.
"""
from __future__ import annotations

import collections
import os
import platform
import sys
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

# pad_to_shape is re-exported: the padding rule and the strength rule live in the model module
from .model import STRIDE, pad_to_shape, padded_side, strength_vector  # noqa: F401
from .precision import AUTO, PRECISION_CHOICES, check_precision

#: Bucket sides (px) for compiled / CUDA-graph inference; beyond the largest, multiples of 256.
DEFAULT_BUCKETS = (256, 384, 512, 768, 1024, 1536, 2048)
#: Rounding step beyond the largest bucket.
LARGE_STEP = 256


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------
def cuda_bf16_supported(device: Union[str, torch.device, None] = None) -> bool:
    """Native bf16 on this CUDA device (compute capability >= 8.0), not emulation."""
    if not torch.cuda.is_available():
        return False
    device = torch.device("cuda" if device is None else device)
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no including_emulation argument
            return bool(torch.cuda.is_bf16_supported())


#: CPU flags (as /proc/cpuinfo spells them) that mean native bf16 arithmetic: the AVX-512 bf16
#: dot products or the AMX tile units, which oneDNN uses for bf16 convolutions. Without them
#: bf16 is emulated and slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: Environment variable: ``fp32`` makes ``precision="auto"`` pick fp32 on the CPU regardless.
CPU_AUTO_ENV = "DCTNET_LITE_CPU_AUTO_PRECISION"


def cpu_flags() -> Tuple[str, ...]:
    """This CPU's feature flags (Linux: the first ``flags`` line of /proc/cpuinfo; elsewhere
    empty, so ``auto`` stays fp32 where it cannot tell)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def cpu_bf16_supported(flags: Optional[Sequence[str]] = None) -> bool:
    """Native bf16 on this CPU (AVX512_BF16 or AMX-BF16 in ``flags``, default :func:`cpu_flags`)
    and a torch build whose oneDNN uses it."""
    flags = cpu_flags() if flags is None else tuple(flags)
    if not any(f in flags for f in CPU_BF16_FLAGS):
        return False
    return bool(torch.backends.mkldnn.is_available())


def resolve_precision(precision: str, device: Union[str, torch.device],
                      cpu_features: Optional[Sequence[str]] = None) -> str:
    """``fp32``/``fp16``/``bf16`` as given; ``auto``: bf16 where the device does bf16 natively
    (CUDA compute capability >= 8.0; a CPU with AVX512_BF16 or AMX, see
    :func:`cpu_bf16_supported`, unless ``DCTNET_LITE_CPU_AUTO_PRECISION=fp32``), else fp32.
    ``cpu_features`` replaces the CPU's flags (tests)."""
    check_precision(precision, PRECISION_CHOICES)
    if precision != AUTO:
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_bf16_supported(device) else "fp32"
    if device.type == "cpu":
        if os.environ.get(CPU_AUTO_ENV, "").strip().lower() == "fp32":
            return "fp32"
        return "bf16" if cpu_bf16_supported(cpu_features) else "fp32"
    return "fp32"


# ---------------------------------------------------------------------------------------------
# CPU memory: keep freed blocks (no page faults per call)
# ---------------------------------------------------------------------------------------------
#: Environment variable: ``0`` leaves the C allocator's settings alone (see retain_cpu_memory).
RETAIN_ENV = "DCTNET_LITE_RETAIN_MEMORY"
#: Blocks up to this size come from the heap instead of their own mmap (glibc M_MMAP_THRESHOLD).
RETAIN_MMAP_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters (malloc.h)
_RETAINED: Optional[bool] = None


def retain_cpu_memory(enable: Optional[bool] = None) -> bool:
    """Keep the memory of freed CPU tensors in this process for the next call (glibc only).

    glibc serves every block over its mmap threshold (at most 32 MB by default) with a fresh
    ``mmap`` and gives it back to the kernel on free, so each inference call at 1024 px maps,
    page-faults in (zero-fills) and unmaps about 2 GB of activations again: on the 2-core VM
    this was measured at about 500,000 page faults and a quarter of the time of a 1024 px call
    of the official generator. With ``mallopt(M_MMAP_THRESHOLD, 1 GiB)`` and
    ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)``, such blocks come from the heap and stay there: the
    next call reuses them without a fault. The price is that the process keeps its peak memory
    (the largest image it has run) instead of returning it to the system between calls, which a
    resident model wants anyway (CUDA's caching allocator does the same).

    It is process-wide, so it is an explicit step: :class:`~dctnet_lite.inference.Cartoonizer`
    takes it on CPU (``retain_memory=None`` means on unless the environment variable
    ``DCTNET_LITE_RETAIN_MEMORY=0``), the CLI and the benchmarks through it. ``enable=None``
    reads that variable. Returns whether the settings are in force (False on non-glibc systems
    or when disabled). Calling it again is free; it never undoes the settings.
    """
    global _RETAINED
    if enable is None:
        enable = os.environ.get(RETAIN_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not enable:
        return bool(_RETAINED)
    if _RETAINED is None:
        _RETAINED = _mallopt_retain()
    return _RETAINED


def _mallopt_retain() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        if platform.libc_ver()[0] != "glibc":
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, RETAIN_MMAP_THRESHOLD) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1)


# ---------------------------------------------------------------------------------------------
# Shape buckets
# ---------------------------------------------------------------------------------------------
def bucket_side(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS, multiple: int = STRIDE) -> int:
    """The smallest bucket >= ``n`` (rounded up to ``multiple``); beyond the largest bucket,
    ``n`` rounded up to a multiple of 256 (and of ``multiple``)."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"image sides must be positive integers, got {n!r}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    fits = [int(b) for b in buckets if int(b) >= n]
    side = min(fits) if fits else padded_side(int(n), LARGE_STEP)
    return padded_side(side, multiple)


def bucket_shape(h: int, w: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 multiple: int = STRIDE) -> Tuple[int, int]:
    """(H, W) of the bucket an ``h x w`` image is padded to: each side independently the
    smallest bucket >= it; beyond the largest bucket, rounded up to a multiple of 256. Always a
    multiple of ``multiple`` (the network's total stride, 16).

    >>> bucket_shape(300, 200)
    (384, 256)
    >>> bucket_shape(2100, 512)
    (2304, 512)
    """
    if any(isinstance(b, bool) or int(b) != b or b < 1 for b in buckets):
        raise ValueError(f"buckets must be positive integers, got {tuple(buckets)!r}")
    return bucket_side(h, buckets, multiple), bucket_side(w, buckets, multiple)


def normalize_buckets(buckets) -> Optional[Tuple[int, ...]]:
    """``True`` -> :data:`DEFAULT_BUCKETS`; ``False``/``None``/empty -> ``None``; else sorted ints."""
    if buckets is None or buckets is False:
        return None
    if buckets is True:
        return DEFAULT_BUCKETS
    out = tuple(sorted({int(b) for b in buckets}))
    if not out:
        return None
    if out[0] < 1:
        raise ValueError(f"buckets must be positive, got {tuple(buckets)!r}")
    return out


# ---------------------------------------------------------------------------------------------
# CUDA graphs
# ---------------------------------------------------------------------------------------------
class _Captured:
    __slots__ = ("graph", "x", "strength", "y")

    def __init__(self, graph, x, strength, y):
        self.graph, self.x, self.strength, self.y = graph, x, strength, y


class GraphRunner:
    """Run ``fn(x, strength)`` through CUDA graphs, one per (shape, strides, dtype) of ``x``.

    The first call with a new key copies ``x`` and the strength into fresh static buffers, runs
    ``warmup`` eager iterations on a side stream (cuDNN autotuning and ``torch.compile``
    compilation happen there, outside the capture), captures one call in a
    :class:`torch.cuda.CUDAGraph` and replays it. Later calls with the same key only copy the new
    input and strength into the static buffers and replay.

    All graphs share one memory pool. That is safe because replays never run concurrently and
    each result is consumed before the next replay: **the returned tensor is the graph's static
    output buffer and is overwritten by the next call** (clone it to keep it). At most
    ``max_graphs`` graphs are kept (least recently used dropped). Not thread-safe.
    """

    def __init__(self, fn: Callable, device: Union[str, torch.device], *, warmup: int = 3,
                 max_graphs: int = 16):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if warmup < 1 or max_graphs < 1:
            raise ValueError("warmup and max_graphs must be >= 1")
        self.fn, self.device, self.warmup, self.max_graphs = fn, device, warmup, max_graphs
        self._graphs: "collections.OrderedDict[tuple, _Captured]" = collections.OrderedDict()
        self._pool = None
        self.captures = 0

    def __len__(self) -> int:
        return len(self._graphs)

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return tuple(x.shape), tuple(x.stride()), x.dtype

    def __call__(self, x: torch.Tensor, strength=1.0) -> torch.Tensor:
        if x.device != self.device and not (x.device.type == "cuda" and self.device.index is None):
            raise ValueError(f"input on {x.device}, graphs on {self.device}")
        s = strength_vector(strength, x.shape[0], x.device, x.dtype)
        k = self.key(x)
        entry = self._graphs.get(k)
        if entry is None:
            entry = self._capture(x, s)
            self._graphs[k] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(k)
            entry.x.copy_(x)
            entry.strength.copy_(s)
        entry.graph.replay()
        return entry.y

    def _capture(self, x: torch.Tensor, s: torch.Tensor) -> _Captured:
        static_x = torch.empty_like(x)  # same strides (channels_last kept)
        static_x.copy_(x)
        static_s = s.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(static_x, static_s)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_y = self.fn(static_x, static_s)
        self.captures += 1
        return _Captured(graph, static_x, static_s, static_y)

    def clear(self) -> None:
        """Drop every captured graph (their memory returns to the caching allocator)."""
        self._graphs.clear()

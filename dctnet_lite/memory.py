"""Memory a network call needs against the memory the device has: tile or refuse, never die.

:func:`available_bytes` is what one more allocation may take on a device: on CUDA the free
memory plus what PyTorch's allocator holds unused; on the CPU the smallest of the kernel's
``MemAvailable``, the cgroup's limit less its usage, and the address-space limit
(``RLIMIT_AS``) less the process's size.

:class:`MemoryModel` estimates the bytes a call on a (B, 3, H, W) input needs: a first, generous
guess of :data:`CRUDE_BYTES_PER_PIXEL` per pixel (no work at all), and when that does not fit,
a measurement: the network runs once on the meta device (no memory, no arithmetic) while every
tensor it creates and frees is counted, which gives its peak per pixel; the estimate is that
peak times :data:`SAFETY` (allocator and kernel workspaces; measured 1.3-1.5x on CPU), plus the
call's input and output conversions. :meth:`MemoryModel.plan` picks the whole image, or the
largest tile that fits ``BUDGET_FRACTION`` of what is available, or raises
:class:`MemoryLimitError` naming the estimate and what is available.
"""
from __future__ import annotations

import weakref
from typing import List, Optional

import torch

try:
    import resource
except ImportError:  # pragma: no cover - Windows: no address-space limit to read
    resource = None

#: First guess of a call's peak, bytes per input pixel at 4-byte precision (about 2.7x what the
#: width-64 two-branch network measures): below the budget, nothing is measured.
CRUDE_BYTES_PER_PIXEL = 4096
#: The measured peak (tensors alive at once) times this is the estimate.
SAFETY = 1.5
#: Bytes per pixel of the whole image around the network: uint8 -> float conversion,
#: normalisation, output quantisation, and in a tiled call the blended output and its weights.
IO_BYTES_PER_PIXEL = 64
#: A call may plan to use this fraction of the available memory.
BUDGET_FRACTION = 0.8


class MemoryLimitError(MemoryError):
    """A call would need more memory than the device has, even in the smallest tiles."""


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text in ("", "max") else int(text)
    except (OSError, ValueError):
        return None


def _cpu_available() -> Optional[int]:
    cands: List[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    cands.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")  # cgroup v2
    if limit is not None:
        cands.append(limit - (_read_int("/sys/fs/cgroup/memory.current") or 0))
    else:
        limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
        if limit is not None and limit < 1 << 60:
            cands.append(limit - (_read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0))
    soft = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else -1
    if resource is not None and soft != resource.RLIM_INFINITY:
        size = None
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        size = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
        if size is not None:
            cands.append(soft - size)
    return max(0, min(cands)) if cands else None


def available_bytes(device) -> Optional[int]:
    """Bytes one more allocation on ``device`` may take (see the module docstring), or ``None``
    where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        except (RuntimeError, AssertionError):
            return None
    if device.type == "cpu":
        return _cpu_available()
    return None


def _peak_bytes(model: torch.nn.Module, dtype: torch.dtype, channels_last: bool, h: int, w: int,
                strength=1.0) -> int:
    """Peak bytes of tensors alive at once while ``model`` runs on a (1, 3, h, w) input, measured
    on the meta device (the model's parameters are swapped for meta tensors: nothing is copied)."""
    from torch.func import functional_call
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.now, self.peak = {}, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    key = t.untyped_storage()._cdata
                    if key not in self.live:
                        n = t.untyped_storage().nbytes()
                        self.live[key] = n
                        self.now += n
                        self.peak = max(self.peak, self.now)
                        weakref.finalize(t, self.free, key)
            return out

        def free(self, key):
            self.now -= self.live.pop(key, 0)

    state = {k: torch.empty_like(v, device="meta") for k, v in
             list(model.named_parameters()) + list(model.named_buffers())}
    x = torch.empty(1, 3, h, w, device="meta", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), Counter() as c:
        y = functional_call(model, state, (x, strength))
        del y
    return c.peak


class MemoryModel:
    """The memory estimate of one network (see the module docstring)."""

    #: side of the square the network is measured at
    PROBE = 256

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, channels_last: bool = False):
        self.model, self.dtype, self.channels_last = model, dtype, channels_last
        self.elem = torch.empty((), dtype=dtype).element_size()
        self._per_pixel: Optional[float] = None

    def crude_per_pixel(self) -> float:
        return CRUDE_BYTES_PER_PIXEL * self.elem / 4

    def per_pixel(self) -> float:
        """Estimated network bytes per input pixel (measured once; the crude guess when the
        network cannot run on the meta device)."""
        if self._per_pixel is None:
            try:
                peak = _peak_bytes(self.model, self.dtype, self.channels_last, self.PROBE, self.PROBE)
                self._per_pixel = SAFETY * peak / (self.PROBE * self.PROBE)
            except Exception:  # a network the meta device cannot run: keep the generous guess
                self._per_pixel = self.crude_per_pixel()
        return self._per_pixel

    def need(self, b: int, h: int, w: int, tile: Optional[int], per_pixel: float) -> int:
        """Bytes a call on (b, 3, h, w) needs whole (``tile`` None) or in ``tile`` px tiles."""
        hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
        io = b * h * w * IO_BYTES_PER_PIXEL
        if tile is None or (h <= tile and w <= tile):
            return int(b * hp * wp * per_pixel + io)
        th, tw = min(tile, hp), min(tile, wp)
        return int(b * th * tw * (per_pixel + IO_BYTES_PER_PIXEL) + io)

    def plan(self, b: int, h: int, w: int, tile: Optional[int], *, available: Optional[int],
             default_tile: int, min_tile: int, where: str = "the device") -> Optional[int]:
        """The tile to run (b, 3, h, w) with: ``tile`` itself (``None``: whole) when it fits,
        else the largest smaller one (``default_tile`` halved down to ``min_tile``) that fits;
        :class:`MemoryLimitError` when none does. ``available=None``: ``tile`` unchecked."""
        if available is None:
            return tile
        budget = BUDGET_FRACTION * available
        options: List[Optional[int]] = [tile]
        t = tile if tile is not None else default_tile
        if tile is not None:
            t //= 2
        while t >= min_tile:
            if t < max(h, w) and t not in options:
                options.append(t)
            t //= 2
        crude = self.crude_per_pixel()
        for option in options:
            if self.need(b, h, w, option, crude) <= budget:
                return option
        precise = self.per_pixel()
        for option in options:
            if self.need(b, h, w, option, precise) <= budget:
                return option
        whole = self.need(b, h, w, tile, precise)
        smallest = self.need(b, h, w, options[-1], precise)
        tiles = f"{options[-1]} px tiles" if options[-1] is not None else "one piece"
        raise MemoryLimitError(
            f"a batch of {b} at {w}x{h} needs about {_gib(whole)} (still {_gib(smallest)} in {tiles}), "
            f"more than the {_gib(available)} available on {where}: lower the size or the batch size")


def describe_available(device) -> str:
    n = available_bytes(device)
    return "unknown" if n is None else _gib(n)

"""Latency, throughput, memory and cold start of the cartoonizer on this machine.

``bench(targets)`` times :meth:`Cartoonizer.forward` (float RGB in [0, 1] already on the device
-> output in [0, 1] on the device: normalisation, padding, network, tanh and clamp; no file IO,
no host/device copy) on square ``r x r`` random inputs at strength 1 (every strength runs the
same convolutions) for every (target, precision, backend, resolution, batch).

What each row holds (``rows[i]``):

- ``median_ms`` / ``p90_ms`` / ``mean_ms`` / ``min_ms`` (and ``p25_ms`` / ``p75_ms`` / ``max_ms``,
  the spread): latency of one *batch* over ``repeats`` timed calls after ``warmup`` untimed ones;
  ``first_call_ms`` is the first warm-up call (includes ``torch.compile`` compilation and CUDA
  graph capture where they apply);
- ``precision``: the precision that ran; ``requested_precision`` what was asked (``auto`` is the
  Cartoonizer's default, resolved per device by :func:`dctnet_lite.fastpath.resolve_precision`:
  bf16 on a CPU with native bf16, else fp32);
- ``throughput_img_s``: ``batch / median``;
- ``peak_mem_mb`` with ``peak_mem_method``: CUDA: ``torch.cuda.max_memory_allocated`` during the
  warm-up and timed calls, minus what was allocated before (weights and input excluded).
  CPU: peak resident set size (RSS) minus the RSS before the calls. On Linux the kernel's
  high-water mark is reset first (``/proc/self/clear_refs`` = 5, then ``VmHWM``), so the figure
  is this row's own peak (``rss-hwm``); where that is not possible a 1 ms RSS-sampling thread
  gives it (``rss-sampled``, may miss short spikes). No tracemalloc (it cannot see torch's
  allocations and slows everything down). Before each CPU row freed memory is handed back to
  the OS (``gc.collect`` and glibc ``malloc_trim(0)``) so that rows do not hide in each other's
  free lists; read the figure as the activations' working set, not a guarantee;
- ``macs`` / ``gmacs``: :func:`dctnet_lite.profile.count_macs` for the whole batch;
  ``tflops`` / ``gflops``: achieved ``2 * macs / median`` in TFLOP/s and GFLOP/s;
- ``peak_gflops`` / ``peak_fraction``: the measured matmul peak (:func:`measure_peak`) of the
  dtype the row ran (bf16 rows against the bf16 peak, fp32 rows against fp32, fp16 against fp16)
  and ``gflops / peak_gflops``; ``None`` when the peak was not measured (``peak=False``) or the
  matmul failed in that dtype;
- ``load_seconds``: :attr:`Cartoonizer.load_seconds` in this (warm) process (reading the
  checkpoint file, or only moving/casting a random-init width's model);
- ``interleaved_with`` (``bench(interleave=True)`` only): how many targets shared the rounds: each
  target warmed up alone (``first_call_ms``, ``peak_mem_mb`` from those calls), then every round
  timed one call of each, so ratios between rows hold on a machine whose speed drifts.

Timing: CUDA uses CUDA events around each call with a synchronize before reading them; CPU uses
``time.perf_counter``. Backends: ``eager``, ``channels_last`` (NHWC memory format), ``compile``
(``torch.compile`` default mode), ``compile-max-autotune`` (``torch.compile(mode="max-autotune")``:
its compile and autotuning, tens of seconds to minutes on a 2-core CPU, is in ``first_call_ms``),
``onnxruntime`` (fp32 only: the target's :func:`~dctnet_lite.tools.onnx_export.export_onnx` file,
cached per weights under the cache root's ``onnx/`` (:func:`onnx_export_cached`), run by ONNX
Runtime's CPU provider through :class:`~dctnet_lite.tools.onnx_export.OnnxRuntimeNetwork` with
the torch thread count), and ``cudagraphs`` (CUDA only: ``Cartoonizer(cuda_graphs=True)``,
the network captured in a CUDA graph by :class:`dctnet_lite.fastpath.GraphRunner` on the first
call and replayed on static buffers; normalisation and clamp run eagerly around it). Every
backend runs at the exact resolution (no shape buckets), so ``macs`` match the work done. A row
that fails (e.g. fp16 on a CPU without kernels, compile without a C++ compiler) carries ``error``
instead of figures; the run goes on.

Peak (``peak``, measured once per process and memoised): :func:`measure_peak` times one square
``n x n @ n x n`` matmul per dtype (``n`` = :data:`PEAK_SIZES`, 2048 on a CPU: a few hundred ms
on 2 cores), best of 3 after one untimed warm-up, with the same threads as the rows. It is the
rate this machine reaches on its best-tuned kernel (oneDNN/MKL, cuBLAS), not a data-sheet figure;
a row's ``peak_fraction`` says how far the network's convolutions are from it.

Cold start (``cold_start`` list, one entry per target): a fresh ``python -c`` subprocess imports
dctnet_lite, loads the checkpoint with :class:`Cartoonizer`, cartoonizes one image *file* at
``cold_start_size`` px and writes the PNG; it reports seconds since the parent's spawn (wall
clock) at each step: ``python_start_s``, ``import_s``, ``load_s`` (``load_seconds``),
``first_image_s`` (read + infer + write) and ``total_s`` (spawn to output written). Width targets
(random init) are saved to a temporary checkpoint first.

``anchor`` is a fixed block of figures *quoted* from the seed issue (ModelScope DCT-Net on a T4),
never measured here: compare against it only with the same resolution and batch.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..checkpoint import load, resolve, save_checkpoint
from ..fastpath import resolve_precision
from ..images import DEFAULT_PNG_LEVEL, save_image
from ..inference import Cartoonizer, is_onnx_path, resolve_device
from ..machine import machine_info
from ..model import ArchConfig, DCTNet
from ..pipeline import cartoonize_files, default_workers
from ..precision import AUTO, INT8, PRECISIONS
from ..profile import count_macs, count_params
from ..registry import family_of
from .evaluate import select_images

BACKENDS = ("eager", "channels_last", "compile", "compile-max-autotune", "onnxruntime", "cudagraphs")
#: The backend an ONNX file (an INT8 artefact of ``dctnet-lite quantize``, an export) runs on.
ONNX_BACKEND = "onnxruntime"
#: The exporter of the ``onnxruntime`` backend's fp32 files.
ONNX_EXPORTER = "dynamo"
SCHEMA = "dctnet-lite-bench/1"

#: Quoted, not measured: the seed issue's figures for the original ModelScope DCT-Net.
ANCHOR = {
    "label": "QUOTED, NOT MEASURED",
    "source": "seed issue: ModelScope DCT-Net (cv_unet_person-image-cartoon) pipeline on an NVIDIA T4",
    "device": "NVIDIA T4",
    "figures": [
        {"what": "inference per image", "resolution": 1024, "batch": 1, "seconds": 3.8},
        {"what": "model load", "resolution": 1024, "batch": 1, "seconds": 3.5},
        {"what": "total per image (process start to output, approx.)", "resolution": 1024,
         "batch": 1, "seconds": 8.0},
        {"what": "inference per image", "resolution": 512, "batch": 1, "seconds": 3.2},
        {"what": "throughput", "resolution": None, "batch": 16, "img_per_s": 0.22},
    ],
}

#: Keys every successful row has (documented in eval/README.md; checked by the tests).
ROW_KEYS = ("target", "arch", "width", "params", "device", "precision", "backend", "resolution",
            "batch", "threads", "warmup", "repeats", "median_ms", "p90_ms", "mean_ms", "min_ms",
            "p25_ms", "p75_ms", "max_ms", "requested_precision",
            "first_call_ms", "throughput_img_s", "peak_mem_mb", "peak_mem_method", "macs", "gmacs",
            "tflops", "gflops", "peak_gflops", "peak_fraction", "load_seconds")
COLD_KEYS = ("target", "resolution", "device", "python_start_s", "import_s", "load_s",
             "first_image_s", "total_s", "load_seconds_in_process")




# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kb("VmHWM"), _proc_status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _release_free_memory() -> None:
    """Give memory freed by earlier rows back to the OS (glibc ``malloc_trim``), so that this
    row's peak RSS shows its own working set instead of reusing the allocator's free lists."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _RSSPeak:
    """Peak RSS (bytes) above the RSS at start, for the CPU rows (see the module docstring)."""

    def __init__(self):
        self.method = "rss-hwm" if _proc_status_kb("VmHWM") is not None else "rss-sampled"
        self._stop = threading.Event()
        self._peak = 0
        self._thread = None

    @staticmethod
    def _rss() -> int:
        kb = _proc_status_kb("VmRSS")
        if kb is not None:
            return kb * 1024
        try:
            import resource  # ru_maxrss is a high-water mark; only a fallback for the fallback

            r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return r if sys.platform == "darwin" else r * 1024
        except ImportError:  # pragma: no cover (Windows)
            return 0

    def __enter__(self):
        _release_free_memory()
        if self.method == "rss-hwm" and not _reset_hwm():
            self.method = "rss-sampled"
        self.base = self._rss()
        if self.method == "rss-sampled":
            self._peak = self.base

            def poll():
                while not self._stop.wait(0.001):
                    self._peak = max(self._peak, self._rss())

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
        else:
            self._peak = (_proc_status_kb("VmHWM") or 0) * 1024
        self.peak_delta = max(0, self._peak - self.base)
        return False


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------
def _is_width(target) -> bool:
    return isinstance(target, int) and not isinstance(target, bool) or \
        isinstance(target, str) and target.isdigit()


def _target_model(target, seed: int = 0):
    """(label, DCTNet on CPU fp32, checkpoint path or None) for a width or a checkpoint. An ONNX
    file (an INT8 artefact): (file name, its architecture on the meta device, its path)."""
    if is_onnx_path(target):
        from .onnx_export import OnnxRuntimeNetwork

        net = OnnxRuntimeNetwork(target, threads=1)
        return Path(target).name, net.shadow(), Path(target)
    if _is_width(target):
        torch.manual_seed(seed)
        return f"w{int(target)} (random init)", DCTNet(ArchConfig.from_width(int(target))).eval(), None
    path = resolve(target)
    model = load(path, device="cpu")
    return model.checkpoint_info.name, model, path


def _percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def check_variants(precisions: Sequence[str] = (), backends: Sequence[str] = ()) -> None:
    """ValueError naming the first unknown backend or precision (the names of
    :data:`dctnet_lite.precision.PRECISIONS`)."""
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")


def variant_cartoonizer(source, device, precision: str, backend: str, buckets=False, resize: str = "auto"):
    """The :class:`Cartoonizer` of one (precision, backend) variant of the bench. ``onnxruntime``:
    an ONNX ``source`` as it is (its own precision), else the fp32 export of ``source``."""
    if backend == ONNX_BACKEND:
        if not is_onnx_path(source):
            if precision not in ("fp32", AUTO):
                raise ValueError(f"the onnxruntime backend runs fp32 exports, not {precision}; INT8 runs as its "
                                 f"own target (an artefact of `dctnet-lite quantize`)")
            source, precision = onnx_export_cached(source), "fp32"
        return Cartoonizer(source, device=device, precision=precision, resize=resize)
    compile = {"compile": True, "compile-max-autotune": "max-autotune"}.get(backend, False)
    return Cartoonizer(source, device=device, precision=precision,
                       channels_last=backend == "channels_last", compile=compile,
                       cuda_graphs=backend == "cudagraphs", buckets=buckets, resize=resize)


def onnx_export_cached(source) -> Path:
    """The fp32 ONNX export (:func:`~dctnet_lite.tools.onnx_export.export_onnx`) of a checkpoint
    (name or path) or a network, from the cache root's ``onnx/`` folder (see
    :func:`dctnet_lite.cache.default_cache_root`), exported there (atomically) on a miss; keyed by
    the fp32 weights' digest, the architecture, the dctnet_lite version and :data:`ONNX_EXPORTER`."""
    import hashlib

    from .. import __version__
    from ..cache import default_cache_root
    from ..checkpoint import payload_digest
    from .onnx_export import export_onnx

    model = load(resolve(source), device="cpu") if isinstance(source, (str, os.PathLike)) else source
    model = model.float().eval()
    key = hashlib.sha256("\0".join([payload_digest(model.state_dict()), family_of(model).name,
                                     model.config.to_json(), __version__, ONNX_EXPORTER]).encode()).hexdigest()[:32]
    path = default_cache_root() / "onnx" / f"{key}.fp32.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, exporter=ONNX_EXPORTER)
    return path


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    """``torch.set_num_threads(threads)`` inside (no change when falsy), restored afterwards."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# One row
# ---------------------------------------------------------------------------------------------
def _time_calls(fn, device: torch.device, n: int) -> List[float]:
    """Seconds of each of ``n`` calls of ``fn``."""
    times = []
    if device.type == "cuda":
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000.0)
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def _make_callable(cz, x: torch.Tensor, backend: str, device: torch.device):
    """A no-argument function running one forward of ``x`` (with ``cudagraphs`` the Cartoonizer
    captures its graph on the first call and replays it afterwards)."""
    return lambda: cz.forward(x, 1.0)


def _row_head(model, label: str, resolution: int, batch: int, precision: str, backend: str,
              dev: torch.device, warmup: int, repeats: int) -> dict:
    """A row's description (what runs), before anything is timed."""
    check_variants([precision] if precision not in (AUTO, INT8) else [], [backend])
    # the row names what ran (int8: an ONNX artefact's own precision, not a torch dtype)
    requested, precision = precision, precision if precision == INT8 else resolve_precision(precision, dev)
    if warmup < 1 or repeats < 1:
        raise ValueError("warmup and repeats must be >= 1")
    arch = model.config
    return {"target": label, "family": family_of(arch).name, "arch": arch.describe(),
            "width": getattr(arch, "base_width", None),
            "params": count_params(model), "device": str(dev), "precision": precision,
            "requested_precision": requested, "backend": backend, "resolution": int(resolution), "batch": int(batch),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "warmup": warmup, "repeats": repeats}


def _error(row: dict, e: BaseException) -> dict:
    return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _open_row(row: dict, model, checkpoint, dev: torch.device):
    """(Cartoonizer, one-call function) for a row; raises what building them raises."""
    source = str(checkpoint) if checkpoint is not None else copy.deepcopy(model)
    cz = variant_cartoonizer(source, dev, row["precision"], row["backend"])
    row["load_seconds"] = cz.load_seconds
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(row["batch"], 3, row["resolution"], row["resolution"], generator=gen).to(dev)
    return cz, _make_callable(cz, x, row["backend"], dev)


def _warm(fn, dev: torch.device, warmup: int, backend: str, more=None) -> Tuple[float, float, str]:
    """(first call s, peak memory bytes, method) over the ``warmup`` calls and ``more()``
    (the timed calls of a row measured alone; nothing when interleaved)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_alloc = torch.cuda.memory_allocated(dev)
        t0 = time.perf_counter()
        first = _time_calls(fn, dev, 1)[0]
        if backend == "cudagraphs":  # graph capture + first replay, wall clock
            first = time.perf_counter() - t0
        _time_calls(fn, dev, warmup - 1)
        if more is not None:
            more()
        return first, torch.cuda.max_memory_allocated(dev) - base_alloc, "cuda-max-allocated"
    with _RSSPeak() as mem:
        first = _time_calls(fn, dev, 1)[0]
        _time_calls(fn, dev, warmup - 1)
        if more is not None:
            more()
    return first, mem.peak_delta, mem.method


def _row_figures(row: dict, model, times: Sequence[float], first: float, peak: float, method: str,
                 peaks: Optional[Mapping[str, Optional[float]]]) -> dict:
    median = _percentile(times, 0.5)
    batch, resolution = row["batch"], row["resolution"]
    macs = count_macs(model.config, resolution, resolution, batch)
    row = dict(row)
    row.update(median_ms=median * 1e3, p90_ms=_percentile(times, 0.9) * 1e3,
               mean_ms=sum(times) / len(times) * 1e3, min_ms=min(times) * 1e3,
               p25_ms=_percentile(times, 0.25) * 1e3, p75_ms=_percentile(times, 0.75) * 1e3,
               max_ms=max(times) * 1e3,
               first_call_ms=first * 1e3, throughput_img_s=batch / median,
               peak_mem_mb=peak / 2 ** 20, peak_mem_method=method, macs=macs,
               gmacs=macs / 1e9, tflops=2 * macs / median / 1e12, gflops=2 * macs / median / 1e9)
    return with_peak_fraction(row, peaks)


def _release(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def bench_row(model, *, label: str, resolution: int, batch: int = 1, precision: str = "fp32",
              backend: str = "eager", device: Union[str, torch.device] = "cpu", warmup: int = 2,
              repeats: int = 5, checkpoint: Optional[Union[str, os.PathLike]] = None,
              peaks: Optional[Mapping[str, Optional[float]]] = None) -> dict:
    """Time one configuration.

    ``model`` is a CPU fp32 :class:`DCTNet` (it is copied, never modified); with ``checkpoint``
    the :class:`Cartoonizer` loads that file instead, so ``load_seconds`` includes reading it.
    ``peaks``: GFLOP/s per dtype (:func:`measure_peak`) for ``peak_fraction`` (see
    :func:`with_peak_fraction`; ``None`` without).
    """
    dev = resolve_device(device)
    row = _row_head(model, label, resolution, batch, precision, backend, dev, warmup, repeats)
    if backend == "cudagraphs" and dev.type != "cuda":
        return {**row, "error": "cudagraphs needs a CUDA device"}
    cz = None
    try:
        cz, fn = _open_row(row, model, checkpoint, dev)
        times: List[float] = []
        first, peak, method = _warm(fn, dev, warmup, backend, lambda: times.extend(_time_calls(fn, dev, repeats)))
    except Exception as e:  # one failing configuration must not end the benchmark
        return _error(row, e)
    finally:
        del cz
        _release(dev)
    return _row_figures(row, model, times, first, peak, method, peaks)


def bench_rows_interleaved(entries: Sequence[tuple], *, resolution: int, batch: int = 1,
                           precision: str = "fp32", backend: str = "eager",
                           device: Union[str, torch.device] = "cpu", warmup: int = 2, repeats: int = 5,
                           peaks: Optional[Mapping[str, Optional[float]]] = None) -> List[dict]:
    """:func:`bench_row` for several models at one configuration, **interleaved**: each is built
    and warmed up alone (its ``first_call_ms`` and ``peak_mem_mb`` come from its warm-up calls),
    then every round calls each once, so that all see the same machine state and the ratios of
    their medians hold on a machine whose speed drifts. ``entries``: ``(label, model, checkpoint
    path or None)``. One row per entry, in that order; a failing one carries ``error``."""
    dev = resolve_device(device)
    out: List[dict] = []
    live = []                                           # (index, row, model, cz, fn, first, peak, method)
    try:
        for label, model, path in entries:
            row = _row_head(model, label, resolution, batch, precision, backend, dev, warmup, repeats)
            out.append(row)
            try:
                cz, fn = _open_row(row, model, path, dev)
                first, peak, method = _warm(fn, dev, warmup, backend)
            except Exception as e:
                out[-1] = _error(row, e)
                continue
            live.append((len(out) - 1, row, model, cz, fn, first, peak, method))
        times: Dict[int, List[float]] = {i: [] for i, *_ in live}
        failed: Dict[int, BaseException] = {}
        for _ in range(repeats):
            for i, row, model, cz, fn, *_rest in live:
                if i in failed:
                    continue
                try:
                    times[i] += _time_calls(fn, dev, 1)
                except Exception as e:
                    failed[i] = e
        for i, row, model, cz, fn, first, peak, method in live:
            out[i] = _error(row, failed[i]) if i in failed else \
                _row_figures(row, model, times[i], first, peak, method, peaks)
    finally:
        live.clear()
        _release(dev)
    for r in out:
        r["interleaved_with"] = len(entries)
    return out


# ---------------------------------------------------------------------------------------------
# Peak: one large matmul per dtype
# ---------------------------------------------------------------------------------------------
#: Side of the square matmul that measures the peak, per device type (others: 4096).
PEAK_SIZES = {"cpu": 2048, "cuda": 8192}
#: Dtypes whose peak :func:`bench` always measures (plus any other precision it runs).
PEAK_DTYPES = ("fp32", "bf16")
PEAK_REPEATS = 3
#: (device, dtype, size, repeats, threads) -> GFLOP/s, or the error (str) of a failed matmul.
_PEAKS: Dict[tuple, Union[float, str]] = {}


def _matmul_seconds(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best of ``repeats`` timed ``size x size @ size x size`` matmuls after one untimed warm-up."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        a @ b
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def _peak_key(dev: torch.device, dtype: str, size: Optional[int], repeats: int) -> tuple:
    n = int(size or PEAK_SIZES.get(dev.type, 4096))
    return (str(dev), dtype, n, int(repeats), torch.get_num_threads() if dev.type == "cpu" else None)


def measure_peak(device: Union[str, torch.device] = "cpu", dtypes: Sequence[str] = PEAK_DTYPES,
                 threads: Optional[int] = None, size: Optional[int] = None,
                 repeats: int = PEAK_REPEATS) -> Dict[str, Optional[float]]:
    """Measured matmul GFLOP/s per dtype on ``device``: ``2 n^3 / t`` for the best of ``repeats``
    ``n x n`` matmuls after a warm-up (``n = size``, default :data:`PEAK_SIZES`), with ``threads``
    torch CPU threads (default: the current setting). Memoised per (device, dtype, size, repeats,
    threads) for the life of the process: the matmul runs once. ``None`` for a dtype whose matmul
    fails on this device (the error is in :func:`peak_metadata`)."""
    dev = resolve_device(device)
    check_variants(dtypes)
    if not dtypes:
        raise ValueError("measure_peak needs at least one dtype")
    if repeats < 1 or (size is not None and int(size) < 1):
        raise ValueError("peak size and repeats must be >= 1")
    out: Dict[str, Optional[float]] = {}
    with torch_threads(threads):
        for dtype in dict.fromkeys(dtypes):
            key = _peak_key(dev, dtype, size, repeats)
            if key not in _PEAKS:
                try:
                    n = key[2]
                    _PEAKS[key] = 2 * n ** 3 / _matmul_seconds(dev, PRECISIONS[dtype], n, key[3]) / 1e9
                except Exception as e:  # e.g. a dtype without kernels on this device
                    _PEAKS[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            value = _PEAKS[key]
            out[dtype] = value if isinstance(value, float) else None
    return out


def peak_metadata(device: Union[str, torch.device] = "cpu", dtypes: Sequence[str] = PEAK_DTYPES,
                  threads: Optional[int] = None, size: Optional[int] = None,
                  repeats: int = PEAK_REPEATS) -> dict:
    """:func:`measure_peak` with how it was measured (the ``peak`` block of a bench result)."""
    dev = resolve_device(device)
    gflops = measure_peak(dev, dtypes, threads, size, repeats)
    with torch_threads(threads):
        keys = {d: _peak_key(dev, d, size, repeats) for d in gflops}
    n, t = next(iter(keys.values()))[2], next(iter(keys.values()))[4]
    errors = {d: _PEAKS[k] for d, k in keys.items() if not isinstance(_PEAKS[k], float)}
    return {"measured": True, "gflops": gflops, "errors": errors, "device": str(dev), "size": n,
            "repeats": int(repeats), "threads": t,
            "method": f"torch.matmul of two {n}x{n} random matrices per dtype on {dev}, "
                      f"2*{n}^3 FLOP / best of {repeats} timed calls after 1 warm-up"
                      + (f", {t} torch threads" if t else "") + "; once per process (memoised)"}


def with_peak_fraction(row: dict, peaks: Optional[Mapping[str, Optional[float]]]) -> dict:
    """``row`` with ``peak_gflops`` (the peak of the dtype the row ran) and ``peak_fraction``
    (``gflops / peak_gflops``); both ``None`` without a peak for that dtype. Rows with ``error``
    are returned unchanged."""
    if "error" in row or "gflops" not in row:
        return row
    peak = (peaks or {}).get(row["precision"])
    row["peak_gflops"] = peak
    row["peak_fraction"] = row["gflops"] / peak if peak else None
    return row


# ---------------------------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------------------------
_COLD_SCRIPT = r"""
import json, sys, time
t_spawn = float(sys.argv[1]); t_py = time.time()
ckpt, image, size, device, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
import dctnet_lite
from dctnet_lite.inference import Cartoonizer
from dctnet_lite.images import save_image
t_imp = time.time()
cz = Cartoonizer(ckpt, device=device)
t_load = time.time()
save_image(cz(image, size=size), out)
if cz.device.type == "cuda":
    import torch; torch.cuda.synchronize()
t_out = time.time()
print("COLD_START_JSON " + json.dumps({
    "python_start_s": t_py - t_spawn, "import_s": t_imp - t_py, "load_s": t_load - t_imp,
    "load_seconds": cz.load_seconds, "first_image_s": t_out - t_load, "total_s": t_out - t_spawn}))
"""


def cold_start(checkpoint: Union[str, os.PathLike], resolution: int = 1024, device: str = "cpu",
               threads: Optional[int] = None, timeout: float = 600.0) -> dict:
    """Process start to first output of one image, in a fresh Python subprocess (see module doc)."""
    with tempfile.TemporaryDirectory(prefix="dctnet-cold-") as tmp:
        image = Path(tmp) / "photo.png"
        rng = np.random.default_rng()  # a new image each run: never a result-cache hit
        h, w = resolution, max(16, resolution * 3 // 4)  # portrait aspect, longer side = resolution
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(image)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t_spawn = time.time()
        proc = subprocess.run([sys.executable, "-c", _COLD_SCRIPT, repr(t_spawn), str(checkpoint), str(image),
                               str(resolution), str(device), str(Path(tmp) / "out.png")],
                              capture_output=True, text=True, timeout=timeout, env=env)
        wall = time.time() - t_spawn
    for line in proc.stdout.splitlines():
        if line.startswith("COLD_START_JSON "):
            res = json.loads(line[len("COLD_START_JSON "):])
            res["process_wall_s"] = wall  # including interpreter shutdown
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"cold-start subprocess failed (exit {proc.returncode}): {' | '.join(tail)}")


# ---------------------------------------------------------------------------------------------
# File to file
# ---------------------------------------------------------------------------------------------
def file_to_file(target: Union[str, int, os.PathLike], images: Union[str, os.PathLike, Sequence],
                 size: Optional[int] = 1024, device: str = "cpu", precision: str = "auto",
                 backend: str = "eager", limit: Optional[int] = 8, rounds: int = 2,
                 ext: str = ".png", threads: Optional[int] = None, resize: str = "auto",
                 workers: Optional[int] = None, png_level: Optional[int] = None) -> dict:
    """End-to-end time per image file, split into stages, in a warm process.

    Each image is read and decoded (EXIF, RGB; with ``resize="host"`` also scaled so its longer
    side is ``size`` by Pillow), run (uint8 to the device, conversion, with ``resize="device"``
    the scaling, network, quantisation, uint8 back: the part a faster forward pass shrinks) and
    encoded and written (Pillow, atomically) to a temporary folder. Every photo goes through
    ``rounds`` times; the first pass is a warm-up (allocator, cuDNN autotuning) and only later
    ones are timed. Returns medians over the timed passes: ``decode_ms``, ``model_ms``,
    ``encode_ms``, ``total_ms`` and ``model_share`` (model / total). CUDA is synchronised at the
    end of the model stage (the uint8 result comes back to the host).

    The stages are the Cartoonizer's public steps: :meth:`~dctnet_lite.inference.Cartoonizer.prepare`,
    :meth:`~dctnet_lite.inference.Cartoonizer.run_uint8`, then
    :meth:`~dctnet_lite.inference.Prepared.finish` and :func:`~dctnet_lite.images.save_image`.
    Then the same files go through :func:`~dctnet_lite.pipeline.cartoonize_files` at batch 1,
    ``rounds - 1`` times each way: one file after the other (``workers=0``) and with reading and
    writing overlapped (``workers``, default :func:`~dctnet_lite.pipeline.default_workers`):
    ``sequential_ms`` and ``pipelined_ms`` are the wall time per file (total / files).
    ``threads``: ``torch.set_num_threads`` for the run, restored afterwards.
    """
    check_variants(backends=[backend])
    if rounds < 2:
        raise ValueError("rounds must be >= 2 (the first is a warm-up)")
    dev = resolve_device(device)
    _, found = select_images(images, limit=limit)
    label, model, path = _target_model(target)
    cz = variant_cartoonizer(str(path) if path else model, dev, precision, backend,
                             buckets=backend in ("compile", "cudagraphs"), resize=resize)
    png_level = DEFAULT_PNG_LEVEL if png_level is None else int(png_level)
    workers = default_workers(dev) if workers is None else int(workers)
    stages: dict = {"decode": [], "model": [], "encode": [], "total": []}
    wall: dict = {"sequential": [], "pipelined": []}
    photos = [photo for photo, _ in found]
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="dctnet-f2f-") as tmp:
        for r in range(rounds):
            for i, photo in enumerate(photos):
                t0 = time.perf_counter()
                p = cz.prepare(photo, size, pin=True)
                t1 = time.perf_counter()
                out = cz.run_uint8(p.pixels, 1.0, p.hw)
                t2 = time.perf_counter()
                save_image(p.finish(out[0]), Path(tmp) / f"{i}{ext}", png_level=png_level)
                t3 = time.perf_counter()
                if r > 0:
                    for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                        stages[k].append(v)
        for r in range(rounds - 1):
            for way, n in (("sequential", 0), ("pipelined", workers)):
                rep = cartoonize_files(photos, Path(tmp) / way, cartoonizer=cz, size=size, ext=ext,
                                       batch_size=1, workers=n, png_level=png_level, progress=False)
                if rep.failed:
                    raise RuntimeError(f"file-to-file run failed: {rep.failed[0]}")
                wall[way].append(rep.seconds / len(photos))
    med = {f"{k}_ms": _percentile(v, 0.5) * 1e3 for k, v in {**stages, **wall}.items()}
    return {"target": label, "device": str(dev), "precision": cz.precision, "backend": backend,
            "size": size, "images": len(found), "rounds": rounds, "threads": threads,
            "resize": cz.resize, "workers": workers, "png_level": png_level, **med,
            "model_share": med["model_ms"] / med["total_ms"], "format": ext.lstrip(".")}


def format_file_to_file(r: dict) -> str:
    on_host = r.get("resize", "host") == "host"
    text = (f"file to file {r['target']} {r['precision']} {r['backend']} @ {r['size']}px ({r['images']} files): "
            f"total {r['total_ms']:.1f} ms = decode{'+resize' if on_host else ''} {r['decode_ms']:.1f} "
            f"+ {'model' if on_host else 'resize+model'} {r['model_ms']:.1f} "
            f"+ encode+write {r['encode_ms']:.1f} (model {100 * r['model_share']:.0f} %)")
    if "pipelined_ms" in r:
        text += (f"; cartoonize_files per file: one after the other {r['sequential_ms']:.1f} ms, "
                 f"overlapped ({r['workers']} reader/writer threads) {r['pipelined_ms']:.1f} ms "
                 f"({r['sequential_ms'] / r['pipelined_ms']:.2f}x)")
    return text


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
def bench(targets: Sequence[Union[str, int]], resolutions: Sequence[int] = (256, 512, 1024),
          batches: Sequence[int] = (1,), precisions: Sequence[str] = ("fp32",),
          backends: Sequence[str] = ("eager",), device: str = "cpu", threads: Optional[int] = None,
          warmup: int = 2, repeats: int = 5, cold_start: bool = True, *,
          cold_start_size: Optional[int] = None, progress: bool = False, peak: bool = True,
          interleave: bool = False) -> dict:
    """Benchmark every (target, precision, backend, resolution, batch); see the module docstring.

    ``targets``: checkpoint names/paths, or widths (ints or digit strings: random init).
    ``threads``: ``torch.set_num_threads`` for the run (CPU), restored afterwards.
    ``cold_start_size``: resolution of the cold-start image (default: the largest resolution).
    ``peak``: measure the matmul peak (:func:`peak_metadata`: fp32, bf16 and any other precision
    run) so that each row has ``peak_fraction``; ``False`` skips it (``None`` in the rows).
    ``interleave``: time the targets of each (precision, backend, resolution, batch) round-robin
    (:func:`bench_rows_interleaved`) instead of one after another, for ratios that hold on a
    machine whose speed drifts; ONNX artefacts (their own precision and backend) stay sequential.
    Returns a JSON-serialisable dict with ``machine``, ``settings``, ``peak``, ``rows``,
    ``cold_start`` and the quoted ``anchor``.
    """
    t_start = time.perf_counter()
    if not targets:
        raise ValueError("nothing to benchmark: give at least one checkpoint or width")
    check_variants([p for p in precisions if p != AUTO], backends)
    if any(int(r) < 16 for r in resolutions) or any(int(b) < 1 for b in batches):
        raise ValueError("resolutions must be >= 16 px and batches >= 1")
    dev = resolve_device(device)
    rows, colds = [], []
    cold_size = int(cold_start_size or max(resolutions))
    with torch_threads(threads):
        peak_info = peak_metadata(dev, (*PEAK_DTYPES, *(resolve_precision(p, dev) for p in precisions))) if peak else \
            {"measured": False, "gflops": {}, "method": "not measured (peak=False / --no-peak)"}
        loaded = [_target_model(target) for target in targets]
        together = [i for i, (_, _, path) in enumerate(loaded) if interleave and not is_onnx_path(path)]
        grouped: Dict[int, List[dict]] = {i: [] for i in together}

        def keep(row: dict, path, into: List[dict]) -> None:
            row["checkpoint"] = str(path) if path else None
            into.append(row)
            if progress:
                print(_row_line(row), file=sys.stderr, flush=True)

        for precision, backend, res, b in itertools.product(precisions if together else (), backends,
                                                            resolutions, batches):
            group = bench_rows_interleaved([loaded[i] for i in together], resolution=int(res), batch=int(b),
                                           precision=precision, backend=backend, device=dev, warmup=warmup,
                                           repeats=repeats, peaks=peak_info["gflops"])
            for i, row in zip(together, group):
                keep(row, loaded[i][2], grouped[i])
        for i, (target, (label, model, path)) in enumerate(zip(targets, loaded)):
            rows += grouped.get(i, [])
            # an ONNX file (an INT8 artefact) runs at its own precision on onnxruntime only
            onnx = is_onnx_path(path) and _onnx_variant(path)
            for precision, backend, res, b in itertools.product(
                    [onnx[0]] if onnx else () if i in grouped else precisions,
                    [onnx[1]] if onnx else backends, resolutions, batches):
                keep(bench_row(model, label=label, resolution=int(res), batch=int(b), precision=precision,
                               backend=backend, device=dev, warmup=warmup, repeats=repeats, checkpoint=path,
                               peaks=peak_info["gflops"]), path, rows)
            if cold_start:
                colds.append(_cold_entry(target, label, model, path, cold_size, dev, threads))
                if progress:
                    c = colds[-1]
                    print(f"[cold start] {label}: " + (c.get("error") or f"{c['total_s']:.2f} s total"),
                          file=sys.stderr, flush=True)
    machine = machine_info(dev)
    machine["torch_threads"] = int(threads) if threads else torch.get_num_threads()
    return {
        "schema": SCHEMA, "measured": True, "machine": machine,
        "settings": {"targets": [str(t) for t in targets], "resolutions": [int(r) for r in resolutions],
                     "batches": [int(b) for b in batches], "precisions": list(precisions),
                     "backends": list(backends), "device": str(dev), "threads": threads,
                     "warmup": warmup, "repeats": repeats, "cold_start": bool(cold_start),
                     "cold_start_size": cold_size if cold_start else None, "peak": bool(peak),
                     "interleave": bool(interleave),
                     "input": "square r x r random RGB in [0, 1] on the device, strength 1"},
        "peak": peak_info, "rows": rows, "cold_start": colds, "anchor": ANCHOR,
        "seconds": round(time.perf_counter() - t_start, 3),
    }


def _onnx_variant(path) -> tuple:
    """(precision, backend) an ONNX file runs as in the bench."""
    from .onnx_export import OnnxRuntimeNetwork

    return OnnxRuntimeNetwork(path, threads=1).precision, ONNX_BACKEND


def _cold_entry(target, label, model, path, size, dev, threads) -> dict:
    entry = {"target": label, "resolution": size, "device": str(dev)}
    try:
        with tempfile.TemporaryDirectory(prefix="dctnet-bench-") as tmp:
            ckpt = path
            if ckpt is None:
                ckpt = Path(tmp) / f"w{int(target)}-random.safetensors"
                save_checkpoint(ckpt, model, provenance={"note": "random init for benchmarking"})
            entry.update(cold_start(ckpt, size, str(dev), threads))
            entry["load_seconds_in_process"] = Cartoonizer(str(ckpt), device=dev).load_seconds
    except Exception as e:  # reported, not fatal
        entry["error"] = f"{type(e).__name__}: {e}"
    return entry


def _row_line(r: dict) -> str:
    head = f"{r['target']:<24} {r['precision']:<5} {r['backend']:<14} {r['resolution']:>5}px b{r['batch']:<3}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    return (f"{head} median {r['median_ms']:9.1f} ms  p90 {r['p90_ms']:9.1f} ms  "
            f"{r['throughput_img_s']:8.2f} img/s  {r['peak_mem_mb']:8.1f} MB  "
            f"{r['gflops']:9.2f} GFLOP/s  {_fraction_text(r.get('peak_fraction'))} of {r['precision']} peak")


def _fraction_text(fraction: Optional[float]) -> str:
    return "   n/a" if fraction is None else f"{100 * fraction:5.1f}%"


def _peak_line(peak: Optional[dict]) -> str:
    if not peak or not peak.get("measured"):
        return "peak: n/a (not measured)"
    figures = ", ".join(f"{d} {g:.1f} GFLOP/s" if g else f"{d} n/a ({peak['errors'].get(d, 'failed')})"
                        for d, g in peak["gflops"].items())
    return f"peak (measured: {peak['method']}): {figures}"


def format_table(result: dict) -> str:
    """Plain-text table of a :func:`bench` result (for the CLI)."""
    m = result["machine"]
    lines = [f"machine: {m.get('cpu')} ({m.get('cpu_cores_usable')} usable cores), "
             f"gpu: {m.get('gpu') or 'none'}, torch {m.get('torch')}, {m.get('torch_threads')} threads",
             _peak_line(result.get("peak"))]
    lines += [_row_line(r) for r in result["rows"]]
    for c in result.get("cold_start", []):
        if "error" in c:
            lines.append(f"cold start {c['target']}: ERROR {c['error']}")
        else:
            lines.append(f"cold start {c['target']} @ {c['resolution']}px: total {c['total_s']:.2f} s "
                         f"(python {c['python_start_s']:.2f}, import {c['import_s']:.2f}, "
                         f"load {c['load_s']:.2f}, first image {c['first_image_s']:.2f})")
    lines.append(f"anchor ({ANCHOR['label']}): {ANCHOR['source']}")
    return "\n".join(lines)

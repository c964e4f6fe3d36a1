"""Inference API: a resident :class:`Cartoonizer` for Python, and file batches for the CLI.

The same code serves CPU and CUDA. Pre- and post-processing (uint8 -> float, normalisation,
tanh output -> uint8, and on CUDA the resize to ``size``) run on the model's device. Images too
large for memory are processed in overlapping tiles blended with linear ramps; on CUDA an
out-of-memory error falls back to tiles.
On CUDA the defaults are the fast path: bf16 (where native), channels_last and cuDNN autotuning;
``compile=True`` and ``cuda_graphs=True`` add shape buckets (see :mod:`dctnet_lite.fastpath`).
:func:`cartoonize_files` overlaps reading and decoding the next images and encoding and writing
the last ones (thread pools) with the network.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from . import images as imio
from .cache import cache_key, decode_png, encode_png, file_image_bytes, open_cache, pixel_image_bytes
from .checkpoint import DTYPES, _payload_digest, default_checkpoint, load
from .fastpath import GraphRunner, bucket_shape, normalize_buckets, pad_to_shape, resolve_precision
from .fileutil import atomic_write_bytes
from .images import target_size
from .model import DCTNet

#: On CPU, images above this many pixels are tiled automatically (bounded memory).
CPU_MAX_PIXELS = 2048 * 2048
DEFAULT_TILE = 1024
MIN_TILE = 128
RESIZE_MODES = ("auto", "host", "device")


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but CUDA is not available on this machine")
    return device


def resize_on_device(x01: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(B, 3, h, w) float in [0, 1] -> (B, 3, H, W): antialiased bicubic (a downscale averages
    like PIL's filters do), clamped back to [0, 1]; runs wherever ``x01`` lives."""
    if tuple(x01.shape[-2:]) == tuple(hw):
        return x01
    return F.interpolate(x01, size=tuple(hw), mode="bicubic", antialias=True,
                         align_corners=False).clamp_(0, 1)


class Prepared(NamedTuple):
    """One decoded input, ready for the device: ``pixels`` (1, 3, h, w) uint8 on the host (pinned
    when bound for CUDA), ``alpha`` kept aside, ``kind`` of result to give back, and ``hw``, the
    (H, W) the network runs at (``pixels`` is already that size unless the resize is on the device)."""

    pixels: torch.Tensor
    alpha: Optional[np.ndarray]
    kind: str
    hw: Tuple[int, int]


def _ramp(n: int, overlap: int, device, dtype) -> torch.Tensor:
    """1-D blending weights: linear ramps of length ``overlap`` at both ends, never zero."""
    w = torch.ones(n, device=device, dtype=dtype)
    k = min(overlap, n // 2)
    if k > 0:
        r = torch.arange(1, k + 1, device=device, dtype=dtype) / (k + 1)
        w[:k] = r
        w[n - k:] = r.flip(0)
    return w


def _starts(n: int, tile: int, stride: int) -> List[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, stride))
    return s + [n - tile]


@dataclasses.dataclass
class FilesReport:
    """What :func:`cartoonize_files` did: outputs written and inputs that failed."""

    ok: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"ok": [list(x) for x in self.ok], "failed": [list(x) for x in self.failed],
                "seconds": round(self.seconds, 3)}


class Cartoonizer:
    """A resident, ready-to-run cartoonization model.

    Args:
        checkpoint: a checkpoint name (``toon-w48``), a path, or a :class:`DCTNet`; ``None``
            takes the shipped default and fails if no trained checkpoint exists.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. On CUDA,
            ``torch.backends.cudnn.benchmark`` is switched on (process-wide).
        precision: ``auto`` (bf16 on a CUDA device with native bf16, else fp32), ``fp32``,
            ``fp16`` or ``bf16`` (weights and activations cast).
        channels_last: memory format; ``None`` means on for CUDA, off for CPU.
        compile: wrap the network in ``torch.compile``.
        cuda_graphs: run the network through CUDA graphs captured per (padded shape, batch,
            dtype) and replayed (:class:`~dctnet_lite.fastpath.GraphRunner`); CUDA only.
        buckets: pad inputs up to fixed sizes (:func:`~dctnet_lite.fastpath.bucket_shape`) and
            crop back, so compiled code / captured graphs are reused across nearby sizes.
            ``None``: the default buckets when ``compile`` or ``cuda_graphs``, else off;
            ``True``/``False``: default buckets / off; a sequence of sides: these buckets.
        tile: tile size for tiled inference (``None``: whole images, with automatic tiling for
            very large images on CPU and on CUDA out-of-memory); ``tile_overlap`` pixels blend.
        cache: a result cache for path, PIL and array inputs (see :mod:`dctnet_lite.cache`):
            ``None`` (off), ``"disk"`` (the user cache dir), ``"memory"``, a folder, or a
            :class:`~dctnet_lite.cache.ResultCache`. A hit skips the model.
        resize: where an image is scaled to ``size``: ``"host"`` (Pillow Lanczos before the
            upload), ``"device"`` (after the upload, antialiased bicubic on the model's device:
            :func:`resize_on_device`), ``"auto"`` (device on CUDA, host on CPU). Both filters give
            nearly the same pixels; the choice is part of the result-cache key.
    """

    def __init__(self, checkpoint: Union[str, os.PathLike, DCTNet, None] = None, *,
                 device: Union[str, torch.device] = "auto", precision: str = "auto",
                 channels_last: Optional[bool] = None, compile: bool = False,
                 tile: Optional[int] = None, tile_overlap: int = 64, cache=None,
                 cuda_graphs: bool = False, buckets=None, resize: str = "auto"):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        if precision != "auto" and precision not in DTYPES:
            raise ValueError(f"precision must be one of {['auto', *sorted(DTYPES)]}, got {precision!r}")
        if tile is not None and tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {tile}")
        if tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0, got {tile_overlap}")
        self.device = resolve_device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, but the device is {self.device}")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.precision = resolve_precision(precision, self.device)
        self.resize = ("device" if self.device.type == "cuda" else "host") if resize == "auto" else resize
        self.dtype = DTYPES[self.precision]
        self.buckets = normalize_buckets((compile or cuda_graphs) if buckets is None else buckets)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        self.tile, self.tile_overlap = tile, tile_overlap
        t0 = time.perf_counter()
        if isinstance(checkpoint, DCTNet):
            model = checkpoint.eval()
        else:
            model = load(checkpoint if checkpoint is not None else default_checkpoint(), device="cpu")
        model = model.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.checkpoint_info = getattr(model, "checkpoint_info", None)
        self.net = torch.compile(model) if compile else model
        self.graphs = GraphRunner(lambda x, s: self.net(x, s), self.device) if cuda_graphs else None
        self.load_seconds = time.perf_counter() - t0
        self.cache = open_cache(cache)
        self._weights_sha256: Optional[str] = None

    # -------------------------------------------------------------------- tensors
    @torch.inference_mode()
    def forward(self, x01: torch.Tensor, strength: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] (float, any device) -> same shape in [0, 1] on the model's device."""
        x = x01.to(self.device, non_blocking=True).to(self.dtype) * 2 - 1
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        tile = self.tile
        if tile is None and self.device.type == "cpu" and h * w > CPU_MAX_PIXELS:
            tile = DEFAULT_TILE
        if tile is not None and (h > tile or w > tile):
            y = self._tiled(x, strength, tile)
        else:
            try:
                y = self._infer(x, strength)
            except torch.cuda.OutOfMemoryError:
                y = self._oom_fallback(x, strength)
        return ((y.float() + 1) * 0.5).clamp_(0, 1)

    def _infer(self, x: torch.Tensor, strength) -> torch.Tensor:
        """One network call: padded to its bucket and cropped back when bucketing, through the
        CUDA graphs when on (the result may be a graph's static buffer: consume it at once)."""
        h, w = x.shape[-2:]
        if self.buckets:
            x = pad_to_shape(x, *bucket_shape(h, w, self.buckets))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        y = self.graphs(x, strength) if self.graphs is not None else self.net(x, strength)
        return y[..., :h, :w]

    def _oom_fallback(self, x, strength):
        torch.cuda.empty_cache()
        tile = DEFAULT_TILE
        while tile >= MIN_TILE:
            try:
                return self._tiled(x, strength, tile)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                tile //= 2
        raise torch.cuda.OutOfMemoryError(f"out of memory even with {MIN_TILE} px tiles")

    def _tiled(self, x: torch.Tensor, strength, tile: int) -> torch.Tensor:
        """Overlapping tiles, blended with linear ramps; memory bounded by the tile size."""
        b, _, h, w = x.shape
        overlap = min(self.tile_overlap, tile // 2)
        stride = tile - overlap
        out = torch.zeros(b, 3, h, w, device=x.device, dtype=torch.float32)
        weight = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
        for top in _starts(h, tile, stride):
            for left in _starts(w, tile, stride):
                th, tw = min(tile, h), min(tile, w)
                y = self._infer(x[..., top:top + th, left:left + tw], strength).float()
                m = _ramp(th, overlap, x.device, torch.float32)[:, None] * _ramp(tw, overlap, x.device, torch.float32)[None, :]
                out[..., top:top + th, left:left + tw] += y * m
                weight[..., top:top + th, left:left + tw] += m
        return out / weight

    # -------------------------------------------------------------------- images
    def _prepare(self, image, size, pin: bool = False) -> Prepared:
        """Anything image-like -> :class:`Prepared` (decoded; resized here unless on the device).
        ``pin``: page-locked host memory when the device is CUDA (a reader thread pays for it)."""
        if isinstance(image, (str, os.PathLike)):
            rgb, alpha = imio.read_image(image)
            kind = "pil"
        elif isinstance(image, Image.Image):
            rgb, alpha = imio.split_alpha(ImageOps.exif_transpose(image))
            kind = "pil"
        elif isinstance(image, np.ndarray):
            rgb, alpha = imio.array_to_rgb(image)
            kind = "array"
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image, "
                            f"HxWxC uint8 array or a tensor")
        tw, th = target_size(rgb.shape[1], rgb.shape[0], size)
        if self.resize == "host":
            rgb = imio.resize_rgb(rgb, size)
        t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        if pin and self.device.type == "cuda":
            t = t.pin_memory()
        return Prepared(t, alpha, kind, (th, tw))

    @torch.inference_mode()
    def _run_uint8(self, batch: Union[torch.Tensor, Sequence[torch.Tensor]], strength,
                   hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(B,3,h,w) uint8, or a list of (1,3,h_i,w_i) uint8 -> (B,H,W,3) uint8 numpy at ``hw``
        (default: the input size). Upload, conversion, resize and quantisation happen on the
        model's device; on CUDA the host side is page-locked (unless it already is) and copied
        without blocking."""
        parts = [batch] if isinstance(batch, torch.Tensor) else list(batch)
        if hw is None:
            hw = tuple(parts[0].shape[-2:])
        xs = []
        for t in parts:
            if self.device.type == "cuda" and not t.is_pinned():
                t = t.pin_memory()
            xs.append(resize_on_device(t.to(self.device, non_blocking=True).float().div_(255), hw))
        y = self.forward(xs[0] if len(xs) == 1 else torch.cat(xs), strength)
        return y.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def __call__(self, image: Any, strength: float = 1.0, size: Optional[int] = None):
        """Cartoonize one image; returns the same kind it was given.

        Paths and PIL images give a PIL image (RGBA when the input had alpha), arrays give an
        HxWx3 (or x4) uint8 array, tensors ((3,H,W) or (B,3,H,W) in [0, 1], or uint8) give a
        float tensor in [0, 1] on the input's device. ``size`` sets the longer output side.
        """
        if isinstance(image, torch.Tensor):
            return self._call_tensor(image, strength, size)
        return self._cached_or_run(image, strength, size)

    # -------------------------------------------------------------------- result cache
    def _cache_key(self, image_bytes: bytes, strength, size) -> str:
        if self._weights_sha256 is None:
            info = self.checkpoint_info
            self._weights_sha256 = (info.sha256 if info is not None and info.sha256 else
                                    _payload_digest(self.model.state_dict()))
        precision = self.precision  # bucket padding changes border pixels slightly: own keys
        if self.buckets:
            precision += ";buckets=" + ",".join(map(str, self.buckets))
        if self.resize == "device" and size is not None:  # another filter: own keys
            precision += ";resize=device"
        return cache_key(image_bytes, self._weights_sha256, strength, size, precision,
                         self.tile, self.tile_overlap)

    def _cache_lookup(self, path, strength, size) -> Tuple[Optional[str], Optional[bytes]]:
        """(key, cached PNG bytes or None) of a file input; (None, None) without a cache."""
        if self.cache is None:
            return None, None
        try:
            key = self._cache_key(file_image_bytes(path), strength, size)
        except OSError:
            return None, None  # unreadable: _prepare reports it
        return key, self.cache.get(key)

    def _cached_or_run(self, image, strength, size):
        """One path / PIL / array image -> result of the same kind, through the cache if any."""
        key, hit, kind = None, None, "pil"
        if isinstance(image, (str, os.PathLike)):
            key, hit = self._cache_lookup(image, strength, size)
        if hit is None:
            p = self._prepare(image, size)
            kind = p.kind
            if self.cache is not None and key is None:  # in-memory input: keyed on its pixels
                key = self._cache_key(pixel_image_bytes(p.pixels[0].permute(1, 2, 0).numpy(), p.alpha),
                                      strength, size)
                hit = self.cache.get(key)
        if hit is not None:
            img = decode_png(hit)
            return np.array(img) if kind == "array" else img
        out = _finish(self._run_uint8(p.pixels, strength, p.hw)[0], p.alpha, kind)
        if key is not None:
            self.cache.put(key, encode_png(out))
        return out

    def _call_tensor(self, t: torch.Tensor, strength, size) -> torch.Tensor:
        single = t.dim() == 3
        x = t[None] if single else t
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"tensor input must be (3,H,W) or (B,3,H,W), got {tuple(t.shape)}")
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        if size is not None:
            tw, th = target_size(x.shape[-1], x.shape[-2], size)
            x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        y = self.forward(x, strength).to(t.device).clone()  # a normal tensor, not an inference one
        return y[0] if single else y

    def batch(self, images: Sequence[Any], strength: float = 1.0, size: Optional[int] = None,
              batch_size: int = 8) -> list:
        """Cartoonize many images; neighbours of the same network size run as one batch."""
        prepared = [self._prepare(im, size) for im in images]
        results: list = [None] * len(prepared)
        for idx in _same_shape_runs([p.hw for p in prepared], batch_size):
            out = self._run_uint8([prepared[i].pixels for i in idx], strength, prepared[idx[0]].hw)
            for j, i in enumerate(idx):
                results[i] = _finish(out[j], prepared[i].alpha, prepared[i].kind)
        return results


def _finish(rgb: np.ndarray, alpha: Optional[np.ndarray], kind: str):
    """Result in the kind of the input: a PIL image, or an array (HxWx4 when it had alpha)."""
    if kind == "array":
        return rgb if alpha is None else np.asarray(imio.compose(rgb, alpha))
    return imio.compose(rgb, alpha)


def _same_shape_runs(shapes: Sequence, batch_size: int) -> List[List[int]]:
    runs: List[List[int]] = []
    for i, s in enumerate(shapes):
        if runs and len(runs[-1]) < batch_size and shapes[runs[-1][0]] == s:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def cartoonize(image: Any, checkpoint=None, strength: float = 1.0, size: Optional[int] = None,
               device: str = "auto", precision: str = "auto"):
    """One-shot helper: load a model and cartoonize one image (see :class:`Cartoonizer`)."""
    return Cartoonizer(checkpoint, device=device, precision=precision)(image, strength=strength, size=size)


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.n, self.t0 = total, enabled and total > 0, 0, time.perf_counter()

    def update(self, label: str) -> None:
        self.n += 1
        if self.enabled:
            rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
            sys.stderr.write(f"\r[{self.n}/{self.total}] {rate:.2f} img/s {label[-40:]:<40}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def default_workers(device: Union[str, torch.device]) -> int:
    """Reader and writer threads of :func:`cartoonize_files` by default: on CUDA enough to keep
    decoding and encoding off the GPU's critical path (up to 8, at most the CPU count); on CPU 1,
    so the network keeps the cores and one image is read and one written alongside it."""
    if torch.device(device).type == "cuda":
        return max(1, min(8, os.cpu_count() or 1))
    return 1


class _Inline:
    """An executor that runs each task at once in the caller's thread (``workers=0``)."""

    def submit(self, fn, *args) -> cf.Future:
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: B902 - delivered through the future, as a pool would
            f.set_exception(e)
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _pool(workers: int, name: str):
    return cf.ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else _Inline()


def cartoonize_files(inputs: Iterable, out_dir, *, checkpoint=None, strength: float = 1.0,
                     size: Optional[int] = None, device: str = "auto", precision: str = "auto",
                     batch_size: int = 4, tile: Optional[int] = None, ext: str = ".png",
                     overwrite_inputs: bool = False, progress: Optional[bool] = None,
                     cartoonizer: Optional[Cartoonizer] = None, cache=None,
                     workers: Optional[int] = None, png_level: int = imio.DEFAULT_PNG_LEVEL,
                     resize: str = "auto") -> FilesReport:
    """Cartoonize files, folders and globs into ``out_dir``.

    A file that cannot be read or written is reported in ``FilesReport.failed`` and the batch
    goes on. Outputs are written atomically; inputs are never overwritten unless asked.
    ``cache`` (see :class:`Cartoonizer`; ignored when ``cartoonizer`` is given, which brings its
    own) lets a repeated file skip the model: the cached PNG is written as it is.

    ``workers`` threads read and decode the next images (and on CUDA page-lock them) while the
    network runs, and as many encode and write the finished ones; ``None`` takes
    :func:`default_workers`, ``0`` does everything in this thread, one file after the other.
    Results and the report's order do not depend on it. ``png_level``: zlib level of PNG
    outputs, 0-9 (Pillow's default 6; 1 encodes about 3x faster for about 20 % larger files).
    ``resize``: where images are scaled to ``size`` (see :class:`Cartoonizer`; like ``cache``,
    ignored when ``cartoonizer`` is given).
    """
    t0 = time.perf_counter()
    if not ext.startswith("."):
        ext = "." + ext
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not 0 <= int(png_level) <= 9:
        raise ValueError(f"png_level must be in 0..9, got {png_level}")
    found, failed = imio.expand_inputs(inputs)
    plan, refused = imio.plan_outputs(found, out_dir, ext, overwrite_inputs)
    report = FilesReport(failed=failed + refused)
    if not plan:
        report.seconds = time.perf_counter() - t0
        return report
    cz = cartoonizer or Cartoonizer(checkpoint, device=device, precision=precision, tile=tile,
                                    cache=cache, resize=resize)
    n_workers = default_workers(cz.device) if workers is None else int(workers)
    bar = _Progress(len(plan), sys.stderr.isatty() if progress is None else progress)

    def read(src: Path):
        """-> (cache key, cached PNG bytes, None) or (cache key, None, Prepared)."""
        key, hit = cz._cache_lookup(src, strength, size)
        return (key, hit, None) if hit is not None else (key, None, cz._prepare(src, size, pin=True))

    def write_hit(dst: Path, hit: bytes) -> None:
        if dst.suffix.lower() == ".png":
            atomic_write_bytes(dst, hit)
        else:
            imio.save_image(decode_png(hit), dst, png_level=png_level)

    def write_result(dst: Path, rgb: np.ndarray, alpha, key) -> None:
        img = imio.compose(rgb, alpha)
        imio.save_image(img, dst, png_level=png_level)
        if key is not None:
            cz.cache.put(key, encode_png(img))

    window = max(2 * batch_size, 2 * n_workers)  # images read ahead / results waiting to be written
    reads: collections.deque = collections.deque()
    writes: collections.deque = collections.deque()
    pending: List[Tuple[Path, Path, Prepared, Optional[str]]] = []
    todo = iter(plan)

    def read_ahead() -> None:
        while len(reads) < window:
            item = next(todo, None)
            if item is None:
                return
            reads.append((item, readers.submit(read, item[0])))

    def collect_writes(keep: int) -> None:
        """Report finished writes in submission order; wait while more than ``keep`` are queued."""
        while writes and (len(writes) > keep or writes[0][2].done()):
            src, dst, fut = writes.popleft()
            try:
                fut.result()
                report.ok.append((str(src), str(dst)))
            except (OSError, ValueError) as e:
                report.failed.append((str(src), f"could not write {dst}: {e}"))
            bar.update(src.name)

    def flush() -> None:
        if not pending:
            return
        try:
            outs = cz._run_uint8([p[2].pixels for p in pending], strength, pending[0][2].hw)
        except Exception as e:  # a whole batch failing (e.g. OOM) is reported per file
            report.failed += [(str(p[0]), f"inference failed: {type(e).__name__}: {e}") for p in pending]
            for p in pending:
                bar.update(p[0].name)
        else:
            for (src, dst, prep, key), rgb in zip(pending, outs):
                writes.append((src, dst, writers.submit(write_result, dst, rgb, prep.alpha, key)))
        pending.clear()

    readers, writers = _pool(n_workers, "dctnet-read"), _pool(n_workers, "dctnet-write")
    try:
        read_ahead()
        while reads:
            (src, dst), fut = reads.popleft()
            read_ahead()
            try:
                key, hit, prep = fut.result()
            except (imio.ImageReadError, ValueError) as e:
                report.failed.append((str(src), str(e)))
                bar.update(src.name)
                continue
            if hit is not None:  # a cached result: its PNG bytes as they are, or re-encoded
                writes.append((src, dst, writers.submit(write_hit, dst, hit)))
            else:
                if pending and (pending[0][2].hw != prep.hw or len(pending) >= batch_size):
                    flush()
                pending.append((src, dst, prep, key))
            collect_writes(keep=window)
        flush()
        collect_writes(keep=0)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report

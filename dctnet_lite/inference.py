"""The resident model: :class:`Cartoonizer` for Python (and the file pipeline's engine).

The same code serves CPU and CUDA. Pre- and post-processing (uint8 -> float, normalisation,
tanh output -> uint8, and on CUDA the resize to ``size``) run on the model's device. Images too
large for memory are processed in overlapping tiles blended with linear ramps: before a call the
memory it needs is estimated and compared with what the device has (:mod:`dctnet_lite.memory`),
so it runs whole, in tiles small enough, or is refused with
:class:`~dctnet_lite.memory.MemoryLimitError`; on CUDA an out-of-memory error also falls back to
tiles. ``size``, ``tile`` and batches have upper bounds (:data:`~dctnet_lite.images.MAX_SIZE`,
:data:`MAX_TILE`, :data:`MAX_BATCH`) and every image, decoded or as ``size`` would make it, must
stay within the pixel limit (:func:`~dctnet_lite.images.max_pixels_limit`).
On CUDA the defaults are the fast path: bf16 (where native), channels_last and cuDNN autotuning;
``compile=True`` and ``cuda_graphs=True`` add shape buckets (see :mod:`dctnet_lite.fastpath`).

The steps of a call are public methods, for the file pipeline (:mod:`dctnet_lite.pipeline`,
which overlaps reading and writing files with the network), the benchmarks and the distributed
runner: :meth:`Cartoonizer.prepare` (decode, resize on the host), :meth:`Cartoonizer.run_uint8`
(upload, network, quantise, download), :meth:`Prepared.finish` (the result in the input's kind),
:meth:`Cartoonizer.cache_lookup` / :meth:`Cartoonizer.cache_store` (the result cache), and
:func:`same_shape_runs` (which neighbours run as one batch). :func:`cartoonize_files`,
:class:`FilesReport` and :func:`default_workers` live in :mod:`dctnet_lite.pipeline` and are
re-exported here.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from . import images as imio
from .cache import (cache_key, decode_png, encode_png, file_image_bytes, open_cache, pixel_image_bytes,
                    verified_get)
from .checkpoint import default_checkpoint, load, payload_digest
from .fastpath import GraphRunner, bucket_shape, normalize_buckets, resolve_precision, retain_cpu_memory
from .images import target_size
from .memory import MemoryModel, available_bytes
from .model import pad_to_shape
from .precision import AUTO, CARTOONIZER_PRECISIONS, INT8, PRECISIONS, check_precision

#: On CPU, images above this many pixels are tiled automatically (bounded memory).
CPU_MAX_PIXELS = 2048 * 2048
DEFAULT_TILE = 1024
MIN_TILE = 128
#: The largest ``tile`` (px) and batch a call accepts.
MAX_TILE = 8192
MAX_BATCH = 256
RESIZE_MODES = ("auto", "host", "device")


class DeviceUnavailable(RuntimeError):
    """The device asked for does not exist on this machine."""


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise DeviceUnavailable(f"unknown device {str(device)!r} (give auto, cpu, cuda or cuda:N): "
                                f"{str(e).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {str(device)!r} was asked for but CUDA is not available on this "
                                f"machine (torch {torch.__version__}); use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"device {str(device)!r} was asked for but this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def is_onnx_path(source) -> bool:
    """Whether a checkpoint argument names an ONNX file (``*.onnx``: run by ONNX Runtime)."""
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".onnx")


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
    #: warnings about the input (e.g. only the first frame of an animation was read)
    notes: Tuple[str, ...] = ()

    def finish(self, rgb: np.ndarray):
        """The (H, W, 3) uint8 result of this input in the input's kind: a PIL image (RGBA when
        the input had alpha), or an array (HxWx4 when it had alpha)."""
        if self.kind == "array":
            return rgb if self.alpha is None else np.asarray(imio.compose(rgb, self.alpha))
        return imio.compose(rgb, self.alpha)


def _ramp(n: int, overlap: int, device, dtype) -> torch.Tensor:
    """1-D blending weights: linear ramps of length ``overlap`` at both ends, never zero."""
    w = torch.ones(n, device=device, dtype=dtype)
    k = min(overlap, n // 2)
    if k > 0:
        r = torch.arange(1, k + 1, device=device, dtype=dtype) / (k + 1)
        w[:k] = r
        w[n - k:] = r.flip(0)
    return w


def _runs_as_is(model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether ``model`` already is what a Cartoonizer would cast it to: in eval mode, every
    floating tensor on ``device`` in ``dtype``, its 4-D weights in the memory format asked for."""
    if any(m.training for m in model.modules()):
        return False
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device != device and not (device.type == t.device.type and device.index is None):
            return False
        if t.is_floating_point() and t.dtype != dtype:
            return False
        if t.dim() == 4 and not t.is_contiguous(memory_format=fmt):
            return False
    return True


def _starts(n: int, tile: int, stride: int) -> List[int]:
    if n <= tile:
        return [0]
    s = list(range(0, n - tile, stride))
    return s + [n - tile]


class Cartoonizer:
    """A resident, ready-to-run cartoonization model.

    Args:
        checkpoint: a checkpoint name (``dctnet_w48.toon``), a path, or a model (a
            :class:`~dctnet_lite.model.DCTNet` or another family's network); ``None`` takes the
            shipped default and fails if no trained checkpoint exists. A model you pass is
            left as it is: when it needs another device, dtype, memory format or eval mode, the
            Cartoonizer runs a copy (one more copy of the weights); otherwise it runs the model
            itself (``cartoonizer.model is model``).
            A ``.onnx`` path (``dctnet-lite export-onnx``, or an INT8 artefact of
            ``dctnet-lite quantize``) runs through ONNX Runtime on the CPU
            (:class:`~dctnet_lite.tools.onnx_export.OnnxRuntimeNetwork`; needs
            ``pip install 'dctnet-lite[onnx]'``) at the file's own precision (``int8``, ``fp32``):
            ``precision`` must be ``auto`` or that one; no ``compile`` / ``cuda_graphs``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``. On CUDA,
            ``torch.backends.cudnn.benchmark`` is switched on (process-wide).
        precision: ``auto`` (bf16 where the device does bf16 natively: CUDA compute
            capability 8.0 and newer, a CPU with AVX512_BF16 or AMX; else fp32; see
            :func:`~dctnet_lite.fastpath.resolve_precision`), ``fp32`` (the exact path: an
            imported official graph gives TensorFlow's output), ``fp16`` or ``bf16`` (weights
            and activations cast).
        channels_last: memory format; ``None`` means on (oneDNN and cuDNN both run these convs
            fastest in NHWC).
        compile: wrap the network in ``torch.compile`` (a string: that ``mode``, e.g. ``"max-autotune"``).
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
        max_pixels: the pixel limit of an input, decoded or as ``size`` makes it (``None``:
            ``$DCTNET_LITE_MAX_PIXELS`` or 64 MP; ``0``: none). A file over it is refused from
            its header, before it is decoded.

        retain_memory: on CPU, keep freed activation memory in the process for the next call
            instead of returning it to the kernel (no page faults per call: a quarter of a
            1024 px call on the 2-core VM; see :func:`~dctnet_lite.fastpath.retain_cpu_memory`,
            process-wide). ``None``: on unless ``DCTNET_LITE_RETAIN_MEMORY=0``; the process
            then keeps the memory of its largest call.

    ``tile_progress``: an optional ``callable(done, total)`` called after each tile of a tiled
    call (the file pipeline's progress bar sets it).
    """

    def __init__(self, checkpoint: Union[str, os.PathLike, nn.Module, None] = None, *,
                 device: Union[str, torch.device] = "auto", precision: str = "auto",
                 channels_last: Optional[bool] = None, compile: Union[bool, str] = False,
                 tile: Optional[int] = None, tile_overlap: int = 64, cache=None,
                 cuda_graphs: bool = False, buckets=None, resize: str = "auto", max_pixels=None,
                 retain_memory: Optional[bool] = None):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        check_precision(precision, CARTOONIZER_PRECISIONS)
        if tile is not None and not 16 <= tile <= MAX_TILE:
            raise ValueError(f"tile must lie in 16..{MAX_TILE} pixels, got {tile}")
        self.max_pixels = imio.max_pixels_limit(max_pixels)
        self.tile_progress = None
        if tile_overlap < 0:
            raise ValueError(f"tile_overlap must be >= 0, got {tile_overlap}")
        self.device = resolve_device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, but the device is {self.device}")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        t0 = time.perf_counter()
        onnx = None
        if is_onnx_path(checkpoint):  # onnxruntime imported only here (light core)
            from .tools.onnx_export import OnnxRuntimeNetwork

            if device != "auto" and self.device.type != "cpu" or compile or cuda_graphs:
                raise ValueError(f"{checkpoint}: an ONNX file runs on the CPU through ONNX Runtime "
                                 f"(no CUDA device, compile or cuda_graphs)")
            self.device = torch.device("cpu")
            onnx = OnnxRuntimeNetwork(checkpoint)
            if precision not in (AUTO, onnx.precision):
                raise ValueError(f"{checkpoint} is a {onnx.precision} ONNX file: give precision "
                                 f"'auto' or '{onnx.precision}', not {precision!r}")
        elif precision == INT8:
            raise ValueError("precision 'int8' needs an INT8 artefact (a .onnx file written by "
                             "`dctnet-lite quantize`) as the checkpoint")
        self.retain_memory = self.device.type == "cpu" and retain_cpu_memory(retain_memory)
        self.precision = onnx.precision if onnx is not None else resolve_precision(precision, self.device)
        self.resize = ("device" if self.device.type == "cuda" else "host") if resize == "auto" else resize
        self.dtype = PRECISIONS.get(self.precision, torch.float32)  # an ONNX file takes float32 in
        self.buckets = normalize_buckets((compile or cuda_graphs) if buckets is None else buckets)
        self.channels_last = onnx is None and (True if channels_last is None else bool(channels_last))
        self.tile, self.tile_overlap = tile, tile_overlap
        if onnx is not None:
            self.model, self.net, self.graphs = onnx.shadow(), onnx, None
            self.checkpoint_info = onnx.info
        elif isinstance(checkpoint, nn.Module):
            model = checkpoint
            if not _runs_as_is(model, self.device, self.dtype, self.channels_last):
                model = copy.deepcopy(model)  # the caller's module keeps its weights and mode
            model.eval()
        else:
            model = load(checkpoint if checkpoint is not None else default_checkpoint(), device="cpu")
        if onnx is None:
            model = model.to(device=self.device, dtype=self.dtype)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model = model
            self.checkpoint_info = getattr(model, "checkpoint_info", None)
            self.net = (torch.compile(model, mode=compile) if isinstance(compile, str) else
                        torch.compile(model)) if compile else model
            self.graphs = GraphRunner(lambda x, s: self.net(x, s), self.device) if cuda_graphs else None
        self.load_seconds = time.perf_counter() - t0
        self.cache = open_cache(cache)
        self._weights_sha256: Optional[str] = None
        self.memory = MemoryModel(self.model, self.dtype, self.channels_last)

    # -------------------------------------------------------------------- tensors
    @torch.inference_mode()
    def forward(self, x01: torch.Tensor, strength: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] (float, any device) -> same shape in [0, 1] on the model's device."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x01.to(self.device, non_blocking=True)
        # scaled in place in a tensor of our own: a copy unless moving it to the device made one
        x = x.to(dtype=self.dtype, memory_format=fmt, copy=x is x01).mul_(2).sub_(1)
        h, w = x.shape[-2:]
        tile = self.tile
        if tile is None and self.device.type == "cpu" and h * w > CPU_MAX_PIXELS:
            tile = DEFAULT_TILE
        tile = self.memory_plan(x.shape[0], h, w, tile)
        if tile is not None and (h > tile or w > tile):
            y = self._tiled(x, strength, tile)
        else:
            try:
                y = self._infer(x, strength)
            except torch.cuda.OutOfMemoryError:
                y = self._oom_fallback(x, strength)
        return ((y.float() + 1) * 0.5).clamp_(0, 1)

    def memory_plan(self, batch: int, h: int, w: int, tile: Optional[int] = None) -> Optional[int]:
        """The tile a (batch, 3, h, w) call runs in: ``tile`` (``None``: whole) when the estimate
        fits the memory available on the device, else the largest smaller tile that does; raises
        :class:`~dctnet_lite.memory.MemoryLimitError` when none does (see :mod:`dctnet_lite.memory`)."""
        if batch > MAX_BATCH:
            raise ValueError(f"a batch of {batch} images is above the limit of {MAX_BATCH}")
        return self.memory.plan(batch, h, w, tile, available=available_bytes(self.device),
                                default_tile=DEFAULT_TILE, min_tile=MIN_TILE, where=str(self.device))

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
        tops, lefts = _starts(h, tile, stride), _starts(w, tile, stride)
        done, total = 0, len(tops) * len(lefts)
        for top in tops:
            for left in lefts:
                th, tw = min(tile, h), min(tile, w)
                y = self._infer(x[..., top:top + th, left:left + tw], strength).float()
                m = _ramp(th, overlap, x.device, torch.float32)[:, None] * _ramp(tw, overlap, x.device, torch.float32)[None, :]
                out[..., top:top + th, left:left + tw] += y * m
                weight[..., top:top + th, left:left + tw] += m
                done += 1
                if self.tile_progress is not None:
                    self.tile_progress(done, total)
        return out / weight

    # -------------------------------------------------------------------- images
    def prepare(self, image, size: Optional[int] = None, *, pin: bool = False) -> Prepared:
        """Anything image-like (a path, a PIL image, an HxWxC array) -> :class:`Prepared`:
        decoded, EXIF-oriented, and scaled so its longer side is ``size`` here unless the resize
        is on the device (then :meth:`run_uint8` scales it). ``pin``: page-locked host memory
        when the device is CUDA (a reader thread pays for it). Raises
        :class:`~dctnet_lite.images.ImageReadError` for a file that cannot be read."""
        notes: Tuple[str, ...] = ()
        if isinstance(image, (str, os.PathLike)):
            rgb, alpha, notes = imio.decode_image(image, self.max_pixels if self.max_pixels else 0)
            kind = "pil"
        elif isinstance(image, Image.Image):
            imio.check_not_empty(image.height, image.width)
            imio.check_pixels(image.width, image.height, self.max_pixels, "the image")
            rgb, alpha = imio.split_alpha(ImageOps.exif_transpose(image))
            kind = "pil"
        elif isinstance(image, np.ndarray):
            rgb, alpha = imio.array_to_rgb(image)
            kind = "array"
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}: give a path, PIL image, "
                            f"HxWxC uint8 array or a tensor")
        if kind == "array":
            imio.check_pixels(rgb.shape[1], rgb.shape[0], self.max_pixels, "the image array")
        tw, th = target_size(rgb.shape[1], rgb.shape[0], size)
        if size is not None:
            where = f"{image}: " if isinstance(image, (str, os.PathLike)) else ""
            imio.check_pixels(tw, th, self.max_pixels, f"{where}the output at size {size}")
        if self.resize == "host":
            rgb = imio.resize_rgb(rgb, size)
        t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        if pin and self.device.type == "cuda":
            t = t.pin_memory()
        return Prepared(t, alpha, kind, (th, tw), tuple(notes))

    @torch.inference_mode()
    def run_uint8(self, batch: Union[torch.Tensor, Sequence[torch.Tensor]], strength=1.0,
                  hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(B,3,h,w) uint8, or a list of (1,3,h_i,w_i) uint8 (e.g. :attr:`Prepared.pixels`) ->
        (B,H,W,3) uint8 numpy at ``hw`` (default: the input size). Upload, conversion, resize and
        quantisation happen on the model's device; on CUDA the host side is page-locked (unless
        it already is) and copied without blocking."""
        parts = [batch] if isinstance(batch, torch.Tensor) else list(batch)
        if not parts:
            raise ValueError("run_uint8 needs at least one image")
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
    def cache_key(self, image_bytes: bytes, strength, size: Optional[int]) -> str:
        """The result-cache key of ``image_bytes`` (see :mod:`dctnet_lite.cache`) with this
        model's weights and settings (precision, buckets, resize, tiling)."""
        if self._weights_sha256 is None:
            info = self.checkpoint_info
            self._weights_sha256 = (info.sha256 if info is not None and info.sha256 else
                                    payload_digest(self.model.state_dict()))
        return cache_key(image_bytes, self._weights_sha256, strength, size, self.precision,
                         self.tile, self.tile_overlap, buckets=self.buckets, resize=self.resize)

    def cache_lookup(self, path, strength, size: Optional[int]) -> Tuple[Optional[str], Optional[bytes]]:
        """(key, cached PNG bytes or None) of a file input; (None, None) without a cache or for
        a file that cannot be read (:meth:`prepare` then reports it)."""
        if self.cache is None:
            return None, None
        try:
            key = self.cache_key(file_image_bytes(path), strength, size)
        except OSError:
            return None, None
        return key, verified_get(self.cache, key)

    def cache_store(self, key: Optional[str], result) -> None:
        """Store a finished result (PIL image or array) under ``key`` (a no-op for ``None``)."""
        if key is not None and self.cache is not None:
            self.cache.put(key, encode_png(result))

    def _cached_or_run(self, image, strength, size):
        """One path / PIL / array image -> result of the same kind, through the cache if any."""
        key, hit, kind = None, None, "pil"
        if isinstance(image, (str, os.PathLike)):
            key, hit = self.cache_lookup(image, strength, size)
        if hit is None:
            p = self.prepare(image, size)
            kind = p.kind
            if self.cache is not None and key is None:  # in-memory input: keyed on its pixels
                key = self.cache_key(pixel_image_bytes(p.pixels[0].permute(1, 2, 0).numpy(), p.alpha),
                                     strength, size)
                hit = verified_get(self.cache, key)
        if hit is not None:
            img = decode_png(hit)
            return np.array(img) if kind == "array" else img
        for note in p.notes:
            warnings.warn(f"{image}: {note}", UserWarning, stacklevel=3)
        out = p.finish(self.run_uint8(p.pixels, strength, p.hw)[0])
        self.cache_store(key, out)
        return out

    def _call_tensor(self, t: torch.Tensor, strength, size) -> torch.Tensor:
        single = t.dim() == 3
        x = t[None] if single else t
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"tensor input must be (3,H,W) or (B,3,H,W), got {tuple(t.shape)}")
        if x.shape[0] < 1:
            raise ValueError(f"the tensor holds no image (shape {tuple(t.shape)})")
        imio.check_not_empty(x.shape[-2], x.shape[-1], f"the image tensor (shape {tuple(t.shape)})")
        imio.check_pixels(x.shape[-1], x.shape[-2], self.max_pixels, "the image tensor")
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        if size is not None:
            tw, th = target_size(x.shape[-1], x.shape[-2], size)
            imio.check_pixels(tw, th, self.max_pixels, f"the output at size {size}")
            x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        y = self.forward(x, strength).to(t.device).clone()  # a normal tensor, not an inference one
        return y[0] if single else y

    def batch(self, images: Sequence[Any], strength: float = 1.0, size: Optional[int] = None,
              batch_size: int = 8) -> list:
        """Cartoonize many images; neighbours of the same network size run as one batch."""
        prepared = [self.prepare(im, size) for im in images]
        for im, p in zip(images, prepared):
            for note in p.notes:
                warnings.warn(f"{im}: {note}", UserWarning, stacklevel=2)
        results: list = [None] * len(prepared)
        for idx in same_shape_runs([p.hw for p in prepared], batch_size):
            out = self.run_uint8([prepared[i].pixels for i in idx], strength, prepared[idx[0]].hw)
            for j, i in enumerate(idx):
                results[i] = prepared[i].finish(out[j])
        return results


def same_shape_runs(shapes: Sequence, batch_size: int) -> List[List[int]]:
    """Indices of ``shapes`` grouped into runs of neighbours with equal shapes, at most
    ``batch_size`` long, in order: each run can go through the network as one batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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


# The file pipeline lives in its own module, which builds on this one; its names stay importable
# from here (imported last: dctnet_lite.pipeline imports Cartoonizer from this module).
from .pipeline import FilesReport, cartoonize_files, default_workers  # noqa: E402,F401

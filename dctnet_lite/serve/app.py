"""The FastAPI application of ``dctnet-lite serve`` (see ``docs/serving.md``).

Request path of one image (``POST /v1/cartoonize``), with the event loop only ever awaiting:

1. the body is read with a running byte count (``Content-Length`` over the limit is refused
   before a byte is read; 413); options come from the query string or the form fields (422);
2. admission: at most ``max_concurrency`` images are processed at once and ``max_queue`` more may
   wait for a slot; beyond that the answer is 429 at once;
3. in a worker thread: the cache key (the upload's bytes, the checkpoint's sha256, strength, size,
   precision and format) and the cache lookup; on a hit the stored bytes are the response;
4. in a worker thread: the image is identified and its header checked against the pixel limit
   before decoding (413), decoded, EXIF-oriented and resized (:meth:`Cartoonizer.prepare`);
5. the :class:`~dctnet_lite.serve.batching.DynamicBatcher` runs it on the device thread with the
   other images of its size that arrived together;
6. in a worker thread: the result is encoded (PNG, JPEG or WebP) and stored in the cache.

Every refusal is a JSON body ``{"error": {"status", "code", "message"}}`` with its status
(400, 404, 405, 408, 413, 415, 422, 429, 503). Nothing is written to disk from a request except the
cache (multipart bodies are parsed in memory, :mod:`dctnet_lite.serve.multipart`).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import logging
import math
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .. import images as imio
from ..cache import DiskCache, MemoryCache, ResultCache, encode_png, verified_get
from ..inference import Cartoonizer
from ..memory import MemoryLimitError
from .batching import BatcherClosed, DynamicBatcher
from .multipart import FormError, parse_form
from .rediscache import DEFAULT_TTL, RedisCache

log = logging.getLogger("dctnet_lite.serve")

STATIC = Path(__file__).resolve().parent / "static"
MIB = 1 << 20
#: Output formats: request spelling -> (Pillow format, media type, file extension).
FORMATS = {"png": ("PNG", "image/png", "png"), "jpeg": ("JPEG", "image/jpeg", "jpg"),
           "jpg": ("JPEG", "image/jpeg", "jpg"), "webp": ("WEBP", "image/webp", "webp")}
#: Pillow formats an upload may be in (anything else is 415).
READ_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
#: Quality of JPEG and WebP responses.
LOSSY_QUALITY = 90
#: Request body media types taken as one raw image.
RAW_TYPES = ("application/octet-stream",)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    """Every setting of the service (the flags of ``dctnet-lite serve``).

    ``checkpoints``: names or paths (empty: the shipped default); the first is the default of a
    request. ``cache``: ``None`` (off), ``"disk"``, ``"disk:DIR"``, ``"memory"``,
    ``"redis://HOST:PORT/DB"`` or a :class:`~dctnet_lite.cache.ResultCache`.
    ``max_pixels``: the pixel limit of an upload (from its header, before decoding) and of an
    output at ``size``; 0 for none. ``max_concurrency`` images are processed at once, ``max_queue``
    more wait for a slot, beyond that requests get 429. ``timeout_s``: a request (queueing
    included) that takes longer gets 503. ``workers``: threads for decoding, resizing, encoding
    and cache I/O (default: min(4, CPUs)). ``threads``: torch's intra-op threads (default: torch's).
    """

    checkpoints: Sequence[Any] = ()
    device: str = "auto"
    precision: str = "auto"
    cache: Any = None
    cache_ttl: Optional[int] = DEFAULT_TTL
    cache_max_bytes: int = 1 << 30
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_upload_bytes: int = 32 * MIB
    max_pixels: int = 16_000_000
    max_concurrency: int = 16
    max_queue: int = 64
    max_files: int = 16
    timeout_s: float = 60.0
    workers: Optional[int] = None
    threads: Optional[int] = None
    warmup_size: int = 256
    redis_retry_s: float = 5.0
    #: the compound system (a head model on every face over a background model), served as the
    #: model named ``compound`` besides ``checkpoints``: on when ``compound`` or ``head`` or
    #: ``background`` is given (``background`` defaults to the first checkpoint, ``head`` to the
    #: shipped default); ``detector``: ``"mtcnn"``, a callable or ``None``
    compound: bool = False
    head: Any = None
    background: Any = None
    detector: Any = "mtcnn"
    min_face: Optional[int] = None
    max_side: Optional[int] = None

    def check(self) -> "ServeConfig":
        def need(ok, what):
            if not ok:
                raise ValueError(what)
        need(1 <= int(self.max_batch) <= 256, f"max_batch must lie in 1..256, got {self.max_batch}")
        need(0 <= float(self.max_wait_ms) <= 10_000, f"max_wait_ms must lie in 0..10000, got {self.max_wait_ms}")
        need(int(self.max_upload_bytes) >= 1, f"max_upload_bytes must be >= 1, got {self.max_upload_bytes}")
        need(int(self.max_pixels) >= 0, f"max_pixels must be >= 0 (0: no limit), got {self.max_pixels}")
        need(int(self.max_concurrency) >= 1, f"max_concurrency must be >= 1, got {self.max_concurrency}")
        need(int(self.max_queue) >= 0, f"max_queue must be >= 0, got {self.max_queue}")
        need(int(self.max_files) >= 1, f"max_files must be >= 1, got {self.max_files}")
        need(float(self.timeout_s) > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        need(self.workers is None or int(self.workers) >= 1, f"workers must be >= 1, got {self.workers}")
        need(self.threads is None or int(self.threads) >= 1, f"threads must be >= 1, got {self.threads}")
        need(self.cache_ttl is None or int(self.cache_ttl) >= 0, f"cache_ttl must be >= 0, got {self.cache_ttl}")
        if isinstance(self.cache, (str, os.PathLike)):
            _cache_kind(self.cache)
        return self


def open_result_cache(spec, *, ttl: Optional[int] = DEFAULT_TTL, max_bytes: int = 1 << 30,
                      retry_after: float = 5.0) -> Optional[ResultCache]:
    """``--cache`` -> a :class:`~dctnet_lite.cache.ResultCache`: ``None``/``"off"`` (none),
    ``"disk"`` (the user cache folder), ``"disk:DIR"``, ``"memory"``, ``"redis://HOST:PORT/DB"``
    (also ``rediss://``, ``unix://``), or a cache object (returned as it is)."""
    if spec is None or isinstance(spec, ResultCache):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        if callable(getattr(spec, "get", None)) and callable(getattr(spec, "put", None)):
            return spec  # duck-typed backend
        raise TypeError(f"cache must be a string or a ResultCache, got {type(spec).__name__}")
    kind, s = _cache_kind(spec)
    if kind is None:
        return None
    if kind == "disk":
        return DiskCache(s[5:] or None, max_bytes=max_bytes)
    if kind == "memory":
        return MemoryCache(max_bytes)
    return RedisCache(s, ttl=ttl, retry_after=retry_after)


def _cache_kind(spec) -> Tuple[Optional[str], str]:
    """(``None`` | ``"disk"`` | ``"memory"`` | ``"redis"``, the spec as a string); ``disk`` becomes
    ``disk:`` (the default folder). Raises ``ValueError`` for anything else."""
    s = os.fspath(spec).strip()
    if s in ("", "off", "none"):
        return None, s
    if s == "disk":
        return "disk", "disk:"
    if s.startswith("disk:"):
        if not s[5:]:
            raise ValueError("--cache disk:DIR needs a folder after 'disk:'")
        return "disk", s
    if s == "memory":
        return "memory", s
    if "://" in s and s.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return "redis", s
    raise ValueError(f"--cache takes disk, disk:DIR, memory or redis://HOST:PORT/DB, got {s!r}")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class ServeError(Exception):
    """A refusal: HTTP ``status``, a short machine-readable ``code`` and a one-line ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "timeout", 413: "too_large",
                 415: "unsupported_media_type", 422: "invalid_parameter", 429: "too_many_requests",
                 503: "unavailable"}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" + (f" (got {err['input']!r})" if "input" in err else ""))
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------------------------
# Models and options
# ---------------------------------------------------------------------------------------------
def _model_describe(cz: Cartoonizer) -> dict:
    info = cz.checkpoint_info
    arch = getattr(info, "arch", None) or getattr(cz.model, "config", None)
    prov = dict(getattr(info, "provenance", {}) or {})
    return {
        "family": getattr(info, "family", None),
        "architecture": arch.describe() if arch is not None and hasattr(arch, "describe") else None,
        "params": int(sum(p.numel() for p in cz.model.parameters())),
        "sha256": getattr(info, "sha256", None), "dtype": getattr(info, "dtype", None),
        "recipe": prov.get("recipe"), "parent": prov.get("parent"),
    }


def _model_name(cz: Cartoonizer, spec=None) -> str:
    info = cz.checkpoint_info
    return info.name if info is not None else (str(spec) if spec is not None else type(cz.model).__name__)


@dataclass
class LoadedModel:
    """One model a request can name: a checkpoint (``cz`` a
    :class:`~dctnet_lite.inference.Cartoonizer`) or the compound system (``cz`` a
    :class:`~dctnet_lite.compound.CompoundCartoonizer`: a head model on every face over a
    background model)."""

    name: str
    cz: Any
    aliases: Tuple[str, ...]
    load_seconds: float
    warmup_seconds: float = 0.0
    compound: bool = False
    #: compound only: what besides the two models decides its pixels (part of the cache key)
    settings: bytes = b""

    @property
    def main(self) -> Cartoonizer:
        """The Cartoonizer whose device, precision and settings describe this model."""
        return self.cz.background if self.compound else self.cz

    def prepare(self, rgb: np.ndarray, size: Optional[int]):
        return self.cz.prepare(rgb, size)

    def bucket(self, prepared, strength: float):
        """Images of one bucket share a forward: same model and network size (the compound
        system takes one strength per call, so for it the strength too)."""
        h, w = prepared.hw
        return (self.name, int(h), int(w), strength) if self.compound else (self.name, int(h), int(w))

    def run(self, preps: Sequence[Any], strength) -> Sequence[np.ndarray]:
        if self.compound:
            return self.cz.run_prepared(list(preps), float(strength))
        return self.cz.run_uint8([p.pixels for p in preps], strength, preps[0].hw)

    def cache_key(self, image_bytes: bytes, strength: float, size: Optional[int]) -> str:
        if self.compound:
            image_bytes = b"compound\0" + self.settings + b"\0" + image_bytes
        return self.main.cache_key(image_bytes, strength, size)

    def warmup(self, n: int) -> None:
        if self.compound:
            if n > 0:
                self.cz.run_prepared([self.cz.prepare(np.full((n, n, 3), 128, np.uint8))], 1.0)
            self.cz.head.cache_key(b"", 1.0, None)
        elif n > 0:
            self.cz.run_uint8(torch.zeros((1, 3, n, n), dtype=torch.uint8), 1.0)
        self.main.cache_key(b"", 1.0, None)  # the weights digest, computed once

    def describe(self, default: bool) -> dict:
        main = self.main
        d = {"name": self.name, "default": default, "aliases": list(self.aliases)}
        if self.compound:
            det = self.cz.detector
            d.update(family="compound", architecture=f"head {_model_name(self.cz.head)} over background "
                                                     f"{_model_name(self.cz.background)}",
                     head={"name": _model_name(self.cz.head), **_model_describe(self.cz.head)},
                     background={"name": _model_name(self.cz.background), **_model_describe(self.cz.background)},
                     detector=getattr(det, "name", None) or ("none" if det is None else type(det).__name__),
                     min_face=self.cz.min_face, max_side=self.cz.max_side)
        else:
            d.update(_model_describe(main))
        d.update(device=str(main.device), precision=main.precision,
                 load_seconds=round(self.load_seconds, 3), warmup_seconds=round(self.warmup_seconds, 3))
        return d


class Options(NamedTuple):
    model: LoadedModel
    strength: float
    size: Optional[int]
    fmt: str


def _strength(value) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ServeError(422, "invalid_parameter", f"strength must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(s) or not 0.0 <= s <= 1.0:
        raise ServeError(422, "invalid_parameter", f"strength must lie in [0, 1], got {value!r}")
    return s


def _size(value) -> Optional[int]:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "original")):
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ServeError(422, "invalid_parameter", f"size must be a whole number of pixels, got {value!r}") from None
    if not 1 <= n <= imio.MAX_SIZE:
        raise ServeError(422, "invalid_parameter",
                         f"size must lie in 1..{imio.MAX_SIZE} pixels (the longer output side), got {n}")
    return n


def _format(value) -> str:
    f = "png" if value in (None, "") else str(value).strip().lower()
    if f not in FORMATS:
        raise ServeError(422, "invalid_parameter", f"format must be png, jpeg or webp, got {value!r}")
    return "jpeg" if f == "jpg" else f


class _NamedBuffer(io.BytesIO):
    """An upload's bytes that print as the upload's name (the decoder's messages name it)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._label = name

    def __str__(self) -> str:
        return self._label


def _looks_whole(fmt: str, data: bytes) -> bool:
    """A cheap check that a cached JPEG / WebP entry is whole (PNG entries go through
    :func:`~dctnet_lite.cache.verify_png`)."""
    if fmt == "jpeg":
        return len(data) > 4 and data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"
    if fmt == "webp":
        return (len(data) > 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
                and int.from_bytes(data[4:8], "little") + 8 == len(data))
    return False


def _image_size(data: bytes) -> Tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


class Outcome(NamedTuple):
    data: bytes
    media_type: str
    width: int
    height: int
    cache: str          # hit, miss, off, down
    batch_size: int     # images in the forward it ran in (0 on a cache hit)
    timings: Dict[str, float]
    notes: Tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Admission: bounded concurrency and queue
# ---------------------------------------------------------------------------------------------
class Admission:
    """``max_active`` images in processing, ``max_queue`` more waiting; more than that is refused."""

    def __init__(self, max_active: int, max_queue: int):
        self.max_active, self.max_queue = int(max_active), int(max_queue)
        self.admitted = 0
        self.active = 0
        self._sem = asyncio.Semaphore(self.max_active)

    @property
    def waiting(self) -> int:
        return self.admitted - self.active

    def full(self, n: int = 1) -> bool:
        return self.admitted + n > self.max_active + self.max_queue

    def refusal(self) -> ServeError:
        return ServeError(429, "too_many_requests",
                          f"the service is at its limit ({self.max_active} images in processing, "
                          f"{self.max_queue} waiting): retry shortly", {"Retry-After": "1"})

    def admit(self, n: int = 1) -> None:
        if self.full(n):
            raise self.refusal()
        self.admitted += n

    def leave(self, n: int = 1) -> None:
        self.admitted -= n

    @contextlib.asynccontextmanager
    async def slot(self):
        async with self._sem:
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------
class Service:
    """Models, cache, batcher, worker threads and metrics of one application."""

    def __init__(self, config: ServeConfig):
        self.config = config.check()
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.max_pixels = int(config.max_pixels)
        self.models: Dict[str, LoadedModel] = {}
        self._aliases: Dict[str, str] = {}
        compound = config.compound or config.head is not None or config.background is not None
        for spec in list(config.checkpoints) or ([] if compound else [None]):
            self._load(spec)
        if compound:
            self._load_compound()
        self.default = next(iter(self.models))
        self.cache = open_result_cache(config.cache, ttl=config.cache_ttl, max_bytes=config.cache_max_bytes,
                                       retry_after=config.redis_retry_s)
        if isinstance(self.cache, RedisCache):
            self.cache.ping()  # a Redis that does not answer logs one warning; the service starts anyway
        self.started_at = time.time()
        self.draining = False
        self.pool: Optional[ThreadPoolExecutor] = None
        self.admission: Optional[Admission] = None
        self._metrics()
        self.batcher = DynamicBatcher(self._run, config.max_batch, config.max_wait_ms / 1000.0,
                                      on_batch=self._on_batch)
        self.warmup()

    # ---------------------------------------------------------------- models
    def _add(self, m: LoadedModel) -> None:
        if m.name in self.models:
            raise ValueError(f"two models are named {m.name!r}: give each checkpoint once")
        self.models[m.name] = m
        for a in (m.name,) + m.aliases:
            self._aliases.setdefault(a, m.name)

    def _load(self, spec) -> None:
        t0 = time.perf_counter()
        cz = Cartoonizer(spec, device=self.config.device, precision=self.config.precision,
                         max_pixels=self.max_pixels)
        dt = time.perf_counter() - t0
        name = _model_name(cz, spec)
        aliases = tuple(sorted({str(spec), Path(str(spec)).name, Path(str(spec)).stem} - {name, "None"})) \
            if spec is not None else ()
        self._add(LoadedModel(name, cz, aliases, dt))
        info = cz.checkpoint_info
        log.info("loaded %s (%s) on %s, %s, in %.2f s", name,
                 info.describe() if info is not None else type(cz.model).__name__, cz.device, cz.precision, dt)

    def _load_compound(self) -> None:
        import json

        from ..compound import CompoundCartoonizer, describe
        from ..face import DEFAULT_MIN_FACE

        c = self.config
        background = c.background if c.background is not None else (list(c.checkpoints) or [None])[0]
        t0 = time.perf_counter()
        cz = CompoundCartoonizer(c.head, background, detector=c.detector,
                                 min_face=DEFAULT_MIN_FACE if c.min_face is None else c.min_face,
                                 max_side=c.max_side, device=c.device, precision=c.precision,
                                 max_pixels=self.max_pixels)
        dt = time.perf_counter() - t0
        det = cz.detector
        settings = json.dumps({
            "head": cz.head.cache_key(b"compound-head", 1.0, None),  # the head's weights and settings
            "detector": getattr(det, "name", None) or ("none" if det is None else type(det).__name__),
            "min_face": cz.min_face, "max_side": cz.max_side, "ratio": cz.ratio, "crop": cz.crop,
        }, sort_keys=True).encode()
        self._add(LoadedModel("compound", cz, (), dt, compound=True, settings=settings))
        log.info("loaded the compound system (%s) in %.2f s", describe(cz), dt)

    def model(self, name: Optional[str]) -> LoadedModel:
        if name in (None, ""):
            return self.models[self.default]
        key = self._aliases.get(str(name))
        if key is None:
            raise ServeError(422, "unknown_checkpoint",
                             f"no checkpoint {name!r} is loaded; this service has: {', '.join(self.models)}")
        return self.models[key]

    def warmup(self) -> None:
        """One forward per model (and the encoders) before the port opens."""
        for m in self.models.values():
            t0 = time.perf_counter()
            m.warmup(int(self.config.warmup_size))
            m.warmup_seconds = time.perf_counter() - t0
            log.info("warmed up %s in %.2f s", m.name, m.warmup_seconds)
        for fmt in ("png", "jpeg", "webp"):
            self._encode_image(Image.new("RGB", (8, 8)), fmt)

    def _run(self, bucket, preps, strength) -> Sequence[np.ndarray]:
        return self.models[bucket[0]].run(preps, strength)

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=int(self.config.workers or min(4, os.cpu_count() or 1)),
                                       thread_name_prefix="dctnet-io")
        self.admission = Admission(self.config.max_concurrency, self.config.max_queue)
        self.batcher.start()
        self.draining = False

    def stop(self) -> None:
        self.draining = True
        self.batcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.pool = None

    @property
    def ready(self) -> bool:
        return self.pool is not None and self.batcher.running and not self.draining

    def _require_ready(self) -> None:
        if not self.ready:
            raise ServeError(503, "unavailable", "the service is shutting down" if self.draining
                             else "the service is not started", {"Retry-After": "1"})

    # ---------------------------------------------------------------- metrics
    def _metrics(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.m_requests = Counter("dctnet_requests", "HTTP requests by endpoint and status",
                                  ["endpoint", "method", "status"], registry=r)
        self.m_latency = Histogram("dctnet_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                   buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120),
                                   registry=r)
        self.m_images = Counter("dctnet_images", "images answered, by checkpoint and cache result",
                                ["checkpoint", "cache"], registry=r)
        self.m_batch = Histogram("dctnet_batch_size", "images per forward on the device",
                                 buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256), registry=r)
        self.m_batch_seconds = Histogram("dctnet_batch_seconds", "seconds per forward on the device",
                                         buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                         registry=r)
        self.m_cache = Counter("dctnet_cache_lookups", "result-cache lookups by result (hit, miss, down)",
                               ["result"], registry=r)
        self.m_refused = Counter("dctnet_refused", "requests refused, by status and code",
                                 ["status", "code"], registry=r)
        g = Gauge("dctnet_queue_depth", "images waiting: for a processing slot and for the device", registry=r)
        g.set_function(lambda: (self.admission.waiting if self.admission else 0) + self.batcher.pending())
        g = Gauge("dctnet_device_queue", "images waiting for the device (in the batcher)", registry=r)
        g.set_function(self.batcher_pending)
        g = Gauge("dctnet_active_images", "images in processing", registry=r)
        g.set_function(lambda: self.admission.active if self.admission else 0)
        self.m_inflight = Gauge("dctnet_inflight_requests", "HTTP requests in progress", registry=r)
        g = Gauge("dctnet_cache_up", "1 when the result cache answers (0: down, serving without it)", registry=r)
        g.set_function(lambda: 1.0 if self.cache is not None and getattr(self.cache, "up", True) else 0.0)
        info = Gauge("dctnet_build_info", "version and settings", ["version", "device", "max_batch"], registry=r)
        first = self.models[self.default].main
        info.labels(__version__, str(first.device), str(self.config.max_batch)).set(1)

    def batcher_pending(self) -> int:
        return self.batcher.pending()

    def _on_batch(self, size: int, seconds: float) -> None:
        self.m_batch.observe(size)
        self.m_batch_seconds.observe(seconds)

    # ---------------------------------------------------------------- cache
    def _cache_key(self, opts: Options, body: bytes) -> str:
        """The library's key of this upload as a file (``dctnet-lite cartoonize --cache`` of the same
        file shares PNG entries), with the format folded in for JPEG and WebP."""
        base = opts.model.cache_key(b"file\0" + body, opts.strength, opts.size)
        if opts.fmt == "png":
            return base
        return hashlib.sha256(b"dctnet-lite-serve-v1\0" + opts.fmt.encode() + b"\0" + base.encode()).hexdigest()

    def _lookup(self, opts: Options, body: bytes) -> Tuple[Optional[str], Optional[bytes], str]:
        if self.cache is None:
            return None, None, "off"
        key = self._cache_key(opts, body)
        try:
            if opts.fmt == "png":
                data = verified_get(self.cache, key)
            else:
                data = self.cache.get(key)
                if data is not None and not _looks_whole(opts.fmt, bytes(data)):
                    log.warning("result cache: entry %s... is damaged: dropped, recomputing", key[:12])
                    discard = getattr(self.cache, "discard", None)
                    if callable(discard):
                        discard(key)
                    data = None
        except Exception as e:  # a backend that raises is a miss, never an error for the user
            log.warning("result cache: lookup failed (%s: %s): recomputing", type(e).__name__, e)
            data = None
        if not getattr(self.cache, "up", True):
            return key, None, "down"
        return key, (bytes(data) if data is not None else None), ("hit" if data is not None else "miss")

    def _store(self, key: Optional[str], data: bytes) -> None:
        if key is None or self.cache is None:
            return
        try:
            self.cache.put(key, data)
        except Exception as e:
            log.warning("result cache: store failed (%s: %s)", type(e).__name__, e)

    # ---------------------------------------------------------------- CPU work (worker threads)
    def _decode(self, opts: Options, body: bytes, name: str):
        buf = _NamedBuffer(body, name)
        try:
            with Image.open(buf) as im:
                fmt = im.format
        except UnidentifiedImageError:
            raise ServeError(415, "unsupported_media_type",
                             f"{name}: not an image this service reads (JPEG, PNG, WebP, BMP, TIFF or GIF)") from None
        except Image.DecompressionBombError as e:
            raise ServeError(413, "too_many_pixels", f"{name}: {e}") from None
        except Exception as e:
            raise ServeError(400, "bad_image", f"{name}: not a readable image ({type(e).__name__}: {e})") from None
        if fmt not in READ_FORMATS:
            raise ServeError(415, "unsupported_media_type",
                             f"{name}: {fmt} images are not taken (JPEG, PNG, WebP, BMP, TIFF or GIF)")
        buf.seek(0)
        try:
            d = imio.decode_image(buf, self.max_pixels)
        except imio.ImageTooLarge as e:
            raise ServeError(413, "too_many_pixels", str(e).replace("--max-pixels or $DCTNET_LITE_MAX_PIXELS",
                                                                    "the server's --max-pixels")) from None
        except imio.ImageReadError as e:
            raise ServeError(400, "bad_image", str(e)) from None
        arr = d.rgb if d.alpha is None else np.dstack([d.rgb, d.alpha])
        try:
            p = opts.model.prepare(arr, opts.size)
        except imio.ImageTooLarge as e:
            raise ServeError(413, "too_many_pixels", str(e).replace("--max-pixels or $DCTNET_LITE_MAX_PIXELS",
                                                                    "the server's --max-pixels")) from None
        except ValueError as e:
            raise ServeError(422, "invalid_parameter", str(e)) from None
        return p, d.notes

    @staticmethod
    def _encode_image(img: Image.Image, fmt: str) -> bytes:
        if fmt == "png":
            return encode_png(img)
        if fmt == "jpeg" and img.mode == "RGBA":  # no alpha in JPEG: over white, as the CLI writes it
            bg = Image.new("RGB", img.size, (255, 255, 255))
            bg.paste(img, mask=img.getchannel("A"))
            img = bg
        buf = io.BytesIO()
        img.save(buf, format=FORMATS[fmt][0], quality=LOSSY_QUALITY)
        return buf.getvalue()

    def _finish(self, opts: Options, prepared, rgb: np.ndarray, key: Optional[str]) -> Tuple[bytes, int, int]:
        img = Image.fromarray(np.asarray(prepared.finish(rgb)))
        data = self._encode_image(img, opts.fmt)
        self._store(key, data)
        return data, img.width, img.height

    # ---------------------------------------------------------------- one image
    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def process(self, opts: Options, body: bytes, name: str) -> Outcome:
        """One admitted image through cache, decoding, the batcher and encoding."""
        t: Dict[str, float] = {}
        t0 = time.perf_counter()
        async with self.admission.slot():
            t["slot"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            key, hit, state = await self._in_pool(self._lookup, opts, body)
            t["cache"] = time.perf_counter() - t1
            if state != "off":
                self.m_cache.labels(state).inc()
            if hit is not None:
                w, h = await self._in_pool(_image_size, hit)
                t["total"] = time.perf_counter() - t0
                self.m_images.labels(opts.model.name, "hit").inc()
                return Outcome(hit, FORMATS[opts.fmt][1], w, h, "hit", 0, t, ())
            t1 = time.perf_counter()
            prepared, notes = await self._in_pool(self._decode, opts, body, name)
            t["decode"] = time.perf_counter() - t1
            try:
                fut = self.batcher.submit(opts.model.bucket(prepared, opts.strength), prepared, opts.strength)
            except BatcherClosed as e:
                raise ServeError(503, "unavailable", str(e), {"Retry-After": "1"}) from None
            try:
                res = await asyncio.wrap_future(fut)
            except MemoryLimitError as e:
                raise ServeError(413, "too_large", f"{name}: {e}") from None
            except (RuntimeError, ValueError) as e:
                log.exception("the forward of %s failed", name)
                raise ServeError(503, "model_error", f"{name}: the model failed ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
            t["queue"], t["model"] = res.queue_seconds, res.model_seconds
            t1 = time.perf_counter()
            data, w, h = await self._in_pool(self._finish, opts, prepared, res.rgb, key)
            t["encode"] = time.perf_counter() - t1
            t["total"] = time.perf_counter() - t0
            self.m_images.labels(opts.model.name, state).inc()
            return Outcome(data, FORMATS[opts.fmt][1], w, h, state, res.batch_size, t, tuple(notes))

    async def bounded(self, coro, what: str = "the request"):
        """``coro`` within the per-request timeout (503 beyond it)."""
        try:
            return await asyncio.wait_for(coro, timeout=float(self.config.timeout_s))
        except asyncio.TimeoutError:
            raise ServeError(503, "timeout", f"{what} took longer than the server's limit of "
                             f"{self.config.timeout_s:g} s", {"Retry-After": "5"}) from None

    def headers(self, opts: Options, out: Outcome, read_s: float) -> Dict[str, str]:
        timing = {"read": read_s, **out.timings}
        h = {
            "X-Dctnet-Checkpoint": opts.model.name,
            "X-Dctnet-Precision": opts.model.main.precision,
            "X-Dctnet-Device": str(opts.model.main.device),
            "X-Dctnet-Cache": out.cache,
            "X-Dctnet-Size": f"{out.width}x{out.height}",
            "X-Dctnet-Strength": repr(opts.strength),
            "X-Dctnet-Batch-Size": str(out.batch_size),
            "Server-Timing": ", ".join(f"{k};dur={v * 1e3:.2f}" for k, v in timing.items()),
            "Cache-Control": "no-store",
        }
        if out.notes:
            h["X-Dctnet-Warning"] = "; ".join(out.notes)
        return {k: v.encode("ascii", "backslashreplace").decode("ascii") for k, v in h.items()}

    def health(self) -> dict:
        cache = None
        if self.cache is not None:
            cache = {"backend": type(self.cache).__name__, "up": bool(getattr(self.cache, "up", True))}
            if isinstance(self.cache, RedisCache):
                cache.update(url=self.cache.where, ttl=self.cache.ttl, errors=self.cache.errors)
            elif isinstance(self.cache, DiskCache):
                cache.update(max_bytes=self.cache.max_bytes)
        return {
            "status": "ok" if self.ready else ("draining" if self.draining else "starting"),
            "ready": self.ready, "version": __version__,
            "checkpoints": list(self.models), "default": self.default,
            "device": str(self.models[self.default].main.device),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "batching": {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms,
                         "batches": self.batcher.batches, "pending": self.batcher.pending()},
            "admission": {"active": self.admission.active if self.admission else 0,
                          "waiting": self.admission.waiting if self.admission else 0,
                          "max_concurrency": self.config.max_concurrency, "max_queue": self.config.max_queue},
            "cache": cache,
        }


# ---------------------------------------------------------------------------------------------
# Reading requests
# ---------------------------------------------------------------------------------------------
async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, bounded in bytes (413) and in time (408: a client that does not send it)."""
    try:
        return await asyncio.wait_for(_read_bounded(request, limit), timeout=timeout)
    except asyncio.TimeoutError:
        raise ServeError(408, "timeout", f"the request body did not arrive within {timeout:g} s") from None


async def _read_bounded(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ServeError(400, "bad_request", f"Content-Length is not a number: {cl!r}") from None
        if n > limit:
            raise ServeError(413, "too_large", f"the body is {n} bytes, above the server's limit of "
                             f"{limit} bytes ({limit / MIB:.1f} MiB)")
    chunks: List[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServeError(413, "too_large", f"the body is above the server's limit of {limit} bytes "
                             f"({limit / MIB:.1f} MiB)")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_media_type(media: str, batch: bool) -> None:
    if media == "multipart/form-data":
        return
    if not batch and (media.startswith("image/") or media in RAW_TYPES or media == ""):
        return
    takes = ("multipart/form-data (file parts)" if batch else
             "multipart/form-data (a file part named image) or a raw image body (Content-Type image/*)")
    hint = " (curl: -F image=@photo.jpg, or --data-binary with -H 'Content-Type: image/jpeg')" \
        if media == "application/x-www-form-urlencoded" else ""
    raise ServeError(415, "unsupported_media_type", f"a body of type {media or 'none'!r} is not taken: "
                     f"send {takes}{hint}")


_OPTION_NAMES = ("strength", "size", "checkpoint", "format")


def _options(service: Service, query: Dict[str, Any], form: Dict[str, str]) -> Options:
    v = {k: form[k] if k in form else query.get(k) for k in _OPTION_NAMES}
    return Options(service.model(v["checkpoint"]), _strength(1.0 if v["strength"] in (None, "") else v["strength"]),
                   _size(v["size"]), _format(v["format"]))


def _download_name(name: str, fmt: str) -> str:
    stem = Path(name).stem or "image"
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in stem)[:100] or "image"
    return f"{safe}_cartoon.{FORMATS[fmt][2]}"


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "string", "format": "binary"},
                           "strength": {"type": "number", "minimum": 0, "maximum": 1},
                           "size": {"type": "integer", "minimum": 1},
                           "checkpoint": {"type": "string"},
                           "format": {"type": "string", "enum": ["png", "jpeg", "webp"]}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_BATCH_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                       "strength": {"type": "number", "minimum": 0, "maximum": 1},
                       "size": {"type": "integer", "minimum": 1},
                       "checkpoint": {"type": "string"},
                       "format": {"type": "string", "enum": ["png", "jpeg", "webp"]}}}}},
}
_IMAGE_RESPONSES = {200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
                          "description": "the cartoonized image (headers: X-Dctnet-*, Server-Timing)"},
                    **{s: {"description": c} for s, c in _STATUS_CODES.items() if s not in (404, 405)}}


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------
def create_app(config: Optional[ServeConfig] = None, **overrides) -> FastAPI:
    """The FastAPI application. Loads every checkpoint and warms it up now (so whoever serves
    the app opens its port with the models ready); worker threads and the device thread start
    with the application's lifespan and stop with it, after the requests in flight.

    ``create_app(ServeConfig(checkpoints=["dctnet_w48.toon"]))`` or
    ``create_app(checkpoints=[...], max_batch=4, cache="redis://127.0.0.1:6379/0")``."""
    if config is None:
        config = ServeConfig(**overrides)
    elif overrides:
        config = ServeConfig(**{**config.__dict__, **overrides})
    service = Service(config)
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        log.info("ready: %s (default %s), batching max %d / %g ms, cache %s", ", ".join(service.models),
                 service.default, config.max_batch, config.max_wait_ms, service.cache or "off")
        try:
            yield
        finally:
            service.stop()
            log.info("stopped: every request in flight was answered")

    app = FastAPI(title="dctnet-lite", version=__version__, lifespan=lifespan,
                  description="Portrait cartoonization (DCT-Net) as a service: see docs/serving.md.")
    app.state.service = service

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        service.m_refused.labels(str(exc.status), exc.code).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return await _serve_error(request, ServeError(422, "invalid_parameter", _validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        err = ServeError(exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc.detail),
                         dict(exc.headers or {}))
        return await _serve_error(request, err)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(ServeError(500, "internal_error", f"{type(exc).__name__}: {exc}").body(), status_code=500)

    @app.middleware("http")
    async def _metrics_middleware(request: Request, call_next):
        t0 = time.perf_counter()
        service.m_inflight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            service.m_inflight.dec()
            route = request.scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            service.m_requests.labels(endpoint, request.method, str(status)).inc()
            service.m_latency.labels(endpoint).observe(time.perf_counter() - t0)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.post("/v1/cartoonize", openapi_extra={"requestBody": _UPLOAD_BODY}, responses=_IMAGE_RESPONSES,
              response_class=Response, summary="Cartoonize one image")
    async def cartoonize(request: Request,
                         strength: Optional[float] = Query(None, ge=0, le=1, description="style strength (default 1)"),
                         size: Optional[int] = Query(None, ge=1, le=imio.MAX_SIZE,
                                                     description="longer output side in pixels (default: the input's)"),
                         checkpoint: Optional[str] = Query(None, description="a loaded checkpoint (GET /v1/checkpoints)"),
                         format: Optional[str] = Query(None, description="png (default), jpeg or webp")):
        """One image as a multipart file part (``image``) or as the raw body (``Content-Type:
        image/*``); options as query parameters or form fields. Returns the image."""
        service._require_ready()
        media = _media_type(request)
        _check_media_type(media, batch=False)
        query = {"strength": strength, "size": size, "checkpoint": checkpoint, "format": format}
        if service.admission.full():  # 429 before the body is read
            raise service.admission.refusal()
        t0 = time.perf_counter()
        body = await _read_body(request, int(config.max_upload_bytes), float(config.timeout_s))
        form: Dict[str, str] = {}
        name = request.headers.get("x-filename") or "upload"
        if media == "multipart/form-data":
            try:
                form, files = parse_form(body, request.headers.get("content-type", ""))
            except FormError as e:
                raise ServeError(400, "bad_request", str(e)) from None
            if not files:
                raise ServeError(400, "no_image", "no image in the form: send it as a file part named image")
            if len(files) > 1:
                raise ServeError(400, "too_many_images",
                                 f"{len(files)} images in one request: send one, or use /v1/cartoonize/batch")
            body, name = files[0].data, files[0].filename or "upload"
        if not body:
            raise ServeError(400, "no_image", "the request holds no image (an empty body)")
        opts = _options(service, query, form)
        read_s = time.perf_counter() - t0
        service.admission.admit()
        try:
            out = await service.bounded(service.process(opts, body, name))
        finally:
            service.admission.leave()
        headers = service.headers(opts, out, read_s)
        headers["Content-Disposition"] = f'inline; filename="{_download_name(name, opts.fmt)}"'
        return Response(out.data, media_type=out.media_type, headers=headers)

    @app.post("/v1/cartoonize/batch", openapi_extra={"requestBody": _BATCH_BODY},
              summary="Cartoonize several images (JSON with base64 results)")
    async def cartoonize_batch(request: Request,
                               strength: Optional[float] = Query(None, ge=0, le=1),
                               size: Optional[int] = Query(None, ge=1, le=imio.MAX_SIZE),
                               checkpoint: Optional[str] = Query(None),
                               format: Optional[str] = Query(None)):
        """Several file parts in one multipart body (at most ``max_files``), the same options for
        all. Each image is its own result (``status`` 200 with ``image_base64``, or its error), so
        one bad image does not fail the others; the images are batched on the device together."""
        service._require_ready()
        media = _media_type(request)
        _check_media_type(media, batch=True)
        if service.admission.full():
            raise service.admission.refusal()
        t0 = time.perf_counter()
        body = await _read_body(request, int(config.max_upload_bytes), float(config.timeout_s))
        try:
            form, files = parse_form(body, request.headers.get("content-type", ""),
                                     max_parts=int(config.max_files) + len(_OPTION_NAMES) + 4)
        except FormError as e:
            raise ServeError(400, "bad_request", str(e)) from None
        if not files:
            raise ServeError(400, "no_image", "no image in the form: send file parts named images")
        if len(files) > int(config.max_files):
            raise ServeError(413, "too_many_files", f"{len(files)} images in one request, above the server's "
                             f"limit of {config.max_files}")
        opts = _options(service, {"strength": strength, "size": size, "checkpoint": checkpoint,
                                  "format": format}, form)
        read_s = time.perf_counter() - t0
        service.admission.admit(len(files))

        async def one(i, f):
            name = f.filename or f"image{i}"
            try:
                if not f.data:
                    raise ServeError(400, "no_image", f"{name}: an empty file")
                out = await service.process(opts, f.data, name)
            except ServeError as e:
                service.m_refused.labels(str(e.status), e.code).inc()
                return {"index": i, "filename": name, "status": e.status, "error": e.body()["error"]}
            return {"index": i, "filename": name, "status": 200, "media_type": out.media_type,
                    "download_name": _download_name(name, opts.fmt), "width": out.width, "height": out.height,
                    "cache": out.cache, "batch_size": out.batch_size, "notes": list(out.notes),
                    "timings_ms": {k: round(v * 1e3, 2) for k, v in out.timings.items()},
                    "image_base64": base64.b64encode(out.data).decode("ascii")}

        try:
            results = await service.bounded(asyncio.gather(*(one(i, f) for i, f in enumerate(files))),
                                            f"the batch of {len(files)} images")
        finally:
            service.admission.leave(len(files))
        return JSONResponse({"checkpoint": opts.model.name, "precision": opts.model.main.precision,
                             "strength": opts.strength, "size": opts.size, "format": opts.fmt,
                             "read_ms": round(read_s * 1e3, 2), "results": results},
                            headers={"Cache-Control": "no-store"})

    @app.get("/v1/checkpoints", summary="The loaded checkpoints")
    async def checkpoints():
        return {"default": service.default,
                "checkpoints": [m.describe(n == service.default) for n, m in service.models.items()],
                "limits": {"max_upload_bytes": int(config.max_upload_bytes), "max_pixels": service.max_pixels,
                           "max_files": int(config.max_files), "max_size": imio.MAX_SIZE,
                           "timeout_s": float(config.timeout_s)},
                "formats": ["png", "jpeg", "webp"]}

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz():
        h = service.health()
        return JSONResponse(h, status_code=200 if h["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
def _listen_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) socket: a port in use fails now, before any model is loaded."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot resolve the host {host!r}: {e.strerror or e}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _setup_logging(level: str) -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level.upper())


def serve(config: Optional[ServeConfig] = None, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", access_log: bool = True, **overrides) -> int:
    """Run the service under uvicorn until SIGTERM or SIGINT (then the requests in flight
    finish, the device thread drains, and this returns 0).

    The port is bound first (a port in use fails before the models load), the models are
    loaded and warmed up, and only then does the socket listen."""
    import uvicorn

    _setup_logging(log_level)
    sock = _listen_socket(host, port)
    try:
        app = create_app(config, **overrides)
    except BaseException:
        sock.close()
        raise
    service: Service = app.state.service
    # our pixel limit decides (checked from the header); Pillow's own bomb check (about 89 MP warns,
    # 179 MP refuses) would otherwise cut a higher --max-pixels short. This process is the service's.
    if not service.max_pixels:
        Image.MAX_IMAGE_PIXELS = None
    elif Image.MAX_IMAGE_PIXELS is not None and service.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = service.max_pixels
    bound_host, bound_port = sock.getsockname()[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service has no authentication; put it behind a proxy that has", host)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM / SIGINT: /healthz says draining at once,
            service.draining = True        # and images waiting for companions run now
            threading.Thread(target=service.batcher.flush, daemon=True).start()  # (no lock in a handler)
            super().handle_exit(sig, frame)

    ucfg = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                          timeout_graceful_shutdown=int(service.config.timeout_s) + 5)
    server = _Server(ucfg)
    log.info("listening on http://%s:%d (page: /, API: /v1/cartoonize, docs: /docs)", bound_host, bound_port)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal that stopped it through the handler it found: a no-op here,
        # so a graceful stop ends with exit status 0
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    return 0 if server.started else 1

"""The file pipeline: files, folders and globs in, cartoons written to a folder.

:func:`plan_files` is the setup every file runner shares (this module's
:func:`cartoonize_files` and the distributed :func:`dctnet_lite.tools.predict.predict_files`):
it checks the settings, expands the inputs (:func:`~dctnet_lite.images.expand_inputs`), maps
them to outputs (:func:`~dctnet_lite.images.plan_outputs`: unique names, never an input unless
asked) and collects the inputs that are missing or refused.

:class:`FilesPipeline` runs a plan through a :class:`~dctnet_lite.inference.Cartoonizer`: reader
threads read and decode the next images (:meth:`~dctnet_lite.inference.Cartoonizer.prepare`; on
CUDA also page-locking them) ahead of the network, neighbours of the same size run as one batch
(:meth:`~dctnet_lite.inference.Cartoonizer.run_uint8`) in the calling thread, and writer threads
encode and write the finished ones, atomically. A repeated file can be a result-cache hit
(:meth:`~dctnet_lite.inference.Cartoonizer.cache_lookup`): its stored PNG is written as it is
(re-encoded when the PNG level asked for is not the cache's). The report keeps the input order
whatever the threads do; its ``warnings`` hold notes on inputs that were written (e.g. only the
first frame of an animated GIF). Before writing, stale temp files of killed earlier runs are
removed from the output folders (:func:`~dctnet_lite.fileutil.remove_stale_temps`), and the
progress bar moves per tile when an image runs in tiles.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from . import images as imio
from .cache import CACHE_PNG_LEVEL, decode_png
from .fileutil import atomic_write_bytes, remove_stale_temps
from .inference import MAX_BATCH, Cartoonizer, Prepared
from .memory import MemoryLimitError, available_bytes
from .model import strength_vector


@dataclasses.dataclass
class FilesReport:
    """What :func:`cartoonize_files` did: outputs written, inputs that failed, and warnings
    (input, note) about inputs that were written (e.g. only the first frame of an animation)."""

    ok: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    warnings: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ok": [list(x) for x in self.ok], "failed": [list(x) for x in self.failed],
                "warnings": [list(x) for x in self.warnings], "seconds": round(self.seconds, 3)}


@dataclasses.dataclass
class FilesPlan:
    """What :func:`plan_files` found: ``jobs`` (input, output) in input order, and ``failed``
    (input, reason) for inputs that are missing or whose output would overwrite an input."""

    jobs: List[Tuple[Path, Path]]
    failed: List[Tuple[str, str]]
    ext: str
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return len(self.jobs)

    def seconds(self) -> float:
        """Seconds since planning started (a report's ``seconds``)."""
        return time.perf_counter() - self.started


def plan_files(inputs: Union[str, os.PathLike, Iterable], out_dir, *, ext: str = ".png",
               overwrite_inputs: bool = False, batch_size: int = 1,
               png_level: int = imio.DEFAULT_PNG_LEVEL, strength: float = 1.0,
               size: Optional[int] = None) -> FilesPlan:
    """Check the settings every file runner shares and map the inputs to outputs.

    ``inputs``: one path (a ``str`` or path-like is one input) or an iterable of files, folders
    (recursive; the inner structure is kept under ``out_dir``) and glob patterns, each file once
    (see :func:`~dctnet_lite.images.expand_inputs`); ``ext``: output extension, with or without
    the dot. ``batch_size`` (1..:data:`~dctnet_lite.inference.MAX_BATCH`), ``png_level`` (0-9),
    ``strength`` (in [0, 1]) and ``size`` (``None`` or 1..:data:`~dctnet_lite.images.MAX_SIZE`)
    are only checked here. Raises ValueError for a bad setting; a missing input, a folder that
    cannot be listed or a refused output is not an error but a ``failed`` entry of the plan.
    """
    started = time.perf_counter()
    ext = str(ext)
    if not ext.startswith("."):
        ext = "." + ext
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    if batch_size > MAX_BATCH:
        raise ValueError(f"batch_size must be at most {MAX_BATCH}, got {batch_size}")
    if not 0 <= int(png_level) <= 9:
        raise ValueError(f"png_level must be in 0..9, got {png_level}")
    imio.check_size(size)
    strength_vector(strength, 1)  # the one strength rule: a clear error before any file is read
    found, missing = imio.expand_inputs(inputs)
    jobs, refused = imio.plan_outputs(found, out_dir, ext, overwrite_inputs)
    return FilesPlan(jobs=jobs, failed=missing + refused, ext=ext, started=started)


def default_workers(device: Union[str, torch.device]) -> int:
    """Reader and writer threads of :func:`cartoonize_files` by default: on CUDA enough to keep
    decoding and encoding off the GPU's critical path (up to 8, at most the CPU count); on CPU 1,
    so the network keeps the cores and one image is read and one written alongside it."""
    if torch.device(device).type == "cuda":
        return max(1, min(8, os.cpu_count() or 1))
    return 1


#: The most reader/writer threads a pipeline takes (each holds an image in memory).
MAX_WORKERS = 64
#: Decoded images read ahead stop there once they hold this fraction of the host's available memory.
READ_AHEAD_FRACTION = 0.25


def _check_workers(workers) -> None:
    if workers is not None and not 0 <= int(workers) <= MAX_WORKERS:
        raise ValueError(f"workers must lie in 0..{MAX_WORKERS}, got {workers}")


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.n, self.t0 = total, enabled and total > 0, 0, time.perf_counter()
        self.label = ""

    def _line(self, extra: str = "") -> None:
        rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\r[{self.n}/{self.total}] {rate:.2f} img/s {self.label[-40:]:<40}{extra}")
        sys.stderr.flush()

    def update(self, label: str) -> None:
        self.n += 1
        self.label = label
        if self.enabled:
            self._line(" " * 16)

    def tile(self, done: int, total: int) -> None:
        """One more tile of the image now in the network (a tiled image moves the bar per tile)."""
        if self.enabled:
            self._line(f" tile {done}/{total}".ljust(16))

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


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


class FilesPipeline:
    """Runs :class:`FilesPlan` jobs through a :class:`~dctnet_lite.inference.Cartoonizer` with
    reading and writing overlapped (see the module docstring).

    ``workers`` reader threads and as many writer threads (``0``: everything in the calling
    thread, one file after the other); at most ``max(2 * batch_size, 2 * workers)`` images are
    read ahead (and no more once the decoded images held reach :data:`READ_AHEAD_FRACTION` of
    the host's available memory) and as many results wait to be written. A batch that does not
    fit the device's memory runs one image at a time. Results and the report's order do not
    depend on ``workers``. Not thread-safe: one :meth:`run` at a time.
    """

    def __init__(self, cartoonizer: Cartoonizer, *, strength: float = 1.0, size: Optional[int] = None,
                 batch_size: int = 4, workers: Optional[int] = None,
                 png_level: int = imio.DEFAULT_PNG_LEVEL, progress: Optional[bool] = None):
        if workers is not None and int(workers) < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        _check_workers(workers)
        if not 1 <= int(batch_size) <= MAX_BATCH:
            raise ValueError(f"batch_size must lie in 1..{MAX_BATCH}, got {batch_size}")
        imio.check_size(size)
        self.cz = cartoonizer
        self.strength, self.size, self.batch_size, self.png_level = strength, size, batch_size, png_level
        self.workers = default_workers(cartoonizer.device) if workers is None else int(workers)
        self.window = max(2 * batch_size, 2 * self.workers)
        self.progress = sys.stderr.isatty() if progress is None else progress

    # ------------------------------------------------------------------ thread tasks
    def _read(self, src: Path) -> Tuple[Optional[str], Optional[bytes], Tuple[str, ...], Optional[Prepared]]:
        """(cache key, cached PNG bytes, notes, None) on a hit, else (cache key, None, notes, Prepared)."""
        key, hit = self.cz.cache_lookup(src, self.strength, self.size)
        if hit is not None:
            return key, hit, imio.file_notes(src), None
        prep = self.cz.prepare(src, self.size, pin=True)
        return key, None, prep.notes, prep

    def _write_hit(self, dst: Path, hit: bytes) -> None:
        if dst.suffix.lower() == ".png" and int(self.png_level) == CACHE_PNG_LEVEL:
            atomic_write_bytes(dst, hit)  # the very bytes a miss writes at this level
        else:
            imio.save_image(decode_png(hit), dst, png_level=self.png_level)

    def _write_result(self, dst: Path, rgb: np.ndarray, alpha, key: Optional[str]) -> None:
        img = imio.compose(rgb, alpha)
        imio.save_image(img, dst, png_level=self.png_level)
        self.cz.cache_store(key, img)

    # ------------------------------------------------------------------ the loop
    def run(self, plan: FilesPlan, report: Optional[FilesReport] = None) -> FilesReport:
        """Cartoonize every job of ``plan``; outputs and failures go to ``report`` (a new
        :class:`FilesReport` holding the plan's failures when not given), in input order."""
        if report is None:
            report = FilesReport(failed=list(plan.failed))
        self._report = report
        self._bar = _Progress(len(plan.jobs), self.progress)
        self._todo = iter(plan.jobs)
        self._reads: collections.deque = collections.deque()
        self._writes: collections.deque = collections.deque()
        self._pending: List[Tuple[Path, Path, Prepared, Optional[str]]] = []
        for folder in sorted({dst.parent for _, dst in plan.jobs}):
            remove_stale_temps(folder)  # left by earlier runs killed mid-write
        avail = available_bytes("cpu")
        self._held_cap = None if avail is None else int(READ_AHEAD_FRACTION * avail)
        self._readers = _pool(self.workers, "dctnet-read")
        self._writers = _pool(self.workers, "dctnet-write")
        previous_hook, self.cz.tile_progress = self.cz.tile_progress, self._bar.tile
        try:
            self._read_ahead()
            while self._reads:
                (src, dst), fut = self._reads.popleft()
                self._read_ahead()
                self._take(src, dst, fut)
                self._collect_writes(keep=self.window)
            self._flush()
            self._collect_writes(keep=0)
        finally:
            self.cz.tile_progress = previous_hook
            self._readers.shutdown(wait=True, cancel_futures=True)
            self._writers.shutdown(wait=True, cancel_futures=True)
        self._bar.close()
        return report

    def _held_bytes(self) -> int:
        """Bytes of decoded images waiting for the network (read ahead, or in the pending batch)."""
        n = sum(p[2].pixels.numel() for p in self._pending)
        for _, fut in self._reads:
            if fut.done() and fut.exception() is None and fut.result()[3] is not None:
                n += fut.result()[3].pixels.numel()
        return n

    def _read_ahead(self) -> None:
        while len(self._reads) < self.window:
            if self._reads and self._held_cap is not None and self._held_bytes() > self._held_cap:
                return  # enough decoded pixels held: read on once the network took some
            job = next(self._todo, None)
            if job is None:
                return
            self._reads.append((job, self._readers.submit(self._read, job[0])))

    def _take(self, src: Path, dst: Path, fut: cf.Future) -> None:
        """One read image: failed, a cache hit to write, or joins the pending batch."""
        try:
            key, hit, notes, prep = fut.result()
        except (imio.ImageReadError, ValueError) as e:
            self._report.failed.append((str(src), str(e)))
            self._bar.update(src.name)
            return
        except (OSError, MemoryError) as e:
            self._report.failed.append((str(src), f"could not read it: {type(e).__name__}: {e}"))
            self._bar.update(src.name)
            return
        self._report.warnings += [(str(src), note) for note in notes]
        if hit is not None:  # a cached result: its PNG bytes as they are, or re-encoded
            self._writes.append((src, dst, self._writers.submit(self._write_hit, dst, hit)))
            return
        pending = self._pending
        if pending and (pending[0][2].hw != prep.hw or len(pending) >= self.batch_size):
            self._flush()
        pending.append((src, dst, prep, key))

    def _flush(self) -> None:
        """Run the pending batch and hand its results to the writers (one image at a time when
        the batch does not fit the device's memory)."""
        pending = self._pending
        if not pending:
            return
        try:
            groups = [(pending, self.cz.run_uint8([p[2].pixels for p in pending], self.strength,
                                                  pending[0][2].hw))]
        except MemoryLimitError as e:
            groups = [([p], e) for p in pending] if len(pending) == 1 else [([p], None) for p in pending]
        except Exception as e:  # a whole batch failing (e.g. OOM) is reported per file
            groups = [(pending, e)]
        for items, outs in groups:
            if outs is None:
                try:
                    outs = self.cz.run_uint8(items[0][2].pixels, self.strength, items[0][2].hw)
                except Exception as e:
                    outs = e
            if isinstance(outs, BaseException):
                self._report.failed += [(str(p[0]), f"inference failed: {type(outs).__name__}: {outs}")
                                        for p in items]
                for p in items:
                    self._bar.update(p[0].name)
                continue
            for (src, dst, prep, key), rgb in zip(items, outs):
                self._writes.append((src, dst, self._writers.submit(self._write_result, dst, rgb,
                                                                     prep.alpha, key)))
        pending.clear()

    def _collect_writes(self, keep: int) -> None:
        """Report finished writes in submission order; wait while more than ``keep`` are queued."""
        writes = self._writes
        while writes and (len(writes) > keep or writes[0][2].done()):
            src, dst, fut = writes.popleft()
            try:
                fut.result()
                self._report.ok.append((str(src), str(dst)))
            except (OSError, ValueError, MemoryError) as e:
                self._report.failed.append((str(src), f"could not write {dst}: {e}"))
            self._bar.update(src.name)


def cartoonize_files(inputs: Iterable, out_dir, *, checkpoint=None, strength: float = 1.0,
                     size: Optional[int] = None, device: str = "auto", precision: str = "auto",
                     batch_size: int = 4, tile: Optional[int] = None, ext: str = ".png",
                     overwrite_inputs: bool = False, progress: Optional[bool] = None,
                     cartoonizer: Optional[Cartoonizer] = None, cache=None,
                     workers: Optional[int] = None, png_level: int = imio.DEFAULT_PNG_LEVEL,
                     resize: str = "auto", max_pixels=None) -> FilesReport:
    """Cartoonize files, folders and globs into ``out_dir``.

    A file that cannot be read or written is reported in ``FilesReport.failed`` and the batch
    goes on. Outputs are written atomically; inputs are never overwritten unless asked.
    ``cache`` (see :class:`~dctnet_lite.inference.Cartoonizer`; ignored when ``cartoonizer`` is
    given, which brings its own) lets a repeated file skip the model: the cached PNG is written
    as it is.

    ``workers`` threads read and decode the next images (and on CUDA page-lock them) while the
    network runs, and as many encode and write the finished ones; ``None`` takes
    :func:`default_workers`, ``0`` does everything in this thread, one file after the other.
    Results and the report's order do not depend on it. ``png_level``: zlib level of PNG
    outputs, 0-9 (Pillow's default 6; 1 encodes about 3x faster for about 20 % larger files).
    ``resize``: where images are scaled to ``size`` (see :class:`~dctnet_lite.inference.Cartoonizer`;
    like ``cache``, ignored when ``cartoonizer`` is given). ``max_pixels``: the pixel limit of an
    input (see :func:`~dctnet_lite.images.max_pixels_limit`: ``None`` is
    ``$DCTNET_LITE_MAX_PIXELS`` or 64 MP, ``0`` none; ignored with ``cartoonizer``): a file above
    it fails from its header, undecoded. The setup is :func:`plan_files`, the run
    :class:`FilesPipeline`.
    """
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    _check_workers(workers)
    if cartoonizer is None:
        imio.max_pixels_limit(max_pixels)  # a bad limit is an error before any file is read
    plan = plan_files(inputs, out_dir, ext=ext, overwrite_inputs=overwrite_inputs,
                      batch_size=batch_size, png_level=png_level, strength=strength, size=size)
    report = FilesReport(failed=list(plan.failed))
    if plan.jobs:
        cz = cartoonizer or Cartoonizer(checkpoint, device=device, precision=precision, tile=tile,
                                        cache=cache, resize=resize, max_pixels=max_pixels)
        FilesPipeline(cz, strength=strength, size=size, batch_size=batch_size, workers=workers,
                      png_level=png_level, progress=progress).run(plan, report)
    report.seconds = plan.seconds()
    return report

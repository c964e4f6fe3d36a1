"""Result cache for repeated requests: the same image, weights and settings give the stored PNG.

Nothing heavy is imported here (standard library only at import time; Pillow and numpy only
inside the helpers that encode or decode images), so a server can use the cache as it is.

The key (:func:`cache_key`) is the hex sha256 of, in this order::

    b"dctnet-lite-result-v2\\0"
    json.dumps({"buckets": <list of ints or null>, "checkpoint": <checkpoint sha256>,
                "precision": "fp32" | "fp16" | "bf16", "resize": "host" | "device" | null,
                "size": <int or null>, "strength": <float as repr()>,
                "tile": <int or null>, "tile_overlap": <int>},
               sort_keys=True, separators=(",", ":")).encode()
    b"\\0"
    <image bytes>

``<checkpoint sha256>`` is the digest of the weights stored in the checkpoint's metadata
(:attr:`~dctnet_lite.checkpoint.CheckpointInfo.sha256`; for a model given as an object, the
same digest computed from its state dict). ``<image bytes>`` is, for a file input, the file's
bytes exactly as on disk (``b"file\\0" + bytes``); for an in-memory PIL image or array, the
decoded pixels the model would see (``b"pixels\\0"``, then the RGB uint8 array's shape and bytes
after EXIF orientation and resizing to ``size`` (by Pillow; as given when the resize is on the
device, whose key says so), then the alpha plane's shape and bytes or ``b"-"``): see
:func:`file_image_bytes` and :func:`pixel_image_bytes`. Every setting of the
:class:`~dctnet_lite.inference.Cartoonizer` that changes pixels has its own field; the device
(CPU or CUDA) does not change them beyond rounding and is not in the key:

- ``precision``: the resolved precision the network ran in;
- ``buckets``: the shape-bucket sides inputs are padded to (bucket padding changes border
  pixels slightly), ``null`` without buckets;
- ``resize``: where a ``size`` is resized, ``"host"`` (Pillow Lanczos) or ``"device"``
  (antialiased bicubic on the model's device); ``null`` when ``size`` is ``null`` (nothing is
  resized);
- ``tile`` / ``tile_overlap``: tiling changes the output slightly.

Keys of version 1 (``dctnet-lite-result-v1``, where ``precision`` also carried the buckets and
resize settings) are never produced again: such entries simply miss and age out.

The value is the finished output as PNG bytes (RGB, or RGBA when the input had alpha), so a hit
returns exactly what the miss returned. An entry is verified before it is served
(:func:`verify_png`: the signature, every chunk's length and CRC-32, image data present, and the
closing ``IEND`` chunk with nothing after it): a truncated or damaged entry is a miss (a
:class:`DiskCache` deletes it) and the result is recomputed and stored again. Entries are encoded
at zlib level :data:`CACHE_PNG_LEVEL`; a file written from a hit at another PNG level is
re-encoded at that level (same pixels, the bytes the miss would have written).

Backends implement :class:`ResultCache` (``get(key) -> bytes | None``, ``put(key, bytes)``):
:class:`DiskCache` (the default: files under the user cache dir, bounded, LRU), and
:class:`MemoryCache` (one process). A Redis backend is ``get = client.get`` and
``put = client.set(key, value, ex=ttl)`` with Redis' own LRU eviction (``maxmemory-policy``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

try:  # POSIX: eviction is serialised between processes with an advisory lock
    import fcntl
except ImportError:  # pragma: no cover - Windows: eviction is still safe, just not serialised
    fcntl = None

log = logging.getLogger(__name__)

KEY_VERSION = b"dctnet-lite-result-v2"
RESIZE_PLACES = ("host", "device")
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_STALE_TEMP_SECONDS = 3600.0
#: zlib level of cache entries (:func:`encode_png`): fast, this is a cache.
CACHE_PNG_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
def cache_key(image_bytes: bytes, checkpoint_sha256: str, strength: float, size: Optional[int],
              precision: str, tile: Optional[int] = None, tile_overlap: int = 64, *,
              buckets: Optional[Sequence[int]] = None, resize: str = "host") -> str:
    """The cache key of one request (hex sha256; see the module docstring for the exact layout).

    ``buckets``: the shape-bucket sides, or ``None``/empty without buckets; ``resize``: where a
    ``size`` is resized, ``"host"`` or ``"device"`` (not part of the key without a ``size``)."""
    if resize not in RESIZE_PLACES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_PLACES)}, got {resize!r}")
    params = {
        "buckets": sorted({int(b) for b in buckets}) if buckets else None,
        "checkpoint": str(checkpoint_sha256),
        "precision": str(precision),
        "resize": None if size is None else resize,
        "size": None if size is None else int(size),
        "strength": repr(float(strength)),
        "tile": None if tile is None else int(tile),
        "tile_overlap": int(tile_overlap),
    }
    h = hashlib.sha256()
    h.update(KEY_VERSION + b"\0")
    h.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(image_bytes)
    return h.hexdigest()


def file_image_bytes(path) -> bytes:
    """The ``<image bytes>`` of a file input: ``b"file\\0"`` + the file's bytes."""
    with open(path, "rb") as f:
        return b"file\0" + f.read()


def pixel_image_bytes(rgb, alpha=None) -> bytes:
    """The ``<image bytes>`` of an in-memory input: its decoded uint8 RGB pixels (+ alpha)."""
    import numpy as np

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    parts = [b"pixels\0", str(tuple(rgb.shape)).encode(), b"\0", rgb.tobytes(), b"\0"]
    if alpha is None:
        parts.append(b"-")
    else:
        a = np.ascontiguousarray(alpha, dtype=np.uint8)
        parts += [str(tuple(a.shape)).encode(), b"\0", a.tobytes()]
    return b"".join(parts)


def encode_png(image) -> bytes:
    """A PIL image or HxWx3/4 uint8 array -> PNG bytes (fast compression: this is a cache)."""
    from PIL import Image
    import numpy as np

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=CACHE_PNG_LEVEL)
    return buf.getvalue()


def verify_png(data) -> bool:
    """Whether ``data`` is a whole, undamaged PNG: the signature, then chunks whose lengths fit
    and whose CRC-32 match, an ``IHDR`` first, at least one ``IDAT``, and ``IEND`` as the very last
    bytes. Nothing is decoded (it costs one CRC pass over the bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return False
    data = memoryview(data)
    n = len(data)
    if n < len(_PNG_SIGNATURE) + 12 or bytes(data[:8]) != _PNG_SIGNATURE:
        return False
    pos, first, idat = 8, True, False
    while pos + 12 <= n:
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > n:
            return False
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
            return False
        if first and ctype != b"IHDR":
            return False
        first = False
        idat = idat or ctype == b"IDAT"
        if ctype == b"IEND":
            return idat and end == n
        pos = end
    return False


def verified_get(cache: "ResultCache", key: str) -> Optional[bytes]:
    """``cache.get(key)`` when the entry is a whole PNG (:func:`verify_png`), else ``None``: a
    damaged or truncated entry is a miss, deleted where the backend has ``discard(key)`` (else the
    recomputed result is stored over it). What the Cartoonizer serves hits through."""
    data = cache.get(key)
    if data is None:
        return None
    if verify_png(data):
        return bytes(data)
    log.warning("dctnet_lite result cache: entry %s... is damaged or truncated: dropped, recomputing", key[:12])
    discard = getattr(cache, "discard", None)
    if callable(discard):
        try:
            discard(key)
        except Exception:  # a backend failure is a miss, never an error for the request
            pass
    return None


def decode_png(data: bytes):
    """PNG bytes -> a plain in-memory PIL image (RGB or RGBA), as a miss returns."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()  # an Image.Image without the PNG file's info, like the miss's result


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
class ResultCache:
    """What a result cache offers. Subclass it (or duck-type it) for another backend.

    ``get`` returns the stored bytes or ``None``; ``put`` stores them. Both must be safe to call
    from several threads and processes, and neither may raise for a backend failure (a cache
    that cannot be reached is a miss, never an error for the request).
    """

    def get(self, key: str) -> Optional[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class MemoryCache(ResultCache):
    """An in-process LRU cache bounded to ``max_bytes`` (thread safe)."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[str, bytes]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[bytes]:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = bytes(data)
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, v = self._items.popitem(last=False)
                self._bytes -= len(v)

    def __len__(self) -> int:
        return len(self._items)


def default_cache_root() -> Path:
    """``$DCTNET_LITE_CACHE``, else ``$XDG_CACHE_HOME/dctnet_lite``, else ``~/.cache/dctnet_lite``."""
    env = os.environ.get("DCTNET_LITE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dctnet_lite"


class DiskCache(ResultCache):
    """Files under ``root`` (default ``default_cache_root() / "results"``), bounded, LRU.

    Layout: ``root/<key[:2]>/<key>.png``. :meth:`discard` deletes an entry (what
    :func:`verified_get` does to a damaged one). Writes are atomic (a temp file in the same folder,
    then ``os.replace``), so a reader sees a whole entry or none, even with many processes. A
    hit touches the file's mtime; when the folder grows past ``max_bytes`` the entries with the
    oldest mtime are deleted until it is under ``low_water * max_bytes``. Eviction runs under an
    advisory ``fcntl`` lock (one evictor at a time; the others skip it) and tolerates files
    vanishing under it. Each process re-measures the folder after it has itself added 10% of
    ``max_bytes``, so with N writing processes the size stays below about
    ``max_bytes * (1 + 0.1 * N)``.
    """

    def __init__(self, root: Union[str, os.PathLike, None] = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 low_water: float = 0.9):
        if int(max_bytes) < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if not 0.0 < low_water <= 1.0:
            raise ValueError(f"low_water must lie in (0, 1], got {low_water}")
        self.root = Path(root).expanduser() if root is not None else default_cache_root() / "results"
        self.max_bytes = int(max_bytes)
        self.low_water = float(low_water)
        self._lock = threading.Lock()
        self._known_bytes: Optional[int] = None  # folder size at the last scan + own additions
        self._added_since_scan = 0
        self._warned = False
        self.hits = self.misses = self.evicted = 0

    def __repr__(self) -> str:
        return f"DiskCache(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    # ---------------------------------------------------------------- entries
    def path_for(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"a cache key is 64 lowercase hex digits, got {key!r}")
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> Optional[bytes]:
        path = self.path_for(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            self._warn(f"cannot read {path}: {e}")
            self.misses += 1
            return None
        try:
            os.utime(path)  # LRU: a hit makes the entry young again
        except OSError:
            pass  # evicted meanwhile, or a read-only cache: the data is still good
        self.hits += 1
        return data

    def discard(self, key: str) -> None:
        """Delete the entry of ``key`` if there is one."""
        _unlink(self.path_for(key))

    def put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        if len(data) > self.max_bytes:
            return
        try:
            self._write(path, data)
        except OSError as e:
            self._warn(f"cannot write {path}: {e}")
            return
        with self._lock:
            self._added_since_scan += len(data)
            if self._known_bytes is not None:
                self._known_bytes += len(data)
            need_scan = (self._known_bytes is None or self._known_bytes > self.max_bytes
                         or self._added_since_scan > 0.1 * self.max_bytes)
        if need_scan:
            self.evict()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Atomic without fsync: a cache entry lost in a power cut is only a miss.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _warn(self, msg: str) -> None:
        if not self._warned:
            log.warning("dctnet_lite result cache: %s (the cache is skipped, results are not)", msg)
            self._warned = True

    # ---------------------------------------------------------------- size and eviction
    def _scan(self) -> Iterator[Tuple[Path, int, float]]:
        """(path, size, mtime) of every entry; removes stale temp files; tolerates races."""
        try:
            subdirs = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        now = time.time()
        for sub in subdirs:
            try:
                if not sub.is_dir(follow_symlinks=False):
                    continue
                entries = list(os.scandir(sub.path))
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:  # vanished
                    continue
                if e.name.startswith("."):
                    if e.name.endswith(".tmp") and now - st.st_mtime > _STALE_TEMP_SECONDS:
                        _unlink(e.path)
                    continue
                if e.name.endswith(".png"):
                    yield Path(e.path), st.st_size, st.st_mtime

    def size_bytes(self) -> int:
        return sum(s for _, s, _ in self._scan())

    def __len__(self) -> int:
        return sum(1 for _ in self._scan())

    def evict(self) -> int:
        """Measure the folder and, when it is over ``max_bytes``, drop the least recently used
        entries until it is under ``low_water * max_bytes``. Returns the bytes freed."""
        with _FolderLock(self.root / ".evict.lock") as locked:
            if not locked:  # another process is evicting right now
                with self._lock:
                    self._added_since_scan = 0
                return 0
            entries: List[Tuple[Path, int, float]] = list(self._scan())
            total = sum(s for _, s, _ in entries)
            freed = 0
            if total > self.max_bytes:
                target = self.low_water * self.max_bytes
                entries.sort(key=lambda e: e[2])  # oldest mtime first
                for path, size, _ in entries:
                    if total - freed <= target:
                        break
                    if _unlink(path):
                        freed += size
                        self.evicted += 1
            with self._lock:
                self._known_bytes = total - freed
                self._added_since_scan = 0
            return freed

    def clear(self) -> None:
        for path, _, _ in list(self._scan()):
            _unlink(path)
        with self._lock:
            self._known_bytes, self._added_since_scan = 0, 0


def _unlink(path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return False


class _FolderLock:
    """Non-blocking exclusive ``fcntl.flock`` on a lock file; yields whether it was acquired."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> bool:
        if fcntl is None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return True  # a read-only cache folder: nothing to evict anyway
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            os.close(self.fd)
            self.fd = None
            return False

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


def open_cache(cache) -> Optional[ResultCache]:
    """``None`` / ``False`` -> no cache; ``"disk"`` / ``True`` -> :class:`DiskCache` in the user
    cache dir; ``"memory"`` -> :class:`MemoryCache`; any other string or path -> a
    :class:`DiskCache` rooted there; an object with ``get`` and ``put`` -> itself."""
    if cache is None or cache is False:
        return None
    if cache is True or cache == "disk":
        return DiskCache()
    if cache == "memory":
        return MemoryCache()
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(cache)
    if callable(getattr(cache, "get", None)) and callable(getattr(cache, "put", None)):
        return cache
    raise TypeError(f"cache must be None, 'disk', 'memory', a folder or a ResultCache, "
                    f"got {type(cache).__name__}")

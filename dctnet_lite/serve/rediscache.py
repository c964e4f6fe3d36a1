"""A Redis backend of the result cache (:class:`~dctnet_lite.cache.ResultCache`).

Entries are ``<prefix><key>`` -> the stored bytes, written with ``SET ... EX ttl``; eviction is
Redis' own (set ``maxmemory`` and ``maxmemory-policy allkeys-lru`` in its configuration: with
the default ``noeviction`` a full Redis refuses writes, which this backend reports once and
then ignores). The ``redis`` client is imported when a :class:`RedisCache` is made, never at
import time.

A Redis that cannot be reached never fails a request: a connection error or timeout (short:
``socket_timeout``, 0.5 s by default) marks the backend *down*, logs one warning, and from then
on every ``get`` is a miss and every ``put`` is skipped without touching the network, until
``retry_after`` seconds have passed; the next call then tries again, and a success logs that the
cache is back. :attr:`up` and :attr:`errors` say how it is doing (the service's ``/healthz`` and
``/metrics`` show them).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from ..cache import ResultCache

log = logging.getLogger("dctnet_lite.serve")

#: Default lifetime of an entry (seconds): one week.
DEFAULT_TTL = 7 * 86400
DEFAULT_PREFIX = "dctnet-lite:result:"


class RedisCache(ResultCache):
    """``RedisCache("redis://127.0.0.1:6379/0", ttl=...)``: see the module docstring.

    Args:
        url: a ``redis://`` (or ``rediss://``, ``unix://``) URL, as ``redis.Redis.from_url`` reads it.
        ttl: seconds an entry lives (``None`` or 0: until Redis evicts it).
        prefix: prepended to every key (several services can share one Redis database).
        socket_timeout: seconds a call to Redis may take before it counts as down.
        retry_after: seconds to stay in no-cache mode after a failure before trying again.
        client: an existing ``redis.Redis`` client instead of ``url``.
    """

    def __init__(self, url: Optional[str] = None, ttl: Optional[int] = DEFAULT_TTL, *,
                 prefix: str = DEFAULT_PREFIX, socket_timeout: float = 0.5, retry_after: float = 5.0,
                 client=None):
        if client is None:
            try:
                import redis
            except ImportError:
                raise ImportError("the Redis cache needs the redis client: pip install 'dctnet-lite[serve]'") from None
            if not url:
                raise ValueError("RedisCache needs a url (redis://HOST:PORT/DB) or a client")
            client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                          socket_connect_timeout=socket_timeout, health_check_interval=30)
        if ttl is not None and int(ttl) < 0:
            raise ValueError(f"ttl must be >= 0 seconds, got {ttl}")
        self.client, self.url = client, url
        self.ttl = int(ttl) if ttl else None
        self.prefix = prefix
        self.retry_after = float(retry_after)
        self.up = True
        self.errors = 0
        self._down_until = 0.0
        self._write_refused = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisCache(url={self.where!r}, ttl={self.ttl})"

    @property
    def where(self) -> str:
        """The URL without a password (for logs and /healthz)."""
        url = self.url or "redis"
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url

    # ---------------------------------------------------------------- health
    def _available(self) -> bool:
        return self.up or time.monotonic() >= self._down_until

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_after
            was_up, self.up = self.up, False
        if was_up:
            log.warning("result cache: Redis at %s is unreachable (%s: %s): serving without a cache, "
                        "retrying every %.0f s", self.where, type(e).__name__, e, self.retry_after)

    def _ok(self) -> None:
        if not self.up:
            with self._lock:
                was_down, self.up = not self.up, True
            if was_down:
                log.warning("result cache: Redis at %s is back: caching again", self.where)

    def ping(self) -> bool:
        """Whether Redis answers now (updates :attr:`up`)."""
        try:
            self.client.ping()
        except Exception as e:
            self._failed(e)
            return False
        self._ok()
        return True

    # ---------------------------------------------------------------- ResultCache
    def get(self, key: str) -> Optional[bytes]:
        if not self._available():
            return None
        try:
            data = self.client.get(self.prefix + key)
        except Exception as e:
            self._failed(e)
            return None
        self._ok()
        return data

    def put(self, key: str, data: bytes) -> None:
        if not self._available():
            return
        try:
            self.client.set(self.prefix + key, bytes(data), ex=self.ttl)
        except Exception as e:
            import redis

            if isinstance(e, redis.exceptions.ResponseError):  # e.g. OOM under noeviction: Redis is up
                if not self._write_refused:
                    self._write_refused = True
                    log.warning("result cache: Redis at %s refused a write (%s); set maxmemory-policy "
                                "allkeys-lru so it evicts instead", self.where, e)
                return
            self._failed(e)
            return
        self._ok()

    def discard(self, key: str) -> None:
        """Delete an entry (what :func:`~dctnet_lite.cache.verified_get` does to a damaged one)."""
        if not self._available():
            return
        try:
            self.client.delete(self.prefix + key)
        except Exception as e:
            self._failed(e)

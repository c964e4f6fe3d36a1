"""``dctnet-lite serve``: the resident web service (HTTP API, a web page, Prometheus metrics).

Needs the ``[serve]`` extra (``pip install 'dctnet-lite[serve]'``: FastAPI, uvicorn,
python-multipart, redis, prometheus-client); the light core never imports this package.

- :func:`create_app` builds the FastAPI application: the checkpoints are loaded and warmed up
  here, once, so a server that runs it opens its port with the models ready.
- :func:`serve` runs it under uvicorn on ``127.0.0.1:8000`` by default, and shuts down
  gracefully on SIGTERM or SIGINT (the requests in flight finish first).
- :class:`ServeConfig` holds every setting (the CLI flags of ``dctnet-lite serve``).
- :class:`~dctnet_lite.serve.batching.DynamicBatcher` (same-size buckets, ``max_batch``,
  ``max_wait``) and :class:`~dctnet_lite.serve.rediscache.RedisCache` are usable on their own.

See ``docs/serving.md`` for the API, the limits, the cache and the measured throughput.
"""
from .app import ServeConfig, ServeError, create_app, open_result_cache, serve  # noqa: F401
from .batching import DynamicBatcher  # noqa: F401
from .rediscache import RedisCache  # noqa: F401

__all__ = ["ServeConfig", "ServeError", "create_app", "serve", "open_result_cache", "DynamicBatcher",
           "RedisCache"]

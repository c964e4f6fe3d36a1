"""Dynamic batching for the service: images that arrive together run as one batch on the device.

One device thread owns the network (one batch at a time: a second concurrent forward on the
same CPU cores or GPU only slows both). Images wait in *buckets*: the caller names each image's
bucket, (model, network height, network width) in the service, so only same-size images of one
model share a batch (a model that takes one strength per batch adds the strength). A bucket runs
when it holds ``max_batch`` images, or when its oldest image has waited ``max_wait`` seconds,
whichever comes first; while a batch runs, new images keep collecting, so under load batches
fill by themselves. ``max_batch=1`` switches batching off (one image per forward).

Images of one batch may ask for different strengths: the network takes a per-sample strength
vector, so they still share the forward (a batch whose images share one strength passes it as
a float, exactly as a single call does). Batched results are the same pixels as one-by-one
results (``tests/test_serve.py`` checks it). A batch that fails is retried one image at a time,
so one bad image only fails its own request.

Standard library and torch only: nothing here knows about HTTP.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple

import torch


class BatchResult(NamedTuple):
    """What an image's future resolves to: its result (e.g. an (H, W, 3) uint8 array), the
    number of images in the forward it ran in, how long it waited for the device and how long
    the forward took."""

    rgb: Any
    batch_size: int
    queue_seconds: float
    model_seconds: float


class BatcherClosed(RuntimeError):
    """The batcher is shut down and takes no more images."""


@dataclass(eq=False)  # identity: the payload may be a tensor
class _Item:
    payload: Any
    strength: float
    future: concurrent.futures.Future
    arrived: float = field(default_factory=time.monotonic)


#: run(bucket, payloads, strength: a float, or a (B,) tensor when they differ) -> B results
RunFn = Callable[[Hashable, Sequence[Any], Any], Sequence[Any]]


class DynamicBatcher:
    """Collects images per bucket and runs each bucket as one batch on a device thread (see
    the module docstring).

    Args:
        run: ``run(bucket, payloads, strength)``: the forward of one batch, giving one result per
            payload (the service: :meth:`~dctnet_lite.inference.Cartoonizer.run_uint8` of the
            bucket's model on the images' pixels).
        max_batch: the most images in one forward (1: no batching).
        max_wait: seconds the oldest image of a bucket may wait for companions.
        on_batch: ``on_batch(size, seconds)`` after each forward (metrics).
    """

    def __init__(self, run: RunFn, max_batch: int = 8, max_wait: float = 0.005,
                 on_batch: Optional[Callable[[int, float], None]] = None):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.run, self.max_batch, self.max_wait = run, int(max_batch), float(max_wait)
        self.on_batch = on_batch
        self._buckets: Dict[Hashable, List[_Item]] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._flushing = False
        self._thread: Optional[threading.Thread] = None
        self.batches = 0

    # ---------------------------------------------------------------- life cycle
    def start(self) -> "DynamicBatcher":
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._closed = self._flushing = False
                self._thread = threading.Thread(target=self._loop, name="dctnet-device", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: Optional[float] = None) -> None:
        """Take no more images, run the ones waiting (at once, without waiting for companions),
        then stop the device thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self) -> None:
        """From now on run every image at once, without waiting for companions (the service
        calls it when it starts draining on SIGTERM); images are still taken."""
        with self._cv:
            self._flushing = True
            self._cv.notify_all()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def pending(self) -> int:
        """Images waiting for the device (not yet in a running forward)."""
        with self._cv:
            return sum(len(v) for v in self._buckets.values())

    # ---------------------------------------------------------------- submitting
    def submit(self, bucket: Hashable, payload: Any, strength: float) -> concurrent.futures.Future:
        """Queue one image (``payload``: what ``run`` takes, e.g. (1, 3, h, w) uint8 pixels) in
        ``bucket``; returns a future of :class:`BatchResult`. Cancelling the future before its
        batch starts drops the image."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        item = _Item(payload, float(strength), fut)
        with self._cv:
            if self._closed or self._thread is None:
                raise BatcherClosed("the service is shutting down")
            self._buckets.setdefault(bucket, []).append(item)
            self._cv.notify_all()
        fut.add_done_callback(lambda f: self._drop(bucket, item) if f.cancelled() else None)
        return fut

    def _drop(self, bucket: Hashable, item: _Item) -> None:
        """A cancelled image leaves its bucket at once (the queue depth counts it no more)."""
        with self._cv:
            items = self._buckets.get(bucket)
            if items is not None and item in items:
                items.remove(item)
                if not items:
                    del self._buckets[bucket]

    # ---------------------------------------------------------------- device thread
    def _next_batch(self) -> Optional[Tuple[Hashable, List[_Item]]]:
        """Under the lock: wait for a bucket that is due; take up to ``max_batch`` of its images.
        ``None`` when closed and nothing is left."""
        while True:
            if not self._buckets:
                if self._closed:
                    return None
                self._cv.wait()
                continue
            full = [k for k, v in self._buckets.items() if len(v) >= self.max_batch]
            oldest = min(full or self._buckets, key=lambda k: self._buckets[k][0].arrived)
            if full or self._closed or self._flushing:
                break
            wait = self._buckets[oldest][0].arrived + self.max_wait - time.monotonic()
            if wait <= 0:
                break
            self._cv.wait(wait)
        items = self._buckets[oldest]
        take, rest = items[:self.max_batch], items[self.max_batch:]
        if rest:
            self._buckets[oldest] = rest
        else:
            del self._buckets[oldest]
        return oldest, take

    def _loop(self) -> None:
        while True:
            with self._cv:
                nxt = self._next_batch()
            if nxt is None:
                return
            bucket, items = nxt
            live = [it for it in items if it.future.set_running_or_notify_cancel()]
            if live:
                self._run(bucket, live)

    def _run(self, bucket: Hashable, items: List[_Item]) -> None:
        t0 = time.monotonic()
        strengths = [it.strength for it in items]
        strength = strengths[0] if len(set(strengths)) == 1 else torch.tensor(strengths, dtype=torch.float32)
        try:
            out = self.run(bucket, [it.payload for it in items], strength)
        except BaseException as e:  # noqa: B902 - the request gets the error, the thread lives on
            if len(items) > 1:  # isolate the image that failed: the others still succeed
                for it in items:
                    self._run(bucket, [it])
                return
            items[0].future.set_exception(e)
            return
        dt = time.monotonic() - t0
        self.batches += 1
        if self.on_batch is not None:
            try:
                self.on_batch(len(items), dt)
            except Exception:  # metrics never fail a request
                pass
        for j, it in enumerate(items):
            it.future.set_result(BatchResult(out[j], len(items), t0 - it.arrived, dt))

"""dctnet-lite serve: API round trip, batching, disk and Redis cache, refusals, SIGTERM, CLI.

Tiny random width-8 checkpoints and images of at most 64 px keep it fast. Tests that need Redis
use ``$DCTNET_LITE_TEST_REDIS`` (``.ci/run`` starts one) or start ``redis-server`` themselves,
and skip when neither is there.
"""
import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import portrait_like
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette's note that httpx is deprecated for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from dctnet_lite import Cartoonizer, DCTNet, save_checkpoint  # noqa: E402
from dctnet_lite.cache import DiskCache  # noqa: E402
from dctnet_lite.serve import DynamicBatcher, ServeConfig, create_app  # noqa: E402
from dctnet_lite.serve.batching import BatcherClosed  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_ckpt")
    out = []
    for seed, name in ((0, "tiny-a"), (1, "tiny-b")):
        torch.manual_seed(seed)
        path = d / f"{name}.safetensors"
        save_checkpoint(path, DCTNet(8).eval(), provenance={"recipe": "test"})
        out.append(path)
    return out


@pytest.fixture(scope="module")
def cz(ckpts):
    return Cartoonizer(ckpts[0], device="cpu", precision="fp32")


def png_bytes(arr, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


PHOTO = portrait_like(48, 64, 7)
PHOTO_PNG = png_bytes(PHOTO)


def config(ckpts, **kw) -> ServeConfig:
    base = dict(checkpoints=[ckpts[0]], device="cpu", precision="fp32", warmup_size=32, max_wait_ms=2.0,
                workers=2)
    base.update(kw)
    return ServeConfig(**base)


@contextlib.contextmanager
def client(ckpts, **kw):
    app = create_app(config(ckpts, **kw))
    with TestClient(app) as c:
        c.app_ = app
        yield c


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_error(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == status and err["message"] and "\n" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


class LiveServer:
    """The app under a real uvicorn in a thread (for concurrency over real sockets)."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def post_many(url, bodies, params_list, timeout=60):
    """POST each body concurrently (one thread each); returns the responses in order."""
    out = [None] * len(bodies)

    def go(i):
        with httpx.Client(timeout=timeout) as c:
            out[i] = c.post(url, params=params_list[i], files={"image": (f"p{i}.png", bodies[i], "image/png")})

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(port=None):
    """A private redis-server on a free port (skips when the binary is absent)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = pytest.importorskip("redis")
    port = port or free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        r = redis.Redis.from_url(url)
        t0 = time.monotonic()
        while True:
            try:
                r.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() - t0 > 10:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield proc, url, port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def redis_url():
    """``$DCTNET_LITE_TEST_REDIS`` when set and answering, else a private redis-server."""
    env = os.environ.get("DCTNET_LITE_TEST_REDIS")
    if env:
        redis = pytest.importorskip("redis")
        try:
            redis.Redis.from_url(env, socket_timeout=1).ping()
        except Exception as e:
            pytest.skip(f"$DCTNET_LITE_TEST_REDIS={env} does not answer: {e}")
        yield env
        return
    with redis_server() as (_, url, _port):
        yield url


# ------------------------------------------------------------------ the API
def test_round_trip_multipart_and_raw_body(ckpts, cz):
    ref = cz(PHOTO, strength=0.5)
    with client(ckpts) as c:
        r = c.post("/v1/cartoonize", files={"image": ("me.png", PHOTO_PNG, "image/png")}, data={"strength": "0.5"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        assert r.headers["x-dctnet-checkpoint"] == "tiny-a"
        assert r.headers["x-dctnet-precision"] == "fp32" and r.headers["x-dctnet-device"] == "cpu"
        assert r.headers["x-dctnet-cache"] == "off" and r.headers["x-dctnet-size"] == "64x48"
        assert r.headers["x-dctnet-batch-size"] == "1"
        timing = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
        assert {"read", "decode", "queue", "model", "encode", "total"} <= set(timing)
        assert float(timing["total"]) >= float(timing["model"]) > 0
        assert 'filename="me_cartoon.png"' in r.headers["content-disposition"]
        out = decode(r.content)
        assert out.shape == PHOTO.shape and np.array_equal(out, ref)  # same size, the library's pixels

        # a raw body with options in the query; JPEG and WebP out; size sets the longer side
        r = c.post("/v1/cartoonize", params={"strength": 0.5, "format": "jpeg"}, content=PHOTO_PNG,
                   headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert np.abs(decode(r.content).astype(int) - ref).mean() < 8  # JPEG at quality 90
        r = c.post("/v1/cartoonize", params={"size": 32, "format": "webp"}, content=png_bytes(PHOTO, "JPEG"),
                   headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(r.content)).size == (32, 24) and r.headers["x-dctnet-size"] == "32x24"
        r = c.post("/v1/cartoonize", files={"image": ("портрет 1.png", PHOTO_PNG, "image/png")})  # any name
        assert r.status_code == 200
        assert r.headers["content-disposition"] == 'inline; filename="________1_cartoon.png"'


def test_alpha_is_kept_in_png_and_flattened_in_jpeg(ckpts):
    rgba = np.dstack([PHOTO, np.full(PHOTO.shape[:2], 128, np.uint8)])
    with client(ckpts) as c:
        r = c.post("/v1/cartoonize", content=png_bytes(rgba), headers={"content-type": "image/png"})
        im = Image.open(io.BytesIO(r.content))
        assert im.mode == "RGBA" and np.all(np.asarray(im)[..., 3] == 128)
        r = c.post("/v1/cartoonize?format=jpeg", content=png_bytes(rgba), headers={"content-type": "image/png"})
        assert Image.open(io.BytesIO(r.content)).mode == "RGB"


def test_checkpoints_health_metrics_docs_and_page(ckpts):
    with client(ckpts, checkpoints=ckpts) as c:
        info = c.get("/v1/checkpoints").json()
        assert info["default"] == "tiny-a"
        names = [m["name"] for m in info["checkpoints"]]
        assert names == ["tiny-a", "tiny-b"]
        first = info["checkpoints"][0]
        assert first["default"] and first["family"] == "dctnet" and first["architecture"] == "width 8"
        assert first["precision"] == "fp32" and len(first["sha256"]) == 64
        a = c.post("/v1/cartoonize", content=PHOTO_PNG, headers={"content-type": "image/png"})
        b = c.post("/v1/cartoonize", params={"checkpoint": "tiny-b"}, content=PHOTO_PNG,
                   headers={"content-type": "image/png"})
        assert b.headers["x-dctnet-checkpoint"] == "tiny-b"
        assert not np.array_equal(decode(a.content), decode(b.content))
        assert_error(c.post("/v1/cartoonize", params={"checkpoint": "nope"}, content=PHOTO_PNG,
                            headers={"content-type": "image/png"}), 422, "unknown_checkpoint")

        h = c.get("/healthz")
        assert h.status_code == 200 and h.json()["ready"] and h.json()["checkpoints"] == names
        m = c.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        text = m.text
        assert 'dctnet_requests_total{endpoint="/v1/cartoonize",method="POST",status="200"} 2.0' in text
        assert 'dctnet_requests_total{endpoint="/v1/cartoonize",method="POST",status="422"} 1.0' in text
        assert 'dctnet_request_seconds_bucket{endpoint="/v1/cartoonize"' in text
        assert "dctnet_batch_size_count 2.0" in text
        assert "dctnet_queue_depth 0.0" in text and "dctnet_inflight_requests" in text
        assert 'dctnet_images_total{cache="off",checkpoint="tiny-b"} 1.0' in text

        paths = c.get("/openapi.json").json()["paths"]
        assert {"/v1/cartoonize", "/v1/cartoonize/batch", "/v1/checkpoints", "/healthz", "/metrics"} <= set(paths)
        assert "multipart/form-data" in paths["/v1/cartoonize"]["post"]["requestBody"]["content"]
        assert c.get("/docs").status_code == 200
        page = c.get("/")
        assert page.status_code == 200 and 'id="strength"' in page.text and 'id="files"' in page.text


def test_shipped_default_checkpoint_smoke():
    from dctnet_lite.checkpoint import CheckpointError

    try:
        app = create_app(ServeConfig(device="cpu", warmup_size=0))
    except CheckpointError as e:
        pytest.skip(f"the shipped default checkpoint is not here: {e}")
    with TestClient(app) as c:
        small = portrait_like(24, 32, 3)
        r = c.post("/v1/cartoonize", files={"image": ("s.png", png_bytes(small), "image/png")})
        from dctnet_lite.registry import DEFAULT_WEIGHTS

        assert r.status_code == 200 and r.headers["x-dctnet-checkpoint"] == DEFAULT_WEIGHTS
        assert decode(r.content).shape == small.shape


# ------------------------------------------------------------------ batching
def test_batcher_buckets_bounds_waits_cancels_and_isolates_failures():
    calls = []

    def run(bucket, payloads, strength):
        calls.append((bucket, list(payloads), strength))
        if "bad" in payloads:
            raise ValueError("bad image")
        return [f"{p}@{bucket}" for p in payloads]

    b = DynamicBatcher(run, max_batch=3, max_wait=0.15)
    with pytest.raises(BatcherClosed):
        b.submit("x", "p", 1.0)  # not started
    b.start()
    futs = [b.submit("A", f"a{i}", 1.0) for i in range(4)] + [b.submit("B", "b0", 0.5)]
    res = [f.result(5) for f in futs]
    assert [r.rgb for r in res] == ["a0@A", "a1@A", "a2@A", "a3@A", "b0@B"]
    assert [r.batch_size for r in res] == [3, 3, 3, 1, 1]      # max_batch bounds a bucket
    assert [c[0] for c in calls] == ["A", "A", "B"]
    assert res[3].queue_seconds >= 0.14                       # a lone image waits max_wait for company
    # different strengths in one batch: a per-image vector
    calls.clear()
    futs = [b.submit("C", "c0", 0.2), b.submit("C", "c1", 0.7), b.submit("C", "c2", 0.7)]
    [f.result(5) for f in futs]
    assert torch.equal(calls[0][2], torch.tensor([0.2, 0.7, 0.7]))
    # a failing batch is retried image by image: only the bad one fails
    futs = [b.submit("D", p, 1.0) for p in ("ok0", "bad", "ok1")]
    assert futs[0].result(5).rgb == "ok0@D" and futs[2].result(5).rgb == "ok1@D"
    with pytest.raises(ValueError, match="bad image"):
        futs[1].result(5)
    # cancelled before its batch starts: dropped
    calls.clear()
    f1, f2 = b.submit("E", "e0", 1.0), b.submit("E", "e1", 1.0)
    assert f1.cancel()
    assert f2.result(5).batch_size == 1 and calls[0][1] == ["e1"]
    # close runs what waits, at once, then refuses more
    slow = DynamicBatcher(run, max_batch=8, max_wait=30.0).start()
    f = slow.submit("F", "f0", 1.0)
    t0 = time.monotonic()
    slow.close()
    assert f.result(1).rgb == "f0@F" and time.monotonic() - t0 < 5
    with pytest.raises(BatcherClosed):
        slow.submit("F", "f1", 1.0)
    b.close()


def test_batching_gives_the_same_pixels_as_one_by_one(ckpts, cz):
    photos = [portrait_like(48, 64, 20 + i) for i in range(6)]
    strengths = [1.0, 0.5, 0.25, 1.0, 0.0, 0.75]
    app = create_app(config(ckpts, max_batch=8, max_wait_ms=400.0))
    with LiveServer(app) as srv:
        rs = post_many(srv.url + "/v1/cartoonize", [png_bytes(p) for p in photos],
                       [{"strength": s} for s in strengths])
        sizes = [int(r.headers["x-dctnet-batch-size"]) for r in rs]
        assert max(sizes) > 1, sizes                     # they ran together
        for r, p, s in zip(rs, photos, strengths):
            assert r.status_code == 200
            assert np.array_equal(decode(r.content), cz(p, strength=s))   # one by one, the library
        # the batch endpoint: several images in one request, one forward, each its own result
        files = [("images", (f"b{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(photos[:3])]
        files.append(("images", ("broken.png", b"not an image", "image/png")))
        r = httpx.post(srv.url + "/v1/cartoonize/batch", params={"strength": 0.5}, files=files, timeout=60)
        assert r.status_code == 200
        res = r.json()["results"]
        assert [x["status"] for x in res] == [200, 200, 200, 415]
        assert res[3]["error"]["code"] == "unsupported_media_type"
        assert all(x["batch_size"] == 3 for x in res[:3])
        import base64
        for x, p in zip(res[:3], photos):
            assert np.array_equal(decode(base64.b64decode(x["image_base64"])), cz(p, strength=0.5))
        m = httpx.get(srv.url + "/metrics").text
        assert "dctnet_batch_size_bucket{le=\"1.0\"}" in m


def test_different_sizes_do_not_share_a_batch(ckpts, cz):
    photos = [portrait_like(48, 64, 1), portrait_like(32, 40, 2), portrait_like(48, 64, 3)]
    app = create_app(config(ckpts, max_batch=8, max_wait_ms=600.0))
    with LiveServer(app) as srv:
        rs = post_many(srv.url + "/v1/cartoonize", [png_bytes(p) for p in photos], [{}] * 3)
    assert [int(r.headers["x-dctnet-batch-size"]) for r in rs] == [2, 1, 2]
    for r, p in zip(rs, photos):
        assert np.array_equal(decode(r.content), cz(p))


# ------------------------------------------------------------------ cache
def test_disk_cache_hit_on_repeat_shared_with_the_library(ckpts, tmp_path, cz):
    root = tmp_path / "cache"
    with client(ckpts, cache=f"disk:{root}") as c:
        send = dict(files={"image": ("x.png", PHOTO_PNG, "image/png")})
        r1 = c.post("/v1/cartoonize?strength=0.5", **send)
        r2 = c.post("/v1/cartoonize?strength=0.5", **send)
        assert (r1.headers["x-dctnet-cache"], r2.headers["x-dctnet-cache"]) == ("miss", "hit")
        assert r2.content == r1.content and r2.headers["x-dctnet-batch-size"] == "0"
        assert c.post("/v1/cartoonize?strength=0.6", **send).headers["x-dctnet-cache"] == "miss"
        j1 = c.post("/v1/cartoonize?strength=0.5&format=jpeg", **send)   # the format is in the key
        j2 = c.post("/v1/cartoonize?strength=0.5&format=jpeg", **send)
        assert (j1.headers["x-dctnet-cache"], j2.headers["x-dctnet-cache"]) == ("miss", "hit")
        assert j2.content == j1.content and j2.headers["content-type"] == "image/jpeg"
        assert len(list(root.rglob("*.png"))) == 3
        # a damaged entry is a miss, recomputed
        for f in root.rglob("*.png"):
            f.write_bytes(f.read_bytes()[:-20])
        r3 = c.post("/v1/cartoonize?strength=0.5", **send)
        assert r3.headers["x-dctnet-cache"] == "miss" and r3.content == r1.content
        assert 'dctnet_cache_lookups_total{result="hit"} 2.0' in c.get("/metrics").text
    # the library's file cache finds the PNG entry the service stored for the same file bytes
    photo = tmp_path / "x.png"
    photo.write_bytes(PHOTO_PNG)
    lib = Cartoonizer(ckpts[0], device="cpu", precision="fp32", cache=DiskCache(root))
    key, hit = lib.cache_lookup(photo, 0.5, None)
    assert hit == r1.content


def test_redis_cache_hit_on_repeat(ckpts):
    redis = pytest.importorskip("redis")
    with redis_url() as url:
        prefix = f"dctnet-test:{os.getpid()}:{time.monotonic_ns()}:"
        from dctnet_lite.serve import RedisCache

        cache = RedisCache(url, ttl=120, prefix=prefix)
        with client(ckpts, cache=cache) as c:
            send = dict(content=PHOTO_PNG, headers={"content-type": "image/png"})
            r1, r2 = c.post("/v1/cartoonize", **send), c.post("/v1/cartoonize", **send)
            assert (r1.headers["x-dctnet-cache"], r2.headers["x-dctnet-cache"]) == ("miss", "hit")
            assert r1.content == r2.content
            h = c.get("/healthz").json()["cache"]
            assert h["backend"] == "RedisCache" and h["up"] and h["ttl"] == 120
        r = redis.Redis.from_url(url)
        keys = r.keys(prefix + "*")
        assert len(keys) == 1 and 0 < r.ttl(keys[0]) <= 120 and r.get(keys[0]) == r1.content
        r.delete(*keys)


def test_redis_killed_mid_run_degrades_to_no_cache_and_comes_back(ckpts, caplog):
    from dctnet_lite.serve import RedisCache

    with redis_server() as (proc, url, port):
        cache = RedisCache(url, ttl=60, retry_after=0.3, socket_timeout=0.3)
        with client(ckpts, cache=cache) as c:
            send = dict(content=PHOTO_PNG, headers={"content-type": "image/png"})
            first = c.post("/v1/cartoonize", **send)
            assert c.post("/v1/cartoonize", **send).headers["x-dctnet-cache"] == "hit"
            proc.kill()
            proc.wait(10)
            with caplog.at_level(logging.WARNING, logger="dctnet_lite.serve"):
                down = [c.post("/v1/cartoonize", **send) for _ in range(3)]
            assert [r.status_code for r in down] == [200, 200, 200]
            assert all(r.headers["x-dctnet-cache"] == "down" and r.content == first.content for r in down)
            warned = [rec for rec in caplog.records if "unreachable" in rec.getMessage()]
            assert len(warned) == 1                            # one warning, not one per request
            assert c.get("/healthz").json()["cache"]["up"] is False
            assert "dctnet_cache_up 0.0" in c.get("/metrics").text
            # Redis comes back (empty): after retry_after the cache works again
            with redis_server(port):
                time.sleep(0.4)
                again = [c.post("/v1/cartoonize", **send).headers["x-dctnet-cache"] for _ in range(2)]
                assert again == ["miss", "hit"]
                assert c.get("/healthz").json()["cache"]["up"] is True


# ------------------------------------------------------------------ refusals
def test_every_refusal_is_a_clear_json_error(ckpts, tmp_path):
    import tempfile as tf

    with client(ckpts, max_upload_bytes=200_000, max_pixels=64 * 48) as c:
        ok = dict(headers={"content-type": "image/png"})
        # 413: the body (declared and streamed), the pixels (from the header), the output at size
        err = assert_error(c.post("/v1/cartoonize", content=b"\0" * 200_001, **ok), 413, "too_large")
        assert "200000 bytes" in err["message"]

        def chunks():
            for _ in range(30):
                yield b"\0" * 10_000
        assert_error(c.post("/v1/cartoonize", content=chunks(), **ok), 413, "too_large")
        big = png_bytes(np.zeros((60, 80, 3), np.uint8))
        err = assert_error(c.post("/v1/cartoonize", content=big, **ok), 413, "too_many_pixels")
        assert "80x60" in err["message"]
        assert_error(c.post("/v1/cartoonize?size=100", content=PHOTO_PNG, **ok), 413, "too_many_pixels")
        # 415: body types and image formats that are not taken
        assert_error(c.post("/v1/cartoonize", content=b"{}", headers={"content-type": "application/json"}), 415)
        err = assert_error(c.post("/v1/cartoonize", content=PHOTO_PNG,
                                  headers={"content-type": "application/x-www-form-urlencoded"}), 415)
        assert "curl" in err["message"]
        assert_error(c.post("/v1/cartoonize", content=b"plain text", **ok), 415, "unsupported_media_type")
        ico = io.BytesIO()
        Image.fromarray(PHOTO[:32, :32]).save(ico, format="ICO")
        assert_error(c.post("/v1/cartoonize", content=ico.getvalue(), **ok), 415, "unsupported_media_type")
        assert_error(c.post("/v1/cartoonize/batch", content=PHOTO_PNG, **ok), 415)
        # 400: no image, a truncated image, a broken form, two images on the single endpoint
        assert_error(c.post("/v1/cartoonize", content=b"", **ok), 400, "no_image")
        assert_error(c.post("/v1/cartoonize", data={"strength": "0.5"}, files={"x": ("", b"", "")}), 400)
        assert_error(c.post("/v1/cartoonize", content=PHOTO_PNG[:200], **ok), 400, "bad_image")
        assert_error(c.post("/v1/cartoonize", content=b"--zz\r\nbroken",
                            headers={"content-type": "multipart/form-data; boundary=zz"}), 400, "bad_request")
        two = [("image", ("a.png", PHOTO_PNG, "image/png")), ("image", ("b.png", PHOTO_PNG, "image/png"))]
        assert_error(c.post("/v1/cartoonize", files=two), 400, "too_many_images")
        # 422: parameter values, in the query and in the form
        for params in ({"strength": 1.5}, {"strength": "x"}, {"size": 0}, {"format": "gif"}):
            assert_error(c.post("/v1/cartoonize", params=params, content=PHOTO_PNG, **ok), 422, "invalid_parameter")
        for data in ({"strength": "1.5"}, {"strength": "nan"}, {"size": "-3"}, {"format": "tiff"}):
            assert_error(c.post("/v1/cartoonize", data=data, files={"image": ("a.png", PHOTO_PNG, "image/png")}),
                         422, "invalid_parameter")
        # 404 / 405 in the same shape
        assert_error(c.get("/v2/nothing"), 404, "not_found")
        assert_error(c.get("/v1/cartoonize"), 405, "method_not_allowed")
        # nothing of a request goes to disk: a 150 KB upload is parsed in memory (no spooled temp file)
        spool = tmp_path / "spool"
        spool.mkdir()
        old = tf.tempdir
        tf.tempdir = str(spool)
        try:
            noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            payload = png_bytes(noise) + b"\0" * 150_000  # trailing bytes after IEND: still the same image
            r = c.post("/v1/cartoonize", files={"image": ("n.png", payload, "image/png")})
            assert r.status_code == 200, r.text
        finally:
            tf.tempdir = old
        assert list(spool.iterdir()) == []
        text = c.get("/metrics").text
        assert 'dctnet_refused_total{code="too_many_pixels",status="413"}' in text


def test_429_beyond_the_queue_and_503_on_timeout_or_not_started(ckpts):
    app = create_app(config(ckpts, max_concurrency=1, max_queue=0, max_wait_ms=1500.0))
    with LiveServer(app) as srv:
        box = {}
        t = threading.Thread(target=lambda: box.update(r=httpx.post(
            srv.url + "/v1/cartoonize", content=PHOTO_PNG, headers={"content-type": "image/png"}, timeout=60)))
        t.start()
        t0 = time.monotonic()
        while app.state.service.batcher.pending() == 0 and time.monotonic() - t0 < 20:
            time.sleep(0.02)
        r = httpx.post(srv.url + "/v1/cartoonize", content=PHOTO_PNG, headers={"content-type": "image/png"})
        assert_error(r, 429, "too_many_requests")
        assert r.headers["retry-after"] == "1"
        t.join(60)
        assert box["r"].status_code == 200
    with client(ckpts, timeout_s=0.3, max_wait_ms=3000.0) as c:
        r = c.post("/v1/cartoonize", content=PHOTO_PNG, headers={"content-type": "image/png"})
        err = assert_error(r, 503, "timeout")
        assert "0.3 s" in err["message"]
        assert c.app_.state.service.batcher.pending() == 0  # the timed-out image left the queue
    app = create_app(config(ckpts))
    c = TestClient(app)  # no lifespan: the service is not started
    assert_error(c.post("/v1/cartoonize", content=PHOTO_PNG, headers={"content-type": "image/png"}), 503)
    assert c.get("/healthz").status_code == 503


def test_408_when_the_body_does_not_arrive(ckpts):
    import json

    app = create_app(config(ckpts, timeout_s=0.5))
    with LiveServer(app) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/cartoonize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 1000\r\n\r\n" + PHOTO_PNG[:100])  # then nothing more
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["error"]["code"] == "timeout"


# ------------------------------------------------------------------ compound system
def test_compound_pair_is_served_as_a_model(ckpts):
    from dctnet_lite.compound import CompoundCartoonizer
    from dctnet_lite.face import Face

    def detector(rgb):  # one fixed "face" in the middle of the image
        h, w = rgb.shape[:2]
        pts = np.array([[w * .35, h * .4], [w * .65, h * .4], [w * .5, h * .55], [w * .38, h * .7],
                        [w * .62, h * .7]], np.float32)
        return [Face((w * .2, h * .15, w * .8, h * .9), pts, 0.99)]

    ref = CompoundCartoonizer(ckpts[1], ckpts[0], detector=detector, min_face=10, device="cpu",
                              precision="fp32")(PHOTO, strength=0.5)
    with client(ckpts, compound=True, head=ckpts[1], background=ckpts[0], detector=detector, min_face=10,
                cache="memory") as c:
        listed = {m["name"]: m for m in c.get("/v1/checkpoints").json()["checkpoints"]}
        assert set(listed) == {"tiny-a", "compound"} and listed["compound"]["family"] == "compound"
        assert listed["compound"]["head"]["name"] == "tiny-b"
        send = dict(files={"image": ("f.png", PHOTO_PNG, "image/png")}, data={"strength": "0.5"})
        r = c.post("/v1/cartoonize?checkpoint=compound", **send)
        assert r.status_code == 200, r.text
        assert np.array_equal(decode(r.content), np.asarray(ref))
        plain = c.post("/v1/cartoonize", **send)
        assert plain.headers["x-dctnet-cache"] == "miss"  # its own cache entry, not the compound one
        assert not np.array_equal(decode(plain.content), decode(r.content))
        assert c.post("/v1/cartoonize?checkpoint=compound", **send).headers["x-dctnet-cache"] == "hit"


# ------------------------------------------------------------------ the process: CLI, SIGTERM
def test_cli_refuses_bad_settings_and_a_busy_port_in_one_line(ckpts, capsys):
    from dctnet_lite.cli import main

    assert main(["serve", "--checkpoint", str(ckpts[0]), "--max-batch", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dctnet-lite serve: error: max_batch must lie in 1..256, got 0"]
    assert main(["serve", "--checkpoint", str(ckpts[0]), "--cache", "ftp://x"]) == 1
    assert "--cache takes disk" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        assert main(["serve", "--checkpoint", str(ckpts[0]), "--port", str(port)]) == 1
        assert time.monotonic() - t0 < 5  # refused before any model is loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]


def test_the_core_and_the_cli_import_no_web_stack():
    code = ("import sys, dctnet_lite, dctnet_lite.cli\n"
            "dctnet_lite.cli.build_parser()\n"
            "print([m for m in ('fastapi', 'starlette', 'uvicorn', 'redis', 'prometheus_client', "
            "'python_multipart', 'dctnet_lite.serve') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_sigterm_finishes_the_requests_in_flight(ckpts, tmp_path):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "dctnet_lite", "serve", "--checkpoint", str(ckpts[0]),
                                 "--port", str(port), "--device", "cpu", "--precision", "fp32", "--max-batch", "8",
                                 "--max-wait-ms", "5000", "--threads", "1"],
                                cwd=tmp_path, env=env, stdout=logf, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() - t0 < 90, "the service did not start"
                time.sleep(0.2)
        assert health["ready"]  # the first answer on the port: models loaded and warmed up
        text = log_path.read_text()
        assert text.index("warmed up tiny-a") < text.index("listening on") < text.index("Application startup")

        photos = [portrait_like(40, 48, 30 + i) for i in range(5)]
        rs = [None] * len(photos)

        def go(i):
            rs[i] = httpx.post(url + "/v1/cartoonize", content=png_bytes(photos[i]),
                               headers={"content-type": "image/png"}, timeout=60)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(photos))]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while "dctnet_device_queue 5.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() - t0 < 30, "the requests did not arrive"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # all five wait in the batcher now
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    ref = Cartoonizer(ckpts[0], device="cpu", precision="fp32")
    for r, p in zip(rs, photos):
        assert r is not None and r.status_code == 200
        assert int(r.headers["x-dctnet-batch-size"]) == 5
        assert np.array_equal(decode(r.content), ref(p))
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2)
    assert "every request in flight was answered" in log_path.read_text()

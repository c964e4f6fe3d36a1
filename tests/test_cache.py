"""Result cache: the documented key, DiskCache (atomic, bounded, LRU, multi-process), wiring."""
import hashlib
import json
import multiprocessing as mp
import os

import numpy as np
import torch
import pytest
from PIL import Image

from dctnet_lite import Cartoonizer, cartoonize_files
from dctnet_lite.cache import (DiskCache, MemoryCache, ResultCache, cache_key, default_cache_root,
                               file_image_bytes, open_cache)
from dctnet_lite.cli import main

from conftest import portrait_like

K = "ab" + "0" * 62


def key(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _documented_key(params: dict, image: bytes) -> str:
    return hashlib.sha256(b"dctnet-lite-result-v2\0"
                          + json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
                          + b"\0" + image).hexdigest()


def test_key_is_the_documented_layout():
    params = {"buckets": None, "checkpoint": "c" * 64, "precision": "fp16", "resize": "host",
              "size": 512, "strength": "0.5", "tile": None, "tile_overlap": 64}
    assert cache_key(b"IMG", "c" * 64, 0.5, 512, "fp16") == _documented_key(params, b"IMG")
    bucketed = dict(params, buckets=[256, 384], resize="device", size=None, tile=128, tile_overlap=16)
    bucketed["resize"] = None  # no size: nothing is resized, the field says so
    assert cache_key(b"IMG", "c" * 64, 0.5, None, "fp16", 128, 16, buckets=(384, 256), resize="device") \
        == _documented_key(bucketed, b"IMG")
    base = cache_key(b"IMG", "c" * 64, 0.5, 512, "fp16")
    others = [cache_key(b"IMG!", "c" * 64, 0.5, 512, "fp16"), cache_key(b"IMG", "d" * 64, 0.5, 512, "fp16"),
              cache_key(b"IMG", "c" * 64, 0.6, 512, "fp16"), cache_key(b"IMG", "c" * 64, 0.5, None, "fp16"),
              cache_key(b"IMG", "c" * 64, 0.5, 512, "fp32"), cache_key(b"IMG", "c" * 64, 0.5, 512, "fp16", tile=256),
              cache_key(b"IMG", "c" * 64, 0.5, 512, "fp16", buckets=(512,)),
              cache_key(b"IMG", "c" * 64, 0.5, 512, "fp16", resize="device")]
    assert len({base, *others}) == 9
    assert cache_key(b"IMG", "c" * 64, 1, 512, "fp16") == cache_key(b"IMG", "c" * 64, 1.0, 512, "fp16")
    assert cache_key(b"IMG", "c" * 64, 1, 512, "fp16", buckets=()) == cache_key(b"IMG", "c" * 64, 1, 512, "fp16")


def test_key_fields_are_honest_and_old_layouts_miss():
    """Buckets and resize are fields of their own: the precision field holds only a precision,
    and a key of the version-1 layout (settings folded into ``precision``) is never produced."""
    b = cache_key(b"IMG", "c" * 64, 0.5, 64, "fp32", buckets=(256, 384), resize="device")
    v1 = hashlib.sha256(b"dctnet-lite-result-v1\0" + json.dumps(
        {"checkpoint": "c" * 64, "precision": "fp32;buckets=256,384;resize=device", "size": 64,
         "strength": "0.5", "tile": None, "tile_overlap": 64}, sort_keys=True, separators=(",", ":")).encode()
        + b"\0" + b"IMG").hexdigest()
    assert b != v1
    # a resize place without a size does not split the keys; with a size it does
    assert cache_key(b"I", "c", 1.0, None, "fp32", resize="device") == cache_key(b"I", "c", 1.0, None, "fp32")
    assert cache_key(b"I", "c", 1.0, 64, "fp32", resize="device") != cache_key(b"I", "c", 1.0, 64, "fp32")
    with pytest.raises(ValueError, match="resize"):
        cache_key(b"I", "c", 1.0, 64, "fp32", resize="gpu")


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path / "a"))
    assert default_cache_root() == tmp_path / "a" and DiskCache().root == tmp_path / "a" / "results"
    monkeypatch.delenv("DCTNET_LITE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x" / "dctnet_lite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "dctnet_lite"


def test_disk_roundtrip_is_atomic_and_validates_keys(tmp_path):
    c = DiskCache(tmp_path)
    assert c.get(K) is None
    c.put(K, b"payload")
    assert c.get(K) == b"payload" and c.path_for(K) == tmp_path / "ab" / f"{K}.png"
    assert [p.name for p in (tmp_path / "ab").iterdir()] == [f"{K}.png"]  # no temp file left
    c.put(K, b"new")
    assert c.get(K) == b"new" and len(c) == 1
    with pytest.raises(ValueError):
        c.get("../../etc/passwd")
    assert isinstance(c, ResultCache) and (c.hits, c.misses) == (2, 1)


def test_lru_eviction_keeps_recently_used(tmp_path):
    c = DiskCache(tmp_path, max_bytes=1000, low_water=0.7)
    for i in range(4):
        c.put(key(i), bytes(200))
        os.utime(c.path_for(key(i)), (1000 + i, 1000 + i))  # ages: 0 oldest
    assert c.get(key(0)) is not None  # a hit makes 0 the youngest
    c.put(key(4), bytes(200))
    c.put(key(5), bytes(200))  # 1200 > 1000: evict the oldest down to 700
    left = {i for i in range(6) if c.path_for(key(i)).exists()}
    assert c.size_bytes() <= 1000 and 0 in left and 5 in left and 1 not in left
    c.put(key(9), bytes(2000))  # larger than the whole cache: not stored
    assert c.get(key(9)) is None
    c.clear()
    assert len(c) == 0


def test_eviction_tolerates_vanishing_files_and_stale_temps(tmp_path, monkeypatch):
    c = DiskCache(tmp_path, max_bytes=300)
    for i in range(3):
        c.put(key(i), bytes(100))
    stale = tmp_path / "ab" / ".x.png.1.2.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    real_scan = c._scan

    def scan_then_vanish():
        entries = list(real_scan())
        for p, _, _ in entries:
            p.unlink()  # another process evicts everything under our feet
        yield from entries

    monkeypatch.setattr(c, "_scan", scan_then_vanish)
    c.max_bytes = 100
    assert c.evict() == 0  # nothing left to delete, and no error
    assert not stale.exists()


def test_unwritable_cache_is_skipped_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    c = DiskCache(blocker / "sub")  # a folder under a file: every write fails
    c.put(K, b"x")
    assert c.get(K) is None


def _hammer(root, n, seed):
    c = DiskCache(root, max_bytes=20_000)
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(n):
        i = int(rng.integers(0, 40))
        data = c.get(key(i))
        if data is not None and data != bytes([i]) * (500 + i):
            bad += 1
        c.put(key(i), bytes([i]) * (500 + i))
    return bad


def test_concurrent_processes_see_whole_entries(tmp_path):
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        bad = pool.starmap(_hammer, [(tmp_path, 150, 1), (tmp_path, 150, 2)])
    assert bad == [0, 0]
    c = DiskCache(tmp_path, max_bytes=20_000)
    assert c.size_bytes() <= 20_000 * 1.3
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_memory_cache_is_bounded_lru():
    c = MemoryCache(max_bytes=10)
    c.put("a", b"12345")
    c.put("b", b"12345")
    c.get("a")
    c.put("c", b"12345")
    assert c.get("b") is None and c.get("a") == b"12345" and len(c) == 2


def test_open_cache():
    assert open_cache(None) is None and isinstance(open_cache("memory"), MemoryCache)
    assert isinstance(open_cache("disk"), DiskCache)
    m = MemoryCache()
    assert open_cache(m) is m
    with pytest.raises(TypeError):
        open_cache(3)


# ------------------------------------------------------------------ wiring into the inference API
@pytest.fixture
def counted(tiny_model):
    cz = Cartoonizer(tiny_model, device="cpu", cache=MemoryCache())
    calls = []
    real = cz.run_uint8

    def run(batch, strength, hw=None):
        calls.append(batch.shape[0] if isinstance(batch, torch.Tensor) else len(batch))
        return real(batch, strength, hw)

    cz.run_uint8 = run
    return cz, calls


def test_hit_skips_the_model_and_returns_the_same_result(counted, tmp_path):
    cz, calls = counted
    arr = portrait_like(30, 40)
    rgba = np.dstack([arr, np.full((30, 40), 99, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "p.png")
    for image in (arr, rgba, Image.fromarray(arr), tmp_path / "p.png", str(tmp_path / "p.png")):
        first = cz(image, strength=0.5)
        n = len(calls)
        again = cz(image, strength=0.5)
        assert len(calls) == n  # a hit: no model call
        assert type(again) is type(first) and np.array_equal(np.asarray(again), np.asarray(first))
        if isinstance(first, Image.Image):
            assert again.mode == first.mode
    assert len(calls) == 3  # PIL(arr) shares arr's key (same pixels), str(path) shares path's
    cz(arr, strength=0.6)
    cz(arr, strength=0.5, size=20)
    assert len(calls) == 5


def test_cache_key_depends_on_the_weights(tiny_ckpt, tmp_path):
    from dctnet_lite import DCTNet, save_checkpoint

    arr = portrait_like(16, 16)
    shared = MemoryCache()
    a = Cartoonizer(tiny_ckpt, device="cpu", cache=shared)(arr)
    save_checkpoint(tmp_path / "other.safetensors", DCTNet(8))
    b = Cartoonizer(tmp_path / "other.safetensors", device="cpu", cache=shared)(arr)
    assert not np.array_equal(a, b) and len(shared) == 2


def test_files_hit_writes_cached_bytes(counted, image_folder, tmp_path):
    cz, calls = counted
    r1 = cartoonize_files([image_folder], tmp_path / "o1", cartoonizer=cz, batch_size=2)
    n = len(calls)
    r2 = cartoonize_files([image_folder], tmp_path / "o2", cartoonizer=cz, batch_size=2)
    r3 = cartoonize_files([image_folder], tmp_path / "o3", cartoonizer=cz, ext=".jpg")
    assert len(calls) == n and len(r2.ok) == len(r3.ok) == len(r1.ok) == 3
    for (_, a), (_, b) in zip(r1.ok, r2.ok):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert all(o.endswith(".jpg") and Image.open(o).format == "JPEG" for _, o in r3.ok)


def test_cli_cache_dir(tiny_ckpt, image_folder, tmp_path, capsys):
    args = ["cartoonize", str(image_folder), "-o", str(tmp_path / "o"), "--checkpoint", str(tiny_ckpt),
            "--json", f"--cache={tmp_path / 'c'}"]
    assert main(args) == 0
    assert len(DiskCache(tmp_path / "c")) == 3
    first = {p.name: p.read_bytes() for p in (tmp_path / "o").rglob("*.png")}
    assert main(args + ["--no-cache"]) == 0 and main(args) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").rglob("*.png")}.keys() == first.keys()
    assert file_image_bytes(image_folder / "a.png").startswith(b"file\0")

"""Bad input and faults (issue 17): bounded memory, no hangs, no corrupt output, one-line errors.

One test (or a few) per case of the issue, on the CPU with small files made here. Cases that
could allocate without bound before the fix run in a subprocess under an address-space limit
(``RLIMIT_AS``), so they can never take the machine down; cases that could hang run in a
subprocess with a timeout.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dctnet_lite
from dctnet_lite import Cartoonizer, cartoonize_files
from dctnet_lite.cli import main
from dctnet_lite.pipeline import plan_files

from conftest import portrait_like

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cz(tiny_model):
    return Cartoonizer(tiny_model, device="cpu")


def _png(path, h=40, w=56, seed=0):
    Image.fromarray(portrait_like(h, w, seed)).save(path)
    return path


def _run_script(code: str, args, timeout: float, cwd) -> subprocess.CompletedProcess:
    """``python -c code args...`` in ``cwd`` on one thread, importing the dctnet_lite this test
    imports (a hang ends at ``timeout``: the test fails)."""
    path = [str(Path(dctnet_lite.__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1", PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(cwd))


def _bomb_png(path, w=13000, h=9000) -> Path:
    """A valid 1-bit PNG of w x h black pixels: a few KB that declare (and decode to) 117 MP."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" + bytes((w + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return Path(path)


# ---------------------------------------------------------------- 1, 2: bounded memory
LIMITED = textwrap.dedent('''
    import contextlib, io, json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from dctnet_lite import Cartoonizer, DCTNet
    from dctnet_lite.cli import main
    from dctnet_lite.images import read_image
    img, ckpt, out, bomb = sys.argv[1:5]
    torch.manual_seed(0)
    cz = Cartoonizer(DCTNet(8).eval(), device="cpu")
    cz(np.zeros((32, 32, 3), np.uint8))  # warm: everything loaded before the limit
    def vmsize():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vmsize() + 300 * 2 ** 20, resource.RLIM_INFINITY))
    res = {}
    def step(name, fn):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                res[name] = {"value": fn()}
        except BaseException as e:
            res[name] = {"error": type(e).__name__ + ": " + str(e)[:300]}
        res[name]["stderr"] = err.getvalue()
    cli = ["cartoonize", img, "--checkpoint", ckpt, "--workers", "0"]
    step("huge_size", lambda: main(cli + ["-o", out + "/a", "--size", "100000"]))
    step("over_limit_size", lambda: main(cli + ["-o", out + "/b", "--size", "12000"]))
    step("bomb", lambda: read_image(bomb)[0].shape)
    step("plan", lambda: cz.memory_plan(1, 1200, 1200))
    step("tiled", lambda: list(cz(np.full((1200, 1200, 3), 128, np.uint8)).shape))
    step("refused", lambda: cz.memory_plan(64, 4000, 4000))
    print(json.dumps(res))
''')


def test_memory_bounds_under_an_address_space_limit(tiny_ckpt, tmp_path):
    """1 and 2, in a process that may grow by 300 MB at most: ``--size 100000`` is refused
    before anything is allocated, naming the limit; a size that makes the output larger than
    the pixel limit fails the file; a file that declares 117 MP is refused from its header; a
    call that does not fit whole runs in tiles; one that fits in no tile is refused, naming
    the estimate and what is available."""
    img = tmp_path / "eight.png"
    Image.fromarray(portrait_like(8, 8)).save(img)
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 64 * 1024
    r = _run_script(LIMITED, [img, tiny_ckpt, tmp_path / "out", bomb], timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])

    huge = res["huge_size"]
    assert huge.get("value") == 1, huge
    assert huge["stderr"].count("\n") == 1 and "size must lie in 1..16384" in huge["stderr"], huge
    assert not (tmp_path / "out" / "a").exists()

    over = res["over_limit_size"]
    assert over.get("value") == 1, over
    assert "12000x12000" in over["stderr"] and "above the pixel limit of 64.0 MP" in over["stderr"], over
    assert not list((tmp_path / "out").rglob("*.png"))

    assert "error" in res["bomb"] and "ImageTooLarge" in res["bomb"]["error"], res["bomb"]
    assert "13000x9000 (117.0 MP)" in res["bomb"]["error"] and "pixel limit of 64.0 MP" in res["bomb"]["error"]

    assert isinstance(res["plan"].get("value"), int) and res["plan"]["value"] < 1200, res["plan"]
    assert res["tiled"].get("value") == [1200, 1200, 3], res["tiled"]
    refused = res["refused"].get("error", "")
    assert refused.startswith("MemoryLimitError") and "a batch of 64 at 4000x4000 needs about" in refused
    assert "available on cpu" in refused


def test_settings_that_scale_memory_have_upper_bounds(tiny_model, image_folder, tmp_path):
    """(Nothing here may allocate what it is given before the fix: the sizes are only planned.)"""
    from dctnet_lite.images import target_size

    with pytest.raises(ValueError, match="size must lie in 1..16384"):
        target_size(8, 8, 100000)  # what every call scales with
    with pytest.raises(ValueError, match="tile must lie in 16..8192"):
        Cartoonizer(tiny_model, device="cpu", tile=100000)
    with pytest.raises(ValueError, match="batch_size must be at most 256"):
        plan_files([image_folder], tmp_path / "o", batch_size=100000)
    with pytest.raises(ValueError, match="workers must lie in 0..64"):
        cartoonize_files([image_folder], tmp_path / "o", cartoonizer=Cartoonizer(tiny_model), workers=1000)
    with pytest.raises(ValueError, match="size must lie in 1..16384"):
        plan_files([image_folder], tmp_path / "o", size=16385)
    assert not (tmp_path / "o").exists()
    from dctnet_lite.images import MAX_SIZE
    from dctnet_lite.inference import MAX_BATCH, MAX_TILE

    assert (MAX_SIZE, MAX_TILE, MAX_BATCH) == (16384, 8192, 256)
    with pytest.raises(ValueError, match=f"above the limit of {MAX_BATCH}"):
        Cartoonizer(tiny_model, device="cpu").memory_plan(MAX_BATCH + 1, 8, 8)


def test_the_memory_plan_tiles_or_refuses_before_it_starts(tiny_model, monkeypatch):
    import dctnet_lite.inference as inf
    from dctnet_lite.memory import MemoryLimitError

    from dctnet_lite.memory import BUDGET_FRACTION

    cz = Cartoonizer(tiny_model, device="cpu")
    monkeypatch.setattr(inf, "available_bytes", lambda device: 1 << 40)
    assert cz.memory_plan(1, 300, 300) is None  # plenty: whole
    per_pixel = cz.memory.per_pixel()  # measured on the meta device
    assert 0 < per_pixel < cz.memory.crude_per_pixel()
    whole = cz.memory.need(1, 300, 300, None, per_pixel)
    available = int(whole / BUDGET_FRACTION) - 1  # just too little for the whole image
    monkeypatch.setattr(inf, "available_bytes", lambda device: available)
    tile = cz.memory_plan(1, 300, 300)
    assert tile is not None and 128 <= tile < 300
    assert cz.memory.need(1, 300, 300, tile, per_pixel) <= BUDGET_FRACTION * available
    calls = []
    orig = cz.net
    cz.net = lambda x, s: (calls.append(tuple(x.shape[-2:])), orig(x, s))[1]
    y = cz.forward(torch.rand(1, 3, 300, 300))
    assert y.shape == (1, 3, 300, 300) and len(calls) > 1 and max(max(c) for c in calls) <= tile
    monkeypatch.setattr(inf, "available_bytes", lambda device: 1 << 20)  # 1 MB: nothing fits
    with pytest.raises(MemoryLimitError, match=r"a batch of 1 at 300x300 needs about .* available on cpu"):
        cz.forward(torch.rand(1, 3, 300, 300))


def test_a_batch_that_does_not_fit_runs_one_by_one_and_read_ahead_is_bounded(cz, image_folder, tmp_path,
                                                                                monkeypatch):
    import dctnet_lite.pipeline as pl
    from dctnet_lite.memory import MemoryLimitError

    for i in range(4):
        _png(image_folder / f"same{i}.png", 40, 56, seed=10 + i)
    ref = cartoonize_files([image_folder], tmp_path / "ref", cartoonizer=cz, batch_size=1)
    plan = cz.memory_plan
    batches = []

    def small_device(batch, h, w, tile=None):
        batches.append(batch)
        if batch > 1:
            raise MemoryLimitError(f"a batch of {batch} does not fit (test)")
        return plan(batch, h, w, tile)

    monkeypatch.setattr(cz, "memory_plan", small_device)
    monkeypatch.setattr(pl, "available_bytes", lambda device: 1)  # read ahead one image at a time
    rep = cartoonize_files([image_folder], tmp_path / "out", cartoonizer=cz, batch_size=4, workers=2)
    assert not rep.failed and [s for s, _ in rep.ok] == [s for s, _ in ref.ok]
    assert max(batches) > 1 and 1 in batches  # tried as a batch, ran one by one
    for (_, a), (_, b) in zip(rep.ok, ref.ok):
        assert np.abs(np.asarray(Image.open(a), int) - np.asarray(Image.open(b), int)).max() <= 1


def test_pixel_limit_is_configurable_and_checked_before_decoding(tiny_ckpt, cz, tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    img = _png(tmp_path / "in" / "p.png")
    small = _png(tmp_path / "in" / "q.png", 20, 30)
    # a file over the limit is a failed input (from its header), the others are written
    monkeypatch.setenv("DCTNET_LITE_MAX_PIXELS", "2000")
    rep = cartoonize_files([img, small], tmp_path / "o2", checkpoint=tiny_ckpt, device="cpu")
    assert [Path(s).name for s, _ in rep.ok] == ["q.png"]
    assert [Path(s).name for s, _ in rep.failed] == ["p.png"] and "pixel limit" in rep.failed[0][1]
    from dctnet_lite.images import DEFAULT_MAX_PIXELS, ImageTooLarge, max_pixels_limit, read_image

    assert max_pixels_limit() == 2000
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        read_image(img)
    monkeypatch.delenv("DCTNET_LITE_MAX_PIXELS")
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 64_000_000
    rep = cartoonize_files([img], tmp_path / "o1", cartoonizer=Cartoonizer(cz.model, max_pixels=2000))
    assert not rep.ok and "56x40 (0.0 MP), above the pixel limit" in rep.failed[0][1]
    assert not (tmp_path / "o1").exists()
    monkeypatch.setenv("DCTNET_LITE_MAX_PIXELS", "2000")
    rep = cartoonize_files([img], tmp_path / "o3", checkpoint=tiny_ckpt, device="cpu", max_pixels=0)
    assert len(rep.ok) == 1  # 0: no limit
    monkeypatch.delenv("DCTNET_LITE_MAX_PIXELS")
    rc = main(["cartoonize", str(img), "-o", str(tmp_path / "o4"), "--checkpoint", str(tiny_ckpt),
               "--max-pixels", "1000"])
    err = capsys.readouterr().err
    assert rc == 1 and "above the pixel limit" in err and not (tmp_path / "o4").exists()
    monkeypatch.setenv("DCTNET_LITE_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"\$DCTNET_LITE_MAX_PIXELS must be a whole number"):
        max_pixels_limit()


# ---------------------------------------------------------------- 3: symlink loops
WALK = textwrap.dedent('''
    import json, sys
    from dctnet_lite.pipeline import plan_files
    for inputs in json.loads(sys.argv[1]):
        plan = plan_files(inputs, sys.argv[2])
        print(json.dumps({"jobs": [[str(s), str(d)] for s, d in plan.jobs], "failed": plan.failed}), flush=True)
''')


def test_symlink_loops_are_walked_once_and_never_hang(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deep").mkdir(parents=True)
    _png(root / "a.png")
    _png(root / "sub" / "b.png", seed=1)
    _png(root / "sub" / "deep" / "c.png", seed=2)
    os.symlink("..", root / "sub" / "up")            # a loop back to photos/
    os.symlink("../..", root / "sub" / "deep" / "top")  # a second, nested loop
    os.symlink(str(root / "sub"), root / "sub-link")   # a plain link to a folder seen anyway
    want = {"a.png", "b.png", "c.png"}
    cases = [[str(root)], [str(root / "**" / "*.png")], [str(root / "**")],
             [str(root), str(root / "*" / "*.png"), str(root / "a.png")]]
    r = _run_script(WALK, [json.dumps(cases), tmp_path / "out"], timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == len(cases)
    for inputs, res in zip(cases, results):
        names = sorted(Path(d).name for _, d in res["jobs"])
        assert sorted(set(names)) == sorted(want) and len(names) == 3, (inputs, names)
        assert res["failed"] == []


# ---------------------------------------------------------------- 4: one path is one input
def test_a_single_path_is_one_input(cz, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    _png(work / "a.png")
    _png(work / "other.png", seed=3)
    monkeypatch.chdir(work)
    for single in ("a.png", Path("a.png"), str(work / "a.png")):
        plan = plan_files(single, "out")
        assert [(s.name, d.as_posix().endswith("out/a.png")) for s, d in plan.jobs] == [("a.png", True)]
        assert plan.failed == []
    rep = cartoonize_files("a.png", "out", cartoonizer=cz)
    assert [Path(d).name for _, d in rep.ok] == ["a.png"] and not rep.failed
    assert sorted(p.name for p in (work / "out").iterdir()) == ["a.png"]


# ---------------------------------------------------------------- 5: arrays
def test_ambiguous_integer_arrays_and_empty_arrays_are_refused(cz):
    from dctnet_lite.images import array_to_rgb

    arr = portrait_like(12, 12)
    for dtype in (np.int32, np.int64, np.int16, np.uint32):
        with pytest.raises(ValueError, match=f"dtype {np.dtype(dtype)} are ambiguous.*uint8 .*uint16 .*float"):
            cz(arr.astype(dtype))
    assert np.array_equal(array_to_rgb(arr)[0], arr)  # unambiguous dtypes still work
    assert np.abs(array_to_rgb(arr.astype(np.uint16) * 257)[0].astype(int) - arr).max() <= 1
    assert np.abs(array_to_rgb(arr / 255.0)[0].astype(int) - arr).max() <= 1
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8)):
        with pytest.raises(ValueError, match=r"is empty \(\d+x\d+ pixels\)") as e:
            cz(empty)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is empty"):
        cz(torch.zeros(3, 0, 4))
    with pytest.raises(ValueError, match="is empty"):
        cz(Image.new("RGB", (0, 0)))


# ---------------------------------------------------------------- 6: animated GIF
def test_animated_gif_first_frame_with_a_warning_on_every_path(tiny_ckpt, cz, tmp_path, capsys):
    d = tmp_path / "anim"
    d.mkdir()
    frames = [Image.fromarray(portrait_like(24, 20, i)).convert("P") for i in range(3)]
    frames[0].save(d / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    first = np.asarray(Image.open(d / "a.gif").convert("RGB"))
    for inputs in ([d / "a.gif"], [d], [str(d / "*.gif")]):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        rep = cartoonize_files(inputs, out, cartoonizer=cz)
        assert [Path(o).name for _, o in rep.ok] == ["a.png"] and not rep.failed, (inputs, rep)
        assert rep.warnings == [(str(d / "a.gif"), "3 frames (animated or multi-page): only the first "
                                                    "frame was cartoonized")]
        assert np.array_equal(np.asarray(Image.open(out / "a.png")), cz(first))
        assert rep.to_dict()["warnings"] == [list(w) for w in rep.warnings]
    with pytest.warns(UserWarning, match="only the first frame"):
        cz(d / "a.gif")
    capsys.readouterr()
    rc = main(["cartoonize", str(d), "-o", str(tmp_path / "cli"), "--checkpoint", str(tiny_ckpt)])
    err = capsys.readouterr().err
    assert rc == 0 and "WARNING" in err and "a.gif: 3 frames" in err


# ---------------------------------------------------------------- 7: unreadable folders
def test_folders_that_cannot_be_listed_or_read_are_failures(tiny_ckpt, cz, tmp_path, monkeypatch, capsys):
    root = tmp_path / "photos"
    for sub in ("ok", "nolist", "nostat"):
        (root / sub).mkdir(parents=True)
        _png(root / sub / f"{sub}.png")
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(path="."):
        if os.fspath(path).endswith("nolist"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def stat(path, *a, **k):  # a folder that can be listed but not entered (no x bit)
        if "nostat" in os.fspath(path) and os.fspath(path).endswith(".png"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    rep = cartoonize_files([root], tmp_path / "out", cartoonizer=cz)
    assert [Path(s).name for s, _ in rep.ok] == ["ok.png"]
    failed = dict(rep.failed)
    assert "cannot list this folder (Permission denied)" in failed[str(root / "nolist")]
    assert "cannot be read (Permission denied)" in failed[str(root / "nostat" / "nostat.png")]
    rc = main(["cartoonize", str(root), "-o", str(tmp_path / "cli"), "--checkpoint", str(tiny_ckpt)])
    err = capsys.readouterr().err
    assert rc == 1 and "2 input(s) failed" in err and (tmp_path / "cli" / "ok" / "ok.png").is_file()


# ---------------------------------------------------------------- 8: stale temp files
KILLED_WRITER = textwrap.dedent('''
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("fileutil", sys.argv[2])  # standard library only
    fileutil = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fileutil)
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed between write and rename
    fileutil.atomic_write_bytes(sys.argv[1], b"half an image")
''')


def test_temp_files_of_a_killed_run_are_recognised_and_removed(cz, image_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    from dctnet_lite import fileutil

    r = _run_script(KILLED_WRITER, [out / "a.png", fileutil.__file__], timeout=60, cwd=tmp_path)
    assert r.returncode == -signal.SIGKILL
    left = [p for p in out.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".a.png.")  # what kill -9 leaves
    rep = cartoonize_files([image_folder / "c.png"], out, cartoonizer=cz)
    assert [Path(d).name for _, d in rep.ok] == ["c.png"]
    assert sorted(p.name for p in out.iterdir()) == ["c.png"]  # the next run removed it

    from dctnet_lite.fileutil import STALE_TEMP_SECONDS, is_stale_temp, is_temp_name, temp_name

    r = _run_script(KILLED_WRITER, [out / "a.png", fileutil.__file__], timeout=60, cwd=tmp_path)
    left = [p for p in out.iterdir() if p.name != "c.png"]
    assert len(left) == 1 and is_temp_name(left[0].name) and is_stale_temp(left[0])
    legacy_old = out / ".c.png.ab12cd34.tmp"  # what mkstemp named them before
    legacy_old.write_bytes(b"x")
    old = time.time() - STALE_TEMP_SECONDS - 10
    os.utime(legacy_old, (old, old))
    legacy_new = out / ".c.png.zz99yy88.tmp"
    legacy_new.write_bytes(b"x")  # young and of unknown owner: may be a live writer's
    mine = out / temp_name("b.png")
    mine.write_bytes(b"x")  # this process is alive
    assert not is_stale_temp(mine) and not is_stale_temp(legacy_new)
    rep = cartoonize_files([image_folder / "a.png"], out, cartoonizer=cz)
    assert [Path(d).name for _, d in rep.ok] == ["a.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.png", "c.png", legacy_new.name, mine.name])


# ---------------------------------------------------------------- 9: result cache
def test_a_truncated_cache_entry_is_a_miss_and_the_hit_honours_png_level(tiny_model, image_folder, tmp_path):
    src = [image_folder / "a.png"]
    cz = Cartoonizer(tiny_model, device="cpu", cache=tmp_path / "cache")
    first = cartoonize_files(src, tmp_path / "o1", cartoonizer=cz)
    entries = list((tmp_path / "cache").rglob("*.png"))
    assert len(first.ok) == 1 and len(entries) == 1
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])  # a crash mid-copy, a full disk
    again = cartoonize_files(src, tmp_path / "o2", cartoonizer=cz)
    assert len(again.ok) == 1 and not again.failed
    with Image.open(tmp_path / "o2" / "a.png") as im:
        im.load()  # a whole PNG, not the truncated entry
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "o1" / "a.png")))
    assert entries[0].read_bytes() == data  # recomputed and stored again
    from dctnet_lite.cache import verify_png

    assert verify_png(data) and not verify_png(data[:-20]) and not verify_png(data[:8] + b"x" + data[9:])
    # a hit is written at the PNG level asked for: the bytes a miss writes
    for level in (9, 0):
        miss = cartoonize_files(src, tmp_path / f"m{level}", cartoonizer=Cartoonizer(tiny_model), png_level=level)
        hit = cartoonize_files(src, tmp_path / f"h{level}", cartoonizer=cz, png_level=level)
        assert miss.ok and hit.ok
        assert (tmp_path / f"h{level}" / "a.png").read_bytes() == (tmp_path / f"m{level}" / "a.png").read_bytes()


# ---------------------------------------------------------------- 10: info / checkpoints
def _misfit(tiny_ckpt, path):
    """A checkpoint whose sha256 is right but whose tensors do not fit its declared architecture."""
    from safetensors.torch import save

    from dctnet_lite.checkpoint import _read, payload_digest

    tensors, meta = _read(Path(tiny_ckpt))
    tensors = dict(tensors)
    tensors.pop(sorted(tensors)[0])
    meta = dict(meta, sha256=payload_digest(tensors))
    path.write_bytes(save(tensors, metadata=meta))
    return path


def test_info_and_checkpoints_say_a_broken_file_is_broken(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import dctnet_lite.checkpoint as ck

    misfit = _misfit(tiny_ckpt, tmp_path / "misfit.safetensors")
    rc = main(["info", "--checkpoint", str(misfit)])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit its declared architecture" in err and str(misfit) in err
    assert len(err.strip().splitlines()) == 1

    d = tmp_path / "ckpts"
    d.mkdir()
    (d / "good.safetensors").write_bytes(tiny_ckpt.read_bytes())
    flipped = bytearray(tiny_ckpt.read_bytes())
    flipped[-100] ^= 0xFF
    (d / "flipped.safetensors").write_bytes(bytes(flipped))
    (d / "misfit.safetensors").write_bytes(misfit.read_bytes())
    (d / "cut.safetensors").write_bytes(tiny_ckpt.read_bytes()[:500])
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(d))
    monkeypatch.setattr(ck, "package_weights_dir", lambda: tmp_path / "pkg")
    monkeypatch.setattr(ck, "repository_checkpoints_dir", lambda: None)
    rc = main(["checkpoints"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "good " in out and "BROKEN" not in [ln for ln in out.splitlines() if ln.startswith("good ")][0]
    for name, why in (("flipped", "failed its integrity check"), ("misfit", "does not fit"),
                      ("cut", "not a readable safetensors checkpoint")):
        assert f"BROKEN {name}: " in err and why in err, (name, err)
    rc = main(["checkpoints", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rc == 1 and rows["good"]["status"] == "ok" and rows["flipped"]["status"] == "broken"
    assert rows["dctnet_w48.toon"]["status"] == "missing"


# ---------------------------------------------------------------- 11: one-line CLI errors
def test_bad_training_checkpoints_and_missing_cuda_are_one_line(tiny_ckpt, image_folder, tmp_path, capsys,
                                                                  monkeypatch):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    good = tmp_path / "dict.ckpt"
    torch.save({"state_dict": {}, "dctnet_lite": {"arch": {}}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    flipped = bytearray(good.read_bytes())
    i = flipped.find(b"PK\x03\x04") + 64  # inside the first entry's data
    flipped[i] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    wrong = tmp_path / "wrong.ckpt"  # a whole archive that is not a dctnet_lite training checkpoint
    torch.save({"state_dict": {}}, wrong)
    cases = [(["export", str(garbage), "-o", str(tmp_path / "x.safetensors")], "garbage.ckpt"),
             (["export", str(cut), "-o", str(tmp_path / "x.safetensors")], "cut.ckpt"),
             (["export", str(tmp_path / "flipped.ckpt"), "-o", str(tmp_path / "x.safetensors")], "flipped.ckpt"),
             (["export", str(wrong), "-o", str(tmp_path / "x.safetensors")], "wrong.ckpt"),
             (["export", str(tmp_path / "none.ckpt"), "-o", str(tmp_path / "x.safetensors")], "no such file"),
             (["train", "--ckpt_path", str(garbage)], "garbage.ckpt"),
             (["train", f"--ckpt_path={cut}"], "cut.ckpt")]
    if not torch.cuda.is_available():
        cases.append((["cartoonize", str(image_folder), "-o", str(tmp_path / "o"), "--checkpoint",
                       str(tiny_ckpt), "--device", "cuda"], "CUDA is not available"))
    for argv, needle in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1, (argv, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "o").exists()
    rc = main(["--debug", "export", str(garbage), "-o", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1].endswith("truncated, damaged or another format)")
    monkeypatch.setenv("DCTNET_LITE_DEBUG", "1")
    rc = main(["export", str(cut), "-o", str(tmp_path / "x.safetensors")])
    assert rc == 1 and "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- 12: ms:// offline
def test_a_modelscope_id_offline_fails_at_once(tmp_path, monkeypatch):
    pytest.importorskip("modelscope")
    from dctnet_lite.checkpoint import CheckpointError, resolve
    from dctnet_lite.tools.import_modelscope import HUB_PROBE_TIMEOUT_S

    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:1")  # nothing listens: refused at once
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        resolve("ms://damo/cv_unet_person-image-cartoon_compound-models")
    assert time.perf_counter() - t0 < HUB_PROBE_TIMEOUT_S + 5  # no retry loop (it used to take ~23 s)
    msg = str(e.value)
    assert "not reachable" in msg and "damo/cv_unet_person-image-cartoon_compound-models" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------- 13: progress per tile
def test_progress_moves_per_tile(tiny_model, image_folder, tmp_path, capsys):
    cz = Cartoonizer(tiny_model, device="cpu", tile=16, tile_overlap=4)
    seen = []
    cz.tile_progress = lambda done, total: seen.append((done, total))
    cz(portrait_like(40, 56))
    total = seen[-1][1]
    assert total > 1 and seen == [(i, total) for i in range(1, total + 1)]
    cz.tile_progress = None
    rep = cartoonize_files([image_folder / "a.png"], tmp_path / "o", cartoonizer=cz, progress=True)
    err = capsys.readouterr().err
    assert rep.ok and f"tile 1/{total}" in err and f"tile {total}/{total}" in err
    assert cz.tile_progress is None  # the pipeline's hook is removed after the run

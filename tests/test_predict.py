"""Distributed batch inference on Lightning: sharding, failure records, 2 CPU processes over gloo.

The DDP test runs the CLI in a subprocess with ``--strategy ddp``: Lightning's ``ddp`` launcher
re-runs the command line once per extra rank, which is right for a CLI but would re-run pytest
itself if called from inside the test process (and ``ddp_spawn`` from inside pytest pickles the
test's objects and re-imports modules in fresh interpreters: slower and more fragile).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("lightning", reason="distributed prediction needs lightning (pip install -e '.[train]')")

from dctnet_lite import cartoonize_files  # noqa: E402
from dctnet_lite.tools.predict import ImageFilesDataset, ShardSampler, predict_files  # noqa: E402

from conftest import portrait_like  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def seven(tmp_path):
    """7 readable images (an odd count: uneven shards) of two sizes, and one broken file."""
    d = tmp_path / "in"
    d.mkdir()
    for i in range(7):
        Image.fromarray(portrait_like(24 if i % 3 else 32, 28, i)).save(d / f"img{i}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return d


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_shard_sampler_splits_without_padding():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]
    assert len(ShardSampler(7, 2, 3)) == 2 and list(ShardSampler(1, 1, 2)) == []
    with pytest.raises(ValueError):
        ShardSampler(3, 2, 2)


def test_dataset_turns_a_broken_file_into_a_record(seven):
    ds = ImageFilesDataset(sorted(seven.iterdir()), size=16)
    items = [ds[i] for i in range(len(ds))]
    bad = [it for it in items if it["error"]]
    assert len(bad) == 1 and "broken.jpg" in bad[0]["error"] and bad[0]["image"] is None
    assert all(it["image"].shape[0] == 3 and max(it["image"].shape[1:]) == 16 for it in items if not it["error"])


def test_single_process_matches_cartoonize_files(tiny_ckpt, seven, tmp_path):
    ref = cartoonize_files([seven], tmp_path / "ref", checkpoint=tiny_ckpt, device="cpu", strength=0.7)
    rep = predict_files([seven, tmp_path / "missing.png"], tmp_path / "out", tiny_ckpt, devices=1,
                        accelerator="cpu", strength=0.7, batch_size=3)
    assert len(rep.ok) == 7 and rep.global_rank == 0 and rep.world_size == 1 and rep.written_per_rank == [7]
    assert sorted(Path(s).name for s, _ in rep.failed) == ["broken.jpg", "missing.png"]
    for (_, a), (_, b) in zip(sorted(ref.ok), sorted(rep.ok)):
        assert Path(a).name == Path(b).name and np.array_equal(pixels(a), pixels(b))


def test_ddp_two_cpu_processes(tiny_ckpt, seven, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dctnet_lite", "cartoonize", str(seven), "-o", str(out), "--checkpoint",
           str(tiny_ckpt), "--strength", "0.7", "--batch-size", "2", "--devices", "2", "--strategy", "ddp",
           "--accelerator", "cpu", "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one input failed; the rest were written
    report = json.loads(proc.stdout)  # printed once, by rank 0 only
    assert report["world_size"] == 2
    assert sorted(report["written_per_rank"]) == [3, 4]  # 7 files written once each, by both ranks
    ok_names = [Path(s).name for s, _ in report["ok"]]
    assert sorted(ok_names) == sorted(f"img{i}.png" for i in range(7)) and len(set(ok_names)) == 7
    assert [Path(s).name for s, _ in report["failed"]] == ["broken.jpg"]
    assert proc.stderr.count("FAILED") == 1 and "broken.jpg" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"img{i}.png" for i in range(7))  # no temp files
    ref = cartoonize_files([seven], tmp_path / "ref", checkpoint=tiny_ckpt, device="cpu", strength=0.7)
    for _, r in ref.ok:
        assert np.array_equal(pixels(r), pixels(out / Path(r).name))


@pytest.mark.parametrize("bad, message", [
    ({"precision": "int8"}, "precision must be one of auto, fp32, fp16, bf16"),
    ({"png_level": 12}, "png_level must be in 0..9"),
    ({"batch_size": 0}, "batch_size"),
    ({"strength": 1.5}, r"strength must lie in \[0, 1\]"),
])
def test_bad_settings_are_refused_before_anything_runs(seven, tmp_path, bad, message):
    """predict_files checks and plans like cartoonize_files (plan_files): a clear error, no
    Trainer, nothing written, not even the checkpoint loaded."""
    with pytest.raises(ValueError, match=message):
        predict_files([seven], tmp_path / "out", tmp_path / "never-read.safetensors", **bad)
    assert not (tmp_path / "out").exists()


def test_plan_is_the_pipeline_plan(seven, tmp_path):
    """Nothing to do (every input missing or refused): the report lists them as cartoonize_files does."""
    rep = predict_files([tmp_path / "missing.png", seven / "img0.png"], seven, tmp_path / "never-read.safetensors")
    ref = cartoonize_files([tmp_path / "missing.png", seven / "img0.png"], seven, checkpoint="never-loaded")
    assert rep.ok == [] and rep.failed == ref.failed and len(rep.failed) == 2

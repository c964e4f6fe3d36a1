"""The file pipeline (plan_files, FilesPipeline), the Cartoonizer's public steps, the one
precision table, and the layout's import rules."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dctnet_lite.inference as inference
import dctnet_lite.pipeline as pipeline
from dctnet_lite import Cartoonizer, cartoonize_files
from dctnet_lite.cache import MemoryCache, cache_key
from dctnet_lite.inference import same_shape_runs
from dctnet_lite.pipeline import FilesPipeline, FilesReport, plan_files
from dctnet_lite.precision import ONNX_PRECISIONS, PRECISION_CHOICES, PRECISIONS, check_precision

from conftest import portrait_like

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cz(tiny_model):
    return Cartoonizer(tiny_model, device="cpu")


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------ plan_files
def test_plan_files_maps_inputs_and_collects_failures(image_folder, tmp_path):
    (image_folder / "notes.txt").write_text("not an image name")
    plan = plan_files([image_folder, tmp_path / "missing.png", str(tmp_path / "*.none")], tmp_path / "out",
                      ext="jpg")
    assert plan.ext == ".jpg" and len(plan) == 3
    assert [(s.relative_to(image_folder).as_posix(), d.relative_to(tmp_path / "out").as_posix())
            for s, d in plan.jobs] == [("a.png", "a.jpg"), ("c.png", "c.jpg"), ("sub/b.jpg", "sub/b.jpg")]
    assert [(Path(s).name, why) for s, why in plan.failed] == [
        ("missing.png", "no such file or folder"), ("*.none", "the pattern matches no image file")]
    assert not (tmp_path / "out").exists()  # planning writes nothing
    refused = plan_files([image_folder / "a.png"], image_folder)
    assert not refused.jobs and "refusing to overwrite" in refused.failed[0][1]
    assert plan_files([image_folder / "a.png"], image_folder, overwrite_inputs=True).jobs == \
        [(image_folder / "a.png", image_folder / "a.png")]


@pytest.mark.parametrize("bad, message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"png_level": 10}, "png_level must be in 0..9, got 10"),
    ({"strength": 1.5}, r"strength must lie in \[0, 1\], got 1.5"),
])
def test_plan_files_refuses_bad_settings(image_folder, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        plan_files([image_folder], tmp_path / "out", **bad)
    with pytest.raises(ValueError, match=message):  # cartoonize_files plans the same way
        cartoonize_files([image_folder], tmp_path / "out", checkpoint="never-loaded", **bad)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ FilesPipeline
def test_pipeline_class_equals_cartoonize_files_and_one_at_a_time(cz, image_folder, tmp_path):
    ref = cartoonize_files([image_folder], tmp_path / "ref", cartoonizer=cz, batch_size=2, strength=0.6)
    plan = plan_files([image_folder, tmp_path / "missing.png"], tmp_path / "cls", batch_size=2)
    rep = FilesPipeline(cz, strength=0.6, batch_size=2, workers=2, progress=False).run(plan)
    assert isinstance(rep, FilesReport)
    assert [Path(s).name for s, _ in rep.failed] == ["missing.png"]
    assert [s for s, _ in rep.ok] == [s for s, _ in ref.ok]  # input order
    for (src, out), (_, out_ref) in zip(rep.ok, ref.ok):
        assert np.array_equal(_pixels(out), _pixels(out_ref))
        single = cz(src, strength=0.6)  # the resident model on one file gives the same pixels
        assert np.array_equal(_pixels(out), np.asarray(single))


def test_pipeline_refuses_negative_workers(cz):
    with pytest.raises(ValueError, match="workers must be >= 0"):
        FilesPipeline(cz, workers=-2)


def test_pipeline_reports_a_failing_batch_per_file(cz, image_folder, tmp_path):
    def boom(*a, **k):
        raise RuntimeError("device lost")

    cz.run_uint8 = boom
    rep = cartoonize_files([image_folder], tmp_path / "o", cartoonizer=cz, batch_size=2, workers=0)
    assert not rep.ok and len(rep.failed) == 3
    assert all(why == "inference failed: RuntimeError: device lost" for _, why in rep.failed)


# ------------------------------------------------------------------ public steps of the Cartoonizer
def test_public_steps_compose_to_a_call(cz, tmp_path):
    arr = portrait_like(30, 44, 3)
    rgba = np.dstack([arr, np.full((30, 44), 50, np.uint8)])
    for image in (arr, rgba, Image.fromarray(arr)):
        p = cz.prepare(image, 20)
        assert p.pixels.dtype == torch.uint8 and p.pixels.shape == (1, 3, 14, 20) and p.hw == (14, 20)
        out = p.finish(cz.run_uint8(p.pixels, 0.5, p.hw)[0])
        direct = cz(image, strength=0.5, size=20)
        assert type(out) is type(direct) and np.array_equal(np.asarray(out), np.asarray(direct))
    assert cz.prepare(rgba).finish(np.zeros((30, 44, 3), np.uint8)).shape == (30, 44, 4)
    assert cz.prepare(Image.fromarray(rgba, "RGBA")).finish(np.zeros((30, 44, 3), np.uint8)).mode == "RGBA"
    with pytest.raises(TypeError, match="unsupported image type"):
        cz.prepare(123)
    with pytest.raises(ValueError, match="at least one image"):
        cz.run_uint8([], 1.0)


def test_same_shape_runs():
    shapes = [(2, 2), (2, 2), (2, 2), (3, 3), (2, 2), (2, 2)]
    assert same_shape_runs(shapes, 2) == [[0, 1], [2], [3], [4, 5]]
    assert same_shape_runs(shapes, 8) == [[0, 1, 2], [3], [4, 5]]
    assert same_shape_runs([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        same_shape_runs(shapes, 0)


def test_cartoonizer_cache_key_has_honest_fields(tiny_ckpt):
    cz = Cartoonizer(tiny_ckpt, device="cpu", buckets=(128, 64), resize="device", tile=96, tile_overlap=8)
    sha = cz.checkpoint_info.sha256
    assert cz.cache_key(b"x", 0.5, 64) == cache_key(b"x", sha, 0.5, 64, "fp32", 96, 8, buckets=(64, 128),
                                                      resize="device")
    plain = Cartoonizer(tiny_ckpt, device="cpu", tile=96, tile_overlap=8)
    assert plain.cache_key(b"x", 0.5, 64) == cache_key(b"x", sha, 0.5, 64, "fp32", 96, 8)
    device_resize = Cartoonizer(tiny_ckpt, device="cpu", resize="device", tile=96, tile_overlap=8)
    assert device_resize.cache_key(b"x", 0.5, None) == plain.cache_key(b"x", 0.5, None)  # nothing resized
    assert device_resize.cache_key(b"x", 0.5, 64) != plain.cache_key(b"x", 0.5, 64)
    assert cz.cache_key(b"x", 0.5, None) != device_resize.cache_key(b"x", 0.5, None)  # buckets alone split


def test_cache_lookup_and_store(tiny_model, image_folder):
    cz = Cartoonizer(tiny_model, device="cpu", cache=MemoryCache())
    key, hit = cz.cache_lookup(image_folder / "a.png", 1.0, None)
    assert len(key) == 64 and hit is None
    out = cz(image_folder / "a.png")
    assert cz.cache_lookup(image_folder / "a.png", 1.0, None)[1] is not None
    cz.cache_store(None, out)  # no key: nothing stored
    assert len(cz.cache) == 1
    assert cz.cache_lookup(image_folder / "nope.png", 1.0, None) == (None, None)
    assert Cartoonizer(tiny_model, device="cpu").cache_lookup(image_folder / "a.png", 1.0, None) == (None, None)


# ------------------------------------------------------------------ one precision table
def test_every_precision_reader_uses_the_table(tiny_model):
    import dctnet_lite.checkpoint as checkpoint
    from dctnet_lite.cli import build_parser
    from dctnet_lite.tools import accuracy, bench, onnx_export

    assert checkpoint.DTYPES is PRECISIONS
    assert PRECISION_CHOICES == ("auto", "fp32", "fp16", "bf16") and ONNX_PRECISIONS == ("fp32", "fp16")
    assert set(accuracy.BOUNDS) == set(PRECISIONS)
    assert set(onnx_export.TOLERANCE) == set(ONNX_PRECISIONS)
    bench.check_variants(list(PRECISIONS), list(bench.BACKENDS))
    with pytest.raises(ValueError, match="unknown precision 'int8'; choose from fp32, fp16, bf16"):
        bench.check_variants(["int8"])
    for name, dtype in PRECISIONS.items():
        cz = Cartoonizer(tiny_model, device="cpu", precision=name)
        assert cz.precision == name and cz.dtype == dtype and next(cz.model.parameters()).dtype == dtype

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices
    def choices(verb, dest):
        return next(a for a in sub[verb]._actions if a.dest == dest).choices

    assert list(choices("cartoonize", "precision")) == list(PRECISION_CHOICES)
    assert list(choices("bench", "precision")) == list(PRECISIONS)
    assert list(choices("accuracy", "precision")) == list(PRECISIONS)
    assert list(choices("export-onnx", "precision")) == list(ONNX_PRECISIONS)
    assert list(choices("cartoonize", "resize")) == list(inference.RESIZE_MODES)


def test_check_precision_message():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, bf16, got 'fp8'"):
        check_precision("fp8")
    with pytest.raises(ValueError, match="precision"):
        Cartoonizer(DCTNetStub(), device="cpu", precision="fp8")


class DCTNetStub(torch.nn.Module):
    """Never run: the precision is refused before the model is touched."""


# ------------------------------------------------------------------ layout and imports
def test_moved_names_stay_importable_from_inference():
    assert inference.cartoonize_files is pipeline.cartoonize_files is cartoonize_files
    assert inference.FilesReport is pipeline.FilesReport
    assert inference.default_workers is pipeline.default_workers
    assert pipeline.default_workers("cpu") == 1


def test_imports_in_any_order_and_tools_stay_light():
    """The pipeline imports first as well as last (no import cycle bites), and the light tools'
    modules import no heavy package at import time (onnx, lightning, lpips, ... stay lazy)."""
    heavy = ("lightning", "pytorch_lightning", "torch_pruning", "lpips", "modelscope", "torchmetrics",
             "onnx", "onnxruntime", "onnxscript")
    code = ("import sys\n"
            "import dctnet_lite.pipeline\n"
            "import dctnet_lite.tools.bench, dctnet_lite.tools.accuracy, dctnet_lite.tools.onnx_export\n"
            "from dctnet_lite.inference import Cartoonizer, cartoonize_files\n"
            f"print([m for m in {heavy!r} if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"

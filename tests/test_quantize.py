"""INT8 artefacts (dctnet_lite.tools.quantize): quantize -> load -> run for both families, the
metadata, accuracy's bound check both ways, the cache key, bench's onnxruntime backend.

Tiny random-init checkpoints (width 8 / c=8), 32-48 px photos generated into tmp_path; for the
two-branch family the legacy TorchScript exporter keeps the exports under a second, the official
family takes the default (dynamo) exporter."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'dctnet-lite[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'dctnet-lite[onnx]')")

from conftest import portrait_like  # noqa: E402
from dctnet_lite import Cartoonizer, save_checkpoint  # noqa: E402
from dctnet_lite.cli import main  # noqa: E402
from dctnet_lite.data import split_of  # noqa: E402
from dctnet_lite.model import DCTNet  # noqa: E402
from dctnet_lite.official import OfficialGenerator  # noqa: E402
from dctnet_lite.tools import bench as B  # noqa: E402
from dctnet_lite.tools import quantize as Q  # noqa: E402
from dctnet_lite.tools.accuracy import variant_accuracy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fast_export(monkeypatch):
    """The legacy exporter for the two-branch family (the official family's guided filter needs
    the dynamo exporter, the default: about 10 s for a tiny model)."""
    monkeypatch.setattr(Q, "DEFAULT_EXPORTER", "torchscript")
    monkeypatch.setattr(B, "ONNX_EXPORTER", "torchscript")


def _lpips_or_skip():
    why = Q._lpips_available()
    if why is not None:
        pytest.skip(f"LPIPS unavailable: {why}")


@pytest.fixture
def photos(tmp_path):
    """A folder with 4 training-split and 2 val-split photos (names chosen by split_of)."""
    d = tmp_path / "photos"
    d.mkdir()
    want = {"train": 4, "val": 2}
    i = 0
    while any(want.values()):
        name = f"p{i}.png"
        split = split_of(name)
        if want[split]:
            Image.fromarray(portrait_like(48, 40 + 4 * (i % 3), i)).save(d / name)
            want[split] -= 1
        i += 1
    return d


def _ckpt(tmp_path, family):
    torch.manual_seed(0)
    model = (DCTNet(8) if family == "dctnet" else OfficialGenerator(8)).eval()
    path = tmp_path / f"tiny-{family}.safetensors"
    save_checkpoint(path, model, dtype="fp32", provenance={"recipe": "test"})
    return path, model


@pytest.mark.parametrize("family", ["dctnet", "official"])
def test_quantize_load_run_round_trip(tmp_path, photos, family, monkeypatch):
    if family == "dctnet":
        monkeypatch.setattr(Q, "DEFAULT_EXPORTER", "torchscript")
    ckpt, model = _ckpt(tmp_path, family)
    out = tmp_path / f"tiny-{family}.int8.onnx"
    res = Q.quantize(ckpt, photos, out, calib_images=3, calib_size=32, measure=False)
    assert out.is_file() and res["out"] == str(out)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind
    cz = Cartoonizer(str(out), device="cpu")
    assert cz.precision == "int8" and cz.checkpoint_info.family == family
    assert cz.model.config == model.config  # the architecture from the metadata
    img = portrait_like(37, 45, 7)
    got = cz(img)
    assert got.shape == img.shape and got.dtype == np.uint8
    ref = Cartoonizer(model, device="cpu", precision="fp32")(img)
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.mean() < 12, diff.mean()  # int8 of a random net: near fp32, not equal
    # a batch and a tensor go through the same adapter
    t = torch.rand(2, 3, 32, 48)
    y = cz(t, strength=0.5)
    assert y.shape == t.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    with pytest.raises(ValueError, match="int8 ONNX file"):
        Cartoonizer(str(out), device="cpu", precision="bf16")


def test_metadata_names_parent_calibration_and_settings(tmp_path, photos, fast_export):
    from dctnet_lite.checkpoint import file_sha256, load

    ckpt, _ = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "q.onnx"
    Q.quantize(ckpt, photos, out, calib_images=2, calib_size=32, measure=False, method="minmax")
    m = Q.read_artefact(out)
    assert m["precision"] == "int8" and m["family"] == "dctnet"
    assert m["parent"]["name"] == "tiny-dctnet" and m["parent"]["file_sha256"] == file_sha256(ckpt)
    assert m["parent"]["payload_sha256"] == load(ckpt).checkpoint_info.sha256
    assert m["arch"] == json.loads(load(ckpt).config.to_json())
    cal = m["calibration"]
    assert cal["count"] == 2 and len(cal["images"]) == 2 and cal["split"] == "train"
    assert all(split_of(n) == "train" for n in cal["images"])  # never the val photos
    assert cal["size"] == 32 and cal["method"] == "minmax"
    q = m["quantization"]
    assert q["route"] == Q.ROUTE and q["per_channel"] and q["quantized_nodes"] > 5
    assert m["accuracy"] == {"measured": False, "why": "measure=False (--no-measure)"}


def test_calibration_refuses_a_folder_without_training_photos(tmp_path):
    d = tmp_path / "valonly"
    d.mkdir()
    i = 0
    while not list(d.iterdir()):
        if split_of(f"v{i}.png") == "val":
            Image.fromarray(portrait_like(32, 32, i)).save(d / f"v{i}.png")
        i += 1
    with pytest.raises(ValueError, match="no photos of the training split"):
        Q.calibration_photos(d, 4, 32)
    with pytest.raises(ValueError, match="calibration folder not found"):
        Q.calibration_photos(tmp_path / "nope", 4, 32)
    with pytest.raises(ValueError, match="ending in .onnx"):
        Q.quantize("x", d, tmp_path / "out.safetensors")


def test_measured_accuracy_and_the_bound_both_ways(tmp_path, photos, fast_export):
    _lpips_or_skip()
    ckpt, _ = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "q.onnx"
    res = Q.quantize(ckpt, photos, out, calib_images=3, calib_size=32, val_size=48)
    acc = res["metadata"]["accuracy"]
    assert acc["measured"] and acc["photos"] == 2 and acc["split"] == "val" and acc["bound"] == {"lpips_alex": 0.01}
    assert 0 < acc["lpips_alex"] <= acc["lpips_alex_max"]
    # accuracy: the artefact against its parent's fp32 output (parent found by its recorded path)
    loose = variant_accuracy(str(out), photos, split="val", size=48, max_lpips=1.0)
    (row,) = loose["rows"]
    assert row["precision"] == "int8" and row["backend"] == "onnxruntime" and row["within_bounds"] is True
    assert row["lpips_alex"] == pytest.approx(acc["lpips_alex"], rel=1e-4)
    tight = variant_accuracy(str(out), photos, split="val", size=48, max_lpips=0.0)
    assert tight["rows"][0]["within_bounds"] is False
    # the CLI's exit code follows the bound
    assert main(["accuracy", "--checkpoint", str(out), "--images", str(photos), "--split", "val",
                 "--size", "48", "--max-lpips", "1"]) == 0
    assert main(["accuracy", "--checkpoint", str(out), "--images", str(photos), "--split", "val",
                 "--size", "48", "--max-lpips", "0"]) == 1


def test_accuracy_finds_no_parent_with_a_clear_error(tmp_path, photos, fast_export):
    ckpt, _ = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "q.onnx"
    Q.quantize(ckpt, photos, out, calib_images=2, calib_size=32, measure=False)
    (tmp_path / "x").mkdir()
    other, _ = _ckpt(tmp_path / "x", "dctnet")
    save_checkpoint(other, DCTNet(8).eval(), dtype="fp16")  # another file of the same name
    with pytest.raises(ValueError, match="sha256 differs"):
        variant_accuracy(str(out), photos, split="val", size=32, lpips=False, parent=other)
    ckpt.unlink()
    with pytest.raises(ValueError, match="--parent PATH"):
        variant_accuracy(str(out), photos, split="val", size=32, lpips=False)


def test_cache_key_names_int8(tmp_path, photos, fast_export):
    ckpt, model = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "q.onnx"
    Q.quantize(ckpt, photos, out, calib_images=2, calib_size=32, measure=False)
    cz = Cartoonizer(str(out), device="cpu", cache="memory")
    fp = Cartoonizer(str(ckpt), device="cpu", precision="fp32", cache="memory")
    data = b"same image bytes"
    key = cz.cache_key(data, 1.0, None)
    from dctnet_lite.cache import cache_key

    assert key == cache_key(data, cz.checkpoint_info.sha256, 1.0, None, "int8", None, 64, resize="host")
    assert key != cache_key(data, cz.checkpoint_info.sha256, 1.0, None, "fp32", None, 64, resize="host")
    assert key != fp.cache_key(data, 1.0, None)
    img = portrait_like(32, 32, 3)
    first = cz(Image.fromarray(img))
    assert len(cz.cache) == 1 and np.array_equal(np.array(cz(Image.fromarray(img))), np.array(first))


def test_int8_precision_needs_an_artefact(tiny_ckpt):
    with pytest.raises(ValueError, match="needs an INT8 artefact"):
        Cartoonizer(str(tiny_ckpt), device="cpu", precision="int8")


def test_bench_onnxruntime_backend_and_the_artefact_as_target(tmp_path, photos, fast_export):
    ckpt, _ = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "q.onnx"
    Q.quantize(ckpt, photos, out, calib_images=2, calib_size=32, measure=False)
    res = B.bench([str(ckpt), str(out)], resolutions=[32], precisions=["fp32", "bf16"],
                  backends=["eager", "onnxruntime"], warmup=1, repeats=1, cold_start=False, peak=False)
    rows = {(r["target"], r["precision"], r["backend"]): r for r in res["rows"]}
    ort32 = rows[("tiny-dctnet", "fp32", "onnxruntime")]
    assert "error" not in ort32 and ort32["median_ms"] > 0
    assert "onnxruntime backend runs fp32" in rows[("tiny-dctnet", "bf16", "onnxruntime")]["error"]
    (art,) = [r for r in res["rows"] if r["target"] == "q.onnx"]  # one row: int8 on onnxruntime
    assert art["precision"] == "int8" and art["backend"] == "onnxruntime" and "error" not in art
    assert art["macs"] == ort32["macs"] and art["params"] == ort32["params"]
    assert list((tmp_path / "cache" / "onnx").glob("*.fp32.onnx"))  # the export is cached


def test_cli_quantize_then_cartoonize(tmp_path, photos, fast_export, capsys):
    ckpt, _ = _ckpt(tmp_path, "dctnet")
    out = tmp_path / "cli.int8.onnx"
    assert main(["quantize", "--checkpoint", str(ckpt), "--calibration", str(photos), "-o", str(out),
                 "--calib-images", "2", "--calib-size", "32", "--no-measure"]) == 0
    assert "accuracy not measured" in capsys.readouterr().out
    assert main(["cartoonize", str(photos / next(p.name for p in photos.iterdir())), "-o", str(tmp_path / "o"),
                 "--checkpoint", str(out)]) == 0
    assert len(list((tmp_path / "o").iterdir())) == 1


def test_missing_onnxruntime_is_one_clear_line(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    (tmp_path / "x.onnx").write_bytes(b"not read")
    with pytest.raises(ImportError, match=r"pip install 'dctnet-lite\[onnx\]'"):
        Cartoonizer(str(tmp_path / "x.onnx"), device="cpu")
    assert main(["quantize", "--checkpoint", "x", "--calibration", str(tmp_path), "-o", str(tmp_path / "q.onnx")]) == 1


def test_an_onnx_file_without_our_metadata_is_refused(tmp_path):
    from dctnet_lite.checkpoint import CheckpointError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match="not an ONNX model ONNX Runtime can load"):
        Cartoonizer(str(bad), device="cpu")
    with pytest.raises(CheckpointError, match="ONNX file not found"):
        Cartoonizer(str(tmp_path / "missing.onnx"), device="cpu")

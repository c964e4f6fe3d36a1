"""GPU fast path pieces that run without a GPU: shape buckets, precision resolution, the CUDA
graph runner's refusals on CPU, and ONNX export checked with ONNX Runtime (CPU).

Tolerances: bucketing pads an image further than the plain multiple-of-16 padding, which only
changes the context of the pixels near the bottom/right border. Where the bucket equals the
multiple-of-16 padded size the computation is the same and the output identical; otherwise the
whole image stays within 0.05 max / 0.002 mean of the unbucketed output and the interior (all
but the last 16 rows and columns) within 1e-3 (random-init width-8 network). ONNX fp32 graphs
must match PyTorch within 1e-4 (max abs, output in [0, 1]).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import portrait_like
from dctnet_lite import DCTNet
from dctnet_lite.fastpath import (DEFAULT_BUCKETS, GraphRunner, bucket_shape, normalize_buckets,
                                  pad_to_shape, resolve_precision, strength_vector)
from dctnet_lite.inference import Cartoonizer
from dctnet_lite.model import pad_to_multiple


def _photo(h, w, seed=0):
    return torch.from_numpy(portrait_like(h, w, seed)).permute(2, 0, 1)[None].float() / 255


# ------------------------------------------------------------------------------ bucket_shape
@pytest.mark.parametrize("hw, expected", [
    ((1, 1), (256, 256)),
    ((256, 256), (256, 256)),
    ((257, 100), (384, 256)),
    ((300, 200), (384, 256)),
    ((512, 513), (512, 768)),
    ((1000, 1024), (1024, 1024)),
    ((1025, 1536), (1536, 1536)),
    ((2048, 2049), (2048, 2304)),   # beyond the largest bucket: next multiple of 256
    ((2100, 4097), (2304, 4352)),
])
def test_bucket_shape_defaults(hw, expected):
    assert bucket_shape(*hw) == expected


def test_bucket_shape_custom_buckets_and_multiple():
    assert bucket_shape(40, 56, buckets=(48, 64)) == (48, 64)
    assert bucket_shape(40, 56, buckets=(64, 48)) == (48, 64)  # order does not matter
    assert bucket_shape(10, 10, buckets=(50,)) == (64, 64)     # a bucket is rounded up to 16
    assert bucket_shape(10, 10, buckets=(50,), multiple=1) == (50, 50)
    assert bucket_shape(60, 10, buckets=(50,)) == (256, 64)    # beyond: multiple of 256
    for h in (1, 15, 16, 17, 333, 777, 2047, 2049, 3000):
        H, W = bucket_shape(h, h)
        assert H == W >= h and H % 16 == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bucket_shape_rejects_bad_sides(bad):
    with pytest.raises(ValueError):
        bucket_shape(bad, 10)
    with pytest.raises(ValueError):
        bucket_shape(10, 10, buckets=(bad,))


def test_normalize_buckets():
    assert normalize_buckets(None) is None and normalize_buckets(False) is None
    assert normalize_buckets(()) is None
    assert normalize_buckets(True) == DEFAULT_BUCKETS
    assert normalize_buckets([512, 256, 512]) == (256, 512)


def _reference_pad(x, height, width):
    """The documented rule, written out: reflect iff the padding is smaller than the side on both
    axes, else replicate; at the bottom/right."""
    h, w = x.shape[-2:]
    ph, pw = height - h, width - w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x


# multiples of 16, padding < side (reflect), padding == side and > side (replicate), 1 px
PAD_SIZES = ((32, 48), (40, 56), (9, 9), (8, 20), (20, 8), (33, 21), (1, 1), (7, 30), (17, 100))


@pytest.mark.parametrize("h, w", PAD_SIZES)
def test_one_padding_rule(h, w):
    from dctnet_lite.model import pad_to_multiple_traceable, pad_to_shape as model_pad_to_shape

    assert pad_to_shape is model_pad_to_shape  # fastpath re-exports the model's rule
    x = torch.rand(2, 3, h, w)
    H, W = -(-h // 16) * 16, -(-w // 16) * 16
    ref = _reference_pad(x, H, W)
    assert torch.equal(pad_to_multiple(x, 16), ref)
    assert torch.equal(pad_to_shape(x, H, W), ref)
    assert torch.equal(pad_to_multiple_traceable(x, 16), ref)  # what the ONNX graph computes
    assert torch.equal(pad_to_shape(x, H + 32, W + 16), _reference_pad(x, H + 32, W + 16))
    assert torch.equal(ref[..., :h, :w], x)


def test_padding_mode_follows_the_rule():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    reflect = pad_to_shape(x, 5, 4)  # padding 2 < 3 and 1 < 3: reflect
    assert reflect[0, 0, 3:, 0].tolist() == [3.0, 0.0] and reflect[0, 0, 0, 3].item() == 1.0
    replicate = pad_to_shape(x, 6, 4)  # padding 3 == side on one axis: replicate on both
    assert replicate[0, 0, 3:, 0].tolist() == [6.0, 6.0, 6.0] and replicate[0, 0, 0, 3].item() == 2.0
    assert pad_to_shape(x, 3, 3) is x
    with pytest.raises(ValueError, match="cannot pad"):
        pad_to_shape(torch.rand(1, 3, 20, 20), 16, 32)


# ------------------------------------------------------------------------------ bucketed inference
def test_bucket_equal_to_padded_size_is_identical(tiny_model):
    x = _photo(40, 56)
    ref = Cartoonizer(tiny_model, device="cpu").forward(x, 0.8)
    cz = Cartoonizer(tiny_model, device="cpu", buckets=(48, 64))  # 40x56 -> 48x64 = 16-padded size
    assert cz.buckets == (48, 64)
    assert torch.equal(cz.forward(x, 0.8), ref)


@pytest.mark.parametrize("h, w, buckets", [(40, 56, (256,)), (70, 90, (128,)), (33, 21, (64,))])
def test_bucketed_close_to_unbucketed(tiny_model, h, w, buckets):
    x = _photo(h, w, 1)
    ref = Cartoonizer(tiny_model, device="cpu").forward(x, 0.8)
    calls = []
    cz = Cartoonizer(tiny_model, device="cpu", buckets=buckets)
    orig = cz.net
    cz.net = lambda t, s: (calls.append(tuple(t.shape[-2:])), orig(t, s))[1]
    out = cz.forward(x, 0.8)
    assert calls == [bucket_shape(h, w, buckets)]  # the network really saw the bucket
    assert out.shape == ref.shape
    diff = (out - ref).abs()
    assert diff.max() < 0.05 and diff.mean() < 2e-3
    assert diff[..., : h - 16, : w - 16].max() < 1e-3


def test_buckets_default_follow_compile_and_graphs(tiny_model):
    assert Cartoonizer(tiny_model, device="cpu").buckets is None
    assert Cartoonizer(tiny_model, device="cpu", compile=True).buckets == DEFAULT_BUCKETS  # lazy: no compile
    assert Cartoonizer(tiny_model, device="cpu", compile=True, buckets=False).buckets is None
    assert Cartoonizer(tiny_model, device="cpu", buckets=True).buckets == DEFAULT_BUCKETS


def test_bucketed_results_have_their_own_cache_keys(tiny_model):
    plain = Cartoonizer(tiny_model, device="cpu")
    bucketed = Cartoonizer(tiny_model, device="cpu", buckets=(64,))
    assert plain.cache_key(b"img", 1.0, None) != bucketed.cache_key(b"img", 1.0, None)
    assert plain.cache_key(b"img", 1.0, None) == Cartoonizer(tiny_model, device="cpu").cache_key(b"img", 1.0, None)


def test_bucketed_batch_and_tiles(tiny_model):
    """Buckets, tiles and per-sample strengths together: every tile runs at its bucket, each
    sample equals the same image run alone at its own strength, and the whole stays within the
    bucketing tolerance of the plain whole-image output."""
    x = torch.stack([_photo(50, 70, i)[0] for i in range(3)])
    s = torch.tensor([1.0, 0.5, 0.0])
    cz = Cartoonizer(tiny_model, device="cpu", buckets=(64, 80), tile=48, tile_overlap=16)
    calls = []
    orig = cz.net
    cz.net = lambda t, st: (calls.append(tuple(t.shape)), orig(t, st))[1]
    out = cz.forward(x, s)
    assert out.shape == x.shape
    assert len(calls) == 4 and set(calls) == {(3, 3, 64, 64)}  # 2 x 2 tiles of 48 -> bucket 64
    for i in range(3):
        assert (out[i:i + 1] - cz.forward(x[i:i + 1], float(s[i]))).abs().max() < 1e-5
    plain = Cartoonizer(tiny_model, device="cpu").forward(x, s)
    diff = (out - plain).abs()
    assert diff.max() < 0.05 and diff.mean() < 2e-3


# ------------------------------------------------------------------------------ precision / graphs
def test_precision_auto_resolution(tiny_model, monkeypatch):
    import dctnet_lite.fastpath as fp

    # the suite pins CPU auto to fp32 (conftest); without the pin the CPU's flags decide
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    cz = Cartoonizer(tiny_model, device="cpu")  # the default is "auto"
    assert cz.precision == "fp32" and cz.dtype == torch.float32
    assert next(cz.model.parameters()).dtype == torch.float32
    monkeypatch.delenv(fp.CPU_AUTO_ENV)
    assert resolve_precision("auto", "cpu", cpu_features=["fpu", "avx2", "avx512f"]) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_features=["avx512f", "avx512_bf16"]) == "bf16"
    assert resolve_precision("auto", "cpu", cpu_features=["amx_tile", "amx_bf16"]) == "bf16"
    assert not fp.cpu_bf16_supported(["avx512_vnni", "amx_int8"])  # int8 units are not bf16
    monkeypatch.setattr(fp, "cpu_flags", lambda: ("sse4_2", "avx512_bf16"))
    cz = Cartoonizer(tiny_model, device="cpu")
    assert cz.precision == "bf16" and next(cz.model.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(fp, "cpu_flags", lambda: ("sse4_2", "avx2"))
    assert Cartoonizer(tiny_model, device="cpu").precision == "fp32"
    monkeypatch.setattr(fp, "cpu_flags", lambda: ("avx512_bf16",))
    monkeypatch.setenv(fp.CPU_AUTO_ENV, "fp32")
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(fp, "cuda_bf16_supported", lambda device=None: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(fp, "cuda_bf16_supported", lambda device=None: False)
    assert resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="precision"):
        Cartoonizer(tiny_model, device="cpu", precision="int8")


def test_cuda_graphs_on_cpu_raise(tiny_model):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        Cartoonizer(tiny_model, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA"):
        GraphRunner(lambda x, s: x, "cpu")


def test_strength_vector():
    import numpy as np

    from dctnet_lite.model import strength_vector as model_strength_vector

    assert strength_vector is model_strength_vector  # one rule: fastpath re-exports the model's
    cpu = torch.device("cpu")
    assert strength_vector(0.5, 3, cpu, torch.float32).tolist() == [0.5] * 3
    assert strength_vector(torch.tensor(1.0), 2, cpu, torch.float32).tolist() == [1.0, 1.0]
    assert strength_vector([0.25, 1], 2, cpu, torch.float32).tolist() == [0.25, 1.0]
    assert strength_vector(np.float32(0.75), 1).tolist() == [0.75]
    half = strength_vector(torch.tensor([0.0, 0.5]), 2, cpu, torch.float16)
    assert half.dtype == torch.float16 and half.tolist() == [0.0, 0.5]
    for bad in (1.5, -0.1, torch.tensor([0.2, -0.1]), [0.5, 2.0]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            strength_vector(bad, 2, cpu, torch.float32)
    with pytest.raises(ValueError, match="shape"):
        strength_vector(torch.ones(3), 2, cpu, torch.float32)
    with pytest.raises(ValueError, match="strength must be a float"):
        strength_vector("strong", 2)


def test_model_forward_uses_the_strength_rule(tiny_model):
    """DCTNet.forward: a float strength equals the same per-sample tensor, bad ones are refused
    with the rule's message, and strength 0 differs from 1 (the gates really scale)."""
    x = _photo(24, 40).repeat(2, 1, 1, 1) * 2 - 1
    with torch.no_grad():
        a, b = tiny_model(x, 0.3), tiny_model(x, torch.tensor([0.3, 0.3]))
        assert torch.equal(a, b)
        assert not torch.allclose(tiny_model(x, 0.0), tiny_model(x, 1.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny_model(x, 1.2)
    with pytest.raises(ValueError, match="shape"):
        tiny_model(x, torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager_and_reuse_the_capture(tiny_model):  # pragma: no cover (GPU)
    x = torch.rand(2, 3, 200, 300)
    eager = Cartoonizer(tiny_model, device="cuda", precision="fp32", buckets=(256, 320))
    graphs = Cartoonizer(tiny_model, device="cuda", precision="fp32", cuda_graphs=True, buckets=(256, 320))
    for s in (1.0, 0.3, torch.tensor([0.0, 1.0])):
        assert (graphs.forward(x, s) - eager.forward(x, s)).abs().max() < 1e-3
    assert graphs.graphs.captures == 1  # new strengths are copied in, not recaptured
    graphs.forward(torch.rand(2, 3, 250, 310), 1.0)  # same bucket: same graph
    assert graphs.graphs.captures == 1
    graphs.forward(torch.rand(1, 3, 250, 310), 1.0)  # new batch size: one more
    assert graphs.graphs.captures == 2


# ------------------------------------------------------------------------------ ONNX
def _need_onnx(dynamo: bool = True):
    """Skip (only the ONNX tests) when the optional onnx extra is missing."""
    for mod in ("onnx", "onnxruntime") + (("onnxscript",) if dynamo else ()):
        pytest.importorskip(mod, reason="the onnx extra is not installed")
    import onnx

    return onnx


@pytest.mark.parametrize("h, w", PAD_SIZES)
def test_onnx_wrapper_is_the_model_forward(tiny_model, h, w):
    """The exported module (before any export: plain torch) computes DCTNet.forward: the same
    body (forward_padded) after the same padding rule, at sizes on both sides of the
    reflect/replicate switch."""
    from dctnet_lite.tools.onnx_export import OnnxCartoonizer

    x, s = torch.rand(2, 3, h, w), torch.tensor([1.0, 0.4])
    with torch.no_grad():
        got = OnnxCartoonizer(tiny_model).eval()(x, s)
        ref = ((tiny_model(x * 2 - 1, s) + 1) * 0.5).clamp(0, 1)
    assert got.shape == ref.shape and torch.equal(got, ref)


def test_onnx_precisions_come_from_the_table(tiny_model, tmp_path):
    from dctnet_lite.precision import ONNX_PRECISIONS, PRECISIONS
    from dctnet_lite.tools.onnx_export import TOLERANCE, export_onnx

    assert set(ONNX_PRECISIONS) == set(TOLERANCE) and set(ONNX_PRECISIONS) < set(PRECISIONS)
    with pytest.raises(ValueError, match="ONNX precision must be one of fp32, fp16, got 'bf16'"):
        export_onnx(tiny_model, tmp_path / "x.onnx", precision="bf16")  # refused before onnx is needed


def test_onnx_export_and_check_width8(tiny_model, tmp_path):
    onnx = _need_onnx()
    from dctnet_lite.tools.onnx_export import check_onnx, export_onnx, read_metadata

    path = export_onnx(tiny_model, tmp_path / "w8.onnx")
    assert path.exists() and not list(tmp_path.glob(".*.tmp"))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.input[1], model.graph.output[0])]
    assert dims == [["batch", 3, "height", "width"], ["batch"], ["batch", 3, "height", "width"]]
    assert json.loads(read_metadata(path)["arch"])["base_width"] == 8
    # multiples of 16, not multiples (reflect), too small to reflect (replicate), 1 px, batch 1/2
    sizes = ((64, 64), (48, 80), (33, 21), (8, 20), (20, 8), (1, 1), (17, 100))
    res = check_onnx(path, tiny_model, sizes=sizes, strength=(1.0, 0.5), threads=1)
    assert res["ok"] and res["max_abs_error"] < 1e-4, res
    assert [c["size"] for c in res["cases"]] == [list(s) for s in sizes]
    assert check_onnx(path, tiny_model, sizes=((24, 40),), strength=0.3, threads=1)["max_abs_error"] < 1e-4


def test_onnx_torchscript_exporter_and_static_shape(tiny_model, tmp_path):
    onnx = _need_onnx(dynamo=False)
    from dctnet_lite.tools.onnx_export import check_onnx, export_onnx

    path = export_onnx(tiny_model, tmp_path / "ts.onnx", exporter="torchscript")
    assert check_onnx(path, tiny_model, sizes=((33, 21), (8, 20)), threads=1)["max_abs_error"] < 1e-4
    static = export_onnx(tiny_model, tmp_path / "static.onnx", exporter="torchscript", dynamic=False,
                         static_shape=(1, 40, 56))
    dims = [d.dim_value for d in onnx.load(str(static)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 56]
    assert check_onnx(static, tiny_model, sizes=((40, 56),), strength=0.7, threads=1)["ok"]
    with pytest.raises(ValueError, match="precision"):
        export_onnx(tiny_model, tmp_path / "x.onnx", precision="bf16")


@pytest.mark.parametrize("width", [48, 64])
def test_onnx_export_widths_48_and_64(tmp_path, width):
    _need_onnx()
    from dctnet_lite.tools.onnx_export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = DCTNet(width).eval()
    path = export_onnx(model, tmp_path / f"w{width}.onnx")
    res = check_onnx(path, model, sizes=((20, 36),), strength=0.7, threads=1)
    assert res["max_abs_error"] < 1e-4, res


def test_cli_export_onnx(tmp_path, capsys):
    from dctnet_lite import save_checkpoint
    from dctnet_lite.cli import main

    _need_onnx()
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, DCTNet(8))
    out = tmp_path / "out" / "tiny.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), "-o", str(out), "--check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.exists() and result["output"] == str(out)
    assert result["check"]["ok"] and result["check"]["max_abs_error"] < 1e-4
    assert result["check"]["metadata"]["checkpoint_sha256"]
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 1


# ------------------------------------------------------------------------------ accuracy vs fp32
@pytest.fixture
def photo_dir(tmp_path):
    from PIL import Image

    d = tmp_path / "photos"
    d.mkdir()
    for i, (h, w) in enumerate([(40, 32), (24, 36)]):
        Image.fromarray(portrait_like(h, w, seed=i)).save(d / f"p{i}.png")
    return d


def test_variant_accuracy_rows(photo_dir):
    from dctnet_lite.tools.accuracy import variant_accuracy

    res = variant_accuracy(8, photo_dir, precisions=["fp32", "bf16"], backends=["eager", "channels_last",
                                                                                 "cudagraphs"],
                           size=None, lpips=False)
    assert res["images"] == ["p0.png", "p1.png"] and res["target"] == "w8 (random init)"
    rows = {(r["precision"], r["backend"]): r for r in res["rows"]}
    assert set(rows) == {(p, b) for p in ("fp32", "bf16") for b in ("eager", "channels_last", "cudagraphs")}
    assert "CUDA" in rows["fp32", "cudagraphs"]["error"]
    exact = rows["fp32", "eager"]
    assert exact["max_abs"] == 0 and exact["rel_l2"] == 0 and exact["within_bounds"]
    assert rows["fp32", "channels_last"]["max_abs"] < 1e-4
    bf = rows["bf16", "eager"]
    assert 0 < bf["mean_abs"] <= bf["max_abs"] < 0.1 and 0 < bf["rel_l2"] < 0.05
    assert bf["within_bounds"] and 0 <= bf["uint8_off_by_gt2"] < 0.05


def test_variant_accuracy_flags_a_variant_outside_its_bounds(photo_dir, monkeypatch):
    from dctnet_lite.tools import accuracy

    monkeypatch.setitem(accuracy.BOUNDS, "bf16", {"max_abs": 1e-7})
    res = accuracy.variant_accuracy(8, photo_dir, precisions=["fp32", "bf16"], size=None, lpips=False)
    assert [r["within_bounds"] for r in res["rows"]] == [True, False]
    assert "OUT OF BOUNDS" in accuracy.format_accuracy(res)


def test_variant_accuracy_lpips_and_refusals(photo_dir):
    from dctnet_lite.tools.accuracy import variant_accuracy

    res = variant_accuracy(8, photo_dir / "p0.png", precisions=["bf16"], size=48)
    (row,) = res["rows"]
    assert 0 <= row["lpips_alex"] <= row["lpips_alex_max"] < 0.005
    with pytest.raises(ValueError, match="precision"):
        variant_accuracy(8, photo_dir, precisions=["int8"])
    with pytest.raises(ValueError, match="backend"):
        variant_accuracy(8, photo_dir, backends=["tensorrt"])
    with pytest.raises(FileNotFoundError):
        variant_accuracy(8, photo_dir / "missing")


def test_tf32_off_restores_flags():
    from dctnet_lite.tools.accuracy import _tf32_off

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with _tf32_off():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_cli_accuracy(photo_dir, tmp_path, capsys, monkeypatch):
    from dctnet_lite.tools import accuracy
    from dctnet_lite.cli import main

    out = tmp_path / "acc.json"
    rc = main(["accuracy", "--width", "8", "--images", str(photo_dir), "--precision", "fp32", "bf16",
               "--no-lpips", "--output", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "dctnet-lite-accuracy/1" and data["machine"]["torch"]
    assert [r["precision"] for r in data["results"][0]["rows"]] == ["fp32", "bf16"]
    assert "bf16  eager" in capsys.readouterr().out
    monkeypatch.setitem(accuracy.BOUNDS, "bf16", {"max_abs": 1e-7})
    assert main(["accuracy", "--width", "8", "--images", str(photo_dir), "--precision", "bf16",
                 "--no-lpips"]) == 1
    assert main(["accuracy", "--images", str(photo_dir)]) != 0


# ------------------------------------------------------------------------------ file to file
def test_file_to_file_stages(photo_dir):
    from dctnet_lite.tools.bench import file_to_file, format_file_to_file

    r = file_to_file(8, photo_dir, size=48, precision="fp32", threads=1)
    assert r["images"] == 2 and r["precision"] == "fp32" and r["size"] == 48
    for k in ("decode_ms", "model_ms", "encode_ms"):
        assert 0 < r[k] < r["total_ms"]
    assert 0 < r["model_share"] < 1
    assert r["resize"] == "host" and r["workers"] == 1 and r["png_level"] == 6
    assert r["sequential_ms"] > 0 and r["pipelined_ms"] > 0
    text = format_file_to_file(r)
    assert "decode+resize" in text and "overlapped (1 reader/writer threads)" in text
    d = file_to_file(8, photo_dir, size=48, precision="fp32", threads=1, resize="device", workers=2,
                     png_level=1)
    assert (d["resize"], d["workers"], d["png_level"]) == ("device", 2, 1)
    assert "resize+model" in format_file_to_file(d)
    with pytest.raises(ValueError, match="rounds"):
        file_to_file(8, photo_dir, rounds=1)
    with pytest.raises(ValueError, match="CUDA"):
        file_to_file(8, photo_dir, backend="cudagraphs")


def test_cli_bench_files(photo_dir, capsys):
    from dctnet_lite.cli import main

    rc = main(["bench", "--width", "8", "--resolutions", "32", "--repeats", "1", "--warmup", "1",
               "--no-cold-start", "--threads", "1", "--files", str(photo_dir), "--files-size", "40", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    (f2f,) = data["file_to_file"]
    assert f2f["target"] == "w8 (random init)" and f2f["images"] == 2 and f2f["total_ms"] > 0


# ------------------------------------------------------------------------------ CPU memory
_FAULTS = r"""
import resource, sys, torch
from dctnet_lite.fastpath import retain_cpu_memory
on = retain_cpu_memory(sys.argv[1] == "1")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):                             # warm-up: the heap grows to its size once
    x = torch.ones(64 << 20)                   # 256 MB, freed below
    del x
before = faults()
for _ in range(3):
    x = torch.ones(64 << 20)
    del x
print(int(on), faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
@pytest.mark.parametrize("enable", ["0", "1"])
def test_retain_cpu_memory_stops_page_faults(enable):
    """Without the setting every 256 MB tensor is a fresh mmap (65,536 page faults each); with
    it the freed block is reused and, once the heap has grown, the loop faults (almost) nothing."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    out = subprocess.run([sys.executable, "-c", _FAULTS, enable], capture_output=True, text=True,
                         check=True, env={**os.environ, "DCTNET_LITE_RETAIN_MEMORY": "1"})
    on, faults = map(int, out.stdout.split())
    if enable == "1":
        assert on == 1 and faults < 2000
    else:
        assert on == 0 and faults > 3 * 60000


def test_cartoonizer_retains_memory_on_cpu(tiny_model, monkeypatch):
    import dctnet_lite.fastpath as fp

    calls = []
    monkeypatch.setattr(fp, "_mallopt_retain", lambda: calls.append(1) or True)
    monkeypatch.setattr(fp, "_RETAINED", None)
    monkeypatch.setenv("DCTNET_LITE_RETAIN_MEMORY", "0")
    assert Cartoonizer(tiny_model, device="cpu").retain_memory is False and calls == []
    monkeypatch.delenv("DCTNET_LITE_RETAIN_MEMORY")
    assert Cartoonizer(tiny_model, device="cpu").retain_memory is True and calls == [1]
    assert Cartoonizer(tiny_model, device="cpu", retain_memory=False).retain_memory is True  # never undone

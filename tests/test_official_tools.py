"""The official family through the library's tools, without special cases: load, Cartoonizer,
the result cache, the file pipeline, info, bench, ONNX export, the ModelScope folder export and
torch.hub. The model is imported from a fixture graph made by ModelScope's own TF code."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dctnet_lite
from dctnet_lite.cli import main
from dctnet_lite.official import OfficialGenerator, official_uint8
from dctnet_lite.tools.import_modelscope import import_modelscope

from conftest import portrait_like

REPO = Path(__file__).resolve().parents[1]
GRAPH = REPO / "tests" / "fixtures" / "official" / "official_c8_n1.pb"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "c8n1.safetensors"
    import_modelscope(GRAPH, out)
    return out


def test_load_and_cartoonizer_match_the_graphs_own_uint8_path(ckpt):
    model = dctnet_lite.load(ckpt)
    assert isinstance(model, OfficialGenerator) and model.checkpoint_info.family == "official"
    cz = dctnet_lite.Cartoonizer(ckpt, device="cpu", precision="fp32")
    for h, w, pad in ((48, 64, False), (37, 53, True)):
        rgb = portrait_like(h, w, seed=h)
        ours = cz(rgb, strength=1.0)
        # the graph's own path (BGR in, clip, truncate): ours rounds instead of truncating; at a
        # size that is not a multiple of 4 the pipeline pads white to 16, ours reflects to 4
        ref = official_uint8(model, rgb[..., ::-1].astype(np.float32), official_pad=pad)[..., ::-1]
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert ours.shape == rgb.shape
        if not pad:
            assert diff.max() <= 1 and diff.mean() < 0.6
        else:  # the padding differs (reflect to 4 vs white to 16): close, not equal
            assert diff.mean() < 2
    assert np.array_equal(cz(rgb, strength=0.0), rgb)  # this family's strength blends the photo back


def test_result_cache_and_file_pipeline(ckpt, tmp_path):
    cz = dctnet_lite.Cartoonizer(ckpt, device="cpu", cache="memory")
    rgb = portrait_like(40, 40, seed=3)
    first = cz(rgb)
    assert len(cz.cache) == 1

    def boom(*a, **k):
        raise AssertionError("a cached result ran the network")
    cz.net = boom
    assert np.array_equal(cz(rgb), first)  # served from the cache
    cz = dctnet_lite.Cartoonizer(ckpt, device="cpu")
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.jpg").write_bytes(b"not a jpeg")
    rep = dctnet_lite.cartoonize_files([tmp_path / "in"], tmp_path / "out", checkpoint=ckpt)
    assert [Path(o).name for _, o in rep.ok] == ["a.png"] and len(rep.failed) == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), first)


def test_info_and_bench_name_the_family(ckpt, capsys):
    assert main(["info", "--checkpoint", str(ckpt), "--resolution", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "official" and info["arch"]["channels"] == 8 and info["arch"]["num_blocks"] == 1
    assert main(["info", "--arch", "official_c32n4", "--resolution", "1024", "--json"]) == 0
    released = json.loads(capsys.readouterr().out)
    assert released["params"] == 1_467_075 and 125 < released["gmacs"] < 135
    assert main(["bench", "--checkpoint", str(ckpt), "--resolutions", "32", "--repeats", "1", "--warmup", "1",
                 "--threads", "1", "--no-cold-start", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["family"] == "official" and row["width"] is None and row["median_ms"] > 0


def test_onnx_export_of_the_family(ckpt, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "c8n1.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), "-o", str(out), "--check"]) == 0
    assert "ok" in capsys.readouterr().out
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["dctnet_lite.family"] == "official"


def test_modelscope_folder_export_and_torch_hub(ckpt, tmp_path):
    assert main(["export-modelscope", str(ckpt), str(tmp_path / "ms")]) == 0
    back = dctnet_lite.load(tmp_path / "ms")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = dctnet_lite.load(ckpt)(x)
        assert torch.equal(back(x), ref)
        net = torch.hub.load(str(REPO), "dctnet", source="local", checkpoint=str(ckpt))
        assert isinstance(net, OfficialGenerator) and torch.equal(net(x), ref)

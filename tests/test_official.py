"""The ``official`` family (ModelScope's DCT-Net generator) and the TF-free graph importer.

Parity is checked against tests/fixtures/official/: frozen graphs built by ModelScope's own code
under TensorFlow (make_fixtures.py, in a venv of its own) and TF's uint8 outputs on fixed inputs.
TensorFlow itself is never imported here, except by the one live test when it is installed.
"""
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dctnet_lite
from dctnet_lite import official as off
from dctnet_lite.cli import main
from dctnet_lite.official import OfficialConfig, OfficialGenerator, official_uint8
from dctnet_lite.registry import create_model, family_of, get_arch
from dctnet_lite.tools import import_modelscope as im
from dctnet_lite.tools.import_modelscope import GraphImportError, import_modelscope

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"
GRAPHS = sorted(p.stem for p in FIXTURES.glob("official_*.pb") if (FIXTURES / f"{p.stem}.npz").is_file())
BASE = FIXTURES / "official_c8_n1.pb"
needs_fixtures = pytest.mark.skipif(not BASE.is_file(), reason="tests/fixtures/official not built")


def _levels(a: np.ndarray, b: np.ndarray):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float(d.mean())


@pytest.fixture(scope="module")
def imported():
    """name -> (model, npz) for every fixture graph."""
    out = {}
    for name in GRAPHS:
        model, _ = im.import_graph((FIXTURES / f"{name}.pb").read_bytes(), f"{name}.pb")
        out[name] = (model, np.load(FIXTURES / f"{name}.npz"))
    return out


def _graphdef(path=BASE):
    from tensorboard.compat.proto import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.ParseFromString(Path(path).read_bytes())
    return gd


def _node(gd, name):
    return next(n for n in gd.node if n.name == name)


def _rename(gd, old, new):
    _node(gd, old).name = new
    for n in gd.node:
        for i, s in enumerate(n.input):
            if s == old:
                n.input[i] = new
    return gd


# ---------------------------------------------------------------------------------------------
# Exactness against TensorFlow's outputs
# ---------------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.parametrize("name", GRAPHS)
def test_uint8_parity_with_tensorflow(imported, name):
    model, d = imported[name]
    sizes = [tuple(s) for s in d["sizes"]]
    assert any(h % 16 or w % 16 for h, w in sizes) and any(h % 4 for h, w in sizes)
    for i, (h, w) in enumerate(sizes):
        x = d[f"input_{i}"]
        # the official pipeline's path: padTo16x (white, bottom/right) when needed, crop back
        ours = official_uint8(model, x, official_pad=bool(d[f"padded_{i}"]))
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
        mx, mean = _levels(ours, d[f"output_{i}"])
        assert mx <= 1 and mean < 0.01, (name, (h, w), mx, mean)
        if f"direct_output_{i}" in d:  # the graph run on the unpadded image (a multiple of 4)
            mx, mean = _levels(official_uint8(model, x), d[f"direct_output_{i}"])
            assert mx <= 1 and mean < 0.01, (name, (h, w), "direct", mx, mean)


@needs_fixtures
@pytest.mark.parametrize("name", GRAPHS)
def test_float_parity_before_the_cast(imported, name):
    """The generator's raw output and the guided filter's, as floats (BGR in the graph)."""
    model, d = imported[name]
    i = int(d["debug_index"])
    x = torch.from_numpy(d[f"input_{i}"][:, :, ::-1].copy()).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        gen = model.generator(x)[0].permute(1, 2, 0).flip(-1).numpy()
        cart = model.cartoon(x)[0].permute(1, 2, 0).flip(-1).numpy()
    assert np.abs(gen - d["debug_generator"]).max() < 1e-5
    assert np.abs(cart - d["debug_guided"]).max() < 1e-5


@needs_fixtures
def test_uint8_path_rejects_sizes_the_graph_cannot_run(imported):
    model, d = next(iter(imported.values()))
    with pytest.raises(ValueError, match="multiples of 4.*official_pad=True"):
        official_uint8(model, np.zeros((37, 53, 3), np.float32))


@needs_fixtures
def test_forward_is_the_graph_on_rgb(imported):
    """forward (RGB in [-1, 1]) at s=1 is the graph's function, clamped, on multiples of 4; with
    official_pad=True it pads as ModelScope's pipeline does."""
    model, d = imported["official_c8_n1"]
    for i, (h, w) in enumerate(d["sizes"]):
        rgb = torch.from_numpy(d[f"input_{i}"][:, :, ::-1].copy()).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad():
            y = model(rgb, official_pad=True)
        ours = ((y.clamp(-off.CLIP, off.CLIP) + 1) * 127.5).to(torch.uint8)[0].permute(1, 2, 0).flip(-1).numpy()
        assert _levels(ours, d[f"output_{i}"])[0] <= 1
        if h % 4 == 0 and w % 4 == 0:  # the default path runs the graph itself on these
            with torch.no_grad():
                assert torch.equal(model(rgb), model(rgb, official_pad=(h % 16 == 0 and w % 16 == 0)))


# ---------------------------------------------------------------------------------------------
# The importer's refusals: one line naming what is wrong, nothing written
# ---------------------------------------------------------------------------------------------
def _bad_cases():
    cases = {
        "missing_conv": (FIXTURES / "bad_missing_conv.pb", r"missing conv generator/block_0/conv2"),
        "kernel_shape": (FIXTURES / "bad_kernel_shape.pb",
                         r"generator/block_0/conv1/weights has shape \[1, 1, 32, 32\], expected \[3, 3, 32, 32\]"),
        "not_protobuf": (FIXTURES / "bad_not_protobuf.pb", r"not a readable TensorFlow GraphDef"),
        "truncated": (FIXTURES / "bad_truncated.pb", r"not a readable TensorFlow GraphDef \(truncated"),
    }
    return cases


def _mutations():
    """name -> (function that spoils a GraphDef, expected message)."""
    def extra(gd):
        n = gd.node.add()
        n.name, n.op = "junk", "Const"
        n.attr["dtype"].type = 1
        n.attr["value"].tensor.dtype = 1
        n.attr["value"].tensor.float_val.append(1.0)

    def other_op(gd):
        _node(gd, "generator/LeakyRelu_3").op = "Relu"

    def dangling(gd):  # an input renamed, its user not
        _node(gd, "generator/Conv_4/BiasAdd").name = "generator/Conv_4/BiasAddX"

    def weights_renamed(gd):  # renamed consistently: the structure holds, the name does not
        _rename(gd, "generator/Conv_6/weights", "generator/Conv_X/weights")

    def input_renamed(gd):
        _rename(gd, "input_image", "image")

    def no_output(gd):
        _rename(gd, "output_image", "result")

    def eps(gd):
        _node(gd, "add/y").attr["value"].tensor.float_val[:] = [0.1]

    def upsample_half_pixel(gd):
        _node(gd, "generator/ResizeBilinear").attr["half_pixel_centers"].b = True

    def stride(gd):
        _node(gd, "generator/Conv_3/Conv2D").attr["strides"].list.i[:] = [1, 1, 1, 1]

    def skip_rewired(gd):  # the x1 skip reads x0
        n = _node(gd, "generator/add")
        n.input[1] = "generator/LeakyRelu"

    def empty(gd):
        del gd.node[:]

    return {
        "extra_node": (extra, r"1 extra node\(s\) that are not part of a DCT-Net generator: 'junk' \(Const\)"),
        "other_op": (other_op, r"'generator/LeakyRelu_3' is a Relu where a DCT-Net generator has a leaky ReLU"),
        "dangling_input": (dangling, r"missing node 'generator/Conv_4/BiasAdd' \(an input of 'generator/LeakyRelu_4'\)"),
        "renamed_weights": (weights_renamed, r"conv weights 'generator/Conv_X/weights' where a DCT-Net "
                                             r"generator has 'generator/Conv_6/weights' \(renamed node\?\)"),
        "renamed_input": (input_renamed, r"missing node 'input_image'"),
        "renamed_output": (no_output, r"missing node 'output_image'"),
        "eps": (eps, r"where a DCT-Net generator has the guided filter's eps = 0.01"),
        "half_pixel": (upsample_half_pixel, r"half_pixel_centers=True"),
        "stride": (stride, r"'generator/Conv_3/Conv2D' has strides \[1, 1, 1, 1\], expected \[1, 2, 2, 1\]"),
        "skip": (skip_rewired, r"the skip x1 is not the input of the second stride-2 conv: found .generator/LeakyRelu_2."),
        "empty": (empty, r"holds no graph nodes"),
    }


@needs_fixtures
@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_fixture_graphs_fail_and_write_nothing(tmp_path, case):
    path, msg = _bad_cases()[case]
    out = tmp_path / "out.safetensors"
    with pytest.raises(GraphImportError, match=msg) as e:
        import_modelscope(path, out)
    assert "\n" not in str(e.value) and path.name in str(e.value)
    assert list(tmp_path.iterdir()) == []


@needs_fixtures
@pytest.mark.parametrize("case", sorted(_mutations()))
def test_spoiled_graphs_fail_naming_what_is_wrong(tmp_path, case):
    spoil, msg = _mutations()[case]
    gd = _graphdef()
    spoil(gd)
    src = tmp_path / "cartoon_bg.pb"
    src.write_bytes(gd.SerializeToString())
    out = tmp_path / "out"
    with pytest.raises(GraphImportError, match=msg) as e:
        import_modelscope(tmp_path, out)
    assert "\n" not in str(e.value)
    assert not out.exists()


@needs_fixtures
def test_a_bad_graph_in_a_folder_writes_no_checkpoint_at_all(tmp_path):
    (tmp_path / "cartoon_h.pb").write_bytes(BASE.read_bytes())
    (tmp_path / "cartoon_bg.pb").write_bytes((FIXTURES / "bad_truncated.pb").read_bytes())
    out = tmp_path / "out"
    with pytest.raises(GraphImportError, match="cartoon_bg.pb is not a readable"):
        import_modelscope(tmp_path, out)
    assert not out.exists()


def test_a_folder_without_graphs_says_what_it_looked_for(tmp_path):
    (tmp_path / "detector.pb").write_bytes(b"x")
    with pytest.raises(GraphImportError, match=r"no DCT-Net generator graph \(looked for cartoon_h.pb.*found detector.pb"):
        import_modelscope(tmp_path, tmp_path / "out")


def test_an_offline_model_id_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1:1")  # nothing listens: refused at once
    mid = "damo/cv_unet_person-image-cartoon_compound-models"
    t0 = time.perf_counter()
    with pytest.raises(GraphImportError) as e:
        import_modelscope(mid, tmp_path / "out")
    assert time.perf_counter() - t0 < im.HUB_PROBE_TIMEOUT_S + 1
    msg = str(e.value)
    assert mid in msg and "not reachable" in msg and "pass that folder" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_an_unreachable_hub_is_bounded_by_the_timeout(monkeypatch):
    def hanging(*a, **k):  # a network that never answers, then gives up
        time.sleep(5)
        raise TimeoutError("timed out")

    monkeypatch.setattr(im.socket, "create_connection", hanging)
    t0 = time.perf_counter()
    assert im.hub_reachable(timeout=0.3) is False
    assert time.perf_counter() - t0 < 1.5


def test_neither_file_folder_nor_id(tmp_path):
    with pytest.raises(GraphImportError, match="neither a ModelScope model folder"):
        import_modelscope(tmp_path / "nope.pb", tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------------------------
# Import -> safetensors -> load; folders; provenance; CLI
# ---------------------------------------------------------------------------------------------
@needs_fixtures
def test_import_save_load_round_trip(tmp_path, imported):
    out = tmp_path / "bg.safetensors"
    (item,) = import_modelscope(BASE, out, model_id="damo/cv_unet_person-image-cartoon-3d_compound-models")
    model = dctnet_lite.load(out)
    assert isinstance(model, OfficialGenerator) and family_of(model).name == "official"
    assert model.config == OfficialConfig(channels=8, num_blocks=1) == item.config
    info = model.checkpoint_info
    assert info.family == "official"
    prov = info.provenance
    assert prov["source_file"] == BASE.name
    assert prov["source_sha256"] == json.loads((FIXTURES / "manifest.json").read_text())["files"][BASE.name]["sha256"]
    assert prov["model_id"].endswith("-3d_compound-models") and prov["style"] == "3d"
    assert (prov["input_node"], prov["output_node"]) == ("input_image", "output_image")
    ref, d = imported["official_c8_n1"]
    for i in range(len(d["sizes"])):
        x = d[f"input_{i}"]
        pad = bool(d[f"padded_{i}"])
        assert np.array_equal(official_uint8(model, x, official_pad=pad), official_uint8(ref, x, official_pad=pad))


@needs_fixtures
def test_folder_with_head_and_background(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "cartoon_h.pb").write_bytes(BASE.read_bytes())
    (src / "cartoon_bg.pb").write_bytes((FIXTURES / "official_c8_n2_tf1ops.pb").read_bytes())
    (src / "alpha.jpg").write_bytes(b"not read")
    (src / "configuration.json").write_text(json.dumps({"task": "image-portrait-stylization",
                                                        "model": {"style": "handdrawn"}}))
    out = tmp_path / "out"
    items = import_modelscope(src, out)
    assert sorted(p.name for p in out.iterdir()) == ["background.safetensors", "head.safetensors"]
    by_role = {i.role: i for i in items}
    assert by_role["head"].config.num_blocks == 1 and by_role["background"].config.num_blocks == 2
    for item in items:
        prov = dctnet_lite.read_info(item.path).provenance
        assert prov["style"] == "handdrawn" and prov["role"] == item.role
        assert prov["source_file"] == ("cartoon_h.pb" if item.role == "head" else "cartoon_bg.pb")


@needs_fixtures
def test_anime_spelling_and_both_spellings_in_one_folder(tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "cartoon_anime_h.pb").write_bytes(BASE.read_bytes())
    assert [i.path.name for i in import_modelscope(src, tmp_path / "a")] == ["head.safetensors"]
    (src / "cartoon_h.pb").write_bytes(BASE.read_bytes())
    names = sorted(i.path.name for i in import_modelscope(src, tmp_path / "b"))
    assert names == ["anime_head.safetensors", "head.safetensors"]


@needs_fixtures
def test_cli_import_modelscope(tmp_path, capsys):
    out = tmp_path / "one.safetensors"
    assert main(["import-modelscope", str(BASE), "-o", str(out)]) == 0
    assert "official c8 n1" in capsys.readouterr().out and out.is_file()
    bad = tmp_path / "bad.safetensors"
    assert main(["import-modelscope", str(FIXTURES / "bad_missing_conv.pb"), "-o", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing conv generator/block_0/conv2" in err
    assert not bad.exists()


# ---------------------------------------------------------------------------------------------
# The family: config, registry, strength, padding
# ---------------------------------------------------------------------------------------------
def test_config_round_trip_diff_and_table():
    c = OfficialConfig(channels=16, num_blocks=2)
    assert OfficialConfig.from_dict(json.loads(c.to_json())) == c
    assert c.describe() == "official c16 n2"
    table = off.widths_from_channels(16, 2)
    assert OfficialConfig.from_table(table) == c and OfficialConfig.from_table(table).is_uniform
    table["block1"] = 40
    pruned = OfficialConfig.from_table(table)
    assert not pruned.is_uniform and pruned != c
    assert OfficialConfig.from_dict(pruned.to_dict()) == pruned
    assert c.diff(pruned) == "block1: 64 vs 40"
    assert c.diff(OfficialConfig(channels=32, num_blocks=4)) == "num_blocks: 2 vs 4, channels: 16 vs 32"
    net = OfficialGenerator(pruned)
    assert net.blocks[1].conv1.out_channels == 40 and net.blocks[1].conv2.out_channels == 64
    with pytest.raises(ValueError, match="missing"):
        OfficialConfig(channels=None, num_blocks=3, table=table)
    with pytest.raises(ValueError, match="positive integer"):
        OfficialConfig(channels=0)
    with pytest.raises(ValueError, match="unknown official generator config fields"):
        OfficialConfig.from_dict({"channels": 8, "width": 3})


def test_registered_architectures():
    assert get_arch("official_c32n4").family == "official"
    net = create_model("official_c32n4")
    assert isinstance(net, OfficialGenerator) and net.config == OfficialConfig(32, 4)
    # every released graph: c=32, n=4, about 1.5 M parameters
    assert sum(p.numel() for p in net.parameters()) == 1_467_075
    assert isinstance(create_model(OfficialConfig(8, 1)), OfficialGenerator)


def test_strength_is_the_output_blend():
    torch.manual_seed(0)
    net = OfficialGenerator(OfficialConfig(8, 1)).eval()
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x, 0.0), x)
        full = net(x, 1.0)
        assert torch.equal(full, net.cartoon(x).clamp(-1, 1))
        half = net(x, torch.tensor([0.0, 0.5]))
        assert torch.equal(half[0], x[0])
        assert torch.allclose(half[1], 0.5 * x[1] + 0.5 * full[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net(x, 1.5)


def test_sizes_not_multiples_of_four():
    torch.manual_seed(0)
    net = OfficialGenerator(OfficialConfig(8, 0)).eval()
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    with torch.no_grad():
        a, b = net(x), net(x, official_pad=True)
        assert a.shape == b.shape == x.shape
        # the default reflects to 40x56; official_pad is white padTo16x (48x64): same crop,
        # different borders, identical far from the bottom/right edges
        assert not torch.equal(a, b)
        padded = torch.nn.functional.pad(x, (0, 64 - 53, 0, 48 - 37), value=1.0)
        assert torch.equal(b, net.forward_padded(padded, torch.ones(1, 1, 1, 1))[..., :37, :53])


def test_pad_to_16x_is_modelscope_padTo16x():
    img = np.zeros((64, 50, 3), np.uint8)
    p, h, w = off.pad_to_16x(img)
    assert (h, w) == (64, 50) and p.shape == (80, 64, 3)  # the quirk: 64 grows to 80 too
    assert (p[64:] == 255).all() and (p[:, 50:] == 255).all() and (p[:64, :50] == 0).all()
    same, _, _ = off.pad_to_16x(np.zeros((32, 16, 3), np.uint8))
    assert same.shape == (32, 16, 3)


# ---------------------------------------------------------------------------------------------
# The pieces, against hand computations
# ---------------------------------------------------------------------------------------------
def test_legacy_bilinear_by_hand():
    x = torch.tensor([[1.0, 3.0], [5.0, 9.0]])[None, None]
    # src = dst / 2; odd outputs lerp to the next input, clamped at the last one
    want = torch.tensor([[1.0, 2.0, 3.0, 3.0],
                         [3.0, 4.5, 6.0, 6.0],
                         [5.0, 7.0, 9.0, 9.0],
                         [5.0, 7.0, 9.0, 9.0]])
    assert torch.equal(off.upsample2x_legacy(x)[0, 0], want)
    # PyTorch's align_corners=False bilinear is the half-pixel one: not the same
    assert not torch.equal(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")[0, 0], want)


def test_same_padding():
    assert off.same_pads(8, 3, 2) == (0, 1)     # even side, stride 2: the pad goes after
    assert off.same_pads(7, 3, 2) == (1, 1)
    assert off.same_pads(9, 7, 1) == (3, 3)
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = off.conv_same(x, conv)
    assert y.shape == (1, 1, 2, 2)
    # TF SAME, stride 2, 4x4: windows start at 0 and 2, the last one runs over the zero pad
    assert y[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum() and y[0, 0, 1, 1] == x[0, 0, 2:4, 2:4].sum()
    for h, w in ((8, 12), (9, 7)):
        conv = torch.nn.Conv2d(2, 2, 3, stride=2)
        assert off.conv_same(torch.zeros(1, 2, h, w), conv).shape[-2:] == (-(-h // 2), -(-w // 2))


def _naive_guided_filter(x: np.ndarray, y: np.ndarray, r: int = 1, eps: float = 1e-2) -> np.ndarray:
    """Straight from the formula, box means over the window clipped at the border."""
    c, h, w = x.shape

    def mean(a):
        out = np.zeros_like(a)
        for i in range(h):
            for j in range(w):
                win = a[:, max(i - r, 0): i + r + 1, max(j - r, 0): j + r + 1]
                out[:, i, j] = win.reshape(c, -1).mean(1)
        return out

    mx, my = mean(x), mean(y)
    a = (mean(x * y) - mx * my) / (mean(x * x) - mx * mx + eps)
    b = my - a * mx
    return mean(a) * x + mean(b)


def test_guided_filter_against_the_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 9, 7))
    y = rng.uniform(-1, 1, (3, 9, 7))
    ours = off.guided_filter(torch.from_numpy(x)[None].float(), torch.from_numpy(y)[None].float())[0]
    assert np.abs(ours.double().numpy() - _naive_guided_filter(x, y)).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# TensorFlow live (only where it is installed)
# ---------------------------------------------------------------------------------------------
@needs_fixtures
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_live_tensorflow_parity(imported):  # pragma: no cover - runs only with TensorFlow
    import tensorflow as tf

    tf1 = tf.compat.v1
    name = GRAPHS[0]
    model, _ = imported[name]
    gd = tf1.GraphDef()
    gd.ParseFromString((FIXTURES / f"{name}.pb").read_bytes())
    rng = np.random.default_rng(5)
    graph = tf.Graph()
    with graph.as_default():
        tf1.import_graph_def(gd, name="")
    with tf1.Session(graph=graph) as sess:
        for h, w in ((44, 60), (64, 64), (28, 100)):
            x = np.round(rng.uniform(0, 255, (h, w, 3))).astype(np.float32)
            ref = sess.run("output_image:0", {"input_image:0": x})
            mx, mean = _levels(official_uint8(model, x), ref)
            assert mx <= 1 and mean < 0.01


# ------------------------------------------------------------------------------ CPU fast path
def _plain(fn):
    with off.plain_ops():
        return fn()


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 36, 52), (1, 3, 30, 34)])
def test_fused_cpu_path_is_the_plain_graph(shape):
    """The fused inference path (oneDNN conv+bias+leaky, in-place residual adds, upsampling as a
    transposed conv, no padded copies) computes the plain formulation's function, also on sides
    that are not multiples of 4 and on batches."""
    if not off.fused_cpu_available():
        pytest.skip("this torch build has no oneDNN fused convolution")
    torch.manual_seed(0)
    m = OfficialGenerator(OfficialConfig(channels=8, num_blocks=2)).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.3)
    x = torch.rand(*shape) * 2 - 1
    s = torch.tensor([1.0, 0.4][:shape[0]])
    with torch.no_grad():
        fast = m(x, s)
        plain = _plain(lambda: m(x, s))
        xp = off.pad_to_multiple(x, 4)  # the graph itself runs multiples of 4 only
        raw_fast, raw_plain = m.generator(xp), _plain(lambda: m.generator(xp))
    assert (fast - plain).abs().max() < 1e-5
    assert (raw_fast - raw_plain).abs().max() < 1e-4 * raw_plain.abs().max()
    y = m(x, s)  # gradients on: the autograd-safe plain path
    assert y.requires_grad and (y - plain).abs().max() < 1e-5


def test_fast_building_blocks_match_tf_formulas():
    torch.manual_seed(1)
    t = torch.randn(2, 8, 7, 9).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(2, 8, 14, 18)
    with torch.no_grad():
        up = off.upsample2x_deconv(t, skip)
        ref = _plain(lambda: off.upsample2x_legacy(t, skip))
    assert up.shape == ref.shape and (up - ref).abs().max() < 1e-6
    # bf16 (the CPU default path): upsampled in fp32, rounded once, the skip added in bf16
    tb, sb = t.bfloat16(), skip.bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        upb = off.upsample2x_deconv(tb, sb)
        refb = _plain(lambda: off.upsample2x_legacy(tb.double(), sb.double()))
    assert upb.dtype == torch.bfloat16 and upb.is_contiguous(memory_format=torch.channels_last)
    assert (upb.double() - refb).abs().max() <= 2 * 2 ** -8 * refb.abs().max()  # two bf16 roundings
    conv = torch.nn.Conv2d(8, 3, 7)
    x = torch.randn(1, 8, 20, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a = off._conv_few_out_grouped(x, conv)
        b = off._conv_few_out(x, conv)
        c = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, 3)
    assert (a - c).abs().max() < 1e-5 and (b - c).abs().max() < 1e-5
    for shape in [(1, 3, 20, 24), (2, 3, 7, 11), (1, 3, 1, 5)]:  # the batch-stacked fast path
        y = torch.rand(*shape) * 2 - 1
        x3 = (torch.rand(*shape) * 2 - 1).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            g = off.guided_filter(x3, y)
            gp = _plain(lambda: off.guided_filter(x3, y))
        assert g.shape == gp.shape and torch.equal(g, gp)  # the same operations in the same order


@needs_fixtures
def test_bf16_path_lands_near_tensorflow(imported):
    """bf16 (the CPU default where it is native) against TensorFlow's uint8 output of the same
    graph on the fixtures' inputs: close (a few levels on few pixels), not exact like fp32."""
    model, d = imported["official_c8_n1"]
    for i, (h, w) in enumerate(tuple(s) for s in d["sizes"]):
        if d[f"padded_{i}"]:
            continue
        tf = d[f"output_{i}"].astype(int)
        fp32 = official_uint8(model, d[f"input_{i}"], precision="fp32").astype(int)
        bf16 = official_uint8(model, d[f"input_{i}"], precision="bf16").astype(int)
        assert np.abs(fp32 - tf).max() <= 1
        diff = np.abs(bf16 - tf)
        assert diff.max() <= 8 and diff.mean() < 0.5, ((h, w), diff.max(), diff.mean())
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched

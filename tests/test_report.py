"""The two-family quality-vs-latency report (dctnet_lite.tools.report): the common renderer
reference and the own-teacher column, the TensorFlow anchor row (skipped without TensorFlow,
present with a fake runner: no TensorFlow in the test environment), the matplotlib plot, nice
ticks and the default rule. Tiny random-init checkpoints, 64 px photos, no timing asserts."""
import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MACHINE_PATH, assert_no_absolute_path, block_matplotlib, lpips_weights_available, portrait_like

REPO = Path(__file__).resolve().parents[1]


LPIPS_OK = lpips_weights_available("alex")
METRIC = "lpips_alex" if LPIPS_OK else "ssim"  # the plot's and the rule's metric in these tests




# ------------------------------------------------------------------------------ the rule
def _row(name, quality, ms, teacher=None, shipped=True):
    return {"name": name, "teacher": teacher, "shipped": shipped, "quality": quality, "latency_ms": ms}


def test_pick_default_fastest_within_tolerance_of_the_best_shipped_teacher():
    from dctnet_lite.tools.report import pick_default

    rows = [_row("T1", 0.10, 500), _row("T2", 0.08, 400),
            _row("S1", 0.085, 200, "T1"), _row("S2", 0.095, 100, "T2"),  # S2 is too far from T2 (0.08)
            _row("fast-unshipped", 0.081, 10, "T2", shipped=False),
            _row("best-unshipped-teacher", 0.01, 900, shipped=False)]
    got = pick_default(rows, 0.01)
    assert got["name"] == "S1" and got["best_teacher"] == "T2"
    assert got["bound"] == pytest.approx(0.09) and got["teacher_quality"] == 0.08
    assert got["candidates"] == ["S1", "T2"] and got["latency_ms"] == 200
    # among every row: the unshipped ones count (a better teacher, and a faster row near it)
    allrows = pick_default(rows, 0.01, among="all")
    assert allrows["best_teacher"] == allrows["name"] == "best-unshipped-teacher"
    assert pick_default(rows, 0.075, among="all")["name"] == "fast-unshipped"
    # a wider tolerance lets S2 in
    assert pick_default(rows, 0.02)["name"] == "S2"


def test_pick_default_ties_teacher_fastest_and_no_candidate():
    from dctnet_lite.tools.report import pick_default

    # ties on latency: the better quality wins, then the name
    rows = [_row("T", 0.05, 300), _row("B", 0.055, 100, "T"), _row("A", 0.052, 100, "T")]
    assert pick_default(rows)["name"] == "A"
    rows = [_row("T", 0.05, 300), _row("B", 0.052, 100, "T"), _row("A", 0.052, 100, "T")]
    assert pick_default(rows)["name"] == "A" and pick_default(rows)["candidates"] == ["A", "B", "T"]
    # the teacher itself is the fastest: it is its own default
    got = pick_default([_row("T", 0.05, 50), _row("S", 0.051, 80, "T")])
    assert got["name"] == "T" and got["candidates"] == ["T", "S"]
    # nothing qualifies: no teacher, a teacher without quality, no latency at that resolution
    none = pick_default([_row("S", 0.05, 10, "T")])
    assert none["name"] is None and "no shipped teacher" in none["why"]
    assert pick_default([_row("T", None, 10), _row("S", 0.05, 10, "T")])["name"] is None
    by_res = [_row("T", 0.05, {"512": 40}), _row("S", 0.055, {"512": 20, "1024": 70}, "T")]
    assert pick_default(by_res, resolution=512)["name"] == "S"
    missing = pick_default([_row("T", 0.05, {"512": 40})], resolution=1024)
    assert missing["name"] is None and "1024 px" in missing["why"] and missing["best_teacher"] == "T"
    # a higher-is-better metric: within the tolerance below the best teacher
    psnr = [_row("T", 30.0, 100), _row("S", 29.5, 50, "T"), _row("W", 28.0, 10, "T")]
    assert pick_default(psnr, 1.0, lower_is_better=False)["name"] == "S"
    with pytest.raises(ValueError, match="tolerance"):
        pick_default(rows, -1)
    with pytest.raises(ValueError, match="among"):
        pick_default(rows, among="some")


# ------------------------------------------------------------------------------ ticks
def test_nice_ticks_are_round_and_short():
    from dctnet_lite.tools.report import nice_ticks

    for lo, hi in ((-0.01307, 0.1438), (0.0021, 0.0089), (0.0, 1.0), (12.5, 13.1), (0.05, 0.05)):
        vals, labels = nice_ticks(lo, hi)
        assert 3 <= len(vals) <= 8, (lo, hi, vals)
        for v, t in zip(vals, labels):
            assert float(t) == pytest.approx(v, abs=1e-12) and len(t.lstrip("-").split(".")[-1]) <= 4, t
    vals, labels = nice_ticks(-0.01307, 0.1438)
    assert labels == ["0", "0.02", "0.04", "0.06", "0.08", "0.10", "0.12", "0.14"]  # not 0.1438, 0.08106
    vals, labels = nice_ticks(120.0, 600.0, log=True)  # latencies in ms
    assert labels == ["150", "200", "300", "500"] and all(120 <= v <= 600 for v in vals)
    vals, labels = nice_ticks(15.0, 2500.0, log=True)
    assert labels == ["20", "50", "100", "200", "500", "1000", "2000"]
    with pytest.raises(ValueError):
        nice_ticks(0, math.inf)


# ------------------------------------------------------------------------------ recipe
def test_checkpoints_shipped_expands_the_weights_table(tmp_path):
    from dctnet_lite.registry import WEIGHTS
    from dctnet_lite.tools.report import SHIPPED, expand_checkpoints, load_recipe

    names = [w.name for w in WEIGHTS]
    assert expand_checkpoints([SHIPPED], tmp_path) == names
    assert expand_checkpoints([], tmp_path) == names
    mixed = expand_checkpoints([names[1], SHIPPED, "runs/x.safetensors"], tmp_path)
    assert mixed[0] == names[1] and mixed[1:-1] == [n for n in names if n != names[1]]
    assert mixed[-1] == str(tmp_path / "runs" / "x.safetensors")
    cfg, _ = load_recipe({"checkpoints": None})
    assert cfg["checkpoints"] == [SHIPPED]
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoints: shipped\n")
    with pytest.raises(ValueError, match=r"write \[shipped\]"):
        load_recipe(bad)


def test_shipped_recipe_covers_both_families_against_the_renderer():
    from dctnet_lite.tools.report import load_recipe

    ev = REPO / "eval"
    cfg, _ = load_recipe([ev / "quality_vs_latency.yaml", ev / "quality_vs_latency_cpu.yaml"])
    assert cfg["checkpoints"] == ["shipped"]
    q, b = cfg["quality"], cfg["bench"]
    assert q["reference"] == "renderer" and q["teachers"] == "registry" and q["teacher_metrics"] == ["lpips_alex"]
    assert q["split"] == "val" and q["sizes"] == [512] and q["strengths"] == [1.0, 0.5] and q["interval"] == "bootstrap"
    assert b["precisions"] == ["auto", "fp32"] and b["backends"] == ["channels_last"] and b["threads"] == 2
    assert b["resolutions"] == [512, 1024] and b["tf_anchor"] == "auto" and b["tf_weights"] == "official_c32n4.toon"
    assert cfg["pareto"]["precision"] == "auto" and cfg["pareto"]["resolution"] == 512
    assert cfg["rule"] == {"tolerance": 0.01, "metric": "lpips_alex", "strength": 1.0, "resolution": 1024,
                           "precision": "auto", "among": "shipped"}
    for f in ("quality_vs_latency.yaml", "quality_vs_latency_cpu.yaml"):
        assert not MACHINE_PATH.search((ev / f).read_text())


def test_own_teachers_from_the_table_and_a_mapping(tmp_path):
    from dctnet_lite.registry import WEIGHTS
    from dctnet_lite.tools.report import own_teachers

    names = [w.name for w in WEIGHTS]
    got = own_teachers(names, "registry", tmp_path)
    assert got == {w.name: w.teacher for w in WEIGHTS}
    over = own_teachers(names[:2] + ["other.safetensors"], {names[0]: None, "other.safetensors": names[1]}, tmp_path)
    assert over[names[0]] is None and over[names[1]] == WEIGHTS[1].teacher
    assert over["other.safetensors"] == names[1]
    assert own_teachers(names, None, tmp_path) is None
    with pytest.raises(ValueError, match="teachers"):
        own_teachers(names, "teacher", tmp_path)


# ------------------------------------------------------------------------------ the report
@pytest.fixture
def two_families(tmp_path):
    """Two families, each a teacher and a student (random init), and three 64 px photos."""
    from dctnet_lite import DCTNet, save_checkpoint
    from dctnet_lite.official import OfficialConfig, OfficialGenerator

    nets = {"d-teacher": DCTNet(16), "d-student": DCTNet(8),
            "o-teacher": OfficialGenerator(OfficialConfig.from_channels(8, 1)),
            "o-student": OfficialGenerator(OfficialConfig.from_channels(8, 1))}
    paths = {}
    for i, (name, net) in enumerate(nets.items()):
        torch.manual_seed(i)
        for prm in net.parameters():
            torch.nn.init.normal_(prm, 0, 0.05)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_checkpoint(paths[name], net.eval(), provenance={"note": "test"})
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(portrait_like(64, 48, i)).save(photos / f"p{i}.png")
    recipe = {
        "name": "two", "base_dir": str(tmp_path),
        "checkpoints": [p.name for p in paths.values()],
        "quality": {"reference": "renderer", "images": "photos", "strengths": [1.0, 0.5], "sizes": [64],
                    "metrics": [METRIC], "teacher_metrics": [METRIC], "precision": "fp32",
                    "teachers": {"d-student.safetensors": "d-teacher.safetensors",
                                 "o-student.safetensors": "o-teacher.safetensors"}},
        "bench": {"resolutions": [32, 48], "precisions": ["auto", "fp32"], "backends": ["channels_last"],
                  "threads": 1, "warmup": 1, "repeats": 2, "cold_start": False,
                  "tf_anchor": "auto", "tf_python": str(tmp_path / "no-tf" / "python")},
        "pareto": {"metric": METRIC, "size": 64, "resolution": 32, "precision": "auto"},
        "rule": {"metric": METRIC, "resolution": 48, "among": "all"},
    }
    return paths, photos, recipe


def test_two_families_one_report_common_reference_and_own_teachers(two_families, tmp_path):
    from dctnet_lite.tools.evaluate import evaluate
    from dctnet_lite.tools.report import make_report

    paths, photos, recipe = two_families
    out = make_report(recipe, tmp_path / "rep")
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    q = rep["quality"]
    # one common reference for every row, both families
    assert {r["reference"] for r in q["results"]} == {"renderer"} and q["precision"] == "fp32"
    assert {r["family"] for r in q["results"]} == {"dctnet", "official"}
    rows = {r["name"]: r for r in rep["summary"]}
    assert set(rows) == {"d-teacher", "d-student", "o-teacher", "o-student"}
    assert rows["d-student"]["teacher"] == "d-teacher" and rows["o-student"]["teacher"] == "o-teacher"
    assert rows["d-teacher"]["teacher"] is None and rows["d-teacher"]["to_teacher"] == {}
    for name in ("d-student", "o-student"):
        for s in ("1", "0.5"):
            cell = rows[name]["to_teacher"][s][METRIC]
            assert cell["lo"] <= cell["mean"] <= cell["hi"] and cell["n"] == 3
    # the own-teacher figure is the student scored against its teacher's output
    direct = evaluate([str(paths["o-student"])], str(paths["o-teacher"]), str(photos), strengths=(1.0,),
                      sizes=(64,), metrics=(METRIC,), precision="fp32")
    assert rows["o-student"]["to_teacher"]["1"][METRIC]["mean"] == pytest.approx(
        direct["results"][0]["metrics"][METRIC]["mean"], rel=1e-6, abs=1e-9)
    # and the renderer figure is the same row scored against the renderer
    direct = evaluate([str(paths["d-student"])], "renderer", str(photos), strengths=(0.5,),
                      sizes=(64,), metrics=(METRIC,), precision="fp32")
    assert rows["d-student"]["to_reference"]["0.5"][METRIC]["mean"] == pytest.approx(
        direct["results"][0]["metrics"][METRIC]["mean"], rel=1e-6, abs=1e-9)
    # latency on the default path (auto: pinned to fp32 by the suite, so fp32 is not timed twice)
    assert {(r["requested_precision"], r["precision"]) for r in rep["bench"]["rows"]} == {("auto", "fp32")}
    assert set(rows["o-student"]["latency"]["auto"]) == {"32", "48"}
    assert "default CPU path (fp32) ms @32" in md and "default CPU path (fp32) ms @48" in md
    # the table, the skipped anchor (one line), the rule
    for needle in ("## Both families", "| `d-student.safetensors`", "`o-teacher.safetensors`", "official", "dctnet"):
        assert needle.replace(".safetensors", "") in md, needle
    skipped = [ln for ln in md.splitlines() if ln.startswith("TensorFlow anchor: skipped")]
    assert len(skipped) == 1 and "does not exist" in skipped[0]
    assert rep["tf_anchor"] == {"skipped": skipped[0][len("TensorFlow anchor: skipped ("):-2]}
    rule = rep["default_rule"]
    assert rule["name"] in rows and f"Default by the rule: {rule['name']}" in md
    assert rule["best_teacher"] in ("d-teacher", "o-teacher") and rule["settings"]["resolution"] == 48
    # the plot: both families, drawn with matplotlib when it is there, a PNG PIL reads
    fams = {p["family"] for p in rep["pareto"]["points"]}
    assert fams == {"dctnet", "official"} and rep["pareto"]["anchor"] is None
    img = Image.open(out / "pareto.png")
    img.load()
    assert img.format == "PNG" and min(img.size) > 300
    assert rep["pareto"]["plot"] == ("matplotlib" if importlib.util.find_spec("matplotlib") else "pillow")
    assert_no_absolute_path(rep)
    assert str(tmp_path) not in md


def test_tf_anchor_skipped_without_tensorflow_or_when_off(two_families, tmp_path, monkeypatch):
    from dctnet_lite.tools.report import tf_anchor

    monkeypatch.delenv("TF_PYTHON", raising=False)
    bench_result = {"settings": {"device": "cpu", "threads": 1, "resolutions": [32], "warmup": 1, "repeats": 1},
                    "machine": {}}
    assert tf_anchor({"tf_anchor": "off"}, bench_result) == {"skipped": "bench.tf_anchor is off"}
    got = tf_anchor({"tf_anchor": "auto", "tf_weights": None}, bench_result)
    assert "no TensorFlow python" in got["skipped"] and "TF_PYTHON" in got["skipped"]
    cuda = dict(bench_result, settings=dict(bench_result["settings"], device="cuda:0"))
    assert "CPU" in tf_anchor({"tf_anchor": "auto"}, cuda)["skipped"]
    with pytest.raises(ValueError, match="tf_anchor"):
        tf_anchor({"tf_anchor": "yes"}, bench_result)


class FakeTF:
    """Stands in for eval/official_vs_tf.py's TFServer: answers each size with a fixed time and
    writes an io pair whose 'TF output' is our own fp32 output on the weights it was given."""

    calls = []

    def __init__(self, *, tf_python, sizes, threads, warmup, weights, workdir, log=None):
        from dctnet_lite.official import OfficialConfig, official_uint8
        from official_common import bench_image

        self.weights, self.sizes, self.threads = weights, sizes, threads
        self.info = {"tensorflow": "9.9.1", "model": {"channel": 32, "num_blocks": 4}}
        self.io = None
        if weights is not None:
            with np.load(weights) as a:
                arrays = {k: a[k] for k in a.files}
            assert arrays["generator/Conv/weights"].shape == (7, 7, 3, 32)
            # rebuild the generator from the graph-named arrays, as the importer would
            from dctnet_lite.tools.import_modelscope import ParsedGraph, _expected_scopes, build_model

            convs = [SimpleNamespace(weight=arrays[s + "/weights"], bias=arrays[s + "/biases"])
                     for s in _expected_scopes(4)]
            model = build_model(ParsedGraph(OfficialConfig.from_channels(32, 4), convs))
            x = bench_image(32, seed=1)
            self.io = Path(workdir) / "io.npz"
            np.savez(self.io, input=x, output=official_uint8(model, x))

    def __call__(self, size):
        FakeTF.calls.append(size)
        return {32: 40.0, 48: 90.0}[size] + len(FakeTF.calls) % 3

    def close(self):
        FakeTF.calls.append("closed")


def test_tf_anchor_row_with_a_fake_runner(two_families, tmp_path, monkeypatch):
    from dctnet_lite import save_checkpoint
    from dctnet_lite.official import OfficialGenerator
    from dctnet_lite.tools.report import make_report

    monkeypatch.syspath_prepend(str(REPO / "eval"))  # FakeTF's bench_image
    paths, photos, recipe = two_families
    torch.manual_seed(3)
    c32 = OfficialGenerator().eval()  # the released shape: its weights go into the (fake) graph
    save_checkpoint(tmp_path / "o-c32.safetensors", c32, provenance={"note": "test"})
    recipe["checkpoints"].append("o-c32.safetensors")
    recipe["bench"].update(tf_weights="o-c32.safetensors", resolutions=[32, 48])
    FakeTF.calls = []
    out = make_report(recipe, tmp_path / "rep", tf_runner=FakeTF)
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    a = rep["tf_anchor"]
    assert a["label"] == "official graph, TensorFlow 9.9" and a["tensorflow"] == "9.9.1"
    assert a["quality_from"] == "o-c32" and a["weights"] == "o-c32" and a["threads"] == 1
    assert FakeTF.calls.count(32) == FakeTF.calls.count(48) == 2 and FakeTF.calls[-1] == "closed"
    assert set(a["latency"]) == {"32", "48"} and a["latency"]["32"]["min_ms"] <= a["latency"]["32"]["median_ms"]
    # the weights went into the graph name by name: TF's (here: rebuilt) output is ours to the level
    assert a["parity"]["max_levels"] == 0
    row = [ln for ln in md.splitlines() if ln.startswith("| **official graph, TensorFlow 9.9**")]
    assert len(row) == 1 and "(= `o-c32`)" in row[0] and "(TF, fp32)" in row[0]
    assert "TensorFlow anchor: skipped" not in md and "the graph carries those weights" in md
    # on the plot: the anchor at its latency with o-c32's quality
    pa = rep["pareto"]["anchor"]
    c32_q = [r for r in rep["quality"]["results"] if r["checkpoint"] == "o-c32" and r["strength"] == 1.0][0]
    assert pa["value"] == pytest.approx(c32_q["metrics"][METRIC]["mean"])
    assert pa["latency_ms"] == a["latency"]["32"]["median_ms"]
    Image.open(out / "pareto.png").load()
    assert_no_absolute_path(rep)
    # without weights for the graph: random ones, and no quality for the anchor
    recipe["bench"]["tf_weights"] = None
    FakeTF.calls = []
    out = make_report(recipe, tmp_path / "rep2", tf_runner=FakeTF)
    rep = json.loads((out / "report.json").read_text())
    assert rep["tf_anchor"]["quality_from"] is None and rep["tf_anchor"]["parity"] is None
    assert rep["pareto"]["anchor"]["value"] is None
    assert "quality –: the graph has random" in (out / "report.md").read_text()


def test_export_tf_weights_is_the_importers_inverse(tmp_path):
    """eval/official_vs_tf.py's export_tf_weights: graph names, HWIO, BGR in and out; the
    importer's build_model on the exported arrays gives the same network back."""
    from dctnet_lite.official import OfficialConfig, OfficialGenerator
    from dctnet_lite.tools.import_modelscope import ParsedGraph, _expected_scopes, build_model

    spec = importlib.util.spec_from_file_location("official_vs_tf_t", REPO / "eval" / "official_vs_tf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = OfficialGenerator(OfficialConfig.from_channels(8, 2)).eval()
    npz = mod.export_tf_weights(model, tmp_path / "w.npz")
    with np.load(npz) as a:
        arrays = {k: a[k] for k in a.files}
    scopes = _expected_scopes(2)
    assert set(arrays) == {s + suffix for s in scopes for suffix in ("/weights", "/biases")}
    assert arrays["generator/Conv/weights"].shape == (7, 7, 3, 8)
    convs = [SimpleNamespace(weight=arrays[s + "/weights"], bias=arrays[s + "/biases"]) for s in scopes]
    back = build_model(ParsedGraph(model.config, convs))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    with pytest.raises(ValueError, match="uniform"):
        pruned = OfficialGenerator(OfficialConfig.from_table({**OfficialConfig.from_channels(8, 2).widths, "x1": 12}, 2))
        mod.export_tf_weights(pruned, tmp_path / "p.npz")


def test_plot_marks_families_and_the_anchor(tmp_path, monkeypatch):
    """A synthetic Pareto dict: the matplotlib plot (when installed) and the Pillow fallback both
    write a PNG PIL reads, with the families and the anchor."""
    from dctnet_lite.tools.report import _plot_pillow, plot_pareto

    pts = [{"label": n, "family": f, "latency_ms": ms, "lat_lo": ms * 0.95, "lat_hi": ms * 1.1,
            "value": v, "lo": v - 0.01, "hi": v + 0.01, "on_front": front, "is_reference": False}
           for n, f, ms, v, front in (("dctnet_w64.toon", "dctnet", 504.0, 0.1345, False),
                                      ("dctnet_w32.toon", "dctnet", 140.0, 0.19, True),
                                      ("official_c32n4.toon", "official", 168.0, 0.0862, True),
                                      ("official_c24n4.toon", "official", 126.0, 0.09, True))]
    pareto = {"metric": "lpips_alex", "strength": 1.0, "size": 512, "resolution": 512, "batch": 1,
              "precision": "auto", "ran_precision": "bf16", "backend": "best", "reference": "renderer",
              "device": "cpu", "threads": 2, "lower_is_better": True, "points": pts,
              "anchor": {"label": "official graph, TensorFlow 2.21", "latency_ms": 409.0, "lat_lo": 400.0,
                         "lat_hi": 420.0, "value": 0.0862, "lo": 0.08, "hi": 0.09,
                         "quality_from": "official_c32n4.toon"}}
    if importlib.util.find_spec("matplotlib"):
        assert plot_pareto(pareto, tmp_path / "m.png") == "matplotlib"
        im = Image.open(tmp_path / "m.png")
        im.load()
        assert im.format == "PNG" and im.size == (1080, 720)
        # the families' colours are there (tab:blue, tab:orange, the anchor's tab:purple)
        a = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
        for rgb in ((31, 119, 180), (255, 127, 14), (148, 103, 189)):
            assert (np.abs(a - rgb).sum(axis=1) < 30).any(), rgb
    block_matplotlib(monkeypatch)
    assert plot_pareto(pareto, tmp_path / "p.png") == "pillow"
    im = Image.open(tmp_path / "p.png")
    assert im.size == (900, 600)
    _plot_pillow(dict(pareto, anchor=None), tmp_path / "p2.png")
    Image.open(tmp_path / "p2.png").load()

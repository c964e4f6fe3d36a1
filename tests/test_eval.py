"""eval/: metrics, intervals, benchmark JSON, report generation and the Pareto helper (CPU, small)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import MACHINE_PATH, assert_no_absolute_path, lpips_weights_available, portrait_like


LPIPS_OK = lpips_weights_available("alex", "vgg")
needs_lpips = pytest.mark.skipif(not LPIPS_OK, reason="exact LPIPS weights unavailable (LPIPSWeightsUnavailable)")
CHEAP_METRICS = ("psnr", "ssim")
ALL_METRICS = ("lpips_alex", "lpips_vgg", "psnr", "ssim") if LPIPS_OK else CHEAP_METRICS


# ------------------------------------------------------------------------------ metrics
def _photo(h=48, w=40, seed=0):
    return torch.from_numpy(portrait_like(h, w, seed)).permute(2, 0, 1)[None].float() / 255


def test_identical_images_score_perfectly():
    from dctnet_lite.tools.evaluate import PSNR_CAP_DB, compute_metrics

    x = torch.cat([_photo(seed=1), _photo(seed=2)])
    vals = compute_metrics(x, x.clone(), ALL_METRICS)
    assert vals["psnr"] == [PSNR_CAP_DB, PSNR_CAP_DB]  # +inf is capped (JSON has no inf)
    assert vals["ssim"] == pytest.approx([1.0, 1.0], abs=1e-6)
    for m in ("lpips_alex", "lpips_vgg"):
        if m in vals:
            assert vals[m] == pytest.approx([0.0, 0.0], abs=1e-6)


@needs_lpips
def test_lpips_orders_degradations():
    from dctnet_lite.tools.evaluate import lpips

    x = _photo(64, 64, 3)
    g = torch.Generator().manual_seed(0)
    small = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    big = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert 0 < float(lpips(small, x)) < float(lpips(big, x))


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_psnr_of_gaussian_noise(sigma):
    from dctnet_lite.tools.evaluate import psnr

    g = torch.Generator().manual_seed(0)
    y = torch.full((1, 3, 128, 128), 0.5)  # mid-grey: no clipping at sigma <= 0.05 (10 sigma)
    x = y + sigma * torch.randn(y.shape, generator=g)
    assert float(psnr(x, y)) == pytest.approx(10 * math.log10(1 / sigma ** 2), abs=0.2)


def _reference_ssim(x, y, sigma=1.5, k=11):
    """SSIM written out (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, reflect padding,
    mean over every pixel, data range 1), independent of torchmetrics."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(3, 1, k, k).contiguous()
    p = (k - 1) // 2
    xp, yp = (F.pad(v.double(), (p,) * 4, mode="reflect") for v in (x, y))
    conv = lambda v: F.conv2d(v, w, groups=3)  # noqa: E731
    mx, my = conv(xp), conv(yp)
    sxx, syy, sxy = conv(xp * xp) - mx ** 2, conv(yp * yp) - my ** 2, conv(xp * yp) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean((1, 2, 3))


def test_ssim_is_one_for_itself_lower_for_degraded_copies_and_matches_the_formula():
    from dctnet_lite.tools.evaluate import ssim

    x = _photo(48, 40, 0)
    g = torch.Generator().manual_seed(0)
    mild = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    shifted = torch.roll(x, 3, dims=-1)
    assert float(ssim(x, x.clone())) == pytest.approx(1.0, abs=1e-6)
    values = [float(ssim(v, x)) for v in (mild, noisy, shifted)]
    assert 0.85 < values[0] < 0.99 and values[1] < values[0] - 0.3 and values[2] < 0.9
    batch = ssim(torch.cat([mild, noisy, shifted]), torch.cat([x, x, x]))
    assert batch.tolist() == pytest.approx(_reference_ssim(torch.cat([mild, noisy, shifted]),
                                                           torch.cat([x, x, x])).tolist(), abs=1e-4)
    assert batch.tolist() == pytest.approx(values, abs=1e-6)  # per image: batching changes nothing


def test_unknown_metric_is_refused():
    from dctnet_lite.tools.evaluate import compute_metrics

    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(_photo(), _photo(), ["fid"])


# ------------------------------------------------------------------------------ intervals
@pytest.mark.parametrize("method", ["bootstrap", "t"])
def test_interval_contains_mean_and_shrinks(method):
    from dctnet_lite.tools.evaluate import summarize

    rng = np.random.default_rng(0)
    data = rng.normal(0.3, 0.1, 400)
    widths = []
    for n in (10, 40, 400):
        s = summarize(data[:n], method=method)
        assert s["lo"] <= s["mean"] <= s["hi"] and s["n"] == n
        assert s["mean"] == pytest.approx(float(data[:n].mean()))
        widths.append(s["hi"] - s["lo"])
    assert widths[0] > widths[1] > widths[2] > 0
    assert summarize(data[:40], method=method) == summarize(data[:40], method=method)  # fixed seed


def test_interval_degenerate_cases():
    from dctnet_lite.tools.evaluate import _t_quantile_975, summarize

    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "lo": 0.5, "hi": 0.5, "n": 1}
    assert summarize([2.0, 2.0, 2.0], method="t")["hi"] == 2.0
    with pytest.raises(ValueError):
        summarize([])
    # t critical values (tables): df 1, 2, 5, 10, 30
    for df, t in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042)]:
        assert _t_quantile_975(df) == pytest.approx(t, abs=2e-3)


# ------------------------------------------------------------------------------ evaluate
@pytest.fixture
def tiny_setup(tmp_path):
    """Two random-init checkpoints (widths 8 and 16) and three generated 64 px photos."""
    from dctnet_lite import DCTNet, save_checkpoint

    paths = {}
    for w in (8, 16):
        torch.manual_seed(w)
        paths[w] = tmp_path / f"tiny-w{w}.safetensors"
        save_checkpoint(paths[w], DCTNet(w).eval(), provenance={"note": "test"})
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.fromarray(portrait_like(64, 48, i)).save(photos / rel)
    return paths, photos


def test_evaluate_teacher_reference_and_skips(tiny_setup):
    from dctnet_lite.tools.evaluate import evaluate

    paths, photos = tiny_setup
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        res = evaluate([str(paths[16]), str(paths[8]), str(paths[8].parent / "nope.safetensors")],
                       reference=str(paths[16]), images=str(photos), strengths=(1.0, 0.5),
                       sizes=(32,), metrics=CHEAP_METRICS, limit=2)
    assert res["n_images"] == 2 and res["image_names"] == ["a.png", "b.jpg"]
    assert [s["checkpoint"] for s in res["skipped"]] == [str(paths[8].parent / "nope.safetensors")]
    rows = {(r["checkpoint"], r["strength"]): r for r in res["results"]}
    assert len(rows) == 4
    # the teacher is scored against the renderer, the student against the teacher
    assert rows[("tiny-w16", 1.0)]["reference"] == "renderer" and rows[("tiny-w16", 1.0)]["is_reference"]
    assert rows[("tiny-w8", 1.0)]["reference"] == "tiny-w16"
    for r in res["results"]:
        assert r["size"] == 32 and r["n"] == 2 and r["width"] in (8, 16)
        for m in CHEAP_METRICS:
            s = r["metrics"][m]
            assert s["lo"] <= s["mean"] <= s["hi"] and len(s["per_image"]) == 2
    json.dumps(res, allow_nan=False)


def test_evaluate_folder_reference_and_strength_zero(tiny_setup, tmp_path):
    """Targets matched by relative name (any extension); at strength 0 the blend is the photo."""
    from dctnet_lite.tools.evaluate import evaluate

    paths, photos = tiny_setup
    targets = tmp_path / "targets"
    (targets / "sub").mkdir(parents=True)
    for i, rel in enumerate(["a.jpg", "b.png"]):  # sub/c has no target
        Image.fromarray(portrait_like(64, 48, 10 + i)).save(targets / rel)
    with pytest.warns(UserWarning, match="no target image"):
        res = evaluate([str(paths[8])], reference=str(targets), images=str(photos), strengths=(1.0,),
                       sizes=(32,), metrics=("psnr",))
    assert res["reference_kind"] == "folder" and res["missing_targets"] == ["sub/c.png"]
    assert res["results"][0]["n"] == 2


def test_evaluate_renderer_reference(tiny_setup):
    from dctnet_lite.tools.evaluate import evaluate

    from dctnet_lite.inference import Cartoonizer
    from dctnet_lite.render import render_toon
    from dctnet_lite.tools.evaluate import load_photo, ssim

    paths, photos = tiny_setup
    res = evaluate([str(paths[8])], reference="renderer", images=str(photos), strengths=(1.0, 0.5),
                   sizes=(40,), metrics=("ssim",), limit=1, interval_method="t")
    assert res["reference_kind"] == "renderer" and res["interval"]["method"] == "t"
    # the row is SSIM(model output, (1 - s) * photo + s * render_toon(photo)) on the resized photo
    photo = load_photo(photos / "a.png", 40)
    assert max(photo.shape[-2:]) == 40
    cz = Cartoonizer(str(paths[8]), device="cpu")
    toon = render_toon(photo)
    for row in res["results"]:
        s = row["strength"]
        want = float(ssim(cz.forward(photo, s).float(), ((1 - s) * photo + s * toon).clamp(0, 1)))
        assert row["metrics"]["ssim"]["per_image"] == pytest.approx([want], abs=1e-5)
        assert row["metrics"]["ssim"]["mean"] == pytest.approx(want, abs=1e-5)


def test_evaluate_without_any_checkpoint_fails(tiny_setup):
    from dctnet_lite.checkpoint import CheckpointError
    from dctnet_lite.tools.evaluate import evaluate

    _, photos = tiny_setup
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="none of the checkpoints"):
        evaluate(["/nonexistent/x.safetensors"], "renderer", str(photos), metrics=("psnr",))


# ------------------------------------------------------------------------------ bench
def test_bench_json_has_documented_keys(tiny_setup):
    from dctnet_lite.tools.bench import ANCHOR, ROW_KEYS, bench

    paths, _ = tiny_setup
    res = bench([str(paths[8]), 16], resolutions=(32,), batches=(1, 2), backends=("eager", "channels_last"),
                threads=1, warmup=1, repeats=2, cold_start=False)
    assert res["schema"] == "dctnet-lite-bench/1" and res["anchor"] == ANCHOR
    assert "NOT MEASURED" in res["anchor"]["label"]
    for key in ("platform", "cpu", "cpu_cores_logical", "torch", "gpu"):
        assert key in res["machine"]
    assert len(res["rows"]) == 2 * 2 * 2
    from dctnet_lite import ArchConfig, DCTNet
    from dctnet_lite.profile import count_macs, count_params

    for r in res["rows"]:
        assert "error" not in r, r
        assert set(ROW_KEYS) <= set(r)
        # the derived figures follow from the measured median and the architecture
        w = 8 if r["target"] == "tiny-w8" else 16
        assert r["macs"] == count_macs(ArchConfig.from_width(w), 32, 32, r["batch"]) and r["gmacs"] == r["macs"] / 1e9
        assert r["params"] == count_params(DCTNet(w))
        assert r["throughput_img_s"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"], rel=1e-9)
        assert r["tflops"] == pytest.approx(2 * r["macs"] / (r["median_ms"] / 1e3) / 1e12, rel=1e-9)
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and r["min_ms"] <= r["mean_ms"]
        assert (r["batch"], r["resolution"], r["threads"], r["repeats"], r["warmup"]) == (r["batch"], 32, 1, 2, 1)
        assert r["peak_mem_mb"] >= 0 and r["peak_mem_method"] in ("rss-hwm", "rss-sampled")
    assert {r["target"] for r in res["rows"]} == {"tiny-w8", "w16 (random init)"}
    b2 = [r for r in res["rows"] if r["batch"] == 2][0]
    b1 = [r for r in res["rows"] if r["batch"] == 1 and r["target"] == b2["target"]][0]
    assert b2["macs"] == 2 * b1["macs"]
    assert res["cold_start"] == []
    json.dumps(res, allow_nan=False)


def test_bench_interleaved_alternates_the_targets(tiny_setup, monkeypatch):
    """interleave=True: each target warmed up alone, then one timed call of each per round; the
    rows are those of the sequential run (same keys and order), each naming the interleaving."""
    from dctnet_lite.tools import bench as B

    paths, _ = tiny_setup
    calls = []
    real = B._make_callable

    def logged(cz, x, backend, dev):
        fn = real(cz, x, backend, dev)
        w = cz.model.config.base_width

        def call():
            calls.append((w, x.shape[-1]))
            return fn()
        return call

    monkeypatch.setattr(B, "_make_callable", logged)
    kw = dict(resolutions=(32, 48), threads=1, warmup=2, repeats=3, cold_start=False, peak=False)
    res = B.bench([str(paths[8]), 16, 8], interleave=True, **kw)
    seq = B.bench([str(paths[8]), 16, 8], **kw)
    assert res["settings"]["interleave"] is True and seq["settings"]["interleave"] is False
    key = lambda r: (r["target"], r["resolution"], r["precision"], r["backend"])  # noqa: E731
    assert [key(r) for r in res["rows"]] == [key(r) for r in seq["rows"]]
    for r in res["rows"]:
        assert "error" not in r and r["interleaved_with"] == 3 and set(B.ROW_KEYS) <= set(r)
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["peak_mem_mb"] >= 0
    assert all("interleaved_with" not in r for r in seq["rows"])
    at32 = [w for w, size in calls[:27] if size == 32]
    assert at32[:6] == [8, 8, 16, 16, 8, 8]       # warm-ups, one target after another
    assert at32[6:] == [8, 16, 8] * 3              # then the timed rounds, round-robin


def test_bench_cold_start_subprocess():
    """A width target is saved to a temporary checkpoint and started in a fresh process."""
    from dctnet_lite.tools.bench import COLD_KEYS, bench

    res = bench([8], resolutions=(32,), threads=1, warmup=1, repeats=1, cold_start=True)
    (c,) = res["cold_start"]
    assert "error" not in c, c
    assert set(COLD_KEYS) <= set(c) and c["resolution"] == 32 and c["device"] == "cpu"
    # the stages are consecutive intervals of one clock: they add up to at most the total, and
    # the model load measured around Cartoonizer(...) contains the load it reports itself
    parts = c["python_start_s"] + c["import_s"] + c["load_s"] + c["first_image_s"]
    assert parts == pytest.approx(c["total_s"], abs=1e-3)
    assert c["load_s"] >= c["load_seconds"] - 1e-3
    assert c["process_wall_s"] >= c["total_s"]  # the parent's wall clock also holds the exit


def test_bench_failures_are_rows_not_crashes():
    """On any host: cudagraphs on the CPU device fails as a row, and the next configuration still runs."""
    from dctnet_lite.tools.bench import bench

    res = bench([8], resolutions=(32,), backends=("cudagraphs", "eager"), device="cpu",
                warmup=1, repeats=1, cold_start=False)
    failed, ok = res["rows"]
    assert failed["backend"] == "cudagraphs" and "CUDA" in failed["error"] and "median_ms" not in failed
    assert ok["backend"] == "eager" and "error" not in ok and ok["min_ms"] <= ok["median_ms"]
    with pytest.raises(ValueError, match="backend"):
        bench([8], backends=("tensorrt",))


# ------------------------------------------------------------------------------ Pareto
def test_pareto_front_on_known_points():
    from dctnet_lite.tools.report import pareto_front

    # (latency, lpips): A fastest-worst, B dominated by C, C, D best-slowest, E dominated by D,
    # F equal to C (ties are both kept), G NaN
    pts = [(1, 0.5), (3, 0.4), (2, 0.3), (5, 0.1), (6, 0.1), (2, 0.3), (float("nan"), 0.0)]
    assert pareto_front(pts) == [True, False, True, True, False, True, False]
    # higher-is-better second coordinate (PSNR): the best value wins
    assert pareto_front([(1, 20.0), (2, 25.0), (3, 24.0)], minimize=(True, False)) == [True, True, False]
    assert pareto_front([]) == []


# ------------------------------------------------------------------------------ report
def test_report_from_tiny_recipe(tiny_setup, tmp_path):
    import yaml

    from dctnet_lite.tools.report import make_report

    paths, photos = tiny_setup
    extra = tmp_path / "gpu-bench.json"
    extra.write_text(json.dumps({
        "schema": "dctnet-lite-bench/1", "settings": {},
        "machine": {"cpu": "Elsewhere CPU", "gpu": "Some GPU", "cuda": "12.x"},
        "rows": [{"target": "tiny-w8", "arch": "width 8", "device": "cuda", "precision": "fp16",
                  "backend": "cudagraphs", "resolution": 1024, "batch": 1, "median_ms": 1.5, "p90_ms": 1.6,
                  "throughput_img_s": 666.0, "peak_mem_mb": 10.0, "gmacs": 5.0, "tflops": 6.7}]}))
    recipe = {
        "name": "tiny",
        "base_dir": str(tmp_path),
        "checkpoints": [paths[16].name, paths[8].name, "missing-w4.safetensors"],  # relative to base_dir
        "quality": {"reference": paths[16].name, "images": "photos", "strengths": [1.0, 0.5],
                    "sizes": [64], "metrics": list(ALL_METRICS)},
        "bench": {"resolutions": [64], "backends": ["eager"], "threads": 1, "warmup": 1, "repeats": 2,
                  "cold_start": False, "widths": [24]},
        "pareto": {"metric": "lpips_alex" if LPIPS_OK else "psnr", "strength": 1.0, "size": 64},
        "extra_bench": ["gpu-bench.json"],
    }
    path = tmp_path / "recipes" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(recipe))
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        out = make_report(path)
    assert out == path.parent / "reports" / "tiny"
    for f in ("report.json", "report.md", "pareto.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    assert Image.open(out / "pareto.png").format == "PNG"
    rep = json.loads((out / "report.json").read_text())
    assert rep["quality"]["n_images"] == 3
    assert len(rep["quality"]["results"]) == 2 * 2  # 2 checkpoints x 2 strengths x 1 size
    assert {r["target"] for r in rep["bench"]["rows"]} == {"tiny-w16", "tiny-w8", "w24 (random init)"}
    pts = {p["label"]: p for p in rep["pareto"]["points"]}
    # the random-init width has latency but no quality: not on the plot
    if LPIPS_OK:
        assert set(pts) == {"tiny-w16", "tiny-w8"}
        assert pts["tiny-w16"]["is_reference"] and pts["tiny-w16"]["value"] == 0.0
        # the reference (LPIPS 0) is always on the front; w8 is on it iff it is faster
        assert pts["tiny-w16"]["on_front"]
        assert pts["tiny-w8"]["on_front"] == (pts["tiny-w8"]["latency_ms"] < pts["tiny-w16"]["latency_ms"])
    else:  # PSNR of the reference with itself is not a point
        assert set(pts) == {"tiny-w8"} and pts["tiny-w8"]["on_front"]
    md = (out / "report.md").read_text()
    for needle in ("## Quality", "## Latency", "## Pareto front", "pareto.png", "NOT MEASURED",
                   "Some GPU", "imported from", "tiny-w8", "missing-w4"):
        assert needle in md, needle
    assert rep["quality"]["results"][0]["metrics"]["psnr"]["lo"] <= rep["quality"]["results"][0]["metrics"]["psnr"]["mean"]
    # nothing machine-specific: paths relative to base_dir (here tmp_path), no absolute path anywhere
    assert {r["path"] for r in rep["quality"]["results"]} == {paths[16].name, paths[8].name}
    assert {r["checkpoint"] for r in rep["bench"]["rows"]} == {paths[16].name, paths[8].name, None}
    assert rep["extra_bench"][0]["path"] == "gpu-bench.json" and rep["quality"]["images"] == "photos"
    assert rep["recipe_path"] == "recipes/tiny.yaml" or not os.path.isabs(rep["recipe_path"])
    assert_no_absolute_path(rep)
    assert str(tmp_path) not in (out / "report.json").read_text() + md


def test_report_overrides_and_pillow_plot(tiny_setup, tmp_path, no_matplotlib):
    """CLI-style overrides; without matplotlib the plot is drawn with Pillow."""
    from dctnet_lite.tools.report import make_report

    paths, photos = tiny_setup
    recipe = {"checkpoints": ["/dev/null/x.safetensors"],
              "quality": {"reference": "renderer", "images": "/nonexistent", "strengths": [1.0],
                          "sizes": [32], "metrics": ["psnr"]},
              "bench": {"resolutions": [32], "threads": 1, "warmup": 1, "repeats": 1, "cold_start": False},
              "pareto": {"metric": "psnr"}}
    out = make_report(recipe, tmp_path / "rep", name="over", checkpoints=[str(paths[8]), str(paths[16])],
                      images=str(photos), limit=1)
    rep = json.loads((out / "report.json").read_text())
    assert rep["name"] == "over" and rep["quality"]["n_images"] == 1
    assert rep["pareto"]["plot"] == "pillow" and len(rep["pareto"]["points"]) == 2
    assert Image.open(out / "pareto.png").size == (900, 600)


def test_pillow_plot_keeps_labels_inside(tmp_path):
    """The rightmost point's label (the reference's is the longest) is drawn left of it, not clipped."""
    import numpy as np

    from dctnet_lite.tools.report import _plot_pillow

    pts = [{"label": "toon-w32", "latency_ms": 140.0, "value": 0.11, "lo": 0.09, "hi": 0.13,
            "on_front": True, "is_reference": False},
           {"label": "toon-w64-with-a-long-name", "latency_ms": 504.0, "value": 0.0, "lo": 0.0, "hi": 0.0,
            "on_front": True, "is_reference": True}]
    pareto = {"metric": "lpips_alex", "strength": 1.0, "size": 512, "device": "cpu", "resolution": 512,
              "points": pts}
    _plot_pillow(pareto, tmp_path / "p.png")
    a = np.asarray(Image.open(tmp_path / "p.png").convert("L"))
    assert a.shape == (600, 900)
    assert a[:528, 872:].min() == 255, "something was drawn right of the plot frame"
    assert a[50:530, 600:868].min() < 128, "the reference's label is missing"

def test_recipe_validation(tmp_path):
    from dctnet_lite.tools.report import load_recipe

    with pytest.raises(ValueError, match="unknown recipe field"):
        load_recipe({"checkpoint": ["x"]})
    with pytest.raises(ValueError, match="unknown bench field"):
        load_recipe({"bench": {"resolution": [1]}})
    cfg, src = load_recipe({"bench": False})
    assert cfg["bench"] is False and cfg["name"] == "report" and src is None


def test_shipped_recipes_parse_and_the_cpu_overlay_sets_only_the_device():
    """(Names need not resolve here: the recipes are parsed, not run.)"""
    from pathlib import Path

    from dctnet_lite.tools.report import load_recipe

    ev = Path(__file__).resolve().parents[1] / "eval"
    base, src = load_recipe(ev / "quality_vs_latency.yaml")
    assert base["quality"]["reference"] == "renderer" and base["quality"]["split"] == "val"
    assert base["quality"]["images"] == "../shared/data/portraits/train"
    assert base["base_dir_resolved"] == str(ev.parent)  # base_dir ".." is relative to the recipe file
    assert base["bench"]["resolutions"] == [512, 1024] and base["bench"]["device"] == "auto"
    cpu, _ = load_recipe([ev / "quality_vs_latency.yaml", ev / "quality_vs_latency_cpu.yaml"])
    assert cpu["bench"]["threads"] == 2 and cpu["bench"]["device"] == cpu["quality"]["device"] == "cpu"
    for section in ("quality", "bench"):
        differ = {k for k in base[section] if base[section][k] != cpu[section][k]}
        assert differ == ({"device"} if section == "quality" else {"device", "threads"})
    assert {k: v for k, v in base.items() if k not in ("quality", "bench")} == \
        {k: v for k, v in cpu.items() if k not in ("quality", "bench")}
    for name in ("teacher_card", "w48_card", "official_teacher_card", "official_c24_card"):
        card, _ = load_recipe(ev / f"{name}.yaml")
        assert card["bench"] is False and card["pareto"] is False and card["name"] == name
    for f in list(ev.glob("*.yaml")) + list(ev.glob("reports/**/*.json")) + list(ev.glob("reports/**/*.md")):
        assert not MACHINE_PATH.search(f.read_text()), f


# ------------------------------------------------------------------------------ CLI
def test_cli_bench_json(tiny_setup, capsys, tmp_path):
    from dctnet_lite.cli import main

    paths, _ = tiny_setup
    out = tmp_path / "b.json"
    rc = main(["bench", "--checkpoint", str(paths[8]), "--width", "16", "--resolutions", "32",
               "--repeats", "1", "--warmup", "1", "--threads", "1", "--no-cold-start", "--json",
               "--output", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert len(printed["rows"]) == 2 and written == printed
    assert [r["arch"] for r in written["rows"]] == ["width 8", "width 16"]
    ckpt = written["rows"][0]["checkpoint"]  # stored portably, never this machine's absolute path
    assert ckpt.endswith(paths[8].name) and not Path(ckpt).is_absolute()
    assert written["rows"][1]["checkpoint"] is None


def test_cli_eval(tiny_setup, tmp_path, capsys):
    import yaml

    from dctnet_lite.cli import main

    paths, photos = tiny_setup
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "checkpoints": [str(paths[8])],
        "quality": {"reference": "renderer", "images": str(photos), "strengths": [1.0], "sizes": [32],
                    "metrics": ["psnr"]},
        "bench": {"resolutions": [32], "threads": 1, "warmup": 1, "repeats": 1, "cold_start": False},
        "pareto": {"metric": "psnr"}}))
    rc = main(["eval", "--config", str(recipe), "--name", "cli", "--limit", "1"])
    assert rc == 0
    assert (tmp_path / "reports" / "cli" / "report.md").is_file()
    assert "report.md" in capsys.readouterr().out
    assert main(["eval", "--config", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert "recipe not found" in err and len(err.splitlines()) == 1
    # an overlay and key overrides; --recipe still works, with a one-line deprecation warning
    over = tmp_path / "over.yaml"
    over.write_text("name: over\nquality:\n  metrics: [ssim]\nbench: false\n")
    rc = main(["eval", "--recipe", str(recipe), "--config", str(over), "--quality.limit", "2",
               "--out", str(tmp_path / "o")])
    cap = capsys.readouterr()
    assert rc == 0 and len([ln for ln in cap.err.splitlines() if "deprecated" in ln]) == 1
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["name"] == "over" and rep["bench"] is None and rep["quality"]["n_images"] == 2
    assert rep["quality"]["metrics"] == ["ssim"] and rep["quality"]["strengths"] == [1.0]
    assert [os.path.basename(f) for f in rep["config_files"]] == ["r.yaml", "over.yaml"]
    assert_no_absolute_path(rep)
    # --print_config: the merged recipe
    assert main(["eval", "--config", str(recipe), "--config", str(over), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "over" and printed["bench"] is False and printed["quality"]["sizes"] == [32]
    # bad input: one line, exit 2
    for argv, needle in ((["--bench.repeats", "many"], "invalid value many for bench.repeats"),
                         (["--qualty.limit", "1"], "qualty")):
        assert main(["eval", "--config", str(recipe), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err

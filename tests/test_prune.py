"""Structured pruning (dctnet_lite.tools.prune): tiny parents (width 16/24) at 32 px, generated images."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import MACHINE_PATH

pytest.importorskip("torch_pruning")

from dctnet_lite import ArchConfig, DCTNet, load, read_info, save_checkpoint  # noqa: E402
from dctnet_lite.cli import main as cli_main  # noqa: E402
from dctnet_lite.profile import count_macs  # noqa: E402
from dctnet_lite.tools.prune import (CRITERIA, channel_table, conv_macs, output_drift,  # noqa: E402
                                     parse_macs_budget, parse_recipe, prune, prune_main)

REPO = Path(__file__).resolve().parents[1]

SIZE = 32  # calibration crop side


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parent16():
    torch.manual_seed(0)
    return DCTNet(16).eval()


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 40), (36, 36)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"face{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def ckpt16(tmp_path_factory, parent16):
    path = tmp_path_factory.mktemp("ckpt") / "parent-w16.safetensors"
    save_checkpoint(path, parent16, provenance={"note": "random init"})
    return path


def _x(n=2, size=SIZE):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------- uniform targets
@pytest.mark.parametrize("parent_width, width", [(16, 8), (24, 16)])
def test_uniform_width_loads_strictly_into_width_arch(parent_width, width):
    torch.manual_seed(0)
    parent = DCTNet(parent_width).eval()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    r = prune(parent, width=width)
    assert r.config == ArchConfig.from_width(width) and r.config.is_uniform
    fresh = DCTNet(ArchConfig.from_width(width)).eval()
    fresh.load_state_dict(r.model.state_dict(), strict=True)
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x, 1.0), r.model(x, 1.0))
        assert torch.equal(fresh(x, 0.3), r.model(x, 0.3))
    assert r.report["rebuild_max_abs_diff"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())  # parent untouched


def test_ratio_uniform(parent16):
    r = prune(parent16, ratio=0.5)
    assert r.config == ArchConfig.from_width(8)
    assert r.report["provenance"]["target"] == {"ratio": 0.5}


def test_pruned_conv_keeps_parent_rows_in_order(parent16):
    r = prune(parent16, width=8, criterion="l1")
    # the stem's out channels are coupled to others, but the pruned conv must hold parent rows
    w_new = r.model.content.stem[0].weight
    w_old = parent16.content.stem[0].weight
    rows = [int(torch.nonzero((w_old == w_new[i]).flatten(1).all(1))[0]) for i in range(len(w_new))]
    assert len(set(rows)) == 8 and rows == sorted(rows)


# --------------------------------------------------------------------------------- global / budget
def test_macs_budget_global_is_nonuniform_and_roundtrips(parent16, tmp_path):
    r = prune(parent16, macs_budget=0.6)
    assert not r.config.is_uniform
    t = r.config.widths
    assert all(v % 8 == 0 and v >= 8 for v in t.values())
    assert t != ArchConfig.from_width(t["scale1"]).widths
    m = r.metrics
    assert m["macs_512_after"] <= 0.6 * m["macs_512_before"]
    assert m["macs_512_after"] == count_macs(r.config, 512)
    assert r.report["provenance"]["global_pruning"] is True
    assert r.report["steps"] > 1
    # head untouched, inputs untouched
    assert r.model.head.out_channels == 3
    assert r.model.content.stem[0].in_channels == 3 and r.model.texture.stem[0].in_channels == 3
    assert r.model.decoder[-1].merge[0].in_channels == t["up0"] + 3
    # round trip through a checkpoint
    path = tmp_path / "pruned.safetensors"
    r.save(path)
    back = load(path)
    assert back.config == r.config
    x = _x()
    with torch.no_grad():
        assert torch.equal(back(x, 1.0), r.model(x, 1.0))
    info = read_info(path)
    assert info.provenance["target"]["macs_budget_fraction"] == pytest.approx(0.6)
    assert info.metrics["macs_512_after"] == m["macs_512_after"]


def test_global_ratio_is_nonuniform(parent16):
    r = prune(parent16, ratio=0.3, global_pruning=True)
    assert not r.config.is_uniform
    assert r.model.head.out_channels == 3


def test_conv_macs_proxy_matches_profile(parent16):
    assert conv_macs(parent16, 32) * (512 // 32) ** 2 == count_macs(parent16.config, 512)


def test_parse_macs_budget():
    parent = 10_000_000_000
    assert parse_macs_budget(0.5, parent) == (0.5, 5_000_000_000)
    assert parse_macs_budget("50%", parent) == (0.5, 5_000_000_000)
    assert parse_macs_budget("0.25", parent)[0] == pytest.approx(0.25)
    assert parse_macs_budget("4G", parent) == (0.4, 4_000_000_000)
    assert parse_macs_budget("4 GMACs", parent)[1] == 4_000_000_000
    assert parse_macs_budget(2, parent) == (0.2, 2_000_000_000)
    for bad in (0, 0.0, -0.5, "0%", "100%", "150%", "10G", "12G", 20, "abc", None, True):
        with pytest.raises(ValueError):
            parse_macs_budget(bad, parent)


# --------------------------------------------------------------------------------- criteria
@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_runs_with_drift(parent16, calib, criterion):
    r = prune(parent16, width=8, criterion=criterion, calibration=calib, calib_images=2, calib_size=SIZE)
    assert r.config == ArchConfig.from_width(8)
    m = r.metrics
    assert m["drift_images"] == 2 and m["drift_size"] == SIZE and m["drift_strength"] == 1.0
    assert 0.0 < m["drift_l1"] < 1.0
    if m.get("drift_lpips_alex") is not None:  # None only where LPIPS weights are unavailable offline
        assert 0.0 < m["drift_lpips_alex"] < 1.0  # a pruned network's output moves
    p = r.provenance
    assert p["criterion"] == criterion and p["calibration_count"] == 2
    # an absolute folder outside the current directory: its last two components, never the absolute path
    assert p["calibration"] == f"{calib.parent.name}/{calib.name}"
    files = r.report["calibration_files"]
    assert len(files) == 2 and set(files) <= {"face0.png", "face1.png", "face2.png"}  # relative to the folder


def test_drift_is_zero_for_identical_outputs_and_grows_with_the_prune(calib):
    torch.manual_seed(0)
    parent = DCTNet(24).eval()
    x = _x(3)
    with torch.no_grad():
        out = parent(x, 1.0)
    same = output_drift(out, out.clone())
    assert same["drift_l1"] == 0.0 and same["drift_l1_max"] == 0.0
    if same.get("drift_lpips_alex") is not None:
        assert same["drift_lpips_alex"] == pytest.approx(0.0, abs=1e-6)
    common = dict(criterion="l1", calibration=calib, calib_images=3, calib_size=SIZE)
    mild, hard = prune(parent, width=16, **common).metrics, prune(parent, width=8, **common).metrics
    assert 0.0 < mild["drift_l1"] < hard["drift_l1"]
    if mild.get("drift_lpips_alex") is not None:
        assert 0.0 < mild["drift_lpips_alex"] < hard["drift_lpips_alex"]


def test_criteria_choose_differently(parent16, calib):
    kept = {}
    for c in ("l1", "random", "fpgm"):
        r = prune(parent16, width=8, criterion=c, calibration=calib, calib_images=2, calib_size=SIZE, drift=False)
        kept[c] = r.model.content.stages[2][0].weight
    assert not torch.equal(kept["l1"], kept["random"])


# --------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("kwargs", [dict(width=8, criterion="random"),
                                    dict(width=8, criterion="taylor", drift=False)])
def test_deterministic(parent16, calib, kwargs):
    common = dict(calibration=calib, calib_images=2, calib_size=SIZE)
    a = prune(parent16, seed=3, **common, **kwargs)
    b = prune(parent16, seed=3, **common, **kwargs)
    assert _same_weights(a.model, b.model)
    if kwargs["criterion"] == "random":
        c = prune(parent16, seed=4, **common, **kwargs)
        assert not _same_weights(a.model, c.model)


def test_deterministic_global(parent16):
    a = prune(parent16, macs_budget=0.7, criterion="random", seed=1)
    b = prune(parent16, macs_budget=0.7, criterion="random", seed=1)
    assert a.config == b.config and _same_weights(a.model, b.model)


# --------------------------------------------------------------------------------- invalid targets
@pytest.mark.parametrize("kwargs, match", [
    (dict(width=12), "positive multiple of 8"),
    (dict(width=0), "positive multiple of 8"),
    (dict(width=-8), "positive multiple of 8"),
    (dict(width=16), "smaller than the parent's width 16"),
    (dict(width=32), "smaller than the parent's width 16"),
    (dict(ratio=0.0), "strictly between 0 and 1"),
    (dict(ratio=1.0), "strictly between 0 and 1"),
    (dict(ratio=1.5), "strictly between 0 and 1"),
    (dict(ratio=0.9), "fewer than 8 channels"),
    (dict(macs_budget=0.0), "strictly between 0 and 1"),
    (dict(macs_budget="100%"), "strictly between 0 and 1"),
    (dict(macs_budget="100G"), r"GMACs at 512 px must lie in \(0, 5\.350\)"),
    (dict(macs_budget=0.1), "below the smallest reachable"),
    (dict(macs_budget="lots"), "cannot read macs_budget"),
    (dict(width=8, ratio=0.5), "exactly one"),
    (dict(), "exactly one"),
    (dict(width=8, criterion="magic"), "unknown criterion 'magic'"),
    (dict(width=8, criterion="taylor"), "calibration folder"),
    (dict(width=8, drift=True), "calibration folder"),
    (dict(width=8, global_pruning=True), "uniform"),
    (dict(width=8, round_to=12), "multiple of 8"),
])
def test_invalid_targets_raise(parent16, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(parent16, **kwargs)


def test_bad_calibration_folders(parent16, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        prune(parent16, width=8, criterion="taylor", calibration=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        prune(parent16, width=8, calibration=tmp_path / "empty")  # drift asked for by giving a folder


# --------------------------------------------------------------------------------- metadata, recipes, CLI
def test_metadata_provenance_and_figures(ckpt16, calib, tmp_path):
    out = tmp_path / "w8.safetensors"
    r = prune_main({"checkpoint": str(ckpt16), "width": 8, "calibration": str(calib), "calib_images": 3,
                    "calib_size": SIZE, "output": str(out)})
    info = read_info(out)
    p, m = info.provenance, info.metrics
    assert p["parent_checkpoint"] == f"{ckpt16.parent.name}/{ckpt16.name}"  # outside the current directory
    assert p["parent_sha256"] == hashlib.sha256(ckpt16.read_bytes()).hexdigest()
    assert p["criterion"] == "l1" and p["target"]["width"] == 8 and p["seed"] == 0
    assert p["calibration"] == f"{calib.parent.name}/{calib.name}" and p["calibration_count"] == 3
    assert p["torch_pruning"]
    for res in (512, 1024):
        assert m[f"macs_{res}_before"] == count_macs(ArchConfig.from_width(16), res)
        assert m[f"macs_{res}_after"] == count_macs(ArchConfig.from_width(8), res)
    assert m["params_after"] < m["params_before"]
    assert "drift_l1" in m and "drift_lpips_alex" in m
    assert info.arch == ArchConfig.from_width(8)
    assert r.report["output"] == str(out)
    x = _x()
    with torch.no_grad():
        assert torch.equal(load(out)(x, 1.0), r.model(x, 1.0))


def test_cli_prune_json_and_config_override(ckpt16, tmp_path, capsys):
    recipe = tmp_path / "w8.yaml"
    recipe.write_text(f"checkpoint: {ckpt16}\nwidth: 8\ncriterion: l2\noutput: {tmp_path / 'a.safetensors'}\n")
    assert cli_main(["prune", "--config", str(recipe), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["description"] == "width 8" and rep["provenance"]["criterion"] == "l2"
    assert (tmp_path / "a.safetensors").is_file()
    # flags override the recipe: a different target replaces the recipe's width
    out = tmp_path / "b.safetensors"
    assert cli_main(["prune", "--config", str(recipe), "--macs-budget", "70%", "--criterion", "l1",
                     "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "non-uniform" in text and str(out) in text
    info = read_info(out)
    assert info.provenance["criterion"] == "l1" and not info.arch.is_uniform


def test_cli_recipe_is_a_deprecated_alias(ckpt16, tmp_path, capsys):
    recipe = tmp_path / "w8.yaml"
    recipe.write_text(f"checkpoint: {ckpt16}\nwidth: 8\n")
    assert cli_main(["prune", "--recipe", str(recipe), "--json"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["description"] == "width 8"
    warning = [line for line in cap.err.splitlines() if "deprecated" in line]
    assert len(warning) == 1 and "--config" in warning[0]


def test_overlays_width_flag_and_output_template(ckpt16, calib, tmp_path, capsys):
    """Later configs overlay earlier ones; the last source naming a target decides it; output is a template."""
    base = tmp_path / "base.yaml"
    base.write_text(f"checkpoint: {ckpt16}\nwidth: 8\ncriterion: l2\ncalibration: {calib}\ncalib_size: {SIZE}\n"
                    f"output: {tmp_path}/pruned-w{{width}}-{{criterion}}.safetensors\n")
    over = tmp_path / "over.yaml"
    over.write_text("macs_budget: 0.7\ncriterion: l1\noutput: null\n")
    opts = parse_recipe(["--config", str(base), "--config", str(over)])
    assert opts["width"] is None and opts["macs_budget"] == 0.7 and opts["criterion"] == "l1"
    assert opts["calibration"] == str(calib) and opts["output"] is None
    # a flag after the overlay names a target again: the overlay's budget goes
    opts = parse_recipe(["--config", str(base), "--config", str(over), "--ratio", "0.5"])
    assert (opts["width"], opts["ratio"], opts["macs_budget"]) == (None, 0.5, None)
    # a flag that is not a target leaves the recipe's target alone
    assert parse_recipe(["--config", str(base), "--seed", "3"])["width"] == 8
    # --print_config prints the merged recipe, after the target rule
    assert cli_main(["prune", "--config", str(base), "--ratio", "0.5", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ratio"] == 0.5 and printed["width"] is None and printed["criterion"] == "l2"
    # the width flag fills the output template
    assert cli_main(["prune", "--config", str(base), "--width", "8", "--no_drift"]) == 0
    assert (tmp_path / "pruned-w8-l2.safetensors").is_file()
    # the same from Python: a list of recipes, then overrides
    r = prune_main([str(base), {"criterion": "random"}], drift=False, seed=1)
    assert r.provenance["criterion"] == "random" and r.provenance["seed"] == 1
    assert (tmp_path / "pruned-w8-random.safetensors").is_file()


def test_shipped_recipes_parse():
    """prune/uniform.yaml serves every width; macs50_global.yaml is an overlay of it (names need not resolve)."""
    uniform = str(REPO / "prune" / "uniform.yaml")
    opts = parse_recipe(["--config", uniform])
    assert opts["width"] == 48 and opts["criterion"] == "taylor" and opts["checkpoint"] == "dctnet_w64.toon"
    assert opts["calibration"] == "../shared/data/portraits/train"
    from dctnet_lite.tools.prune import output_path
    assert output_path(opts["output"], opts) == "runs/pruned-w48.safetensors"
    w32 = parse_recipe(["--config", uniform, "--width", "32"])
    assert output_path(w32["output"], w32) == "runs/pruned-w32.safetensors"
    g = parse_recipe(["--config", uniform, "--config", str(REPO / "prune" / "macs50_global.yaml")])
    assert (g["width"], g["macs_budget"], g["global_pruning"], g["criterion"]) == (None, 0.5, True, "l1")
    assert g["calibration"] == opts["calibration"] and g["output"] == "runs/pruned-macs50.safetensors"
    for name in os.listdir(REPO / "prune"):  # no machine-specific path in any recipe or stored report
        assert not MACHINE_PATH.search((REPO / "prune" / name).read_text()), name


def test_provenance_holds_no_absolute_path(tmp_path, monkeypatch, calib):
    """Inside the current directory paths are stored relative to it; the report has no absolute path."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    (tmp_path / "ck").mkdir()
    parent = tmp_path / "ck" / "p16.safetensors"
    save_checkpoint(parent, DCTNet(16).eval())
    photos = tmp_path / "photos" / "train"
    photos.mkdir(parents=True)
    for f in sorted(calib.glob("*.png")):
        (photos / f.name).write_bytes(f.read_bytes())
    r = prune_main({"checkpoint": str(parent), "width": 8, "calibration": str(photos), "calib_images": 2,
                    "calib_size": SIZE, "output": str(tmp_path / "out.safetensors")})
    p = r.provenance
    assert p["parent_checkpoint"] == "ck/p16.safetensors" and p["calibration"] == "photos/train"
    stored = read_info(tmp_path / "out.safetensors").provenance
    assert stored["parent_checkpoint"] == "ck/p16.safetensors"
    # a relative folder is kept as given
    r2 = prune(str(parent), width=8, calibration="photos/train", calib_images=2, calib_size=SIZE)
    assert r2.provenance["calibration"] == "photos/train"
    text = json.dumps({k: v for k, v in r.report.items() if k != "output"}) + json.dumps(stored)
    assert str(tmp_path) not in text
    strings = []

    def walk(v):
        if isinstance(v, dict):
            [walk(x) for x in v.values()]
        elif isinstance(v, list):
            [walk(x) for x in v]
        elif isinstance(v, str):
            strings.append(v)
    walk(r.report["provenance"])
    walk(r.report["calibration_files"])
    assert strings and not any(os.path.isabs(s) for s in strings)


def test_cli_invalid_width_is_one_clear_line(ckpt16, capsys):
    assert cli_main(["prune", "--checkpoint", str(ckpt16), "--width", "20"]) == 1
    err = capsys.readouterr().err
    assert "positive multiple of 8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, rc, needle", [
    (["--width", "12.5"], 2, "invalid value 12.5 for width"),
    (["--widht", "8"], 2, "unrecognized arguments"),
    (["--config", "missing-recipe.yaml"], 1, "recipe not found: missing-recipe.yaml"),
])
def test_cli_bad_input_is_one_line(ckpt16, capsys, argv, rc, needle):
    assert cli_main(["prune", "--checkpoint", str(ckpt16), *argv]) == rc
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_unknown_recipe_key(ckpt16, tmp_path):
    with pytest.raises(ValueError, match="unknown pruning option"):
        prune_main({"checkpoint": str(ckpt16), "width": 8, "widht": 4})
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoint: x\nwidht: 4\n")
    with pytest.raises(ValueError, match=r"unknown pruning option\(s\) \['widht'\] in .*bad.yaml"):
        prune_main(bad)


def test_channel_table_reads_modules(parent16):
    assert channel_table(parent16) == ArchConfig.from_width(16).widths


def test_import_does_not_pull_torch_pruning():
    code = ("import sys, dctnet_lite, dctnet_lite.tools.prune, dctnet_lite.cli; "
            "sys.exit('torch_pruning' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

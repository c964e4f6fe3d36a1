"""Structured pruning (dctnet_lite.tools.prune): tiny parents (width 16/24) at 32 px, generated images."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torch_pruning")

from dctnet_lite import ArchConfig, DCTNet, load, read_info, save_checkpoint  # noqa: E402
from dctnet_lite.cli import main as cli_main  # noqa: E402
from dctnet_lite.profile import count_macs  # noqa: E402
from dctnet_lite.tools.prune import (CRITERIA, channel_table, conv_macs, parse_macs_budget, prune,  # noqa: E402
                               prune_main)

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
        assert m["drift_lpips_alex"] >= 0.0
    p = r.provenance
    assert p["criterion"] == criterion and p["calibration_count"] == 2
    assert p["calibration"] == str(calib)
    assert len(r.report["calibration_files"]) == 2


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
    assert p["parent_checkpoint"] == str(ckpt16)
    assert p["parent_sha256"] == hashlib.sha256(ckpt16.read_bytes()).hexdigest()
    assert p["criterion"] == "l1" and p["target"]["width"] == 8 and p["seed"] == 0
    assert p["calibration"] == str(calib) and p["calibration_count"] == 3
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


def test_cli_prune_json_and_recipe_override(ckpt16, tmp_path, capsys):
    recipe = tmp_path / "w8.yaml"
    recipe.write_text(f"checkpoint: {ckpt16}\nwidth: 8\ncriterion: l2\noutput: {tmp_path / 'a.safetensors'}\n")
    assert cli_main(["prune", "--recipe", str(recipe), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["description"] == "width 8" and rep["provenance"]["criterion"] == "l2"
    assert (tmp_path / "a.safetensors").is_file()
    # flags override the recipe: a different target replaces the recipe's width
    out = tmp_path / "b.safetensors"
    assert cli_main(["prune", "--recipe", str(recipe), "--macs-budget", "70%", "--criterion", "l1",
                     "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "non-uniform" in text and str(out) in text
    info = read_info(out)
    assert info.provenance["criterion"] == "l1" and not info.arch.is_uniform


def test_cli_invalid_width_is_one_clear_line(ckpt16, capsys):
    assert cli_main(["prune", "--checkpoint", str(ckpt16), "--width", "20"]) == 1
    err = capsys.readouterr().err
    assert "positive multiple of 8" in err and "Traceback" not in err


def test_unknown_recipe_key(ckpt16):
    with pytest.raises(ValueError, match="unknown pruning option"):
        prune_main({"checkpoint": str(ckpt16), "width": 8, "widht": 4})


def test_channel_table_reads_modules(parent16):
    assert channel_table(parent16) == ArchConfig.from_width(16).widths


def test_import_does_not_pull_torch_pruning():
    code = ("import sys, dctnet_lite, dctnet_lite.tools.prune, dctnet_lite.cli; "
            "sys.exit('torch_pruning' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

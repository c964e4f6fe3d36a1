"""Structured pruning of the official family (dctnet_lite.tools.prune on an OfficialGenerator):
a random c16 n2 parent, 32-64 px inputs, generated calibration images."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("torch_pruning")

from dctnet_lite import load, read_info, save_checkpoint  # noqa: E402
from dctnet_lite.cli import main as cli_main  # noqa: E402
from dctnet_lite.official import (OfficialConfig, OfficialGenerator, channel_groups,  # noqa: E402
                                  widths_from_channels)
from dctnet_lite.profile import count_macs  # noqa: E402
from dctnet_lite.tools.prune import (CRITERIA, channel_table, official_dependency_groups,  # noqa: E402
                                     parse_recipe, prune, prune_main)

REPO = Path(__file__).resolve().parents[1]
N = 2          # residual blocks of the parent
SIZE = 32      # calibration crop / test input side (a multiple of 4)

pytestmark = pytest.mark.usefixtures("one_thread")

#: every conv side that carries each group: the architecture's skips (x0, x1, res) couple producers
SIDES = {
    "x0": ["conv_in.out", "dec1b.out", "enc1a.in", "dec0.in"],
    "down1": ["enc1a.out", "enc1b.in"],
    "x1": ["enc1b.out", "dec2.out", "enc2a.in", "dec1a.in"],
    "down2": ["enc2a.out", "enc2b.in"],
    "res": ["enc2b.out", "dec2.in"] + [f"blocks.{i}.conv{j}.{s}" for i in range(N) for j, s in ((2, "out"), (1, "in"))],
    **{f"block{i}": [f"blocks.{i}.conv1.out", f"blocks.{i}.conv2.in"] for i in range(N)},
    "dec1": ["dec1a.out", "dec1b.in"],
    "dec0": ["dec0.out", "conv_out.in"],
}


def _parent(c=16, n=N, seed=0):
    torch.manual_seed(seed)
    return OfficialGenerator(OfficialConfig(channels=c, num_blocks=n)).eval()


@pytest.fixture(scope="module")
def parent():
    return _parent()


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (48, 40)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(d / f"p{i}.png")
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, parent):
    path = tmp_path_factory.mktemp("ckpt") / "official-c16n2.safetensors"
    save_checkpoint(path, parent, provenance={"note": "random init"})
    return path


def _x(n=2, size=SIZE):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _sizes(model, side):
    """{conv.side: channels} from the weight shapes themselves (independent of the tool's reader)."""
    mods = dict(model.named_modules())
    name, which = side.rsplit(".", 1)
    w = mods[name].weight
    return int(w.shape[0] if which == "out" else w.shape[1])


def _check_coupled(model, table):
    for group, sides in SIDES.items():
        assert {s: _sizes(model, s) for s in sides} == {s: table[group] for s in sides}, group
    assert model.conv_in.weight.shape[1] == 3 and model.conv_out.weight.shape[0] == 3


# --------------------------------------------------------------------------------- the graph's groups
def test_dependency_graph_groups_are_the_family_groups(parent):
    groups = official_dependency_groups(parent)
    assert list(groups) == list(channel_groups(N))
    assert {g: sorted(v) for g, v in groups.items()} == {g: sorted(v) for g, v in SIDES.items()}


# --------------------------------------------------------------------------------- uniform
def test_uniform_c8_exact_table_and_strict_load(parent):
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    r = prune(parent, width=8)
    assert isinstance(r.model, OfficialGenerator)
    assert r.config == OfficialConfig(channels=8, num_blocks=N) and r.config.is_uniform
    assert r.config.channels == 8 and r.config.table is None  # collapsed to c
    assert channel_table(r.model) == widths_from_channels(8, N)
    _check_coupled(r.model, widths_from_channels(8, N))
    fresh = OfficialGenerator(OfficialConfig.from_table(widths_from_channels(8, N), N)).eval()
    fresh.load_state_dict(r.model.state_dict(), strict=True)
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x, 1.0), r.model(x, 1.0))
        assert torch.equal(fresh(x, 0.4), r.model(x, 0.4))
    assert r.report["rebuild_max_abs_diff"] == 0.0
    assert r.report["family"] == "official" and r.report["description"] == "official c8 n2"
    assert r.report["channels_before"] == widths_from_channels(16, N)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())  # parent untouched
    # a ratio of one half is the same architecture
    assert prune(parent, ratio=0.5).config == r.config


# --------------------------------------------------------------------------------- non-uniform
def test_macs_budget_is_nonuniform_coupled_and_roundtrips(parent, tmp_path):
    r = prune(parent, macs_budget=0.6)
    t = r.config.widths
    assert not r.config.is_uniform and r.config.table == t
    assert all(v % 8 == 0 and 8 <= v <= widths_from_channels(16, N)[k] for k, v in t.items())
    assert t != widths_from_channels(t["x0"], N)
    _check_coupled(r.model, t)  # x0 / x1 / res: every producer of a skip pruned alike
    m = r.metrics
    assert m["macs_512_after"] <= 0.6 * m["macs_512_before"] < m["macs_512_before"]
    # hooks count the convolutions: the same differences as torch's counter (whose extra guided
    # filter box filters do not depend on the widths)
    before_cfg = OfficialConfig(channels=16, num_blocks=N)
    assert m["macs_512_before"] - m["macs_512_after"] == count_macs(before_cfg, 512) - count_macs(r.config, 512)
    assert m["macs_1024_after"] == 4 * m["macs_512_after"]
    assert r.report["provenance"]["global_pruning"] is True and r.report["steps"] > 1
    fresh = OfficialGenerator(OfficialConfig.from_table(t, N)).eval()
    fresh.load_state_dict(r.model.state_dict(), strict=True)
    path = tmp_path / "pruned.safetensors"
    r.save(path)
    back = load(path)
    assert isinstance(back, OfficialGenerator) and back.config == r.config
    x = _x(1, 36)  # not a multiple of 4: the generator pads; runs on any size
    with torch.no_grad():
        y = back(x, 1.0)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert torch.equal(y, r.model(x, 1.0))
    info = read_info(path)
    assert info.family == "official" and info.provenance["target"]["macs_budget_fraction"] == pytest.approx(0.6)


# --------------------------------------------------------------------------------- the criterion
def _plant(model, keep, factor=10.0):
    """Scale the weights (and biases) of channels ``keep[group]`` in every conv side of the group."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for group, sides in SIDES.items():
            idx = torch.tensor(keep[group])
            for s in sides:
                name, which = s.rsplit(".", 1)
                conv = mods[name]
                if which == "out":
                    conv.weight[idx] *= factor
                    conv.bias[idx] *= factor
                else:
                    conv.weight[:, idx] *= factor


def _kept(pruned, parent, conv):
    """Parent indices of the output channels a pruned conv kept (by the bias values, only sliced)."""
    new, old = dict(pruned.named_modules())[conv].bias, dict(parent.named_modules())[conv].bias
    return [int(torch.nonzero(old == v)[0]) for v in new]


def test_l1_keeps_the_largest_channels_and_equals_the_zeroed_parent():
    parent = _parent()
    full, small = widths_from_channels(16, N), widths_from_channels(8, N)
    rng = np.random.default_rng(0)
    keep = {g: sorted(rng.choice(full[g], small[g], replace=False).tolist()) for g in SIDES}
    _plant(parent, keep)
    r = prune(parent, width=8, criterion="l1")
    producers = {g: [s[:-4] for s in sides if s.endswith(".out")] for g, sides in SIDES.items()}
    producers["dec0"] = ["dec0"]
    for g, convs in producers.items():
        for conv in convs:  # every producer of a coupled group kept the same channels, in order
            assert _kept(r.model, parent, conv) == keep[g], (g, conv)
    # zeroing the parent's inputs from the removed channels gives the pruned function
    zeroed = copy.deepcopy(parent)
    mods = dict(zeroed.named_modules())
    with torch.no_grad():
        for g, sides in SIDES.items():
            drop = torch.tensor([i for i in range(full[g]) if i not in keep[g]])
            for s in sides:
                if s.endswith(".in"):
                    mods[s[:-3]].weight[:, drop] = 0.0
    x = _x(2, 64)
    with torch.no_grad():
        want, got, orig = zeroed.cartoon(x), r.model.cartoon(x), parent.cartoon(x)
    assert (want - orig).abs().max() > 1e-3  # the removed channels did matter to the parent
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_with_drift(parent, calib, criterion):
    r = prune(parent, width=8, criterion=criterion, calibration=calib, calib_images=2, calib_size=SIZE)
    assert r.config == OfficialConfig(channels=8, num_blocks=N)
    m = r.metrics
    assert m["drift_images"] == 2 and m["drift_size"] == SIZE and 0.0 < m["drift_l1"] < 1.0
    assert r.provenance["criterion"] == criterion


def test_taylor_is_deterministic_and_differs_from_l1(parent, calib):
    common = dict(width=8, calibration=calib, calib_images=2, calib_size=SIZE, drift=False)
    a, b = prune(parent, criterion="taylor", **common), prune(parent, criterion="taylor", **common)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "taylor_loss" in a.provenance
    assert not torch.equal(a.model.blocks[0].conv1.bias, prune(parent, width=8).model.blocks[0].conv1.bias)


# --------------------------------------------------------------------------------- CLI, recipe, checkpoint
def test_cli_prunes_an_official_checkpoint(ckpt, tmp_path, capsys):
    out = tmp_path / "c8.safetensors"
    assert cli_main(["prune", "--checkpoint", str(ckpt), "--width", "8", "-o", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["description"] == "official c8 n2" and rep["family"] == "official"
    model = load(out)
    assert isinstance(model, OfficialGenerator) and model.config == OfficialConfig(channels=8, num_blocks=N)
    info = read_info(out)
    p = info.provenance
    assert info.family == "official" and info.arch == OfficialConfig(channels=8, num_blocks=N)
    assert p["family"] == "official" and p["parent_checkpoint"] == f"{ckpt.parent.name}/{ckpt.name}"
    assert p["parent_arch"] == OfficialConfig(channels=16, num_blocks=N).to_dict()
    assert p["criterion"] == "l1" and p["target"] == {"width": 8, "parent_width": 16} and p["torch_pruning"]
    assert info.metrics["macs_512_after"] < info.metrics["macs_512_before"]
    again = prune(ckpt, width=8).model  # the same as from Python
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x, 1.0), again(x, 1.0))


def test_official_recipe(tmp_path, calib):
    recipe = str(REPO / "prune" / "official_c24.yaml")
    opts = parse_recipe(["--config", recipe, "--checkpoint", "parent.safetensors"])
    assert opts["width"] == 24 and opts["checkpoint"] == "parent.safetensors"
    assert opts["calibration"] == "../shared/data/portraits/train"
    from dctnet_lite.tools.prune import output_path
    assert output_path(opts["output"], opts) == "runs/pruned-official-c24.safetensors"
    with pytest.raises(ValueError, match="no parent checkpoint"):
        prune_main(recipe)
    # the recipe on a c32 n1 parent (the recipe's own target), photos and output overridden
    p32 = tmp_path / "c32.safetensors"
    save_checkpoint(p32, _parent(32, 1))
    out = tmp_path / "c24.safetensors"
    r = prune_main(recipe, checkpoint=str(p32), calibration=str(calib), calib_images=1, calib_size=SIZE,
                   output=str(out))
    assert r.config == OfficialConfig(channels=24, num_blocks=1) and "drift_l1" in r.metrics
    assert read_info(out).arch == OfficialConfig(channels=24, num_blocks=1)


# --------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(width=12), "positive multiple of 8"),
    (dict(width=16), r"smaller than the parent's base channels 16 \(official c16 n2\)"),
    (dict(width=24), "smaller than the parent's base channels 16"),
    (dict(width=8, round_to=16), "not a multiple of round_to=16"),
    (dict(ratio=0.9), "fewer than 8 channels in x0"),
    (dict(macs_budget=0.01), "below the smallest reachable"),
])
def test_bad_targets(parent, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(parent, **kwargs)


def test_width_needs_a_uniform_parent_and_a_known_family(parent):
    table = dict(widths_from_channels(16, N), block1=32)
    odd = OfficialGenerator(OfficialConfig.from_table(table, N)).eval()
    with pytest.raises(ValueError, match="needs a uniform parent; this one is official non-uniform"):
        prune(odd, width=8)
    assert prune(odd, ratio=0.5).config.widths == {k: v // 2 for k, v in table.items()}
    with pytest.raises(ValueError, match="cannot prune a Sequential"):
        prune(nn.Sequential(nn.Conv2d(3, 3, 1)), width=8)


def test_cli_bad_width_is_one_line(ckpt, capsys, tmp_path):
    out = tmp_path / "never.safetensors"
    assert cli_main(["prune", "--checkpoint", str(ckpt), "--width", "32", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "smaller than the parent's base channels 16" in err and len(err.splitlines()) == 1, err
    assert not out.exists()

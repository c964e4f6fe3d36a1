"""torch.hub entry points of the repo's hubconf.py, offline (source="local")."""
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from dctnet_lite import Cartoonizer, DCTNet, registry

REPO = Path(__file__).resolve().parents[1]


def _hubconf():
    spec = importlib.util.spec_from_file_location("dctnet_lite_hubconf", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)  # torch.hub.list/help have no source="local" in this torch
    return hub


@pytest.fixture
def no_shipped(tmp_path, monkeypatch):
    """Hide every shipped weights file (package, checkout) and the environment's folders."""
    import dctnet_lite.checkpoint as ck

    monkeypatch.setattr(ck, "package_weights_dir", lambda: tmp_path / "pkg")
    monkeypatch.setattr(ck, "repository_checkpoints_dir", lambda: None)
    monkeypatch.delenv("DCTNET_LITE_CHECKPOINTS", raising=False)
    return tmp_path


def test_generic_entry_loads_a_checkpoint(tiny_ckpt, tiny_model):
    net = torch.hub.load(str(REPO), "dctnet", source="local", checkpoint=str(tiny_ckpt))
    assert isinstance(net, DCTNet) and not net.training
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x, 0.5), tiny_model(x, 0.5))


def test_one_entry_per_shipped_architecture_from_the_table():
    hub = _hubconf()
    archs = sorted({w.arch for w in registry.WEIGHTS})
    entries = sorted(n for n in dir(hub) if n.startswith(("dctnet_w", "official_")))
    assert entries == archs  # generated from the table: a new row gets an entry, nothing else does
    assert "official_c32n4" in entries  # the official family's shipped teacher has its entry
    for arch in archs:
        default = registry.default_weights_for(arch)
        assert default.name in getattr(hub, arch).__doc__ and arch in getattr(hub, arch).__doc__


def test_arch_entry_refuses_weights_of_another_architecture():
    with pytest.raises(ValueError, match="not for this architecture"):
        torch.hub.load(str(REPO), "dctnet_w48", source="local", weights="dctnet_w64.toon")


def test_missing_shipped_checkpoint_is_a_clear_error(no_shipped):
    with pytest.raises(RuntimeError, match=r"dctnet_w48\.toon.*not available offline.*looked for"):
        torch.hub.load(str(REPO), "dctnet_w48", source="local")
    untrained = torch.hub.load(str(REPO), "dctnet_w48", source="local", pretrained=False)
    assert untrained.config.widths["scale1"] == 48 and not untrained.training


def test_shipped_checkpoint_through_the_hub():
    net = torch.hub.load(str(REPO), "dctnet_w48", source="local")
    assert net.checkpoint_info.name == "dctnet_w48.toon" and net.config.widths["scale1"] == 48
    assert net.checkpoint_info.provenance["steps"] > 0  # trained weights, not an initialisation


def test_old_entries_still_work_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="'toon_w48' is deprecated.*'dctnet_w48'"):
        net = torch.hub.load(str(REPO), "toon_w48", source="local")
    assert net.checkpoint_info.name == "dctnet_w48.toon"


def test_named_checkpoint_and_cartoonizer(tiny_ckpt, no_shipped, monkeypatch):
    (no_shipped / "mine-w8.safetensors").write_bytes(tiny_ckpt.read_bytes())
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(no_shipped))
    assert isinstance(torch.hub.load(str(REPO), "dctnet", source="local", checkpoint="mine-w8"), DCTNet)
    cz = torch.hub.load(str(REPO), "cartoonizer", source="local", checkpoint="mine-w8", device="cpu")
    assert isinstance(cz, Cartoonizer) and cz.checkpoint_info.name == "mine-w8"


def test_default_cartoonizer_is_the_tables_default_without_any_alias_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cz = torch.hub.load(str(REPO), "cartoonizer", source="local", device="cpu")
    assert cz.checkpoint_info.name == registry.DEFAULT_WEIGHTS

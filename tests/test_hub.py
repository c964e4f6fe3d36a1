"""torch.hub entry points of the repo's hubconf.py, offline (source="local")."""
from pathlib import Path

import pytest
import torch

from dctnet_lite import Cartoonizer, DCTNet

REPO = Path(__file__).resolve().parents[1]


def test_generic_entry_loads_a_checkpoint(tiny_ckpt, tiny_model):
    net = torch.hub.load(str(REPO), "dctnet", source="local", checkpoint=str(tiny_ckpt))
    assert isinstance(net, DCTNet) and not net.training
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x, 0.5), tiny_model(x, 0.5))
    assert net.checkpoint_info.sha256


def test_entries_and_dependencies():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dctnet_lite_hubconf", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)  # torch.hub.list/help have no source="local" in this torch
    assert hub.dependencies == ["torch", "numpy", "PIL", "safetensors"]
    assert all(callable(getattr(hub, n)) for n in ("toon_w64", "toon_w48", "dctnet", "cartoonizer"))
    assert "width-48" in hub.toon_w48.__doc__


def test_missing_shipped_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    import dctnet_lite.checkpoint as ck

    monkeypatch.setattr(ck, "checkpoint_dirs", lambda: [tmp_path])  # hide the shipped ones
    with pytest.raises(RuntimeError, match="toon-w48.*not available offline"):
        torch.hub.load(str(REPO), "toon_w48", source="local")
    untrained = torch.hub.load(str(REPO), "toon_w48", source="local", pretrained=False)
    assert untrained.config.widths["scale1"] == 48


def test_shipped_checkpoint_through_the_hub():
    if not (REPO / "checkpoints" / "toon-w48.safetensors").exists():
        pytest.skip("no toon-w48 in checkpoints/")
    net = torch.hub.load(str(REPO), "toon_w48", source="local")
    assert net.checkpoint_info.name == "toon-w48" and net.config.widths["scale1"] == 48
    assert net.checkpoint_info.provenance["steps"] > 0  # trained weights, not an initialisation


def test_named_checkpoint_and_cartoonizer(tiny_ckpt, tmp_path, monkeypatch):
    (tmp_path / "toon-w48.safetensors").write_bytes(tiny_ckpt.read_bytes())
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(tmp_path))
    assert isinstance(torch.hub.load(str(REPO), "toon_w48", source="local"), DCTNet)
    cz = torch.hub.load(str(REPO), "cartoonizer", source="local", device="cpu")  # the default: toon-w48
    assert isinstance(cz, Cartoonizer) and cz.checkpoint_info.name == "toon-w48"

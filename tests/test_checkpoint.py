import json

import pytest
import torch

import dctnet_lite
from dctnet_lite import ArchConfig, CheckpointError, DCTNet, load, load_into, read_info, save_checkpoint
from dctnet_lite.checkpoint import list_checkpoints, resolve
from dctnet_lite.model import widths_from_base


@pytest.mark.parametrize("dtype,tol", [("fp32", 0), ("fp16", 2e-2), ("bf16", 5e-2)])
def test_round_trip(tmp_path, tiny_model, dtype, tol):
    path = tmp_path / f"m-{dtype}.safetensors"
    save_checkpoint(path, tiny_model, dtype=dtype, provenance={"parent": "x"}, metrics={"lpips": 0.1})
    m = load(path)
    info = m.checkpoint_info
    assert info.dtype == dtype and info.provenance == {"parent": "x"} and info.metrics == {"lpips": 0.1}
    assert m.config == tiny_model.config and not m.training
    x = torch.rand(1, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(m(x, 0.7), tiny_model(x, 0.7), atol=tol) if tol else torch.equal(m(x, 0.7), tiny_model(x, 0.7))
    assert load(path, dtype=None).head.weight.dtype == dctnet_lite.checkpoint.DTYPES[dtype]


def test_non_uniform_round_trip(tmp_path):
    table = widths_from_base(16)
    table["scale3"] = 56
    m = DCTNet(ArchConfig.from_channels(table)).eval()
    save_checkpoint(tmp_path / "nu.safetensors", m)
    m2 = load(tmp_path / "nu.safetensors")
    assert m2.config == m.config and not m2.config.is_uniform


def test_mismatch_names_both_sides(tiny_ckpt):
    with pytest.raises(CheckpointError, match="checkpoint width 8, model width 16"):
        load_into(DCTNet(16), tiny_ckpt)
    assert load_into(DCTNet(8), tiny_ckpt).arch.base_width == 8


def test_truncated_and_tampered_files_fail_clearly(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load(cut)
    bad = bytearray(data)
    bad[-5] ^= 0xFF
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="integrity"):
        load(tampered)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95not a safetensors file")
    with pytest.raises(CheckpointError):
        load(junk)


def test_foreign_safetensors_rejected(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, p, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a dctnet-lite checkpoint"):
        load(p)


def test_metadata_is_json_and_loading_never_unpickles(tiny_ckpt, monkeypatch):
    import pickle

    raw = tiny_ckpt.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    assert json.loads(meta["arch"])["base_width"] == 8 and meta["family"] == "dctnet"
    assert meta["format"] == "dctnet-lite" and meta["format_version"] == "2" and len(meta["sha256"]) == 64

    def refuse(*a, **k):
        raise AssertionError("a checkpoint load tried to unpickle")
    for mod, name in ((pickle, "loads"), (pickle, "load"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    assert load(tiny_ckpt).config.base_width == 8


def test_atomic_write_leaves_old_file_on_failure(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny_model)
    before = path.read_bytes()
    import dctnet_lite.fileutil as fu

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(fu.os, "fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, DCTNet(16))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_other_names_resolve_through_the_environment_folders(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(tmp_path))
    save_checkpoint(tmp_path / "mine-w8.safetensors", tiny_model)
    assert resolve("mine-w8") == tmp_path / "mine-w8.safetensors"
    assert "mine-w8" in [c.name for c in list_checkpoints()]
    assert read_info(resolve("mine-w8")).arch.base_width == 8
    from dctnet_lite.registry import DEFAULT_WEIGHTS, WEIGHTS

    with pytest.raises(CheckpointError, match=f"no checkpoint named 'nope'; shipped: {DEFAULT_WEIGHTS}, {WEIGHTS[1].name}, "):
        resolve("nope")


def test_modelscope_id_offline_fails_clearly():
    with pytest.raises(CheckpointError, match="modelscope|ModelScope"):
        resolve("ms://damo/cv_unet_person-image-cartoon_compound-models")

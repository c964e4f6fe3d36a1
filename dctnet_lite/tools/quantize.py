"""INT8 post-training static quantization of a checkpoint, from calibration photos.

``quantize(checkpoint, calibration, out)`` (``dctnet-lite quantize``) writes an INT8 artefact: an
ONNX file that :class:`~dctnet_lite.inference.Cartoonizer`, ``dctnet-lite cartoonize
--checkpoint``, ``dctnet-lite bench`` and ``dctnet-lite accuracy`` load (through
:class:`~dctnet_lite.tools.onnx_export.OnnxRuntimeNetwork`, precision ``int8``).

Route: ONNX Runtime's ``quantize_static``, chosen by measurement against PyTorch's PT2E flow
(torchao 0.18 ``prepare_pt2e`` / ``convert_pt2e`` with ``X86InductorQuantizer``, then
``torch.compile`` with inductor freezing); figures in docs/cpu.md (2-core AMX VM, 512 px,
shared and loaded). ORT INT8 meets the bound on both families (LPIPS (alex) 0.0016 on
official_c24n4.toon, 0.0058 on dctnet_w48.toon) and was the faster INT8 (dctnet_w48 806 ms
against PT2E's 1716 ms in comparable runs); PT2E was more exact on dctnet_w48 (0.0015) but is
only fast after a compile of over a minute per process and input shape here, cannot be stored
as a file a Cartoonizer loads, and its quantizer took only 2 of the official generator's 18
convs. The ORT artefact is one self-describing file that loads in well under a second, takes any
size without recompiling and needs only onnxruntime. INT8 did not reliably beat the bf16 eager
default on this CPU (AMX bf16), so it is an option, not the default.

What is quantized: every Conv whose weight is one of the network's parameters (weights int8
per output channel, symmetric; activations uint8 per tensor; QDQ format, which ONNX Runtime
fuses into integer convolutions), except the last one, the conv to RGB (``float_output_conv``:
its uint8-quantized output is the image itself; keeping it float took official_c24n4.toon from
LPIPS 0.0041 to 0.0016). Everything else stays float: the padding and crop gathers, the
activations and elementwise ops between the convs, the strength blend, tanh / clamp, and for the
official family the guided filter (its box filters are convolutions on constant weights computed
in the graph: quantizing every op gave LPIPS 0.20 on official_c24n4.toon).

Calibration: square centre crops of ``calib_images`` photos of the *training* split
(:func:`dctnet_lite.data.split_of`) of ``calibration``, resized to ``calib_size`` (all the same
shape, so every calibration method works); ``method`` MinMax (default; measured), Percentile
(99.999) or Entropy. The validation photos, on which the bound is measured, are never used.

Accuracy (stored in the artefact): with lpips and photos of the validation split of
``calibration`` (or ``val_images``), :func:`dctnet_lite.tools.accuracy.variant_accuracy` of the
artefact against its parent's fp32 output at ``val_size`` (512) px: LPIPS (alex), max / mean
abs, and whether the bound (LPIPS <= 0.01, :data:`dctnet_lite.tools.accuracy.QUANTIZED_BOUNDS`) holds;
otherwise ``{"measured": False, "why": ...}``.

Metadata (``dctnet_lite.*`` ONNX metadata entries; :func:`read_artefact`): what
:func:`~dctnet_lite.tools.onnx_export.export_onnx` writes (family, arch, version, I/O) with
``precision`` ``int8``, plus ``parent`` (name, the checkpoint argument as given, file sha256,
payload sha256), ``quantization`` (route, versions, settings, which nodes), ``calibration``
(split, names, count, size, method) and ``accuracy``. The file is written atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..checkpoint import file_sha256, load, resolve
from ..fileutil import atomic_write_bytes
from ..registry import family_of
from .evaluate import load_photo, select_images
from .onnx_export import INPUT_NAMES, export_onnx
from .onnx_export import _need as onnx_need

ROUTE = "onnxruntime.quantization.quantize_static"
CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_IMAGES = 16
DEFAULT_CALIB_SIZE = 512
VAL_SIZE = 512
#: Percentile of the Percentile calibrator.
PERCENTILE = 99.999
#: The ONNX exporter quantize uses (see :func:`~dctnet_lite.tools.onnx_export.export_onnx`).
DEFAULT_EXPORTER = "dynamo"
#: Keys of the artefact's metadata that hold JSON.
JSON_KEYS = ("arch", "parent", "quantization", "calibration", "accuracy", "dynamic")


def _need(module: str):
    return onnx_need(module, "dctnet-lite quantize")


def square_crop(x01: torch.Tensor, size: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> its centred square of the shorter side, resized to ``size``
    (antialiased bicubic, clamped)."""
    h, w = x01.shape[-2:]
    k = min(h, w)
    top, left = (h - k) // 2, (w - k) // 2
    x = x01[..., top:top + k, left:left + k]
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def calibration_photos(folder: Union[str, os.PathLike], count: int = DEFAULT_CALIB_IMAGES,
                       size: int = DEFAULT_CALIB_SIZE) -> Tuple[List[str], List[torch.Tensor]]:
    """(relative names, (1, 3, size, size) tensors) of the first ``count`` photos of the
    training split of ``folder`` (sorted names; the validation split is never used)."""
    if count < 1 or size < 16:
        raise ValueError(f"calibration needs at least 1 image and a size of at least 16 px, got {count}, {size}")
    if not Path(folder).is_dir():
        raise ValueError(f"calibration folder not found: {folder}")
    try:
        _, found = select_images(folder, split="train")
    except ValueError:  # no image of that split
        found = []
    if not found:
        raise ValueError(f"{folder}: no photos of the training split to calibrate on (the validation "
                         f"split, dctnet_lite.data.split_of, is kept for measuring the bound)")
    found = found[:count]
    return [rel for _, rel in found], [square_crop(load_photo(p, None), size) for p, _ in found]


def parameter_convs(onnx_model) -> List[str]:
    """Names of the Conv nodes whose weight is one of the network's parameters (an initializer
    named ``net.<...>.weight`` by the exporter): the convolutions that are quantized."""
    inits = {i.name for i in onnx_model.graph.initializer}
    return [n.name for n in onnx_model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits
            and n.input[1].startswith("net.") and n.input[1].endswith(".weight")]


def read_artefact(path: Union[str, os.PathLike]) -> dict:
    """The ``dctnet_lite.*`` metadata of an ONNX file, JSON entries decoded (see module doc)."""
    onnx = _need("onnx")
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key[len("dctnet_lite."):]: p.value for p in model.metadata_props if p.key.startswith("dctnet_lite.")}
    for k in JSON_KEYS:
        if k in meta and meta[k]:
            meta[k] = json.loads(meta[k])
    return meta


def _write_with_metadata(src: Path, out: Path, extra: dict) -> None:
    onnx = _need("onnx")
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update({f"dctnet_lite.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                 for k, v in extra.items()})
    del proto.metadata_props[:]
    for k, v in meta.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    proto.producer_name = "dctnet-lite"
    atomic_write_bytes(out, proto.SerializeToString())


def _lpips_available() -> Optional[str]:
    """None when LPIPS (alex) can run here, else why not."""
    try:
        from .lpips_offline import get_lpips

        get_lpips("alex")
    except Exception as e:  # ImportError (no lpips), LPIPSWeightsUnavailable, ...
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return None


def quantize(checkpoint: Union[str, os.PathLike], calibration: Union[str, os.PathLike],
             out: Union[str, os.PathLike], *, calib_images: int = DEFAULT_CALIB_IMAGES,
             calib_size: int = DEFAULT_CALIB_SIZE, method: str = "minmax", per_channel: bool = True,
             float_output_conv: bool = True,
             measure: bool = True, val_images: Union[str, os.PathLike, None] = None,
             val_size: int = VAL_SIZE, val_limit: Optional[int] = None,
             threads: Optional[int] = None, exporter: Optional[str] = None) -> dict:
    """Quantize ``checkpoint`` (name or path) to INT8 from the training-split photos of
    ``calibration`` and write the artefact to ``out`` (atomic; see the module docstring).

    ``measure``: measure the accuracy on the validation split of ``val_images`` (default:
    ``calibration``), ``val_limit`` photos at most, at ``val_size`` px, and store it.
    ``threads``: ONNX Runtime / torch threads during calibration and measurement.
    ``float_output_conv``: keep the last conv (to RGB) in float (see the module docstring).
    Returns ``{"out", "metadata", "seconds"}``.
    """
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    out = Path(out)
    if not out.name.lower().endswith(".onnx"):
        raise ValueError(f"the INT8 artefact is an ONNX file: give an output path ending in .onnx, got {out}")
    onnx = _need("onnx")
    ort = _need("onnxruntime")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from .bench import torch_threads

    t_start = time.perf_counter()
    exporter = exporter or DEFAULT_EXPORTER
    path = resolve(checkpoint)
    model = load(path, device="cpu").float().eval()
    info = model.checkpoint_info
    names, photos = calibration_photos(calibration, calib_images, calib_size)
    parent = {"name": info.name, "checkpoint": os.fspath(checkpoint), "file_sha256": file_sha256(path),
              "payload_sha256": info.sha256, "family": family_of(model).name, "arch": model.config.describe()}
    with tempfile.TemporaryDirectory(prefix="dctnet-quantize-") as tmp, torch_threads(threads):
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, exporter=exporter)
        convs = parameter_convs(onnx.load(str(fp32)))
        if len(convs) < 2:
            raise RuntimeError(f"no convolutions of {info.name} found by their weights' names in the ONNX export")
        nodes = convs[:-1] if float_output_conv else convs

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(photos)

            def get_next(self):
                x = next(self._it, None)
                return None if x is None else {INPUT_NAMES[0]: x.numpy(), INPUT_NAMES[1]: np.ones(1, np.float32)}

        calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
        # (MinMax's augmented graph returns ReduceMin/ReduceMax per tensor: little memory per photo;
        # CalibMaxIntermediateOutputs would help there but drops the collected ranges in ORT 1.32)
        extra = {}
        if method == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        settings = {"format": "QDQ", "activations": "uint8 per tensor (asymmetric)",
                    "weights": f"int8 {'per output channel' if per_channel else 'per tensor'} (symmetric)",
                    "op_types": ["Conv"], "nodes": "Conv nodes whose weight is a network parameter",
                    "quantized_nodes": len(nodes), "float_output_conv": bool(float_output_conv),
                    "per_channel": bool(per_channel), "extra_options": extra,
                    "float": "padding/crop gathers, activations, elementwise ops, strength blend, tanh/clamp"
                             + (", the guided filter" if parent["family"] == "official" else "")}
        int8 = Path(tmp) / "int8.onnx"
        t_q = time.perf_counter()
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calib,
                        op_types_to_quantize=["Conv"], nodes_to_quantize=nodes, extra_options=extra)
        meta = {"precision": "int8", "version": __version__, "parent": parent,
                "quantization": {"route": ROUTE, "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                                 "torch": torch.__version__, "exporter": exporter,
                                 "seconds": round(time.perf_counter() - t_q, 2), **settings},
                "calibration": {"folder": Path(calibration).name, "split": "train", "count": len(names),
                                "images": names, "size": int(calib_size), "crop": "centred square, bicubic",
                                "method": method, "strength": 1.0},
                "accuracy": {"measured": False, "why": "not measured yet"}}
        staged = Path(tmp) / "staged.onnx"
        _write_with_metadata(int8, staged, meta)
        meta["accuracy"] = _measure(staged, path, val_images if val_images is not None else calibration,
                                    val_size, val_limit) if measure else \
            {"measured": False, "why": "measure=False (--no-measure)"}
        _write_with_metadata(staged, out, {"accuracy": meta["accuracy"]})
    return {"out": str(out), "metadata": read_artefact(out), "seconds": round(time.perf_counter() - t_start, 2)}


def _measure(artefact: Path, parent_path: Path, images, size: int, limit: Optional[int]) -> dict:
    """The artefact's accuracy against its parent's fp32 output on the validation split."""
    why = _lpips_available()
    if why is not None:
        return {"measured": False, "why": f"LPIPS unavailable ({why})"}
    try:
        _, found = select_images(images, split="val", limit=limit)
    except FileNotFoundError as e:
        return {"measured": False, "why": str(e)}
    except ValueError:  # no image of the val split
        found = []
    if not found:
        return {"measured": False, "why": f"no photos of the validation split in {Path(images).name}"}
    from .accuracy import variant_accuracy

    res = variant_accuracy(str(artefact), images, split="val", limit=limit, size=size, parent=parent_path)
    row = res["rows"][0]
    if "error" in row:
        return {"measured": False, "why": row["error"]}
    keep = ("lpips_alex", "lpips_alex_max", "max_abs", "mean_abs", "rel_l2", "uint8_off_by_gt2", "within_bounds")
    return {"measured": True, "reference": f"{res['reference']} of the parent", "split": "val",
            "photos": len(res["images"]), "size": size, "strength": res["strength"],
            "bound": res["bounds"]["int8"], **{k: row[k] for k in keep if k in row}}


def format_quantize(result: dict) -> str:
    m = result["metadata"]
    acc = m.get("accuracy", {})
    if acc.get("measured"):
        a = (f"LPIPS(alex) to {m['parent']['name']} fp32 on {acc['photos']} val photos @ {acc['size']} px: "
             f"{acc['lpips_alex']:.4f} (max {acc['lpips_alex_max']:.4f}; bound {acc['bound'].get('lpips_alex')}: "
             f"{'within' if acc.get('within_bounds') else 'OUT OF BOUNDS'}), max|d| {acc['max_abs']:.4f}")
    else:
        a = f"accuracy not measured: {acc.get('why')}"
    c = m["calibration"]
    return (f"wrote {result['out']} (int8, {m['quantization']['quantized_nodes']} convs quantized, parent "
            f"{m['parent']['name']}; calibrated on {c['count']} train photos @ {c['size']} px, {c['method']}) "
            f"in {result['seconds']:.1f} s\n{a}")


def artefact_parent(meta: dict, parent: Union[str, os.PathLike, None] = None) -> Path:
    """The parent checkpoint of an artefact: ``parent`` if given, else its name, else the
    checkpoint argument it was made from; its file must be the one quantized (sha256)."""
    p = meta.get("parent") or {}
    cands: Sequence = [parent] if parent is not None else [c for c in (p.get("name"), p.get("checkpoint")) if c]
    problems = []
    for c in cands:
        try:
            path = resolve(c)
        except Exception as e:
            problems.append(f"{c}: {str(e).splitlines()[0]}")
            continue
        if p.get("file_sha256") and file_sha256(path) != p["file_sha256"]:
            problems.append(f"{path} is not the file quantized (sha256 differs)")
            continue
        return path
    raise ValueError(f"the artefact's parent checkpoint cannot be found ({'; '.join(problems) or 'no parent recorded'});"
                     f" give it with --parent PATH")

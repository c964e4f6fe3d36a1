"""Accuracy of the fast-path variants (precision x backend) against the fp32 reference.

``variant_accuracy(target, images)`` runs every (precision, backend) of the bench on real photos
and compares each output with the same model's fp32 eager output on the same device, TF32 off
(on CUDA, PyTorch's default lets cuDNN convolutions use TF32, which is itself an approximation).
Per variant: the largest and mean absolute difference of the [0, 1] output, the relative L2 error
``||y - y_ref|| / ||y_ref||``, the share of uint8 output values that differ by more than 2 levels,
and LPIPS (alex) between the two outputs. ``BOUNDS`` states what a variant may lose; a variant
outside them is flagged ``within_bounds: False`` (``dctnet-lite bench --accuracy`` then exits 1).

Inputs are whole photos (longer side ``size``, aspect kept, Lanczos), not random noise: the
network's activations on noise are not those of portraits.

An INT8 artefact (``dctnet-lite quantize``, a ``.onnx`` file) as ``target`` is compared with its
*parent's* fp32 output (the parent found by the name and sha256 in its metadata, or ``parent``):
one row, precision ``int8``, backend ``onnxruntime``, against ``QUANTIZED_BOUNDS["int8"]`` (the
issue's bound: LPIPS (alex) <= 0.01). The ``onnxruntime`` backend of a checkpoint runs its fp32 ONNX
export (:func:`dctnet_lite.tools.bench.onnx_export_cached`). ``max_lpips`` replaces the LPIPS
bound of every row (a loose or an impossible one, to check the check). A row whose bounded
metrics were not measured (``lpips=False`` with an LPIPS-only bound) has ``within_bounds: None``.
"""
from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..inference import is_onnx_path, resolve_device
from ..precision import PRECISIONS
from .bench import _target_model, check_variants, variant_cartoonizer
from .evaluate import load_photo, lpips as lpips_fn, select_images

# What a variant may lose against fp32 (on the [0, 1] output). LPIPS 0.005: a fifth of the step
# from toon-w48 to toon-w40 (0.0024 -> 0.0280 LPIPS to the teacher), i.e. far less than trading
# down one shipped width; mean abs 2/255: two uint8 levels; max abs 0.1 leaves room for rare
# pixels where a half-precision tanh saturates differently.
BOUNDS: Dict[str, Dict[str, float]] = {
    "fp32": {"max_abs": 0.01, "mean_abs": 1 / 255, "lpips_alex": 0.001},
    "fp16": {"max_abs": 0.1, "mean_abs": 2 / 255, "lpips_alex": 0.005},
    "bf16": {"max_abs": 0.1, "mean_abs": 2 / 255, "lpips_alex": 0.005},
}
#: What a quantized artefact may lose (issue 15): LPIPS (alex) to the fp32 output on the
#: validation photos at 512 px.
QUANTIZED_BOUNDS: Dict[str, Dict[str, float]] = {"int8": {"lpips_alex": 0.01}}


@contextlib.contextmanager
def _tf32_off():
    """Exact fp32 convolutions and matmuls on CUDA for the reference (no-op on CPU)."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def _compare(y: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (y - ref).abs()
    q = lambda t: t.mul(255).round()  # noqa: E731  (the uint8 values a user gets)
    return {"max_abs": float(d.max()), "sum_abs": float(d.sum()), "n": d.numel(),
            "err_sq": float(((y - ref) ** 2).sum()), "ref_sq": float((ref ** 2).sum()),
            "off_by_gt2": int(((q(y) - q(ref)).abs() > 2).sum())}


def variant_accuracy(target: Union[str, int, os.PathLike], images: Union[str, os.PathLike, Sequence],
                     precisions: Sequence[str] = tuple(PRECISIONS), backends: Sequence[str] = ("eager",),
                     device: str = "cpu", size: Optional[int] = 512, limit: Optional[int] = 8,
                     strength: float = 1.0, lpips: bool = True, split: Optional[str] = None,
                     parent: Union[str, os.PathLike, None] = None, max_lpips: Optional[float] = None) -> dict:
    """Accuracy of each (precision, backend) against fp32 eager (TF32 off) on ``images``.

    ``target``: a checkpoint name/path or a width (random init). ``images``: a folder, a file or
    a list of files; ``split``/``limit`` select among them as in :func:`dctnet_lite.tools.evaluate.select_images`.
    Returns ``{"target", "device", "size", "strength", "images", "reference", "bounds", "rows"}``;
    each row holds ``precision``, ``backend``, the metrics above, ``within_bounds`` and, for a
    variant that cannot run here (fp16 on some CPUs, CUDA graphs without CUDA), ``error``.
    """
    artefact = is_onnx_path(target)
    if artefact:  # an INT8 (or other ONNX) artefact against its parent's fp32 output
        from .quantize import artefact_parent, read_artefact

        meta = read_artefact(target)
        variants = [(meta.get("precision", "fp32"), "onnxruntime", str(target))]
        target = artefact_parent(meta, parent)
    else:
        check_variants(precisions, backends)
        variants = [(p, b, None) for p in precisions for b in backends]
    dev = resolve_device(device)
    _, found = select_images(images, split=split, limit=limit)
    label, model, _ = _target_model(target)
    if artefact:
        label = f"{Path(variants[0][2]).name} (parent {label})"
    photos = [load_photo(p, size) for p, _ in found]
    bounds = {k: dict(v) for k, v in {**BOUNDS, **QUANTIZED_BOUNDS}.items()}
    if max_lpips is not None:
        for v in bounds.values():
            v["lpips_alex"] = float(max_lpips)

    with _tf32_off():
        ref_cz = variant_cartoonizer(copy.deepcopy(model), dev, "fp32", "eager")
        refs = [ref_cz.forward(x, strength).float().cpu() for x in photos]
        del ref_cz

    rows: List[dict] = []
    for precision, backend, source in variants:
        row = {"precision": precision, "backend": backend}
        if backend == "cudagraphs" and dev.type != "cuda":
            rows.append({**row, "error": "cudagraphs needs a CUDA device"})
            continue
        try:
            cz = variant_cartoonizer(source or copy.deepcopy(model), dev, precision, backend)
            outs = [cz.forward(x, strength).float().cpu() for x in photos]
            del cz
        except Exception as e:  # one variant that cannot run here must not end the check
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            continue
        parts = [_compare(y, r) for y, r in zip(outs, refs)]
        n = sum(p["n"] for p in parts)
        row.update(max_abs=max(p["max_abs"] for p in parts),
                   mean_abs=sum(p["sum_abs"] for p in parts) / n,
                   rel_l2=(sum(p["err_sq"] for p in parts) / max(sum(p["ref_sq"] for p in parts), 1e-30)) ** 0.5,
                   uint8_off_by_gt2=sum(p["off_by_gt2"] for p in parts) / n)
        if lpips:
            vals = [float(lpips_fn(y, r, net="alex")[0]) for y, r in zip(outs, refs)]
            row.update(lpips_alex=sum(vals) / len(vals), lpips_alex_max=max(vals))
        bound = bounds[precision]
        checked = [row[k] <= v for k, v in bound.items() if k in row]
        row["within_bounds"] = all(checked) if checked else None
        rows.append(row)
    return {"target": label, "device": str(dev), "size": size, "strength": strength,
            "images": [rel for _, rel in found], "reference": "fp32 eager, TF32 off, same device",
            "bounds": bounds, "rows": rows}


def format_accuracy(result: dict) -> str:
    """Plain-text table of a :func:`variant_accuracy` result."""
    lines = [f"accuracy of {result['target']} vs {result['reference']} ({result['device']}, "
             f"{len(result['images'])} photos, {result['size']} px, strength {result['strength']:g})"]
    for r in result["rows"]:
        head = f"  {r['precision']:<5} {r['backend']:<14}"
        if "error" in r:
            lines.append(f"{head} ERROR {r['error']}")
            continue
        lp = f"  LPIPS {r['lpips_alex']:.5f} (max {r['lpips_alex_max']:.5f})" if "lpips_alex" in r else ""
        lines.append(f"{head} max|d| {r['max_abs']:.4f}  mean|d| {r['mean_abs']:.5f}  rel L2 {r['rel_l2']:.2e}  "
                     f">2 levels {100 * r['uint8_off_by_gt2']:.3f} %{lp}  "
                     f"{_verdict(r['within_bounds'])}")
    return "\n".join(lines)


def _verdict(within: Optional[bool]) -> str:
    return "bound not checked (its metric was not measured)" if within is None else \
        ("ok" if within else "OUT OF BOUNDS")

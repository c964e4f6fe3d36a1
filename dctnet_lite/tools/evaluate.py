"""Quality evaluation: checkpoints against a reference, per image, with 95 % intervals.

``evaluate(checkpoints, reference, images)`` runs every checkpoint on every image at every
(size, strength) and scores the output against a *reference* output of the same photo:

- a **teacher checkpoint** (name or path): the teacher's output at the same strength;
- ``"renderer"``: the classical toon renderer blended with the strength,
  ``(1 - s) * photo + s * render_toon(photo)``;
- a **folder of target images**, matched to the photos by relative path (extension ignored:
  ``sub/a.jpg`` matches ``sub/a.png``), resized to the output's size when they differ, and
  blended with the strength like the renderer.

A checkpoint that *is* the reference checkpoint (same file) would score trivially (LPIPS 0), so
it is scored against ``self_reference`` (``"renderer"`` by default) instead; the row names the
reference it was scored against.

``teachers`` adds a second, per-row reference: ``{checkpoint: its own teacher}`` (a name or path;
``None`` for a row that has none, e.g. a teacher). Each such row is also scored against its
teacher's output at the same strength with ``teacher_metrics`` (LPIPS (alex) by default), in
``row["teacher_metrics"]``; a teacher that is also evaluated runs once per photo for both.

``precision`` is the :class:`~dctnet_lite.inference.Cartoonizer` precision every checkpoint and
reference checkpoint runs at (``auto``: the device's default, bf16 on a CPU with native bf16;
``fp32``: the exact path); the result names the precision that ran.

Images are resized so the longer side is ``size`` (aspect kept, Lanczos, as the cartoonizer
does); the model pads to its stride internally and crops back.

Metrics (all on RGB in [0, 1], one value per image):

- ``lpips_alex`` / ``lpips_vgg``: exact LPIPS v0.1 from :mod:`dctnet_lite.tools.lpips_offline`
  (lower is better);
- ``psnr``: torchmetrics' PSNR with ``data_range=1.0`` in dB, **capped at** :data:`PSNR_CAP_DB`
  (identical images would give +inf, which JSON cannot hold; the cap is reported);
- ``ssim``: torchmetrics' SSIM (Gaussian 11x11, sigma 1.5) with ``data_range=1.0``.

Intervals: the mean over images with a 95 % percentile-bootstrap interval of the mean (2000
resamples, fixed seed 0, so a report is reproducible); ``interval_method="t"`` gives the
Student-t interval ``mean +- t(0.975, n-1) * sd / sqrt(n)`` instead. With one image the interval
collapses to the value itself.

``torchmetrics`` and ``lpips`` are imported lazily.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import data
from ..checkpoint import CheckpointError, read_info, resolve
from ..images import IMAGE_EXTENSIONS, is_image_name, list_images, read_image, resize_rgb
from ..fastpath import resolve_precision
from ..inference import Cartoonizer, resolve_device
from ..render import render_toon
from .lpips_offline import lpips_distance

METRICS = ("lpips_alex", "lpips_vgg", "psnr", "ssim")
#: Which direction is better for each metric (used by reports and the Pareto plot).
LOWER_IS_BETTER = {"lpips_alex": True, "lpips_vgg": True, "psnr": False, "ssim": False}
PSNR_CAP_DB = 100.0
RENDERER = "renderer"
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def _t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value (exact for df 1 and 2, Cornish-Fisher above)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df == 1:
        return math.tan(math.pi * 0.475)
    if df == 2:
        p = 0.975
        return (2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p)))
    z = 1.959963984540054
    v = float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * v ** 4))


def summarize(values: Sequence[float], method: str = "bootstrap", confidence: float = 0.95,
              n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Dict[str, float]:
    """Mean, standard deviation and a ``confidence`` interval of the mean of ``values``.

    ``method="bootstrap"``: percentile bootstrap with ``n_boot`` resamples drawn with a fixed
    ``seed`` (deterministic). ``method="t"``: Student-t interval (``confidence`` must be 0.95).
    Returns ``{"mean", "std", "lo", "hi", "n"}``; the interval always contains the mean.
    """
    v = np.asarray(list(values), dtype=np.float64)
    n = int(v.size)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else 0.0
    if n == 1 or std == 0.0:
        lo = hi = mean
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        means = v[idx].mean(axis=1)
        alpha = (1 - confidence) / 2
        lo, hi = (float(q) for q in np.quantile(means, [alpha, 1 - alpha]))
    elif method == "t":
        if abs(confidence - 0.95) > 1e-9:
            raise ValueError("the t interval is implemented for confidence 0.95 only")
        half = _t_quantile_975(n - 1) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        raise ValueError(f"unknown interval method {method!r}: use 'bootstrap' or 't'")
    # floating-point guard (bootstrap quantiles of a near-constant sample)
    lo, hi = min(lo, mean), max(hi, mean)
    return {"mean": mean, "std": std, "lo": lo, "hi": hi, "n": n}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def psnr(x01: torch.Tensor, y01: torch.Tensor, cap: float = PSNR_CAP_DB) -> torch.Tensor:
    """PSNR per image in dB (torchmetrics, ``data_range=1.0``), capped at ``cap``; shape (B,)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = _as_batch(x01), _as_batch(y01)
    val = peak_signal_noise_ratio(x.float(), y.float(), data_range=1.0, reduction="none",
                                  dim=(1, 2, 3))
    return torch.nan_to_num(val.reshape(-1), posinf=cap).clamp(max=cap)


def ssim(x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
    """SSIM per image (torchmetrics, Gaussian 11x11 sigma 1.5, ``data_range=1.0``); shape (B,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = _as_batch(x01), _as_batch(y01)
    return structural_similarity_index_measure(x.float(), y.float(), data_range=1.0,
                                               reduction="none").reshape(-1)


def lpips(x01: torch.Tensor, y01: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """Exact offline LPIPS v0.1 per image, inputs in [0, 1]; shape (B,)."""

    return lpips_distance(_as_batch(x01).float(), _as_batch(y01).float(), net=net)


def compute_metrics(x01: torch.Tensor, y01: torch.Tensor,
                    metrics: Sequence[str] = METRICS) -> Dict[str, List[float]]:
    """Each metric of ``metrics`` per image of the pair of batches: ``{metric: [value, ...]}``."""
    _check_metrics(metrics)
    x, y = _as_batch(x01), _as_batch(y01)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    out = {}
    for m in metrics:
        if m == "psnr":
            val = psnr(x, y)
        elif m == "ssim":
            val = ssim(x, y)
        else:
            val = lpips(x, y, net=m.split("_", 1)[1])
        out[m] = [float(v) for v in val.detach().cpu()]
    return out


def _as_batch(t: torch.Tensor) -> torch.Tensor:
    return t[None] if t.dim() == 3 else t


def _check_metrics(metrics: Sequence[str]) -> None:
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; available: {', '.join(METRICS)}")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def select_images(images: Union[str, os.PathLike, Sequence], split: Optional[str] = None,
                  limit: Optional[int] = None) -> Tuple[Path, List[Tuple[Path, str]]]:
    """Photos to evaluate: ``(root, [(path, relative name)])``, sorted, split-filtered, limited.

    ``split`` (e.g. ``"val"``) keeps the images for which ``dctnet_lite.data.split_of(relpath)``
    equals it, when that function exists; otherwise every image is kept, with a warning.
    """

    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if root.is_dir():
            found = [(p, p.relative_to(root).as_posix()) for p in list_images(root)]
        elif root.is_file() and is_image_name(root):
            found, root = [(root, root.name)], root.parent
        else:
            raise FileNotFoundError(f"image folder not found: {root}")
    else:
        paths = [Path(p) for p in images]
        root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path(".")
        found = [(p, p.relative_to(root).as_posix()) for p in paths]
    if split:
        split_of = _split_function()
        if split_of is None:
            warnings.warn(f"dctnet_lite.data.split_of is not available: evaluating every image "
                          f"instead of the {split!r} split", stacklevel=2)
        else:
            found = [(p, rel) for p, rel in found if split_of(rel) == split]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        found = found[:limit]
    if not found:
        raise ValueError(f"no images to evaluate in {images}" + (f" (split {split!r})" if split else ""))
    return root, found


def _split_function():
    return getattr(data, "split_of", None)


def load_photo(path, size: Optional[int]) -> torch.Tensor:
    """An image file -> (1, 3, H, W) float in [0, 1], longer side ``size`` (Lanczos, aspect kept)."""

    rgb = resize_rgb(read_image(path)[0], size)
    return torch.from_numpy(np.array(rgb, dtype=np.float32, copy=True) / 255.0).permute(2, 0, 1)[None]


def _find_target(folder: Path, rel: str) -> Optional[Path]:

    stem = Path(rel).with_suffix("")
    exact = folder / rel
    if exact.is_file():
        return exact
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        cand = folder / stem.with_suffix(ext)
        if cand.is_file():
            return cand
    return None


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
class _Reference:
    """Produces the reference output for (photo, strength); ``kind`` is checkpoint/renderer/folder."""

    def __init__(self, spec: Union[str, os.PathLike], device, precision: str = "auto",
                 pool: Optional[dict] = None):

        self.spec, self.device, self.precision = str(spec), device, precision
        self.path: Optional[Path] = None
        self.pool = {} if pool is None else pool  # path -> Cartoonizer, shared with the rows
        if self.spec == RENDERER:
            self.kind = "renderer"
        elif Path(self.spec).is_dir() and not list(Path(self.spec).glob("*.safetensors")):
            self.kind, self.folder = "folder", Path(self.spec)
        else:
            self.kind = "checkpoint"
            self.path = resolve(self.spec).resolve()

    @property
    def label(self) -> str:
        if self.kind == "checkpoint":
            return _ckpt_label(self.spec)
        return self.spec if self.kind == "renderer" else f"folder:{self.spec}"

    def model(self):
        return _cartoonizer(self.pool, self.path, self.device, self.precision)

    def __call__(self, photo: torch.Tensor, rel: str, strength: float, toon_cache: dict) -> Optional[torch.Tensor]:
        if self.kind == "checkpoint":
            key = ("checkpoint", str(self.path), tuple(photo.shape), strength)
            if key not in toon_cache:  # shared with the teacher's own row (same file, same key)
                toon_cache[key] = self.model().forward(photo, strength).float().cpu()
            return toon_cache[key]
        key = (self.kind, self.spec, tuple(photo.shape))
        if key not in toon_cache:
            if self.kind == "renderer":

                toon_cache[key] = render_toon(photo.to(self.device)).float().cpu()
            else:
                target = _find_target(self.folder, rel)
                if target is None:
                    toon_cache[key] = None
                else:
                    t = load_photo(target, None)
                    if t.shape != photo.shape:
                        t = torch.nn.functional.interpolate(t, size=photo.shape[-2:], mode="bilinear",
                                                            antialias=True, align_corners=False)
                    toon_cache[key] = t.clamp(0, 1)
        toon = toon_cache[key]
        if toon is None:
            return None
        return ((1 - strength) * photo + strength * toon).clamp(0, 1)


def _cartoonizer(pool: dict, path: Path, device, precision: str) -> Cartoonizer:
    """One Cartoonizer per checkpoint file (a teacher that is also a row is loaded once)."""
    key = str(path)
    if key not in pool:
        pool[key] = Cartoonizer(key, device=device, precision=precision)
    return pool[key]


def _ckpt_label(spec: str) -> str:
    p = Path(spec)
    return p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else spec


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------
def evaluate(checkpoints: Sequence[str], reference: str, images: Union[str, Sequence],
             strengths: Sequence[float] = (1.0, 0.5), sizes: Sequence[int] = (512,),
             metrics: Sequence[str] = METRICS, device: str = "cpu", limit: Optional[int] = None,
             *, split: Optional[str] = None, self_reference: Optional[str] = RENDERER,
             interval_method: str = "bootstrap", keep_per_image: bool = True,
             progress: bool = False, precision: str = "auto",
             teachers: Optional[Mapping[str, Optional[str]]] = None,
             teacher_metrics: Sequence[str] = ("lpips_alex",)) -> dict:
    """Score each checkpoint against ``reference`` on the photos in ``images``.

    Args:
        checkpoints: checkpoint names or paths; missing ones are skipped with a warning (and
            listed under ``"skipped"``); it is an error if none is left.
        reference: a teacher checkpoint, ``"renderer"``, or a folder of target images.
        images: a folder of photos (recursive), one file, or a list of files.
        strengths, sizes: every combination is evaluated (size = longer side in pixels).
        metrics: a subset of :data:`METRICS`.
        limit: evaluate only the first ``limit`` photos (sorted by relative path).
        split: keep only that split (``dctnet_lite.data.split_of``), when available.
        self_reference: what a checkpoint that *is* the reference is scored against
            (``None``: skip it).
        interval_method: ``"bootstrap"`` (default) or ``"t"``; see :func:`summarize`.
        precision: the Cartoonizer precision of every checkpoint (see the module docstring).
        teachers: ``{checkpoint spec: teacher spec or None}``: each row's own teacher, scored
            with ``teacher_metrics`` in ``row["teacher_metrics"]`` (``None`` without a teacher; a
            teacher that cannot be found is named in ``row["teacher_missing"]``, with a warning).

    Checkpoints and a reference checkpoint may be of any family (``dctnet``, ``official``): each
    runs through its :class:`~dctnet_lite.inference.Cartoonizer` (the official generator's
    strength is its output blend, its stride 4).

    Returns a JSON-serialisable dict: ``results`` has one row per (checkpoint, size, strength)
    with ``family``, ``arch`` (described), ``width`` (the dctnet base width; ``None`` for other
    families, as in the bench rows) and ``metrics[m] = {"mean", "std", "lo", "hi", "n"}``
    (+ ``per_image`` values).
    """

    t_start = time.perf_counter()
    metrics = tuple(metrics)
    _check_metrics(metrics)
    strengths = [float(s) for s in strengths]
    for s in strengths:
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"strengths must lie in [0, 1], got {s}")
    sizes = [int(s) for s in sizes]
    dev = resolve_device(device)
    ran_precision = resolve_precision(precision, dev)
    teacher_metrics = tuple(teacher_metrics)
    _check_metrics(teacher_metrics)
    teachers = dict(teachers or {})
    root, photos = select_images(images, split=split, limit=limit)
    pool: dict = {}
    ref = _Reference(reference, dev, precision, pool)
    teacher_refs: Dict[str, _Reference] = {}

    models, skipped = [], []
    for spec in checkpoints:
        try:
            path = resolve(spec).resolve()
            info = read_info(path)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {spec!r}: {e}", stacklevel=2)
            skipped.append({"checkpoint": str(spec), "why": str(e)})
            continue
        if ref.kind == "checkpoint" and path == ref.path:
            if not self_reference:
                skipped.append({"checkpoint": str(spec), "why": "it is the reference"})
                continue
            own_ref = _Reference(self_reference, dev, precision, pool)
            if own_ref.kind == "checkpoint" and own_ref.path == path:
                raise ValueError(f"self_reference {self_reference!r} is the checkpoint itself")
        else:
            own_ref = ref
        entry = {"spec": str(spec), "name": _ckpt_label(str(spec)), "path": path, "info": info,
                 "ref": own_ref, "is_reference": own_ref is not ref, "teacher": None, "teacher_ref": None}
        t_spec = teachers.get(str(spec), teachers.get(spec))
        if t_spec:
            entry["teacher"] = _ckpt_label(str(t_spec))
            try:
                t_path = str(resolve(t_spec).resolve())
                if t_path not in teacher_refs:
                    teacher_refs[t_path] = _Reference(t_spec, dev, precision, pool)
                entry["teacher_ref"] = teacher_refs[t_path]
            except CheckpointError as e:
                warnings.warn(f"teacher {t_spec!r} of {spec!r} not found: {e}", stacklevel=2)
                entry["teacher_missing"] = str(e)
        models.append(entry)
    if not models:
        raise CheckpointError("none of the checkpoints to evaluate exists: "
                              + "; ".join(f"{s['checkpoint']}: {s['why']}" for s in skipped))

    per = {(i, size, s): {m: [] for m in metrics} for i in range(len(models))
           for size in sizes for s in strengths}
    per_teacher = {(i, size, s): {m: [] for m in teacher_metrics} for i in range(len(models))
                   for size in sizes for s in strengths}
    missing_targets: List[str] = []
    for k, (path, rel) in enumerate(photos):
        for size in sizes:
            photo = load_photo(path, size)
            cache: dict = {}
            refs: Dict[Tuple[int, float], Optional[torch.Tensor]] = {}
            def reference_output(r: _Reference, s: float):
                if (id(r), s) not in refs:
                    refs[(id(r), s)] = r(photo, rel, s, cache)
                return refs[(id(r), s)]

            def output(m: dict, s: float) -> torch.Tensor:
                # the same cache key as a reference checkpoint's: a teacher runs once per photo
                key = ("checkpoint", str(m["path"]), tuple(photo.shape), s)
                if key not in cache:
                    cz = _cartoonizer(pool, m["path"], dev, precision)
                    cache[key] = cz.forward(photo, s).float().cpu()
                return cache[key]

            for i, m in enumerate(models):
                for s in strengths:
                    target = reference_output(m["ref"], s)
                    if target is None:
                        if rel not in missing_targets:
                            missing_targets.append(rel)
                    else:
                        vals = compute_metrics(output(m, s).to(dev), target.to(dev), metrics)
                        for name, v in vals.items():
                            per[(i, size, s)][name] += v
                    if m["teacher_ref"] is not None:
                        t = reference_output(m["teacher_ref"], s)
                        vals = compute_metrics(output(m, s).to(dev), t.to(dev), teacher_metrics)
                        for name, v in vals.items():
                            per_teacher[(i, size, s)][name] += v
        if progress:
            print(f"[eval] {k + 1}/{len(photos)} {rel}", flush=True)
    if missing_targets:
        warnings.warn(f"{len(missing_targets)} photo(s) have no target image in {reference}: "
                      f"{', '.join(missing_targets[:5])}", stacklevel=2)

    results = []
    for i, m in enumerate(models):
        arch = m["info"].arch
        for size in sizes:
            for s in strengths:
                row_metrics = {}
                for name in metrics:
                    vals = per[(i, size, s)][name]
                    if not vals:
                        continue
                    summ = summarize(vals, method=interval_method)
                    if keep_per_image:
                        summ["per_image"] = vals
                    row_metrics[name] = summ
                to_teacher = None
                if m["teacher_ref"] is not None:
                    to_teacher = {}
                    for name in teacher_metrics:
                        vals = per_teacher[(i, size, s)][name]
                        if vals:
                            to_teacher[name] = summarize(vals, method=interval_method)
                            if keep_per_image:
                                to_teacher[name]["per_image"] = vals
                extra = {"teacher_missing": m["teacher_missing"]} if "teacher_missing" in m else {}
                results.append({
                    "checkpoint": m["name"], "path": str(m["path"]), "family": m["info"].family,
                    "arch": arch.describe(), "width": getattr(arch, "base_width", None),
                    "reference": m["ref"].label,
                    "reference_kind": m["ref"].kind, "is_reference": m["is_reference"],
                    "strength": s, "size": size,
                    "n": len(per[(i, size, s)][metrics[0]]), "metrics": row_metrics,
                    "precision": ran_precision, "teacher": m["teacher"], "teacher_metrics": to_teacher,
                    **extra})
    return {
        "reference": ref.label, "reference_kind": ref.kind, "self_reference": self_reference,
        "images": str(root), "split": split, "limit": limit, "n_images": len(photos),
        "image_names": [rel for _, rel in photos], "missing_targets": missing_targets,
        "strengths": strengths, "sizes": sizes, "metrics": list(metrics), "device": str(dev),
        "precision": ran_precision, "requested_precision": precision,
        "teacher_metrics": list(teacher_metrics) if teachers else [],
        "interval": {"method": interval_method, "confidence": 0.95,
                     **({"n_boot": BOOTSTRAP_SAMPLES, "seed": BOOTSTRAP_SEED}
                        if interval_method == "bootstrap" else {})},
        "psnr_cap_db": PSNR_CAP_DB, "lower_is_better": {m: LOWER_IS_BETTER[m] for m in metrics},
        "results": results, "skipped": skipped,
        "seconds": round(time.perf_counter() - t_start, 3),
    }

"""The compound system: a head model on every aligned face, over a background model.

What ModelScope's DCT-Net pipeline does (``modelscope/pipelines/cv/image_cartoon_pipeline.py``),
for any pair of checkpoints of any family (our own, or graphs imported with
``dctnet-lite import-modelscope``):

1. the background model cartoonizes the whole image (tiled where needed, as
   :class:`~dctnet_lite.inference.Cartoonizer` does);
2. faces and 5 landmarks are found (:class:`~dctnet_lite.face.MTCNNDetector`, or any callable);
   faces whose box is smaller than ``min_face`` pixels are left to the background model;
3. each face is aligned to a 288x288 crop with the official geometry
   (:func:`~dctnet_lite.face.alignment`: ratio 0.75, the default-square reference points),
   the head model cartoonizes the crops (as one batch), and each crop's result is warped back
   with the inverse transform and blended in with our feathered mask
   (:func:`~dctnet_lite.face.soft_mask`), the largest face first as there;
4. the result is at the input's size (or ``size``), always.

Differences from the official pipeline, on purpose: the networks run at the input's resolution
by default (``max_side=720`` scales the shorter side to at most 720 px as it does, and the result
is scaled back); a photo without faces comes back at the input's size too (the official one
returns the 720 px background result then); the mask is ours, not ``alpha.jpg``; the style
strength applies to both models. Outside the faces' masks the result *is* the background model's
(to the bit: the blend only touches each face's window, and weight 0 leaves a pixel as it was).

There is no shipped head model yet: ``head=None`` (and the CLI's ``--compound``) takes the
shipped default checkpoint, :data:`~dctnet_lite.registry.DEFAULT_WEIGHTS`, for the head as well
as for the background (one model in memory, used twice).

:class:`CompoundCartoonizer` is the Python API (images in, the same kind out);
:func:`cartoonize_files_compound` is the file pipeline (reader threads decode *and detect*, so
detection overlaps the networks; progress, failures and atomic writes as
:func:`~dctnet_lite.pipeline.cartoonize_files`). ``timings`` holds the seconds spent per stage
(detect, background, heads, blend).
"""
from __future__ import annotations

import collections
import os
import time
import warnings
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import face as facelib
from . import images as imio
from .checkpoint import default_checkpoint, resolve
from .inference import Cartoonizer, Prepared, same_shape_runs
from .model import strength_vector
from .pipeline import FilesPipeline, FilesReport, _check_workers, plan_files

#: ModelScope's working size: the shorter side scaled down to at most this (``--max-side 720``).
OFFICIAL_MAX_SIDE = 720
#: Head crops per network call.
HEAD_BATCH = 8
STAGES = ("detect", "background", "heads", "blend")


def work_size(w: int, h: int, max_side: Optional[int]) -> Tuple[int, int]:
    """(w, h) with the shorter side scaled down to at most ``max_side`` (the official
    ``resize_size``: ``int(size * long / short)`` for the longer side); unchanged when
    ``max_side`` is ``None`` or the image is small enough."""
    if max_side is None or min(w, h) <= max_side:
        return w, h
    if h > w:
        return max_side, max(1, int(max_side * h / w))
    return max(1, int(max_side * w / h)), max_side


def _resize(rgb: np.ndarray, wh: Tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == tuple(wh):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(tuple(wh), Image.Resampling.LANCZOS))


class CompoundPrepared(NamedTuple):
    """One decoded input with its faces (what :meth:`CompoundCartoonizer.prepare` returns, in a
    reader thread): ``pixels`` (1, 3, h, w) uint8 at the working size ``hw``, ``faces`` found
    there (large enough, largest first), ``out_hw`` the size of the result."""

    pixels: torch.Tensor
    alpha: Optional[np.ndarray]
    kind: str
    hw: Tuple[int, int]
    notes: Tuple[str, ...]
    faces: Tuple[facelib.Face, ...]
    out_hw: Tuple[int, int]

    def finish(self, rgb: np.ndarray):
        """The (H, W, 3) uint8 result in the input's kind (as :meth:`Prepared.finish`)."""
        return Prepared.finish(self, rgb)  # uses kind and alpha only


def _same_checkpoint(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, nn.Module) or isinstance(b, nn.Module):
        return False
    pa = resolve(a) if a is not None else default_checkpoint()
    pb = resolve(b) if b is not None else default_checkpoint()
    return os.path.realpath(pa) == os.path.realpath(pb)


class CompoundCartoonizer:
    """A head model on every aligned face over a background model (see the module docstring).

    Args:
        head, background: checkpoint names, paths or models (``None``: the shipped default;
            there is no shipped head model yet). The same checkpoint for both is loaded once.
        detector: ``"mtcnn"`` (:class:`~dctnet_lite.face.MTCNNDetector`, needs
            ``pip install 'dctnet-lite[face]'`` and ``pip install --no-deps facenet-pytorch``), a
            callable ``rgb (H, W, 3) uint8 -> List[Face]`` (landmarks in that image's pixels), or
            ``None`` (no faces: the background model alone).
        min_face: faces whose box's shorter side is below this many pixels (of the image the
            networks see) are left to the background model (default
            :data:`~dctnet_lite.face.DEFAULT_MIN_FACE`).
        max_side: ``None`` (default): the networks run at the input's resolution (the
            background tiled where needed); ``720``: ModelScope's behaviour, the shorter side
            scaled down to at most 720 px and the result scaled back to the input's size.
        ratio, crop: the alignment (official: 0.75 and 288 px).
        mask: the blending mask in crop pixels, (crop, crop) floats in [0, 1] (default:
            :func:`~dctnet_lite.face.soft_mask`).
        device, precision, tile, tile_overlap, channels_last, max_pixels: as for
            :class:`~dctnet_lite.inference.Cartoonizer` (``tile`` applies to the background
            model; images are scaled on the host).
    """

    def __init__(self, head=None, background=None, *, detector: Union[str, facelib.Detector, None] = "mtcnn",
                 min_face: int = facelib.DEFAULT_MIN_FACE, max_side: Optional[int] = None,
                 ratio: float = facelib.OFFICIAL_RATIO, crop: int = facelib.CROP,
                 mask: Optional[np.ndarray] = None, device: Union[str, torch.device] = "auto",
                 precision: str = "auto", tile: Optional[int] = None, tile_overlap: int = 64,
                 channels_last: Optional[bool] = None, max_pixels=None):
        if isinstance(min_face, bool) or int(min_face) != min_face or min_face < 1:
            raise ValueError(f"min_face must be a whole number of pixels >= 1, got {min_face}")
        if max_side is not None and (isinstance(max_side, bool) or int(max_side) != max_side
                                     or not 16 <= max_side <= imio.MAX_SIZE):
            raise ValueError(f"max_side must be None or lie in 16..{imio.MAX_SIZE} pixels, got {max_side}")
        if not 0.1 <= float(ratio) <= 4.0:
            raise ValueError(f"ratio must lie in [0.1, 4], got {ratio}")
        if not 32 <= int(crop) <= 2048 or int(crop) % 16:
            raise ValueError(f"crop must be a multiple of 16 in 32..2048 pixels, got {crop}")
        self.min_face, self.max_side = int(min_face), max_side
        self.ratio, self.crop = float(ratio), int(crop)
        mask = facelib.soft_mask(self.crop) if mask is None else np.asarray(mask, dtype=np.float32)
        if mask.shape != (self.crop, self.crop) or not np.isfinite(mask).all() \
                or mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"mask must be ({self.crop}, {self.crop}) floats in [0, 1], got {mask.shape}")
        self.mask = torch.from_numpy(np.ascontiguousarray(mask))[None]
        t0 = time.perf_counter()
        kw = dict(device=device, precision=precision, channels_last=channels_last, resize="host",
                  max_pixels=max_pixels)
        self.background = Cartoonizer(background, tile=tile, tile_overlap=tile_overlap, **kw)
        if _same_checkpoint(head, background):
            self.head = self.background  # one model, used for both
        else:
            self.head = Cartoonizer(head, **kw)
        self.device = self.background.device
        self.detector = facelib.load_detector(detector, min_face=max(12, min(self.min_face, 10_000)))
        self.load_seconds = time.perf_counter() - t0
        self.cache = None
        self.timings: Dict[str, float] = collections.defaultdict(float)

    # ------------------------------------------------------------------ what the file pipeline uses
    @property
    def tile_progress(self):
        return self.background.tile_progress

    @tile_progress.setter
    def tile_progress(self, hook) -> None:
        self.background.tile_progress = hook

    def cache_lookup(self, path, strength, size):
        """No result cache for the compound system: always a miss."""
        return None, None

    def cache_store(self, key, result) -> None:
        pass

    # ------------------------------------------------------------------ steps
    def detect(self, rgb: np.ndarray) -> Tuple[facelib.Face, ...]:
        """The faces of an (H, W, 3) uint8 image that the head model takes: at least
        ``min_face`` px, largest first (the official order: later, smaller faces blend over)."""
        if self.detector is None:
            return ()
        t0 = time.perf_counter()
        try:
            found = self.detector(rgb)
        except (ValueError, MemoryError):
            raise
        except Exception as e:  # one image's failure (reported per file), not the whole run's
            raise ValueError(f"face detection failed: {type(e).__name__}: {e}") from e
        finally:
            self.timings["detect"] += time.perf_counter() - t0
        faces = [f for f in found if f.size >= self.min_face]
        return tuple(sorted(faces, key=lambda f: -f.area))

    def prepare(self, image, size: Optional[int] = None, *, pin: bool = False) -> CompoundPrepared:
        """Decode (as :meth:`Cartoonizer.prepare`), scale to the working size and find the faces."""
        p = self.background.prepare(image, size, pin=False)
        oh, ow = p.hw
        rgb = p.pixels[0].permute(1, 2, 0).numpy()
        ww, wh = work_size(ow, oh, self.max_side)
        rgb = _resize(rgb, (ww, wh))
        faces = self.detect(rgb)
        t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
        if pin and self.device.type == "cuda":
            t = t.pin_memory()
        return CompoundPrepared(t, p.alpha, p.kind, (wh, ww), p.notes, faces, (oh, ow))

    def _heads(self, crops: List[torch.Tensor], strength: float) -> List[torch.Tensor]:
        out: List[torch.Tensor] = []
        for i in range(0, len(crops), HEAD_BATCH):
            y = self.head.run_uint8(torch.stack(crops[i:i + HEAD_BATCH]), strength)
            out += [torch.from_numpy(a).permute(2, 0, 1).float() for a in y]
        return out

    @torch.inference_mode()
    def run_prepared(self, preps: Sequence[CompoundPrepared], strength: float = 1.0) -> List[np.ndarray]:
        """The (H, W, 3) uint8 results of prepared inputs, each at its ``out_hw``: the
        background model over every image (neighbours of one size as one batch), the head model
        over every face's crop, the crops blended back."""
        strength_vector(strength, 1)
        strength = float(strength)
        t0 = time.perf_counter()
        bgs: List[Optional[np.ndarray]] = [None] * len(preps)
        for idx in same_shape_runs([p.hw for p in preps], len(preps) or 1):
            outs = self.background.run_uint8([preps[i].pixels for i in idx], strength, preps[idx[0]].hw)
            for j, i in enumerate(idx):
                bgs[i] = outs[j]
        t1 = time.perf_counter()
        self.timings["background"] += t1 - t0
        crops, where = [], []
        for i, p in enumerate(preps):
            if not p.faces:
                continue
            src = p.pixels[0].float()
            for f in p.faces:
                m, m_inv = facelib.alignment(f.points, self.ratio, self.crop)
                crop = facelib.warp_affine(src, m, (self.crop, self.crop), border=255.0)
                crops.append(crop.round_().clamp_(0, 255).to(torch.uint8))
                where.append((i, m_inv))
        heads = self._heads(crops, strength) if crops else []
        t2 = time.perf_counter()
        self.timings["heads"] += t2 - t1
        results = []
        by_image: Dict[int, List[Tuple[torch.Tensor, np.ndarray]]] = collections.defaultdict(list)
        for (i, m_inv), head in zip(where, heads):
            by_image[i].append((head, m_inv))
        for i, p in enumerate(preps):
            rgb = bgs[i]
            if by_image.get(i):
                rgb = self.blend(rgb, by_image[i])
            oh, ow = p.out_hw
            results.append(_resize(rgb, (ow, oh)))
        self.timings["blend"] += time.perf_counter() - t2
        return results

    def blend(self, background: np.ndarray, heads: Sequence[Tuple[torch.Tensor, np.ndarray]]) -> np.ndarray:
        """Blend head results (each (3, crop, crop) float 0..255 with its crop -> image matrix)
        into an (H, W, 3) uint8 background result, in order; only each face's window is touched,
        and a pixel of mask weight 0 keeps the background's value exactly."""
        h, w = background.shape[:2]
        res = torch.from_numpy(np.array(background, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        touched = False
        for head, m_inv in heads:
            win = facelib.face_window(m_inv, self.crop, (h, w))
            if win is None:
                continue
            x0, y0, x1, y1 = win
            hw = (y1 - y0, x1 - x0)
            head_w = facelib.warp_affine(head, m_inv, hw, origin=(x0, y0))
            mask_w = facelib.warp_affine(self.mask, m_inv, hw, origin=(x0, y0)).clamp_(0, 1)
            region = res[:, y0:y1, x0:x1]
            res[:, y0:y1, x0:x1] = torch.where(mask_w > 0, mask_w * head_w + (1 - mask_w) * region, region)
            touched = True
        if not touched:
            return background
        return res.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    # ------------------------------------------------------------------ images
    def __call__(self, image: Any, strength: float = 1.0, size: Optional[int] = None):
        """Cartoonize one image (a path, PIL image, HxWxC array, or a (3,H,W)/(B,3,H,W) tensor in
        [0, 1]); returns the same kind, at the input's size (or ``size``, the longer side)."""
        if isinstance(image, torch.Tensor):
            return self._call_tensor(image, strength, size)
        p = self.prepare(image, size)
        for note in p.notes:
            warnings.warn(f"{image}: {note}", UserWarning, stacklevel=2)
        return p.finish(self.run_prepared([p], strength)[0])

    def _call_tensor(self, t: torch.Tensor, strength, size):
        single = t.dim() == 3
        x = t[None] if single else t
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 1:
            raise ValueError(f"tensor input must be (3,H,W) or (B,3,H,W), got {tuple(t.shape)}")
        x = x if x.dtype == torch.uint8 else (x.detach().float().clamp(0, 1) * 255).round()
        arrays = [a.permute(1, 2, 0).to("cpu", torch.uint8).numpy() for a in x]
        outs = self.batch(arrays, strength, size)
        y = torch.stack([torch.from_numpy(o).permute(2, 0, 1) for o in outs]).float().div_(255).to(t.device)
        return y[0] if single else y

    def batch(self, images: Sequence[Any], strength: float = 1.0, size: Optional[int] = None,
              batch_size: int = 8) -> list:
        """Cartoonize many images; neighbours of the same size share background batches."""
        prepared = [self.prepare(im, size) for im in images]
        results: list = [None] * len(prepared)
        for idx in same_shape_runs([p.hw for p in prepared], batch_size):
            outs = self.run_prepared([prepared[i] for i in idx], strength)
            for j, i in enumerate(idx):
                results[i] = prepared[i].finish(outs[j])
        return results

    def reset_timings(self) -> None:
        self.timings = collections.defaultdict(float)


class _CompoundFilesPipeline(FilesPipeline):
    """The file pipeline with a :class:`CompoundCartoonizer`: its readers' ``prepare`` also
    detects the faces; a batch runs through :meth:`CompoundCartoonizer.run_prepared`."""

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        try:
            outs = self.cz.run_prepared([p[2] for p in pending], self.strength)
        except Exception as e:  # a whole batch failing is reported per file, as the parent does
            self._report.failed += [(str(p[0]), f"inference failed: {type(e).__name__}: {e}") for p in pending]
            for p in pending:
                self._bar.update(p[0].name)
        else:
            for (src, dst, prep, key), rgb in zip(pending, outs):
                self._writes.append((src, dst, self._writers.submit(self._write_result, dst, rgb,
                                                                     prep.alpha, key)))
        pending.clear()


def cartoonize_files_compound(inputs: Iterable, out_dir, *, head=None, background=None,
                              detector: Union[str, facelib.Detector, None] = "mtcnn",
                              min_face: int = facelib.DEFAULT_MIN_FACE, max_side: Optional[int] = None,
                              strength: float = 1.0, size: Optional[int] = None, device: str = "auto",
                              precision: str = "auto", batch_size: int = 4, tile: Optional[int] = None,
                              ext: str = ".png", overwrite_inputs: bool = False,
                              progress: Optional[bool] = None,
                              cartoonizer: Optional[CompoundCartoonizer] = None,
                              workers: Optional[int] = None, png_level: int = imio.DEFAULT_PNG_LEVEL,
                              max_pixels=None) -> FilesReport:
    """:func:`~dctnet_lite.pipeline.cartoonize_files` with the compound system: files, folders
    and globs into ``out_dir``, each result at its input's size (or ``size``). The reader
    threads (``workers``) decode and detect faces while the networks run; a file that fails is
    reported and the rest are written, atomically. No result cache. The other arguments are
    :class:`CompoundCartoonizer`'s (ignored when ``cartoonizer`` is given)."""
    _check_workers(workers)
    if workers is not None and int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    plan = plan_files(inputs, out_dir, ext=ext, overwrite_inputs=overwrite_inputs, batch_size=batch_size,
                      png_level=png_level, strength=strength, size=size)
    report = FilesReport(failed=list(plan.failed))
    if plan.jobs:
        cz = cartoonizer or CompoundCartoonizer(head, background, detector=detector, min_face=min_face,
                                                max_side=max_side, device=device, precision=precision,
                                                tile=tile, max_pixels=max_pixels)
        _CompoundFilesPipeline(cz, strength=strength, size=size, batch_size=batch_size, workers=workers,
                               png_level=png_level, progress=progress).run(plan, report)
    report.seconds = plan.seconds()
    return report


def describe(cz: CompoundCartoonizer) -> str:
    """One line naming the pair and the settings (for logs and the CLI)."""
    def name(c: Cartoonizer) -> str:
        info = c.checkpoint_info
        return info.name if info is not None else type(c.model).__name__

    det = getattr(cz.detector, "name", None) or ("none" if cz.detector is None else "custom")
    return (f"head {name(cz.head)}, background {name(cz.background)}, detector {det}, "
            f"min face {cz.min_face} px" + (f", max side {cz.max_side}" if cz.max_side else ""))


__all__ = ["CompoundCartoonizer", "CompoundPrepared", "cartoonize_files_compound", "work_size",
           "OFFICIAL_MAX_SIDE", "STAGES", "describe"]

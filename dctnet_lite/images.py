"""Image files in and out: decoding any mode to RGB (+ alpha), finding inputs, atomic writes.

Decisions (documented in the README):
- EXIF orientation is applied, so the output is upright as a viewer shows the input.
- Grayscale (L, 1, I;16, I, F) becomes 3-channel RGB; the output is RGB.
- Alpha (RGBA, LA, PA, palette with transparency) is kept aside, never cartoonized: the RGB
  content is cartoonized and the original alpha re-attached (resized with the image). A format
  without alpha (JPEG) gets the result composited over white.
- 16-bit images are scaled to 8 bits (value / 257); float images are read as [0, 1].
"""
from __future__ import annotations

import glob
import io
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from .fileutil import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ALPHA_FORMATS = {"png", "webp", "tiff", "tif"}


class ImageReadError(ValueError):
    """A file could not be decoded as an image."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
    # integers wider than 8 bits: 16-bit data (or 32-bit 'I' images holding 16-bit values)
    hi = 65535 if int(arr.max(initial=0)) > 255 or arr.dtype.itemsize >= 2 else 255
    if hi == 255:
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.clip((arr.astype(np.float64) / 257.0) + 0.5, 0, 255).astype(np.uint8)


def split_alpha(img: Image.Image) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Any PIL image -> (H, W, 3) uint8 RGB and an (H, W) uint8 alpha or ``None``."""
    alpha = None
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
        img = img.convert("RGB") if img.mode != "LA" else img.convert("L")
    if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        g = _to_uint8(np.asarray(img))
        return np.repeat(g[..., None], 3, axis=2), alpha
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8), alpha


def array_to_rgb(arr: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """HW, HWC (C = 1, 3, 4) arrays of uint8/uint16/float -> RGB uint8 and alpha."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC image array with C in 1, 3, 4; got shape {arr.shape}")
    arr = _to_uint8(arr)
    alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
    rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
    return np.ascontiguousarray(rgb), alpha


def read_image(path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Decode an image file (EXIF orientation applied) -> RGB uint8 array and alpha."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return split_alpha(img)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def target_size(w: int, h: int, size: Optional[int]) -> Tuple[int, int]:
    """(w, h) scaled so that the longer side is ``size`` (aspect kept; at least 1 px)."""
    if size is None:
        return w, h
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    scale = int(size) / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_rgb(rgb: np.ndarray, size: Optional[int]) -> np.ndarray:
    """An (H, W, 3) uint8 array with its longer side scaled to ``size`` by Pillow's Lanczos
    (the same array when nothing changes)."""
    h, w = rgb.shape[:2]
    tw, th = target_size(w, h, size)
    if (tw, th) == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((tw, th), Image.Resampling.LANCZOS))


def compose(rgb: np.ndarray, alpha: Optional[np.ndarray]) -> Image.Image:
    """RGB array (+ alpha, resized to fit if needed) -> PIL image (RGB or RGBA)."""
    img = Image.fromarray(rgb, "RGB")
    if alpha is None:
        return img
    a = Image.fromarray(alpha, "L")
    if a.size != img.size:
        a = a.resize(img.size, Image.Resampling.LANCZOS)
    img.putalpha(a)
    return img


#: zlib level of PNG outputs: Pillow's default (level 1 is about 3x faster, files ~20 % larger).
DEFAULT_PNG_LEVEL = 6


def save_image(img: Image.Image, path, quality: int = 95, png_level: int = DEFAULT_PNG_LEVEL) -> None:
    """Write atomically; formats without alpha get the image composited over white.
    ``quality``: JPEG / WebP quality; ``png_level``: PNG zlib level 0-9."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    fmt = {"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt)
    if img.mode == "RGBA" and fmt not in ALPHA_FORMATS:
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        img = bg
    buf = io.BytesIO()
    kwargs = ({"quality": quality} if fmt in ("jpeg", "webp") else
              {"compress_level": int(png_level)} if fmt == "png" else {})
    try:
        img.save(buf, format=fmt.upper() if fmt else "PNG", **kwargs)
    except (KeyError, ValueError) as e:
        raise ValueError(f"cannot write {path}: unknown image format {fmt!r} ({e})") from None
    atomic_write_bytes(path, buf.getvalue())


def is_image_name(p) -> bool:
    return Path(p).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root) -> List[Path]:
    """Image files under a folder, recursively, sorted."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p))


def expand_inputs(inputs: Iterable) -> Tuple[List[Tuple[Path, Path]], List[Tuple[str, str]]]:
    """Files, folders (recursive) and globs -> ``[(path, relative output name)]`` and failures.

    A folder keeps its inner structure in the relative name; files and glob matches use their
    own name. Missing paths come back as failures rather than stopping the batch.
    """
    found, missing = [], []
    for item in inputs:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in list_images(p)]
        elif p.is_file():
            found.append((p, Path(p.name)))
        elif glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if m.is_file() and is_image_name(m)]
            if not files:
                missing.append((s, "the pattern matches no image file"))
            found += [(m, Path(m.name)) for m in files]
        else:
            missing.append((s, "no such file or folder"))
    return found, missing


def plan_outputs(found: Sequence[Tuple[Path, Path]], out_dir, ext: str = ".png",
                 overwrite_inputs: bool = False) -> Tuple[List[Tuple[Path, Path]], List[Tuple[str, str]]]:
    """Map inputs to output paths: unique names, and never an input unless ``overwrite_inputs``."""
    inputs = {p.resolve() for p, _ in found}
    used, plan, refused = set(), [], []
    for path, rel in found:
        out = Path(out_dir) / rel.with_suffix(ext)
        n = 2
        while out.resolve() in used:
            out = Path(out_dir) / rel.with_name(f"{rel.stem}-{n}{ext}")
            n += 1
        if out.resolve() in inputs and not overwrite_inputs:
            refused.append((str(path), f"refusing to overwrite the input {out} (pass overwrite_inputs)"))
            continue
        used.add(out.resolve())
        plan.append((path, out))
    return plan, refused

"""Photo folders for training: recursive listing, a hash-fixed train/val split, augmentation.

Decisions:

- The split of a file is fixed by the SHA-1 of its path relative to the folder (posix form), so
  adding or removing files never moves another file between train and val.
- Decoding goes through :func:`dctnet_lite.images.read_image`: EXIF orientation applied, any mode
  (grayscale, palette, 16-bit, ...) to RGB; an alpha channel is composited over white.
- A file that cannot be decoded raises :class:`~dctnet_lite.images.ImageReadError` naming the file.
  Nothing is skipped silently: a broken file in a training set is a data bug to fix, and a
  DataLoader cannot drop one sample of a batch cleanly anyway.
- Train crops: a square window whose side is a random fraction ``scale`` of the shorter image
  side, resized (antialiased bicubic) to ``crop`` x ``crop`` (upscaled if the image is smaller),
  random horizontal flip, colour jitter (brightness, contrast, saturation). Val: the centred
  square of the full shorter side, resized to ``crop``; no randomness at all.
- Randomness comes from torch's global RNG only; in workers torch seeds it per worker from the
  main process RNG, so a seeded run is reproducible. :func:`seed_worker` also seeds ``random``
  and numpy for code that uses them.

torch, numpy and PIL only (no lightning here).
"""
from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .images import IMAGE_EXTENSIONS, ImageReadError, read_image
from .images import list_images as _list_images

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "PairedFolder", "PhotoFolder", "list_images",
           "load_rgb", "files_by_license", "seed_worker", "split_of"]

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def list_images(root) -> List[Path]:
    """Image files (jpg jpeg png webp bmp tif tiff, any case) under ``root``, recursive, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return _list_images(root)


#: Fraction of files in the validation split, project-wide: training recipes and evaluation agree.
VAL_FRACTION = 0.15


def split_of(relpath, val_fraction: float = VAL_FRACTION) -> str:
    """``"val"`` or ``"train"``, fixed by the SHA-1 of the relative posix path.

    The last 8 bytes of the digest, read as a fraction of 2**64, are compared with ``val_fraction``
    (so a larger fraction only moves files from train to val).
    """
    key = Path(relpath).as_posix().encode()
    u = int.from_bytes(hashlib.sha1(key).digest()[-8:], "big") / 2.0 ** 64
    return "val" if u < val_fraction else "train"


def files_by_license(manifest, licenses: Sequence[str]) -> List[str]:
    """Names (column ``file``) of the manifest rows whose ``license_of_repo`` contains one of
    ``licenses`` (case-insensitive substrings such as ``MIT``, ``BSD``, ``Apache``)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"file", "license_of_repo"} <= set(rows[0]):
        raise ValueError(f"{manifest}: expected columns 'file' and 'license_of_repo'")
    wanted = [s.lower() for s in licenses]
    return [r["file"] for r in rows if any(w in r["license_of_repo"].lower() for w in wanted)]


def load_rgb(path) -> Image.Image:
    """Decode ``path`` to an upright RGB PIL image (alpha composited over white)."""
    rgb, alpha = read_image(path)
    if alpha is not None:
        a = alpha[..., None].astype(np.float32) / 255.0
        rgb = (rgb * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and numpy from the per-worker torch seed."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def color_jitter(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in ``[1 - amount, 1 + amount]``."""
    if amount <= 0:
        return x
    b, c, s = (1.0 + amount * (2.0 * torch.rand(3) - 1.0)).tolist()
    x = x * b
    mean = (x * _LUMA).sum(0).mean()
    x = (x - mean) * c + mean
    gray = (x * _LUMA).sum(0, keepdim=True)
    return (gray + (x - gray) * s).clamp(0.0, 1.0)


class PhotoFolder(torch.utils.data.Dataset):
    """Photos under ``root`` (recursive) for one split; items are
    ``dict(photo=(3, crop, crop) float in [0, 1], path=str)``.

    ``split`` is ``"train"`` (random crop/flip/jitter), ``"val"`` (deterministic centre crop) or
    ``"all"`` (every file, train augmentation). ``files`` restricts the folder to these relative
    paths; ``min_side`` drops images whose shorter side is smaller (header read only).
    """

    def __init__(self, root, split: str = "train", crop: int = 256, scale: Tuple[float, float] = (0.5, 1.0),
                 flip: bool = True, color_jitter: float = 0.1, val_fraction: float = VAL_FRACTION,
                 min_side: Optional[int] = None, files: Optional[Sequence[str]] = None):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.root, self.split, self.crop = Path(root), split, int(crop)
        self.scale, self.flip, self.jitter = (float(scale[0]), float(scale[1])), flip, color_jitter
        paths = list_images(self.root)
        if files is not None:
            keep = {Path(f).as_posix() for f in files}
            paths = [p for p in paths if self._rel(p) in keep]
        if split != "all":
            paths = [p for p in paths if split_of(self._rel(p), val_fraction) == split]
        if min_side:
            paths = [p for p in paths if min(_size(p)) >= min_side]
        if not paths:
            raise FileNotFoundError(
                f"no images for split {split!r} in {self.root} (extensions {', '.join(IMAGE_EXTENSIONS)}"
                + (f"; restricted to {len(files)} listed files" if files is not None else "")
                + (f"; val_fraction={val_fraction}" if split != "all" else "")
                + (f"; min_side={min_side}" if min_side else "") + ")")
        self.paths = paths

    def _rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def train(self) -> bool:
        return self.split != "val"

    def sample_geometry(self, size: Tuple[int, int]) -> Tuple[Tuple[float, float, float, float], bool]:
        """A crop window in relative coordinates ``(x0, y0, x1, y1)`` of an image of ``size`` (w, h),
        and whether to flip it."""
        w, h = size
        if not self.train:
            side = min(w, h)
            x0, y0 = (w - side) / 2, (h - side) / 2
            return (x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h), False
        side = _uniform(*self.scale) * min(w, h)
        x0, y0 = _uniform(0, w - side), _uniform(0, h - side)
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return (x0 / w, y0 / h, (x0 + side) / w, (y0 + side) / h), flip

    def render_crop(self, img: Image.Image, rel_box, flip: bool) -> torch.Tensor:
        w, h = img.size
        box = (rel_box[0] * w, rel_box[1] * h, rel_box[2] * w, rel_box[3] * h)
        x = to_tensor(img.resize((self.crop, self.crop), Image.Resampling.BICUBIC, box=box))
        return x.flip(-1) if flip else x

    def __getitem__(self, i: int) -> Dict:
        path = self.paths[i]
        img = load_rgb(path)
        box, flip = self.sample_geometry(img.size)
        photo = self.render_crop(img, box, flip)
        if self.train:
            photo = color_jitter(photo, self.jitter)
        return {"photo": photo, "path": str(path)}


def _size(path: Path) -> Tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


class PairedFolder(PhotoFolder):
    """Photos with per-photo targets: ``photo_root/a/b.jpg`` pairs with ``target_root/a/b.*``
    (same relative path stem, any image extension). The same crop and flip apply to both; colour
    jitter to the photo only. Items are ``dict(photo=..., target=..., path=...)``.
    """

    def __init__(self, photo_root, target_root, **kwargs):
        super().__init__(photo_root, **kwargs)
        self.target_root = Path(target_root)
        by_stem: Dict[str, Path] = {}
        for t in list_images(self.target_root):
            stem = t.relative_to(self.target_root).with_suffix("").as_posix()
            if stem in by_stem:
                raise ValueError(f"two targets share the name {stem!r} in {self.target_root}: "
                                 f"{by_stem[stem].name} and {t.name}")
            by_stem[stem] = t
        stems = [Path(self._rel(p)).with_suffix("").as_posix() for p in self.paths]
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(stems)} photos in {self.root} have no target in {self.target_root} "
                f"(matched by relative path without extension), e.g. {', '.join(missing[:5])}")
        self.targets = [by_stem[s] for s in stems]

    def __getitem__(self, i: int) -> Dict:
        img, tgt = load_rgb(self.paths[i]), load_rgb(self.targets[i])
        box, flip = self.sample_geometry(img.size)
        photo, target = self.render_crop(img, box, flip), self.render_crop(tgt, box, flip)
        if self.train:
            photo = color_jitter(photo, self.jitter)
        return {"photo": photo, "target": target, "path": str(self.paths[i])}

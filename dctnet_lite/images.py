"""Image files in and out: decoding any mode to RGB (+ alpha), finding inputs, atomic writes.

Decisions (documented in the README):
- EXIF orientation is applied, so the output is upright as a viewer shows the input.
- Grayscale (L, 1, I;16, I, F) becomes 3-channel RGB; the output is RGB.
- Alpha (RGBA, LA, PA, palette with transparency) is kept aside, never cartoonized: the RGB
  content is cartoonized and the original alpha re-attached (resized with the image). A format
  without alpha (JPEG) gets the result composited over white.
- 16-bit images are scaled to 8 bits (value / 257); float images are read as [0, 1].
- Arrays: uint8 as they are, uint16 / 257, bool as 0 / 255, float in [0, 1] (or [0, 255] when
  the maximum is above 1); other integer dtypes are refused (their range is ambiguous).
- A file whose header declares more pixels than the pixel limit (:func:`max_pixels_limit`:
  64 MP unless ``$DCTNET_LITE_MAX_PIXELS`` or the caller says otherwise) is refused before
  it is decoded.
- Animated and multi-frame files (GIF, APNG, WebP, TIFF pages): the first frame, with a note
  (:attr:`Decoded.notes`) that the file pipeline puts in its report's warnings.
- Folders and ``**`` globs are walked with loop detection (symlinked folders are followed, a
  folder already seen by device and inode is not entered again) and each file is found once; a
  folder that cannot be listed is a failure of its own, the walk goes on.
"""
from __future__ import annotations

import fnmatch
import glob
import io
import os
import warnings
from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image, ImageOps

from .fileutil import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ALPHA_FORMATS = {"png", "webp", "tiff", "tif"}

#: The pixel limit of a decoded image (width x height) unless configured: 64 megapixels.
DEFAULT_MAX_PIXELS = 64_000_000
#: Environment variable that sets the pixel limit (an integer; 0 = no limit).
ENV_MAX_PIXELS = "DCTNET_LITE_MAX_PIXELS"
#: The largest ``size`` (longer output side, pixels) any call accepts; the output must also stay
#: within the pixel limit.
MAX_SIZE = 16384


class ImageReadError(ValueError):
    """A file could not be decoded as an image."""


class ImageTooLarge(ImageReadError):
    """An image (as declared by its header, or as ``size`` would make it) is above the pixel limit."""


def max_pixels_limit(value=None) -> Optional[int]:
    """The pixel limit in force: ``value`` when given, else ``$DCTNET_LITE_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`; ``0`` (or a negative number) means no limit (``None``)."""
    src = "max_pixels"
    if value is None:
        env = os.environ.get(ENV_MAX_PIXELS, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        value, src = env, f"${ENV_MAX_PIXELS}"
    try:
        n = int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{src} must be a whole number of pixels (0 for no limit), got {value!r}") from None
    if isinstance(value, bool) or (not isinstance(value, str) and n != value):
        raise ValueError(f"{src} must be a whole number of pixels (0 for no limit), got {value!r}")
    return n if n > 0 else None


def _mp(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


def check_pixels(w: int, h: int, max_pixels: Optional[int], what: str) -> None:
    """Raise :class:`ImageTooLarge` when ``w * h`` is above ``max_pixels`` (``None``: no limit)."""
    if max_pixels is not None and int(w) * int(h) > max_pixels:
        raise ImageTooLarge(f"{what} is {w}x{h} ({_mp(int(w) * int(h))}), above the pixel limit of "
                            f"{_mp(max_pixels)} (raise it with --max-pixels or ${ENV_MAX_PIXELS}; 0 = no limit)")


def check_size(size: Optional[int]) -> Optional[int]:
    """``size`` as an int after checking it lies in 1..:data:`MAX_SIZE` (``None`` passes)."""
    if size is None:
        return None
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"size must be a whole number of pixels, got {size!r}")
    if not 1 <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must lie in 1..{MAX_SIZE} pixels (the longer output side), got {size}")
    return int(size)


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


ARRAY_DTYPES = "uint8 (0-255), uint16 (0-65535), bool, or float (0-1)"


def check_not_empty(h: int, w: int, what: str = "the image") -> None:
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{what} is empty ({w}x{h} pixels): nothing to cartoonize")


def array_to_rgb(arr: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """HW, HWC (C = 1, 3, 4) arrays of uint8/uint16/bool/float -> RGB uint8 and alpha.

    Integer dtypes other than uint8 and uint16 are refused: an int32 or int64 array may hold
    8-bit or 16-bit values and its dtype does not say which (convert it, e.g.
    ``arr.astype(np.uint8)``)."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW or HxWxC image array with C in 1, 3, 4; got shape {arr.shape}")
    check_not_empty(arr.shape[0], arr.shape[1], f"the image array (shape {arr.shape})")
    if not (arr.dtype in (np.uint8, np.uint16, np.bool_) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"image arrays of dtype {arr.dtype} are ambiguous (8-bit or 16-bit values?): give "
                         f"{ARRAY_DTYPES}, e.g. arr.astype(np.uint8)")
    arr = _to_uint8(arr)
    alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
    rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
    return np.ascontiguousarray(rgb), alpha


class Decoded(NamedTuple):
    """A decoded file: (H, W, 3) uint8 ``rgb``, (H, W) uint8 ``alpha`` or ``None``, and ``notes``
    (warnings about the file, e.g. that only the first of its frames was read)."""

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    notes: Tuple[str, ...] = ()


def _frames(img: Image.Image) -> int:
    """Frames of an animated or multi-page file (1 for a still image; an MPO photo's extra
    frames are previews or depth maps, not content, and do not count)."""
    if img.format == "MPO":
        return 1
    try:
        return int(getattr(img, "n_frames", 1) or 1)
    except (OSError, ValueError, EOFError):
        return 1


def _frames_note(n: int) -> str:
    return f"{n} frames (animated or multi-page): only the first frame was cartoonized"


def file_notes(path) -> Tuple[str, ...]:
    """The notes :func:`decode_image` would give ``path``, from its header alone (what a cached
    result of the file is reported with); ``()`` for a file that cannot be opened."""
    try:
        with Image.open(path) as img:
            n = _frames(img)
    except Exception:
        return ()
    return (_frames_note(n),) if n > 1 else ()


def decode_image(path, max_pixels=None) -> Decoded:
    """Decode an image file (EXIF orientation applied, first frame of an animation).

    The header's size is checked against the pixel limit (:func:`max_pixels_limit` of
    ``max_pixels``) before any pixel is decoded. Raises :class:`ImageReadError` (or its
    :class:`ImageTooLarge`) naming the file."""
    limit = max_pixels_limit(max_pixels)
    notes: List[str] = []
    try:
        with Image.open(path) as img:
            w, h = img.size
            check_pixels(w, h, limit, f"{path}: the image")
            check_not_empty(h, w, f"{path}: the image")
            n = _frames(img)
            if n > 1:
                img.seek(0)
                notes.append(_frames_note(n))
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb, alpha = split_alpha(img)
            return Decoded(rgb, alpha, tuple(notes))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file") from None
    except PermissionError as e:
        raise ImageReadError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it") from None


def read_image(path, max_pixels=None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Decode an image file (EXIF orientation applied) -> RGB uint8 array and alpha
    (see :func:`decode_image`; its notes become a ``UserWarning``)."""
    d = decode_image(path, max_pixels)
    for note in d.notes:
        warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)
    return d.rgb, d.alpha


def target_size(w: int, h: int, size: Optional[int]) -> Tuple[int, int]:
    """(w, h) scaled so that the longer side is ``size`` (aspect kept; at least 1 px)."""
    if size is None:
        return w, h
    size = check_size(size)
    scale = size / max(w, h)
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


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


class _Walker:
    """Loop-safe folder walking shared by folders and ``**`` globs: symlinked folders are
    followed, a folder already entered (by device and inode) is not entered again, each file
    (by device and inode) is yielded once, and folders that cannot be listed are collected."""

    def __init__(self):
        self.files_seen: Set[Tuple[int, int]] = set()
        self.errors: List[Tuple[str, str]] = []
        self.matched = 0  #: image files the last glob matched, found before or not

    def new_file(self, path: str) -> bool:
        """Whether ``path`` is a regular file not yielded before (by device and inode); a file
        that exists but cannot be looked at is collected as an error."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            if is_image_name(path):
                self.errors.append((path, f"cannot be read ({_why(e)})"))
            return False
        if not _stat_is_file(st):
            return False
        key = (st.st_dev, st.st_ino)
        if key in self.files_seen:
            return False
        self.files_seen.add(key)
        return True

    def listdir(self, path: str) -> Optional[List[os.DirEntry]]:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.errors.append((path, f"cannot list this folder ({_why(e)}): its images were skipped"))
            return None

    def walk_files(self, root: str, dirs_seen: Set[Tuple[int, int]]) -> Iterable[str]:
        """Every file under ``root`` (depth first, sorted by name within each folder)."""
        try:
            st = os.stat(root)
        except OSError as e:
            self.errors.append((root, f"cannot open this folder ({_why(e)})"))
            return
        if (st.st_dev, st.st_ino) in dirs_seen:
            return
        dirs_seen.add((st.st_dev, st.st_ino))
        entries = self.listdir(root)
        for e in entries or ():
            path = os.path.join(root, e.name)
            if _is_dir(e):
                yield from self.walk_files(path, dirs_seen)
            else:
                yield path


def _stat_is_file(st) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked folder is walked (loop-safe)
    except OSError:
        return False


def walk_images(root, walker: Optional[_Walker] = None) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Image files under a folder, recursively (symlinked folders followed, loops entered once,
    each file once), in sorted path order; and ``(folder, reason)`` for folders that could not
    be listed."""
    walker = walker or _Walker()
    n_err = len(walker.errors)
    files = [Path(p) for p in walker.walk_files(os.fspath(root), set())
             if is_image_name(p) and walker.new_file(p)]
    return sorted(files), walker.errors[n_err:]


def list_images(root) -> List[Path]:
    """Image files under a folder, recursively, sorted (see :func:`walk_images`); a folder that
    cannot be listed is skipped with a ``UserWarning``."""
    files, errors = walk_images(root)
    for folder, why in errors:
        warnings.warn(f"{folder}: {why}", UserWarning, stacklevel=2)
    return files


def _split_pattern(pattern: str) -> Tuple[str, List[str]]:
    """A glob pattern -> (its leading folder without wildcards, the remaining components)."""
    parts = pattern.replace(os.sep, "/").split("/") if os.sep != "/" else pattern.split("/")
    base: List[str] = []
    i = 0
    while i < len(parts) - 1 and not glob.has_magic(parts[i]):
        base.append(parts[i])
        i += 1
    rest = [p for p in parts[i:] if p not in ("", ".")]
    if not base:
        root = "."
    elif base == [""]:
        root = "/"
    else:
        root = "/".join(base) or "/"
    return root, rest


def glob_images(pattern: str, walker: Optional[_Walker] = None) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Image files matching a glob pattern (``*``, ``?``, ``[...]``; ``**`` for any depth, as
    ``glob.glob(recursive=True)``: names starting with a dot match only a pattern that starts
    with one), each once, sorted; loop-safe as :func:`walk_images`; and the folders that could
    not be listed."""
    walker = walker or _Walker()
    n_err = len(walker.errors)
    root, comps = _split_pattern(os.path.expanduser(pattern))
    found: List[str] = []
    entered: Set[Tuple[int, Tuple[int, int]]] = set()  # (pattern position, folder) already matched

    def visible(name: str, comp: str) -> bool:
        return not name.startswith(".") or comp.startswith(".")

    def match(folder: str, i: int) -> None:
        if i == len(comps):
            return
        comp = comps[i]
        last = i == len(comps) - 1
        try:
            st = os.stat(folder)
        except OSError:
            return
        key = (i, (st.st_dev, st.st_ino))
        if key in entered:
            return
        entered.add(key)
        if comp == "**":
            if last:  # everything below, files and folders
                for p in walker.walk_files(folder, set()):
                    rel = os.path.relpath(p, folder)
                    if not any(part.startswith(".") for part in rel.split(os.sep)):
                        found.append(p)
                return
            match(folder, i + 1)  # zero folders
            for e in walker.listdir(folder) or ():
                if _is_dir(e) and not e.name.startswith("."):
                    match(os.path.join(folder, e.name), i)
            return
        if not glob.has_magic(comp):
            path = os.path.join(folder, comp)
            if last:
                found.append(path)
            elif os.path.isdir(path):
                match(path, i + 1)
            return
        for e in walker.listdir(folder) or ():
            if not (visible(e.name, comp) and fnmatch.fnmatchcase(e.name, comp)):
                continue
            path = os.path.join(folder, e.name)
            if last:
                found.append(path)
            elif _is_dir(e):
                match(path, i + 1)

    match(root, 0)
    if root == ".":
        found = [os.path.relpath(p) if p.startswith("./") else p for p in found]
    images = [p for p in found if is_image_name(p) and os.path.isfile(p)]
    walker.matched = len(images)
    files = [Path(p) for p in images if walker.new_file(p)]
    return sorted(files), walker.errors[n_err:]


def expand_inputs(inputs) -> Tuple[List[Tuple[Path, Path]], List[Tuple[str, str]]]:
    """Files, folders (recursive) and globs -> ``[(path, relative output name)]`` and failures.

    ``inputs``: one path (a ``str`` or path-like is one input, never iterated) or an iterable of
    them. A folder keeps its inner structure in the relative name; files and glob matches use
    their own name. Each file is found once, however many inputs, symlinks or loops reach it
    (by device and inode). Missing paths and folders that cannot be listed come back as failures
    rather than stopping the batch.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    found, missing = [], []
    walker = _Walker()
    for item in inputs:
        s = os.fsdecode(item) if isinstance(item, bytes) else os.fspath(item)
        p = Path(s)
        if p.is_dir():
            files, errors = walk_images(p, walker)
            found += [(f, f.relative_to(p)) for f in files]
            missing += errors
        elif p.is_file():
            if walker.new_file(s):
                found.append((p, Path(p.name)))
        elif glob.has_magic(s):
            files, errors = glob_images(s, walker)
            if not walker.matched and not errors:
                missing.append((s, "the pattern matches no image file"))
            found += [(m, Path(m.name)) for m in files]
            missing += errors
        elif p.exists() or p.is_symlink():
            missing.append((s, "neither a regular file nor a folder" if p.exists() else "a broken symlink"))
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

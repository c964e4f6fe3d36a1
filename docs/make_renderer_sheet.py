"""Regenerate ``docs/renderer_sheet.jpg``: permissively licensed portraits next to their toon render.

Usage::

    python docs/make_renderer_sheet.py [PORTRAITS] [--out docs/renderer_sheet.jpg]

``PORTRAITS`` is the folder with the photos and their ``manifest.csv``; it defaults to
``../shared/data/portraits/train``, the shared data folder next to the checkout (relative to the
current directory: run it from the repository root).

Each photo is centre-cropped to a square (biased towards the top, where portrait faces sit),
resized to ``--size`` pixels, rendered at that size with the default :class:`ToonStyle`, and
placed left of its render; pairs are laid out ``--columns`` per row. Only photos whose licence
in ``manifest.csv`` is MIT, BSD or Apache are used.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dctnet_lite.render import ToonStyle, render_image  # noqa: E402

SHEET_PHOTOS = (
    "serengil__deepface__tests__unit__dataset__img33.jpg",
    "timesler__facenet-pytorch__data__test_images__paul_rudd__1.jpg",
    "serengil__deepface__tests__unit__dataset__img22.jpg",
    "mchong6__jojogan__test_input__chris_hemsworth.jpg",
    "1adrianb__face-alignment__test__assets__aflw-test.jpg",
    "tencentarc__gfpgan__inputs__cropped_faces__julia_roberts_crop.jpg",
)
PERMISSIVE = ("MIT", "BSD", "Apache")
DEFAULT_PORTRAITS = Path("../shared/data/portraits/train")


def licences(folder: Path) -> dict:
    """``{file name: licence}`` from the folder's ``manifest.csv``."""
    with open(folder / "manifest.csv", newline="") as handle:
        return {row["file"]: row["license_of_repo"] for row in csv.DictReader(handle)}


def square_tile(img: Image.Image, size: int, top_bias: float = 0.25) -> Image.Image:
    """Square crop (horizontally centred, ``top_bias`` of the spare height above) resized."""
    side = min(img.size)
    left = (img.width - side) // 2
    top = int((img.height - side) * top_bias)
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def make_sheet(folder: Path, names, size: int = 256, columns: int = 3,
               style: ToonStyle | None = None) -> Image.Image:
    """Photo|render pairs, ``columns`` pairs per row."""
    table = licences(folder)
    pairs = []
    for name in names:
        licence = table.get(name, "")
        if not licence.startswith(PERMISSIVE):
            raise SystemExit(f"{name}: licence {licence!r} is not MIT/BSD/Apache")
        with Image.open(folder / name) as img:
            photo = square_tile(ImageOps.exif_transpose(img).convert("RGB"), size)
        pairs.append((photo, render_image(photo, style)))
        print(f"{name}  [{licence}]")
    rows = (len(pairs) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 2 * size, rows * size), "white")
    for i, (photo, toon) in enumerate(pairs):
        x, y = (i % columns) * 2 * size, (i // columns) * size
        sheet.paste(photo, (x, y))
        sheet.paste(toon, (x + size, y))
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("portraits", type=Path, nargs="?", default=DEFAULT_PORTRAITS,
                        help=f"folder with the photos and manifest.csv (default {DEFAULT_PORTRAITS})")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("renderer_sheet.jpg"))
    parser.add_argument("--size", type=int, default=256, help="tile size in pixels")
    parser.add_argument("--columns", type=int, default=3, help="photo|render pairs per row")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    args = parser.parse_args(argv)
    if not (args.portraits / "manifest.csv").is_file():
        parser.error(f"{args.portraits} holds no manifest.csv: give the portraits folder")
    sheet = make_sheet(args.portraits, SHEET_PHOTOS, args.size, args.columns)
    sheet.save(args.out, quality=args.quality, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

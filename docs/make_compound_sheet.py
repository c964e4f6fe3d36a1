"""Regenerate ``docs/compound_sheet.jpg``: photo / background model only / compound, per row.

Usage::

    python docs/make_compound_sheet.py [PORTRAITS] [--out docs/compound_sheet.jpg] [NAME ...]

``PORTRAITS`` is the folder with the photos and their ``manifest.csv``; it defaults to
``../shared/data/portraits/train``, the shared data folder next to the checkout (relative to the
current directory: run it from the repository root). Each photo is cartoonized at its own size
(longer side <= 1024 px there) twice with the default checkpoint: by the background model alone
(:class:`dctnet_lite.Cartoonizer`) and by the compound system
(:class:`dctnet_lite.compound.CompoundCartoonizer`, the same checkpoint as head, since no head
model ships yet); the three are scaled to ``--tile`` px wide and laid side by side, and a last
row zooms on the first photo's largest face. Only photos whose licence in ``manifest.csv`` is
MIT, BSD or Apache are used.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dctnet_lite import Cartoonizer  # noqa: E402
from dctnet_lite.compound import CompoundCartoonizer  # noqa: E402

SHEET_PHOTOS = (
    "timesler__facenet-pytorch__data__multiface.jpg",                                   # six faces
    "ageitgey__face_recognition__examples__knn_examples__test__kit_with_rose.jpg",      # two
    "ageitgey__face_recognition__examples__knn_examples__train__kit_harington__john1.jpg",  # wide shot
)
PERMISSIVE = ("MIT", "BSD", "Apache")
DEFAULT_PORTRAITS = Path("../shared/data/portraits/train")


def licences(folder: Path) -> dict:
    with open(folder / "manifest.csv", newline="") as handle:
        return {row["file"]: row["license_of_repo"] for row in csv.DictReader(handle)}


def _fit(img: Image.Image, width: int) -> Image.Image:
    return img.resize((width, max(1, round(img.height * width / img.width))), Image.Resampling.LANCZOS)


def _zoom_box(face, img: Image.Image, grow: float = 1.6):
    """A square around a face's box, ``grow`` times its larger side, inside the image."""
    x0, y0, x1, y1 = face.box
    side = min(max(x1 - x0, y1 - y0) * grow, img.width, img.height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0, cx - side / 2), img.width - side)
    top = min(max(0, cy - side / 2), img.height - side)
    return tuple(round(v) for v in (left, top, left + side, top + side))


def make_sheet(folder: Path, names, tile: int = 400) -> Image.Image:
    """Rows of photo | background only | compound, each ``tile`` px wide; the last row zooms
    on the largest face of the first photo (the same square of the three)."""
    table = licences(folder)
    bg = Cartoonizer(device="cpu", precision="fp32")
    cz = CompoundCartoonizer(device="cpu", precision="fp32")
    rows, zoom = [], None
    for name in names:
        licence = table.get(name, "")
        if not licence.startswith(PERMISSIVE):
            raise SystemExit(f"{name}: licence {licence!r} is not MIT/BSD/Apache")
        with Image.open(folder / name) as img:
            photo = ImageOps.exif_transpose(img).convert("RGB")
        faces = cz.prepare(photo).faces
        triple = (photo, bg(photo), cz(photo))
        rows.append([_fit(x, tile) for x in triple])
        if zoom is None and faces:
            box = _zoom_box(faces[0], photo)
            zoom = [x.crop(box).resize((tile, tile), Image.Resampling.LANCZOS) for x in triple]
        print(f"{name}  [{licence}]  {photo.width}x{photo.height}, {len(faces)} face(s)")
    if zoom is not None:
        rows.append(zoom)
    sheet = Image.new("RGB", (3 * tile, sum(r[0].height for r in rows)), "white")
    y = 0
    for row in rows:
        for i, t in enumerate(row):
            sheet.paste(t, (i * tile, y))
        y += row[0].height
    return sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("portraits", type=Path, nargs="?", default=DEFAULT_PORTRAITS)
    parser.add_argument("names", nargs="*", default=list(SHEET_PHOTOS))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("compound_sheet.jpg"))
    parser.add_argument("--tile", type=int, default=400, help="column width in px (default 400)")
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    make_sheet(a.portraits, a.names, a.tile).save(a.out, quality=85)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

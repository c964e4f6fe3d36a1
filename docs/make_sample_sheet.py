"""Build docs/sample_sheet.jpg: the public-domain astronaut photo (scikit-image) and shipped
checkpoints' outputs: photo | the default (registry.DEFAULT_WEIGHTS) at s=1 and s=0.5 | the
official teacher official_c32n4.toon | the two-branch teacher dctnet_w64.toon | dctnet_w48.toon
(all at s=1, fp32: the exact path).

    python docs/make_sample_sheet.py          # from the repository root
"""
from pathlib import Path

from PIL import Image, ImageDraw

from dctnet_lite import Cartoonizer, registry
from dctnet_lite.images import read_image
from dctnet_lite.sample import sample_portrait

SIZE = 384


def columns():
    default = registry.DEFAULT_WEIGHTS
    cols = [(default, 1.0), (default, 0.5)]
    for name in ("official_c32n4.toon", "dctnet_w64.toon", "dctnet_w48.toon"):
        if name != default:
            cols.append((name, 1.0))
    return cols


def main() -> None:
    photo = Image.fromarray(read_image(sample_portrait())[0]).convert("RGB")
    photo.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    cols = [("photo", photo)]
    for name, s in columns():
        label = f"{name} s={s:g}" + (" (default)" if name == registry.DEFAULT_WEIGHTS else "")
        cols.append((label, Cartoonizer(name, device="cpu", precision="fp32")(photo, strength=s)))
    w, h = photo.size
    sheet = Image.new("RGB", (w * len(cols), h + 20), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, im) in enumerate(cols):
        sheet.paste(im, (i * w, 20))
        draw.text((i * w + 4, 4), label, fill="black")
    out = Path(__file__).with_name("sample_sheet.jpg")
    sheet.save(out, quality=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

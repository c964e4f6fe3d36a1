"""Build docs/sample_sheet.jpg: the public-domain astronaut photo (scikit-image) and the shipped
checkpoints' outputs: photo | dctnet_w64.toon s=1 | dctnet_w48.toon s=1 | dctnet_w48.toon s=0.5 | dctnet_w32.toon s=1.

    python docs/make_sample_sheet.py          # from the repository root
"""
from pathlib import Path

from PIL import Image, ImageDraw

from dctnet_lite import Cartoonizer
from dctnet_lite.images import read_image
from dctnet_lite.sample import sample_portrait

SIZE = 384


def main() -> None:
    photo = Image.fromarray(read_image(sample_portrait())[0]).convert("RGB")
    photo.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    cols = [("photo", photo)]
    for name, s in (("dctnet_w64.toon", 1.0), ("dctnet_w48.toon", 1.0), ("dctnet_w48.toon", 0.5), ("dctnet_w32.toon", 1.0)):
        cols.append((f"{name} s={s:g}", Cartoonizer(name, device="cpu", precision="fp32")(photo, strength=s)))
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

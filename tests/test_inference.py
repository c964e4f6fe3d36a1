import numpy as np
import pytest
import torch
from PIL import Image

from dctnet_lite import Cartoonizer, cartoonize_files
from dctnet_lite.images import read_image
from dctnet_lite.inference import target_size

from conftest import portrait_like


@pytest.fixture
def cz(tiny_model):
    return Cartoonizer(tiny_model, device="cpu")


def test_kinds_in_kinds_out(cz, tmp_path):
    arr = portrait_like(30, 44)
    out = cz(arr)
    assert isinstance(out, np.ndarray) and out.shape == arr.shape and out.dtype == np.uint8
    pil = cz(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and pil.size == (44, 30) and pil.mode == "RGB"
    Image.fromarray(arr).save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(cz(tmp_path / "p.png")), np.asarray(pil))
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ty = cz(t)
    assert ty.shape == t.shape and 0 <= ty.min() and ty.max() <= 1
    assert np.abs(ty.permute(1, 2, 0).numpy() * 255 - out).max() <= 1
    assert cz(t[None].repeat(2, 1, 1, 1)).shape == (2, 3, 30, 44)


def test_strength_is_per_call(cz):
    arr = portrait_like(32, 32)
    assert not np.array_equal(cz(arr, strength=0.0), cz(arr, strength=1.0))
    with pytest.raises(ValueError, match="strength"):
        cz(arr, strength=2.0)


def test_output_size_keeps_aspect(cz):
    out = cz(Image.fromarray(portrait_like(30, 60)), size=100)
    assert out.size == (100, 50)
    assert target_size(60, 30, None) == (60, 30) and target_size(3, 1000, 10) == (1, 10)


def test_odd_inputs(cz, tmp_path):
    gray = Image.fromarray(portrait_like(20, 20)[..., 0], "L")
    assert cz(gray).mode == "RGB"
    rgba = Image.fromarray(np.dstack([portrait_like(20, 24), np.full((20, 24), 77, np.uint8)]), "RGBA")
    out = cz(rgba)
    assert out.mode == "RGBA" and np.all(np.asarray(out)[..., 3] == 77)  # alpha passes through
    assert cz(np.dstack([portrait_like(20, 24), np.full((20, 24), 9, np.uint8)])).shape == (20, 24, 4)
    sixteen = (portrait_like(16, 16)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    rgb, _ = read_image(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and np.abs(rgb[..., 0].astype(int) - portrait_like(16, 16)[..., 0]).max() <= 1
    assert cz(tmp_path / "g16.png").size == (16, 16)
    assert cz(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8, 3)  # tiny
    assert cz(np.zeros((1, 1), np.uint8)).shape == (1, 1, 3)
    pal = Image.fromarray(portrait_like(12, 12)).convert("P")
    assert cz(pal).mode == "RGB"


def test_exif_orientation_applied(cz, tmp_path):
    img = Image.fromarray(portrait_like(20, 40))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW for display
    img.save(tmp_path / "rot.jpg", exif=exif)
    rgb, _ = read_image(tmp_path / "rot.jpg")
    assert rgb.shape[:2] == (40, 20)
    assert cz(tmp_path / "rot.jpg").size == (20, 40)


def test_tiled_matches_untiled(tiny_model):
    """Tiles of 64 px with 32 px overlap stay within 0.01 mean / 0.15 max of the whole image."""
    x = torch.from_numpy(portrait_like(150, 170)).permute(2, 0, 1)[None].float() / 255
    full = Cartoonizer(tiny_model, device="cpu").forward(x, 0.8)
    tiled = Cartoonizer(tiny_model, device="cpu", tile=64, tile_overlap=32).forward(x, 0.8)
    diff = (full - tiled).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15
    assert not torch.equal(full, tiled)  # the tiled path really ran


def test_auto_tiling_for_huge_images_on_cpu(tiny_model, monkeypatch):
    import dctnet_lite.inference as inf

    monkeypatch.setattr(inf, "CPU_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(inf, "DEFAULT_TILE", 48)
    cz = Cartoonizer(tiny_model, device="cpu")
    calls = []
    orig = cz.net
    cz.net = lambda x, s: (calls.append(tuple(x.shape[-2:])), orig(x, s))[1]
    assert cz.forward(torch.rand(1, 3, 100, 90)).shape == (1, 3, 100, 90)
    assert max(max(c) for c in calls) <= 48 and len(calls) > 1


def test_precisions_agree(tiny_model):
    x = torch.rand(1, 3, 32, 32)
    ref = Cartoonizer(tiny_model, device="cpu").forward(x)
    bf = Cartoonizer(tiny_model, device="cpu", precision="bf16").forward(x)
    assert (ref - bf).abs().max() < 0.05
    with pytest.raises(ValueError, match="precision"):
        Cartoonizer(tiny_model, precision="int8")


def test_batch_matches_single(cz):
    imgs = [portrait_like(24, 24, i) for i in range(3)] + [portrait_like(16, 20)]
    outs = cz.batch(imgs, batch_size=2)
    for im, o in zip(imgs, outs):
        assert np.abs(o.astype(int) - cz(im).astype(int)).max() <= 1


def test_files_batch_reports_broken_and_continues(cz, image_folder, tmp_path):
    (image_folder / "broken.png").write_bytes(b"this is not a png")
    (image_folder / "notes.txt").write_text("ignored: not an image name")
    out = tmp_path / "out"
    rep = cartoonize_files([image_folder, tmp_path / "missing.jpg"], out, cartoonizer=cz, batch_size=2)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "c.png", "sub/b.png"]
    failed = dict(rep.failed)
    assert set(failed) == {str(image_folder / "broken.png"), str(tmp_path / "missing.jpg")}
    assert "broken.png" in failed[str(image_folder / "broken.png")]
    assert not list(out.rglob("*.tmp"))


def test_never_overwrites_inputs_unless_asked(cz, image_folder):
    before = (image_folder / "a.png").read_bytes()
    rep = cartoonize_files([image_folder / "a.png"], image_folder, cartoonizer=cz)
    assert not rep.ok and "refusing to overwrite" in rep.failed[0][1]
    assert (image_folder / "a.png").read_bytes() == before
    rep = cartoonize_files([image_folder / "a.png"], image_folder, cartoonizer=cz, overwrite_inputs=True)
    assert rep.ok and (image_folder / "a.png").read_bytes() != before


def test_same_names_do_not_collide(cz, tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.fromarray(portrait_like(16, 16)).save(tmp_path / d / "same.png")
    rep = cartoonize_files([tmp_path / "x" / "same.png", tmp_path / "y" / "same.png"], tmp_path / "o",
                           cartoonizer=cz)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["same-2.png", "same.png"]
    assert len(rep.ok) == 2


def test_jpeg_output_of_rgba_is_composited(cz, tmp_path):
    rgba = np.dstack([portrait_like(20, 20), np.zeros((20, 20), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    rep = cartoonize_files([tmp_path / "t.png"], tmp_path / "o", cartoonizer=cz, ext="jpg")
    out = Image.open(rep.ok[0][1])
    assert out.mode == "RGB" and np.asarray(out).min() > 240  # fully transparent -> white

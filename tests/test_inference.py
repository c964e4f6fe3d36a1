from pathlib import Path

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


def test_a_passed_model_is_left_as_it_is(tiny_model):
    """A Cartoonizer that needs another dtype, memory format or mode runs a copy; one that needs
    none runs the model itself."""
    from dctnet_lite.official import OfficialGenerator

    for model in (tiny_model, OfficialGenerator(8)):
        model.train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.rand(1, 3, 32, 32)
        bf = Cartoonizer(model, device="cpu", precision="bf16", channels_last=True)
        assert bf.model is not model and next(bf.model.parameters()).dtype == torch.bfloat16
        assert model.training and not bf.model.training
        for k, v in model.state_dict().items():
            assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
            assert v.dim() != 4 or v.is_contiguous(), k
        fp = Cartoonizer(model, device="cpu", precision="fp32", channels_last=False)
        assert fp.model is not model  # still in training mode: a copy put in eval mode
        model.eval()
        same = Cartoonizer(model, device="cpu", precision="fp32", channels_last=False)
        assert same.model is model
        # the fp32 Cartoonizer built after the bf16 one runs the untouched fp32 weights
        assert torch.equal(fp.forward(x), same.forward(x))
        assert (bf.forward(x) - same.forward(x)).abs().max() < 0.05
        x0 = x.clone()
        same.forward(x)  # already fp32 NCHW on the device: scaled in a copy, not in the caller's tensor
        assert torch.equal(x, x0)


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


# ------------------------------------------------------------------ resize on the device
def test_device_resize_is_close_to_pillow_lanczos():
    from dctnet_lite.inference import resize_on_device

    arr = portrait_like(90, 120, 4)
    ref = np.asarray(Image.fromarray(arr).resize((48, 36), Image.Resampling.LANCZOS)).astype(int)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    y = resize_on_device(x, (36, 48))
    assert y.shape == (1, 3, 36, 48) and 0 <= y.min() and y.max() <= 1
    got = (y[0].permute(1, 2, 0) * 255).round().numpy().astype(int)
    assert np.abs(got - ref).mean() < 2.0  # the two filters agree to ~1 grey level on average
    up = resize_on_device(x, (180, 240))  # upscaling too, clamped to [0, 1]
    assert up.shape == (1, 3, 180, 240) and 0 <= up.min() and up.max() <= 1
    assert resize_on_device(x, (90, 120)) is x


def test_resize_modes_give_the_asked_size_and_nearly_the_same_image(tiny_model, tmp_path):
    Image.fromarray(portrait_like(80, 120, 5)).save(tmp_path / "p.png")
    host = Cartoonizer(tiny_model, device="cpu", resize="host")
    dev = Cartoonizer(tiny_model, device="cpu", resize="device")
    assert Cartoonizer(tiny_model, device="cpu").resize == "host"  # auto on CPU
    a, b = host(tmp_path / "p.png", size=60), dev(tmp_path / "p.png", size=60)
    assert a.size == b.size == (60, 40)
    assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).mean() < 3.0
    # no size: nothing to resize, identical results
    assert np.array_equal(np.asarray(host(tmp_path / "p.png")), np.asarray(dev(tmp_path / "p.png")))
    with pytest.raises(ValueError, match="resize"):
        Cartoonizer(tiny_model, device="cpu", resize="gpu")


def test_device_resize_batches_different_sources_of_one_target_size(tiny_model):
    cz = Cartoonizer(tiny_model, device="cpu", resize="device")
    calls = []
    real = cz.run_uint8
    cz.run_uint8 = lambda batch, s, hw=None: calls.append(len(batch)) or real(batch, s, hw)
    imgs = [portrait_like(60, 80, 1), portrait_like(30, 40, 2), portrait_like(90, 120, 3)]
    outs = cz.batch(imgs, size=40, batch_size=8)
    assert calls == [3] and all(o.shape == (30, 40, 3) for o in outs)
    for im, o in zip(imgs, outs):  # batched = one at a time
        assert np.abs(o.astype(int) - cz(im, size=40).astype(int)).max() <= 1


def test_device_resize_has_its_own_cache_keys(tiny_model):
    host = Cartoonizer(tiny_model, device="cpu", resize="host")
    dev = Cartoonizer(tiny_model, device="cpu", resize="device")
    assert host.cache_key(b"x", 1.0, 64) != dev.cache_key(b"x", 1.0, 64)
    assert host.cache_key(b"x", 1.0, None) == dev.cache_key(b"x", 1.0, None)


# ------------------------------------------------------------------ overlapped file batches
def _files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, (h, w) in enumerate([(40, 56), (40, 56), (33, 21), (40, 56), (64, 48), (40, 56)]):
        Image.fromarray(portrait_like(h, w, i)).save(d / f"{i}.png")
    (d / "3b.png").write_bytes(b"broken")  # sorted between 3.png and 4.png
    return d


@pytest.mark.parametrize("workers", [1, 3])
def test_overlapped_files_equal_sequential(tiny_model, tmp_path, workers):
    d = _files(tmp_path)
    cz = Cartoonizer(tiny_model, device="cpu")
    seq = cartoonize_files([d], tmp_path / "seq", cartoonizer=cz, batch_size=2, workers=0, size=48)
    par = cartoonize_files([d], tmp_path / "par", cartoonizer=cz, batch_size=2, workers=workers, size=48)
    rel = lambda rep, root: [(s, str(Path(o).relative_to(root))) for s, o in rep.ok]  # noqa: E731
    assert rel(par, tmp_path / "par") == rel(seq, tmp_path / "seq")  # same files, same order
    assert [s for s, _ in rel(seq, tmp_path / "seq")] == [str(d / f"{i}.png") for i in range(6)]
    assert par.failed == seq.failed and [s for s, _ in par.failed] == [str(d / "3b.png")]
    for s, o in par.ok:
        ref = np.asarray(Image.open(tmp_path / "seq" / Path(o).name))
        assert np.array_equal(np.asarray(Image.open(o)), ref)
    assert not list((tmp_path / "par").rglob("*.tmp"))


def test_overlapped_write_failure_is_reported_and_the_rest_written(tiny_model, tmp_path):
    d = _files(tmp_path)
    out = tmp_path / "out"
    (out / "2.png").mkdir(parents=True)  # a folder where an output should go: that write fails
    rep = cartoonize_files([d], out, cartoonizer=Cartoonizer(tiny_model, device="cpu"), workers=2)
    failed = dict(rep.failed)
    assert set(failed) == {str(d / "2.png"), str(d / "3b.png")}
    assert "could not write" in failed[str(d / "2.png")]
    assert len(rep.ok) == 5 and all(Path(o).is_file() for _, o in rep.ok)


def test_png_level_and_argument_checks(tiny_model, tmp_path):
    d = _files(tmp_path)
    cz = Cartoonizer(tiny_model, device="cpu")
    fast = cartoonize_files([d / "0.png"], tmp_path / "l0", cartoonizer=cz, png_level=0)
    small = cartoonize_files([d / "0.png"], tmp_path / "l9", cartoonizer=cz, png_level=9)
    f0, f9 = Path(fast.ok[0][1]), Path(small.ok[0][1])
    assert np.array_equal(np.asarray(Image.open(f0)), np.asarray(Image.open(f9)))  # lossless both
    assert f0.stat().st_size > f9.stat().st_size  # level 0 stores, level 9 compresses
    for bad in ({"workers": -1}, {"png_level": 10}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cartoonize_files([d], tmp_path / "x", cartoonizer=cz, **bad)
    with pytest.raises(ValueError, match="resize"):
        cartoonize_files([d], tmp_path / "x", checkpoint=tiny_model, resize="sideways")

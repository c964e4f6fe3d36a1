"""Tests of the classical toon renderer (generated images only; real photos are optional)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from dctnet_lite import render as R
from dctnet_lite.render import ToonStyle, blend_target, render_files, render_image, render_toon

PORTRAITS = SHARED_DATA / "portraits" / "train"

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_portrait(height: int = 96, width: int = 112, batch: int = 1,
                       seed: int = 0) -> torch.Tensor:
    """A smooth "face-like" test card: shaded background, a bright ellipse with two dark eyes, a
    mouth stroke and mild noise. Values in [0, 1], shape (batch, 3, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height).view(-1, 1)
    xs = torch.linspace(-1, 1, width).view(1, -1)
    images = []
    for b in range(batch):
        shift = 0.1 * b
        face = ((xs - shift) / 0.55) ** 2 + (ys / 0.75) ** 2 < 1
        eyes = (((xs - shift).abs() - 0.22) / 0.08) ** 2 + ((ys + 0.2) / 0.06) ** 2 < 1
        mouth = ((xs - shift).abs() < 0.2) & ((ys - 0.35).abs() < 0.03)
        base = 0.3 + 0.2 * (xs + 1) / 2 + 0.1 * ys
        img = torch.stack([base, base * 0.9, base * 1.1]).expand(3, height, width).clone()
        skin = torch.tensor([0.85, 0.65, 0.55]).view(3, 1, 1)
        img = torch.where(face, skin - 0.1 * ys.clamp(min=0), img)
        img = torch.where(eyes | mouth, torch.tensor([0.1, 0.05, 0.05]).view(3, 1, 1), img)
        img = img + 0.02 * torch.randn(3, height, width, generator=gen)
        images.append(img.clamp(0, 1))
    return torch.stack(images)


def test_style_is_frozen_and_serialisable():
    style = ToonStyle()
    d = style.to_dict()
    assert d["levels"] == style.levels and set(d) == {f.name for f in dataclasses.fields(ToonStyle)}
    assert ToonStyle(**d) == style
    with pytest.raises(dataclasses.FrozenInstanceError):
        style.levels = 3  # type: ignore[misc]


def test_deterministic_bit_identical():
    x = synthetic_portrait(batch=2)
    assert torch.equal(render_toon(x), render_toon(x.clone()))


@pytest.mark.parametrize("shape,dtype", [
    ((3, 40, 56), torch.float32),
    ((2, 3, 33, 47), torch.float32),
    ((1, 3, 24, 24), torch.float64),
    ((1, 3, 32, 32), torch.float16),
    ((3, 8, 8), torch.float32),
    ((1, 3, 1, 1), torch.float32),
    ((1, 3, 1, 9), torch.float32),
])
def test_shape_dtype_range_preserved(shape, dtype):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = render_toon(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y.float()).all()
    assert y.min() >= 0 and y.max() <= 1
    assert not y.requires_grad


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        render_toon(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError):
        render_toon(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_batch_equals_per_image():
    x = synthetic_portrait(batch=3)
    batched = render_toon(x)
    for i in range(3):
        assert torch.allclose(batched[i], render_toon(x[i]), atol=1e-6)


def test_crop_locality():
    x = synthetic_portrait(150, 170)
    full = render_toon(x)
    top, left, size = 27, 41, 100
    crop = render_toon(x[..., top:top + size, left:left + size])
    ref = full[..., top:top + size, left:left + size]
    margin = R.receptive_radius(ToonStyle())
    inner = (slice(None), slice(None), slice(margin, size - margin), slice(margin, size - margin))
    assert torch.allclose(crop[inner], ref[inner], atol=1e-5)
    assert (crop - ref).abs().mean() < 5e-3  # padding effects stay near the crop border


def test_strips_match_whole_image(monkeypatch):
    x = synthetic_portrait(200, 64)
    whole = render_toon(x)
    monkeypatch.setattr(R, "_STRIP_PIXELS", 64 * 8)  # force many horizontal strips
    assert torch.allclose(render_toon(x), whole, atol=1e-6)


def test_blend_strength():
    photo, toon = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(blend_target(photo, toon, 0.0), photo)
    assert torch.equal(blend_target(photo, toon, 1.0), toon)
    assert torch.allclose(blend_target(photo, toon, 0.5), (photo + toon) / 2, atol=1e-7)
    per_sample = blend_target(photo, toon, torch.tensor([0.0, 1.0]))
    assert torch.equal(per_sample[0], photo[0]) and torch.equal(per_sample[1], toon[1])


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, torch.tensor([0.2, 1.2]),
                                 torch.tensor([0.1, 0.2, 0.3])])
def test_blend_invalid_strength(bad):
    photo = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError):
        blend_target(photo, photo, bad)


@pytest.mark.parametrize("colour", [(0.5, 0.5, 0.5), (0.9, 0.6, 0.4), (0.05, 0.1, 0.3),
                                    (1.0, 1.0, 1.0)])
def test_flat_image_stays_flat_without_lines(colour):
    x = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 48, 64).contiguous()
    y = render_toon(x)
    assert (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))).max() < 1e-5
    # no ink: the colour moves only by quantisation / saturation, never towards black
    assert (y[0, :, 0, 0] - x[0, :, 0, 0]).abs().max() < 0.15


def test_sharp_edge_gets_dark_line_near_it_only():
    x = torch.full((1, 3, 64, 64), 0.8)
    x[..., :32] = 0.35  # vertical edge between columns 31 and 32
    y = render_toon(x).mean(1)[0]  # (H, W) grey levels
    dark_plateau, bright_plateau = y[:, 5].mean(), y[:, 58].mean()
    near = y[:, 26:38]
    assert near.min() < 0.6 * dark_plateau, "expected an ink line along the edge"
    far = torch.cat([y[:, :22], y[:, 42:]], 1)
    assert far.min() > 0.9 * dark_plateau, "ink far from the edge"
    assert torch.allclose(y[:, 42:], bright_plateau.expand_as(y[:, 42:]), atol=0.02)


def test_render_image_pil_roundtrip():
    arr = (synthetic_portrait(40, 60)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = render_image(Image.fromarray(arr))
    assert out.mode == "RGB" and out.size == (60, 40)
    assert render_image(Image.fromarray(arr).convert("L")).mode == "RGB"


def _write_image(path: Path, size=(48, 32), exif_orientation: int | None = None) -> None:
    arr = (synthetic_portrait(size[1], size[0])[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation is None:
        img.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(path, exif=exif)


def test_render_files_reports_corrupt_file_and_writes_good_ones(tmp_path):
    src = tmp_path / "in"
    _write_image(src / "a.png")
    _write_image(src / "nested" / "b.jpg", exif_orientation=6)  # rotated 90 degrees by EXIF
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    (src / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"

    report = render_files([str(src)], str(out), strength=0.7)

    written = sorted(Path(p).relative_to(out).as_posix() for p in report["ok"])
    assert written == ["a.png", "nested/b.png"]
    assert [Path(p).name for p, _ in report["failed"]] == ["broken.jpg"] and report["failed"][0][1]
    assert report["seconds"] >= 0
    assert Image.open(out / "a.png").size == (48, 32)
    assert Image.open(out / "nested" / "b.png").size == (32, 48)  # EXIF orientation applied
    assert Image.open(out / "a.png").mode == "RGB"
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".png"], "temp files left"

    again = render_files([str(src / "a.png")], str(out))
    assert again["ok"] == [] and again["skipped"] == [str(out / "a.png")]
    forced = render_files([str(src / "a.png")], str(out), overwrite=True)
    assert forced["ok"] == [str(out / "a.png")]


def test_render_files_never_overwrites_inputs(tmp_path):
    _write_image(tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    report = render_files([str(tmp_path)], str(tmp_path), overwrite=True)
    assert report["ok"] == [] and len(report["failed"]) == 1
    assert (tmp_path / "photo.png").read_bytes() == before


def test_render_files_rejects_bad_strength(tmp_path):
    with pytest.raises(ValueError):
        render_files([], str(tmp_path), strength=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic():
    x = synthetic_portrait(batch=2)
    gpu = render_toon(x.cuda())
    assert gpu.is_cuda and torch.equal(gpu, render_toon(x.cuda()))
    assert (gpu.cpu() - render_toon(x)).abs().mean() < 1e-3


@pytest.mark.skipif(not PORTRAITS.is_dir(), reason=f"needs {PORTRAITS}")
def test_real_portrait_locality_and_ink_coverage():
    files = sorted(PORTRAITS.glob("*.jpg"))
    if not files:
        pytest.skip("no portraits")
    with Image.open(files[0]) as img:
        x = R.pil_to_tensor(img.convert("RGB").resize((200, 200)))[None]
    full = render_toon(x)
    m = R.receptive_radius(ToonStyle())
    crop = render_toon(x[..., 20:180, 30:190])
    ref = full[..., 20:180, 30:190]
    assert torch.allclose(crop[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)
    ink = (full.mean(1) < 0.6 * x.mean(1)).float().mean()
    assert 0.001 < ink < 0.3


def test_render_cli_writes_and_reports(tmp_path):
    from dctnet_lite.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    (src / "bad.jpg").write_bytes(b"nope")
    assert main(["render", str(src), "-o", str(tmp_path / "out"), "--strength", "0.5"]) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]

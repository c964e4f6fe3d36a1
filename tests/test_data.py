"""dctnet_lite.data: listing, hash split, decoding (EXIF, modes), augmentation, pairing, seeding."""
import numpy as np
import pytest
import torch
from conftest import portrait_like
from PIL import Image

from dctnet_lite.data import (ImageReadError, PairedFolder, PhotoFolder, files_by_license, list_images,
                              seed_worker, split_of)


def make_folder(root, names, size=(40, 56)):
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(portrait_like(*size, seed=i)).save(path)
    return root


def test_list_images_recursive_sorted(tmp_path):
    make_folder(tmp_path, ["b.jpg", "a/c.PNG", "a/d.webp", "e.tiff", "f.bmp", "g.jpeg"])
    (tmp_path / "notes.txt").write_text("not an image")
    rel = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert rel == ["a/c.PNG", "a/d.webp", "b.jpg", "e.tiff", "f.bmp", "g.jpeg"]


def test_split_fixed_by_hash_and_stable_when_files_are_added(tmp_path):
    names = [f"p{i:03d}.png" for i in range(1000)]
    val = [n for n in names if split_of(n, 0.1) == "val"]
    assert 60 < len(val) < 140  # ~10 %
    assert split_of("sub/x.jpg") == split_of(tmp_path.joinpath("sub/x.jpg").relative_to(tmp_path))

    make_folder(tmp_path, [f"p{i}.png" for i in range(20)], size=(16, 16))
    before = {s: PhotoFolder(tmp_path, split=s, crop=8, val_fraction=0.3).paths for s in ("train", "val")}
    assert set(before["train"]).isdisjoint(before["val"])
    assert len(before["train"]) + len(before["val"]) == 20
    make_folder(tmp_path, [f"new{i}.png" for i in range(20)], size=(16, 16))
    after = {s: PhotoFolder(tmp_path, split=s, crop=8, val_fraction=0.3).paths for s in ("train", "val")}
    for s in ("train", "val"):
        assert set(before[s]) <= set(after[s])


def test_exif_orientation_is_honoured(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red, right half blue as stored
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: red ends up on top
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    # the val split crops the centre deterministically (a random crop could miss one half)
    photo = PhotoFolder(tmp_path, split="val", val_fraction=1.0, crop=16)[0]["photo"]
    assert photo.shape == (3, 16, 16)
    top, bottom = photo[:, 2, 8], photo[:, 13, 8]
    assert top[0] > 0.8 and top[2] < 0.2, top
    assert bottom[2] > 0.8 and bottom[0] < 0.2, bottom


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(portrait_like(24, 30))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)  # 16-bit grayscale
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(0)  # fully transparent: composited over white
    else:
        img = rgb.convert(mode)
    img.save(tmp_path / "x.png")
    item = PhotoFolder(tmp_path, split="all", crop=20, color_jitter=0)[0]
    assert item["photo"].shape == (3, 20, 20) and item["photo"].dtype == torch.float32
    assert 0 <= item["photo"].min() and item["photo"].max() <= 1
    if mode == "RGBA":
        assert torch.allclose(item["photo"], torch.ones(3, 20, 20))
    if mode in ("L", "I;16", "LA"):
        assert torch.allclose(item["photo"][0], item["photo"][1]) and torch.allclose(item["photo"][1], item["photo"][2])


def test_val_is_deterministic_train_is_random_and_seeded(tmp_path):
    make_folder(tmp_path, ["a.png"], size=(60, 90))
    val = PhotoFolder(tmp_path, split="all", crop=24)
    val.split = "val"
    assert torch.equal(val[0]["photo"], val[0]["photo"])
    train = PhotoFolder(tmp_path, split="all", crop=24)
    torch.manual_seed(1)
    a = train[0]["photo"]
    torch.manual_seed(1)
    assert torch.equal(a, train[0]["photo"])
    assert not torch.equal(a, train[0]["photo"])


def test_small_images_are_upscaled(tmp_path):
    make_folder(tmp_path, ["tiny.png"], size=(10, 14))
    assert PhotoFolder(tmp_path, split="all", crop=48)[0]["photo"].shape == (3, 48, 48)


def test_min_side_and_files_filters(tmp_path):
    make_folder(tmp_path, ["small.png"], size=(10, 14))
    make_folder(tmp_path, ["big.png", "other.png"], size=(40, 40))
    assert [p.name for p in PhotoFolder(tmp_path, split="all", min_side=20).paths] == ["big.png", "other.png"]
    assert [p.name for p in PhotoFolder(tmp_path, split="all", files=["big.png"]).paths] == ["big.png"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,license_of_repo\nbig.png,MIT License\nother.png,S-Lab (non-commercial)\n"
                        "small.png,BSD 3-Clause License\n")
    assert files_by_license(manifest, ["MIT", "bsd"]) == ["big.png", "small.png"]


def test_empty_and_missing_folders_raise_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="empty"):
        PhotoFolder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PhotoFolder(tmp_path / "nowhere")


def test_broken_image_raises_naming_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    ds = PhotoFolder(tmp_path, split="all", crop=16)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        ds[0]


def test_paired_same_geometry_and_extension_agnostic_matching(tmp_path):
    photos, targets = tmp_path / "photos", tmp_path / "targets"
    make_folder(photos, ["a.png", "sub/b.png"], size=(50, 70))
    make_folder(targets, ["a.bmp", "sub/b.tiff", "unused.png"], size=(50, 70))  # same pixels, other format
    ds = PairedFolder(photos, targets, split="all", crop=24, color_jitter=0)
    assert [t.name for t in ds.targets] == ["a.bmp", "b.tiff"]
    for seed in range(4):
        torch.manual_seed(seed)
        item = ds[seed % 2]
        assert torch.equal(item["photo"], item["target"])  # same crop and flip
    jittered = PairedFolder(photos, targets, split="all", crop=24, color_jitter=0.5)
    torch.manual_seed(0)
    item = jittered[0]
    assert not torch.equal(item["photo"], item["target"])  # jitter touches the photo only


def test_paired_missing_targets_are_listed(tmp_path):
    photos, targets = tmp_path / "photos", tmp_path / "targets"
    make_folder(photos, ["a.png", "b.png", "c.png"], size=(20, 20))
    make_folder(targets, ["a.png"], size=(20, 20))
    with pytest.raises(FileNotFoundError, match=r"2 of 3 photos.*b, c"):
        PairedFolder(photos, targets, split="all")


def test_worker_seeding_is_reproducible(tmp_path):
    make_folder(tmp_path, [f"p{i}.png" for i in range(4)], size=(40, 40))
    ds = PhotoFolder(tmp_path, split="all", crop=16)

    def batches():
        torch.manual_seed(123)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, num_workers=2,
                                             worker_init_fn=seed_worker)
        return [b["photo"] for b in loader]

    a, b = batches(), batches()
    assert all(torch.equal(x, y) for x, y in zip(a, b))

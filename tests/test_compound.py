"""The compound system (dctnet_lite.compound, dctnet_lite.face): the official alignment, the
blend, face-free and tiny-face images, a real face photo (the shipped sample portrait), the
file pipeline and CLI, and the detector kept out of ``import dctnet_lite``."""
import importlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dctnet_lite
from dctnet_lite import face as facelib
from dctnet_lite.cli import main
from dctnet_lite.compound import CompoundCartoonizer, cartoonize_files_compound, work_size
from dctnet_lite.official import OfficialConfig, OfficialGenerator
from dctnet_lite.sample import SAMPLE

from conftest import portrait_like

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_MTCNN = importlib.util.find_spec("facenet_pytorch") is not None
needs_mtcnn = pytest.mark.skipif(not HAS_MTCNN, reason="facenet-pytorch not installed (the [face] extra)")

#: Fixed 5-point landmarks (x, y) of a face in a 96x128 image, and variants.
POINTS = np.array([[36.0, 50.0], [60.0, 51.0], [48.0, 64.0], [38.0, 76.0], [58.0, 77.0]])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dctnet-family background and an official-family head (both tiny, random, saved)."""
    d = tmp_path_factory.mktemp("compound")
    torch.manual_seed(0)
    bg = d / "bg-w8.safetensors"
    dctnet_lite.save_checkpoint(bg, dctnet_lite.DCTNet(8).eval(), provenance={"recipe": "test"})
    torch.manual_seed(1)
    head = d / "head-official-c8.safetensors"
    dctnet_lite.save_checkpoint(head, OfficialGenerator(OfficialConfig(channels=8, num_blocks=1)).eval(),
                                provenance={"recipe": "test"})
    return {"bg": bg, "head": head}


def fixed(*faces):
    """A detector that always finds these faces (landmarks in the image's pixels)."""
    def detect(rgb):
        return [facelib.Face((float(p[:, 0].min()) - 10, float(p[:, 1].min()) - 15,
                              float(p[:, 0].max()) + 10, float(p[:, 1].max()) + 12), np.asarray(p, float))
                for p in faces]
    return detect


def sample(side=None) -> Image.Image:
    img = Image.open(SAMPLE).convert("RGB")
    return img if side is None else img.resize((side, side), Image.Resampling.LANCZOS)


def mask_support(points, hw, crop=facelib.CROP):
    """Where the warped-back mask of a face is > 0 (the pixels the blend may change)."""
    _, m_inv = facelib.alignment(points)
    mask = torch.from_numpy(facelib.soft_mask(crop))[None]
    return facelib.warp_affine(mask, m_inv, hw)[0].numpy() > 0


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def _official_align_module(monkeypatch):
    """ModelScope's own align_trans.py (read from the installed modelscope, with a stand-in cv2
    whose warpAffine returns the matrix it was given)."""
    spec = importlib.util.find_spec("modelscope")
    if spec is None or spec.origin is None:
        pytest.skip("modelscope not installed (the [modelscope] extra)")
    src = Path(spec.origin).parent / "models" / "cv" / "cartoon" / "mtcnn_pytorch" / "src"
    if not (src / "align_trans.py").is_file():
        pytest.skip("this modelscope has no cartoon align_trans.py")
    pkg = types.ModuleType("_ms_align")
    pkg.__path__ = [str(src)]
    cv2 = types.ModuleType("cv2")
    cv2.warpAffine = lambda img, m, size, **kw: (m, size)
    monkeypatch.setitem(sys.modules, "_ms_align", pkg)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    for name in ("_ms_align.align_trans", "_ms_align.matlab_cp2tform"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("_ms_align.align_trans")


def test_alignment_matrix_is_the_official_formula(monkeypatch):
    at = _official_align_module(monkeypatch)
    ref = at.get_reference_facial_points(default_square=True)
    np.testing.assert_allclose(facelib.reference_points(True), ref, rtol=0, atol=1e-12)
    astronaut = [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]]
    cases = [astronaut, POINTS.tolist(), (POINTS * 3.1 + 7).tolist(),
             [[10, 10], [30, 14], [18, 25], [12, 33], [28, 36]],             # tilted
             [astronaut[i] for i in (1, 0, 2, 4, 3)]]                        # mirrored: the other fit wins
    dets = []
    for pts in cases:
        (m_off, size), m_inv_off = at.warp_and_crop_face(np.zeros((4, 4, 3)), pts, ratio=0.75, reference_pts=ref,
                                                         crop_size=(288, 288), return_trans_inv=True)
        m, m_inv = facelib.alignment(pts)
        assert size == (288, 288)
        np.testing.assert_allclose(m, m_off, rtol=0, atol=1e-9)
        np.testing.assert_allclose(m_inv, m_inv_off, rtol=0, atol=1e-9)
        dets.append(np.linalg.det(m[:, :2]))
    assert min(dets) < 0 < max(dets)  # both branches of the official pick were compared


def test_alignment_maps_the_landmarks_onto_the_reference():
    ref = facelib.crop_reference()
    theta, s, t = 0.3, 0.42, np.array([17.0, 40.0])
    rot = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = ref @ rot.T + t  # the reference, moved by a known similarity
    m, m_inv = facelib.alignment(pts)
    back = np.hstack([pts, np.ones((5, 1))]) @ m.T
    np.testing.assert_allclose(back, ref, atol=1e-3)
    np.testing.assert_allclose(np.vstack([m, [0, 0, 1]]) @ np.vstack([m_inv, [0, 0, 1]]), np.eye(3), atol=1e-9)
    with pytest.raises(ValueError, match="5 finite"):
        facelib.alignment(np.zeros((4, 2)))


def test_warp_affine_is_opencv_bilinear_with_border():
    img = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 5, 7)
    shift = np.array([[1.0, 0, 2.0], [0, 1.0, 1.0]])  # dst(x, y) = src(x - 2, y - 1)
    y = facelib.warp_affine(img, shift, (5, 7), border=255.0)
    assert torch.equal(y[0, 1:, 2:], img[0, :-1, :-2])
    assert (y[0, 0] == 255).all() and (y[0, :, :2] == 255).all()
    half = np.array([[1.0, 0, 0.5], [0, 1.0, 0]])
    z = facelib.warp_affine(img, half, (5, 7))
    assert torch.allclose(z[0, :, 1:], (img[0, :, 1:] + img[0, :, :-1]) / 2)
    win = facelib.warp_affine(img, shift, (2, 3), border=255.0, origin=(3, 2))
    assert torch.equal(win, y[:, 2:4, 3:6])


def test_soft_mask_is_feathered_and_zero_at_the_border():
    m = facelib.soft_mask()
    assert m.shape == (288, 288) and m.max() == 1.0 and m.min() == 0.0
    assert (m[:8] == 0).all() and (m[-4:] == 0).all() and (m[:, :8] == 0).all() and (m[:, -8:] == 0).all()
    ref = facelib.crop_reference()
    for x, y in ref:  # eyes, nose, mouth at full weight
        assert m[int(round(y)), int(round(x))] == 1.0
    row = m[150]
    assert np.abs(np.diff(row)).max() < 0.05  # no hard edge anywhere along the row
    assert ((row > 0) & (row < 1)).sum() > 40


def test_work_size_is_the_official_resize_size():
    assert work_size(1024, 683, 720) == (1024, 683)
    assert work_size(2000, 1000, 720) == (1440, 720)
    assert work_size(1000, 2001, 720) == (720, int(720 * 2001 / 1000))
    assert work_size(3000, 2000, None) == (3000, 2000)


# ---------------------------------------------------------------------------------------------
# Blending, with fixed landmarks
# ---------------------------------------------------------------------------------------------
def test_blend_is_exact_outside_the_mask_and_changes_the_face(models):
    rgb = portrait_like(128, 96, 4)
    bg_only = dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(rgb)
    cz = CompoundCartoonizer(models["head"], models["bg"], detector=fixed(POINTS), min_face=8,
                             device="cpu", precision="fp32")
    assert cz.head is not cz.background
    out = cz(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    support = mask_support(POINTS, rgb.shape[:2])
    assert 0.05 < support.mean() < 0.9
    assert np.array_equal(out[~support], bg_only[~support])  # bit-exact outside the mask
    diff = np.abs(out.astype(int) - bg_only.astype(int)).max(-1)
    assert diff[support].mean() > 5  # the head model's result is in
    assert set(cz.timings) >= {"detect", "background", "heads", "blend"}


def test_every_face_of_a_group_is_blended(models):
    rgb = portrait_like(128, 192, 10)
    second = POINTS * 0.8 + [110, 10]  # a smaller face to the right
    bg_only = dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(rgb)
    cz = CompoundCartoonizer(models["head"], models["bg"], detector=fixed(POINTS, second), min_face=8,
                             device="cpu", precision="fp32")
    assert [round(f.points[0][0]) for f in cz.prepare(rgb).faces] == [36, 139]  # largest first
    out = cz(rgb)
    one, two = mask_support(POINTS, rgb.shape[:2]), mask_support(second, rgb.shape[:2])
    assert np.array_equal(out[~(one | two)], bg_only[~(one | two)])
    diff = np.abs(out.astype(int) - bg_only.astype(int)).max(-1)
    assert diff[one & ~two].mean() > 5 and diff[two & ~one].mean() > 5


def test_face_free_image_equals_background_only(models):
    rgb = portrait_like(64, 80, 5)
    bg_only = dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(rgb)
    for detector in (fixed(), None):
        cz = CompoundCartoonizer(models["head"], models["bg"], detector=detector, device="cpu", precision="fp32")
        assert np.array_equal(cz(rgb), bg_only)
    t = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255  # tensors in [0, 1] work too
    y = cz(t)
    assert y.shape == t.shape and y.dtype == torch.float32
    assert np.array_equal((y * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), bg_only)


def test_strength_applies_to_both_models_and_max_side_keeps_the_input_size(models):
    rgb = portrait_like(128, 96, 6)
    cz = CompoundCartoonizer(models["head"], models["bg"], detector=fixed(POINTS * 0.5), min_face=8,
                             max_side=48, device="cpu", precision="fp32")
    seen = []
    for name in ("head", "background"):
        c = getattr(cz, name)
        run = c.run_uint8
        c.run_uint8 = lambda batch, strength=1.0, hw=None, _run=run, _n=name: (
            seen.append((_n, strength, tuple(batch.shape[-2:]) if isinstance(batch, torch.Tensor)
                         else tuple(batch[0].shape[-2:]))) or _run(batch, strength, hw))
    out = cz(Image.fromarray(rgb), strength=0.4)
    assert isinstance(out, Image.Image) and out.size == (96, 128)  # back at the input's size
    assert ("background", 0.4, (64, 48)) in seen  # shorter side 48, as resize_size makes it
    assert ("head", 0.4, (288, 288)) in seen
    with pytest.raises(ValueError, match="strength"):
        cz(rgb, strength=1.5)


def test_one_checkpoint_for_both_is_loaded_once(models):
    cz = CompoundCartoonizer(models["bg"], str(models["bg"]), detector=None, device="cpu")
    assert cz.head is cz.background


# ---------------------------------------------------------------------------------------------
# The real detector on the shipped sample portrait
# ---------------------------------------------------------------------------------------------
@needs_mtcnn
def test_real_face_photo_gets_its_face_changed_and_the_rest_untouched(models):
    img = sample(384)  # scikit-image's astronaut (public domain), shipped in the package
    bg_only = np.asarray(dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(img))
    cz = CompoundCartoonizer(models["head"], models["bg"], device="cpu", precision="fp32")
    prep = cz.prepare(img)
    faces = prep.faces
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 110 < x0 < x1 < 225 and 20 < y0 < y1 < 150  # her face, not the helmet or the flag
    eye_l, eye_r = faces[0].points[0], faces[0].points[1]
    assert eye_l[0] < eye_r[0] and abs(eye_l[1] - eye_r[1]) < 8
    out = np.asarray(prep.finish(cz.run_prepared([prep])[0]))
    assert out.shape == bg_only.shape
    support = mask_support(faces[0].points, out.shape[:2])
    assert np.array_equal(out[~support], bg_only[~support])
    diff = np.abs(out.astype(int) - bg_only.astype(int)).max(-1)
    inner = np.zeros_like(support)
    inner[int(y0):int(y1), int(x0):int(x1)] = True
    assert diff[inner].mean() > 5
    assert support.mean() < 0.25  # a face's region, not the whole image


@needs_mtcnn
def test_face_free_photo_with_the_detector_equals_background_only(models):
    rgb = np.ascontiguousarray(np.asarray(sample())[280:, 280:])  # helmet and suit, no face
    bg_only = dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(rgb)
    cz = CompoundCartoonizer(models["head"], models["bg"], min_face=20, device="cpu", precision="fp32")
    assert cz.prepare(rgb).faces == ()
    assert np.array_equal(cz(rgb), bg_only)


@needs_mtcnn
def test_tiny_face_is_skipped(models):
    img = sample(128)  # the face is about 21 px now
    small = CompoundCartoonizer(models["head"], models["bg"], min_face=16, device="cpu", precision="fp32")
    assert len(small.prepare(img).faces) == 1  # it is a face the detector finds...
    cz = CompoundCartoonizer(models["head"], models["bg"], device="cpu", precision="fp32")  # min 40 px
    assert cz.min_face == facelib.DEFAULT_MIN_FACE and cz.prepare(img).faces == ()
    bg_only = dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(img)
    assert np.array_equal(np.asarray(cz(img)), np.asarray(bg_only))  # ...left to the background


@needs_mtcnn
def test_detector_weights_are_loaded_with_weights_only(monkeypatch):
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    det = facelib.MTCNNDetector()
    assert len(calls) == 3 and all(k.get("weights_only") is True for k in calls)
    assert det(np.zeros((64, 64, 3), np.uint8)) == []  # no face is a normal result


def test_detector_is_not_imported_by_import_dctnet_lite():
    code = ("import sys, dctnet_lite, dctnet_lite.compound, dctnet_lite.face, dctnet_lite.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('facenet_pytorch', 'torchvision', 'cv2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_detector_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else _find_spec(name, *a))
    with pytest.raises(facelib.FaceDetectorUnavailable, match=r"dctnet-lite\[face\]"):
        facelib.MTCNNDetector()


_find_spec = importlib.util.find_spec


# ---------------------------------------------------------------------------------------------
# Files and the CLI
# ---------------------------------------------------------------------------------------------
def test_files_pipeline_reports_failures_and_keeps_sizes(models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(portrait_like(128, 96, 7)).save(src / "a.png")
    Image.fromarray(portrait_like(60, 70, 8)).save(src / "b.jpg")
    (src / "broken.png").write_bytes(b"not an image")
    report = cartoonize_files_compound([src], tmp_path / "out", head=models["head"], background=models["bg"],
                                       detector=fixed(POINTS), min_face=8, device="cpu", precision="fp32",
                                       workers=1, progress=False)
    assert len(report.ok) == 2 and [Path(f).name for f, _ in report.failed] == ["broken.png"]
    with Image.open(tmp_path / "out" / "a.png") as a, Image.open(tmp_path / "out" / "b.png") as b:
        assert a.size == (96, 128) and b.size == (70, 60)
        one = CompoundCartoonizer(models["head"], models["bg"], detector=fixed(POINTS), min_face=8,
                                  device="cpu", precision="fp32")(str(src / "a.png"))
        assert np.array_equal(np.asarray(a), np.asarray(one))  # the same as the Python call


@needs_mtcnn
def test_cli_head_background(models, tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(portrait_like(40, 56, 9)).save(src)
    rc = main(["cartoonize", str(src), "-o", str(tmp_path / "out"), "--head", str(models["head"]),
               "--background", str(models["bg"]), "--max-side", "32", "--device", "cpu"])
    assert rc == 0
    with Image.open(tmp_path / "out" / "p.png") as out:
        assert out.size == (56, 40)


def test_a_detector_failure_fails_that_file_only(models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(portrait_like(40, 56, 1)).save(src / "ok.png")
    Image.fromarray(portrait_like(48, 48, 2)).save(src / "bad.png")

    def detector(rgb):
        if rgb.shape[:2] == (48, 48):
            raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
        return []
    report = cartoonize_files_compound([src], tmp_path / "out", head=models["head"], background=models["bg"],
                                       detector=detector, device="cpu", workers=1, progress=False)
    assert [Path(f).name for f, _ in report.ok] == ["ok.png"]
    assert len(report.failed) == 1 and "face detection failed: RuntimeError" in report.failed[0][1]
    assert not (tmp_path / "out" / "bad.png").exists()


def test_cli_compound_errors(tmp_path, capsys):
    src = tmp_path / "p.png"
    Image.fromarray(portrait_like(40, 56, 9)).save(src)
    assert main(["cartoonize", str(src), "-o", str(tmp_path / "o2"), "--max-side", "720"]) == 1
    assert "--max-side and --min-face belong to the compound system" in capsys.readouterr().err
    assert main(["cartoonize", str(src), "-o", str(tmp_path / "o3"), "--compound", "--cache"]) == 1
    assert "--cache" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# ---------------------------------------------------------------------------------------------
# ModelScope drop-in
# ---------------------------------------------------------------------------------------------
def test_export_of_a_compound_pair(models, tmp_path, capsys):
    import json

    from dctnet_lite.tools.modelscope_compound import MODEL_TYPE, PIPELINE_TYPE

    assert main(["export-modelscope", str(models["bg"]), str(tmp_path / "pair"), "--head", str(models["head"])]) == 0
    folder = tmp_path / "pair"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "background.safetensors", "configuration.json",
                                                        "head.safetensors", "ms_wrapper.py"]
    assert (folder / "head.safetensors").read_bytes() == models["head"].read_bytes()
    assert (folder / "background.safetensors").read_bytes() == models["bg"].read_bytes()
    cfg = json.loads((folder / "configuration.json").read_text())
    assert cfg["model"]["type"] == MODEL_TYPE and cfg["pipeline"] == {"type": PIPELINE_TYPE}
    assert cfg["dctnet_lite"]["head"]["family"] == "official" and cfg["dctnet_lite"]["background"]["family"] == "dctnet"
    assert main(["export-modelscope", str(models["bg"]), str(tmp_path / "bad"), "--head", str(tmp_path / "no")]) == 1
    assert not (tmp_path / "bad").exists()


@needs_mtcnn
def test_modelscope_pipeline_runs_a_compound_folder(models, tmp_path):
    pytest.importorskip("modelscope")
    from dctnet_lite.tools import modelscope_compound as msc

    if msc.MODELSCOPE_IMPORT_ERROR is not None:
        pytest.skip(f"modelscope is not importable here: {msc.MODELSCOPE_IMPORT_ERROR}")
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    folder = msc.export_modelscope_compound(models["head"], models["bg"], tmp_path / "ms")
    p = pipeline(Tasks.image_portrait_stylization, model=str(folder), device="cpu")
    img = sample(320)
    img.save(tmp_path / "a.png")
    out = p(str(tmp_path / "a.png"))
    assert set(out) == {OutputKeys.OUTPUT_IMG}
    bgr = out[OutputKeys.OUTPUT_IMG]
    assert bgr.shape == (320, 320, 3) and bgr.dtype == np.uint8
    ref = np.asarray(CompoundCartoonizer(models["head"], models["bg"], device="cpu", precision="fp32")(img))
    assert np.array_equal(bgr[..., ::-1], ref)  # BGR, as the official pipeline
    bg_only = np.asarray(dctnet_lite.Cartoonizer(models["bg"], device="cpu", precision="fp32")(img))
    assert not np.array_equal(ref, bg_only)  # her face went through the head model
    assert p(str(tmp_path / "a.png"), max_side=160)[OutputKeys.OUTPUT_IMG].shape == (320, 320, 3)

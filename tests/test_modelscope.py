"""ModelScope drop-in, offline, with a real exported folder (no mocks).

The export needs only dctnet_lite; the pipeline tests skip when modelscope is not importable
(install it with ``pip install -e '.[modelscope]'``).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dctnet_lite import Cartoonizer, load
from dctnet_lite.cli import main
from dctnet_lite.tools.modelscope_pipeline import (MODEL_TYPE, MODELSCOPE_IMPORT_ERROR, PIPELINE_TYPE,
                                             export_modelscope)

from conftest import portrait_like

REPO = Path(__file__).resolve().parents[1]
needs_modelscope = pytest.mark.skipif(
    MODELSCOPE_IMPORT_ERROR is not None,
    reason=f"modelscope is not importable here ({MODELSCOPE_IMPORT_ERROR}); pip install -e '.[modelscope]'")


@pytest.fixture
def exported(tiny_ckpt, tmp_path):
    return export_modelscope(tiny_ckpt, tmp_path / "ms" / "tiny")


def test_export_writes_a_complete_folder(exported, tiny_ckpt, tmp_path):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["README.md", "configuration.json", "model.safetensors", "ms_wrapper.py"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    cfg = json.loads((exported / "configuration.json").read_text())
    assert cfg["framework"] == "pytorch" and cfg["task"] == "image-portrait-stylization"
    assert cfg["model"] == {"type": MODEL_TYPE, "weights": "model.safetensors"}
    assert cfg["pipeline"] == {"type": PIPELINE_TYPE} and "allow_remote" not in cfg
    assert cfg["dctnet_lite"]["arch"]["base_width"] == 8 and len(cfg["dctnet_lite"]["sha256"]) == 64
    assert (exported / "model.safetensors").read_bytes() == tiny_ckpt.read_bytes()
    assert load(exported).checkpoint_info.sha256 == cfg["dctnet_lite"]["sha256"]  # a folder resolves too
    again = export_modelscope(tiny_ckpt, exported, remote_code=True)  # into an existing folder
    assert json.loads((again / "configuration.json").read_text())["allow_remote"] is True


def test_cli_export(tiny_ckpt, tmp_path, capsys):
    assert main(["export-modelscope", str(tiny_ckpt), str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "configuration.json").is_file() and "wrote" in capsys.readouterr().out
    assert main(["export-modelscope", str(tmp_path / "nope.safetensors"), str(tmp_path / "n")]) == 1
    assert not (tmp_path / "n").exists()


@needs_modelscope
def test_pipeline_is_a_drop_in(exported, tiny_ckpt, tmp_path):
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    p = pipeline(Tasks.image_portrait_stylization, model=str(exported), device="cpu")
    rgb = portrait_like(30, 44)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    ref = Cartoonizer(tiny_ckpt, device="cpu")(rgb)
    out = p(str(tmp_path / "p.png"))
    assert set(out) == {OutputKeys.OUTPUT_IMG}
    bgr = out[OutputKeys.OUTPUT_IMG]
    assert bgr.shape == (30, 44, 3) and bgr.dtype == np.uint8
    assert np.array_equal(bgr[..., ::-1], ref)  # BGR, like the official pipeline
    assert np.array_equal(p(Image.fromarray(rgb))[OutputKeys.OUTPUT_IMG], bgr)  # PIL: RGB
    assert np.array_equal(p(np.ascontiguousarray(rgb[..., ::-1]))[OutputKeys.OUTPUT_IMG], bgr)  # arrays: BGR
    gray = p(rgb[..., 0])[OutputKeys.OUTPUT_IMG]
    assert gray.shape == (30, 44, 3)
    small = p(str(tmp_path / "p.png"), strength=0.3, size=16)[OutputKeys.OUTPUT_IMG]
    assert small.shape == (30, 44, 3) and not np.array_equal(small, bgr)  # resized back, as official
    batch = p([str(tmp_path / "p.png"), Image.fromarray(rgb)])
    assert len(batch) == 2 and np.array_equal(batch[1][OutputKeys.OUTPUT_IMG], bgr)


@needs_modelscope
def test_trust_remote_code_imports_the_registration_itself(tiny_ckpt, tmp_path):
    folder = export_modelscope(tiny_ckpt, tmp_path / "remote", remote_code=True)
    Image.fromarray(portrait_like(20, 20)).save(tmp_path / "p.png")
    script = f"""
import sys
from modelscope.outputs import OutputKeys
from modelscope.pipelines import pipeline
assert "dctnet_lite.tools.modelscope_pipeline" not in sys.modules
try:
    pipeline("image-portrait-stylization", model={str(folder)!r}, device="cpu")
    raise SystemExit("loaded without trust_remote_code")
except RuntimeError as e:
    assert "trust_remote_code" in str(e), e
p = pipeline("image-portrait-stylization", model={str(folder)!r}, device="cpu", trust_remote_code=True)
print("SHAPE", p({str(tmp_path / "p.png")!r})[OutputKeys.OUTPUT_IMG].shape)
"""
    env = dict(os.environ, MODELSCOPE_CACHE=str(tmp_path / "mscache"),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0 and "SHAPE (20, 20, 3)" in proc.stdout, proc.stderr[-3000:]

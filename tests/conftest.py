"""Shared fixtures: tiny models, checkpoints and generated images (no ../shared needed)."""
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# precision="auto" on the CPU depends on the CPU (bf16 with AVX512_BF16/AMX): the suite pins it
# to fp32 so results do not depend on the machine CI lands on (subprocesses inherit it);
# tests/test_fastpath.py checks the detection itself by injecting CPU flags.
os.environ.setdefault("DCTNET_LITE_CPU_AUTO_PRECISION", "fp32")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Absolute paths that belong to one machine (home folders, a checkout, temp folders, mounts):
#: what no tracked file and no stored report may hold.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|Users|mnt|tmp)/[\w.-]+")


def lpips_weights_available(*nets: str) -> bool:
    """Whether the exact LPIPS weights of every net in ``nets`` load here (lpips_offline)."""
    try:
        from dctnet_lite.tools.lpips_offline import LPIPSWeightsUnavailable, load_lpips_weights
    except ImportError:
        return False
    try:
        for net in nets:
            load_lpips_weights(net)
    except LPIPSWeightsUnavailable:
        return False
    return True


def block_matplotlib(monkeypatch) -> None:
    """From now on in the test, ``import matplotlib`` (and its submodules) fails."""
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", blocked)


@pytest.fixture
def no_matplotlib(monkeypatch):
    """The whole test runs as if matplotlib were not installed."""
    block_matplotlib(monkeypatch)


def assert_no_absolute_path(obj):
    """No string of a report is an absolute path (a machine's folder layout)."""
    if isinstance(obj, dict):
        for v in obj.values():
            assert_no_absolute_path(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_no_absolute_path(v)
    elif isinstance(obj, str):
        assert not (os.path.isabs(obj) and len(obj) > 1), obj


def portrait_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic 'portrait': gradient background, an ellipse 'face', some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / max(w, 1), yy / max(h, 1), 0.5 * np.ones_like(xx)], -1)
    face = ((xx - w / 2) / (0.3 * w + 1)) ** 2 + ((yy - h / 2) / (0.4 * h + 1)) ** 2 < 1
    img[face] = [0.9, 0.7, 0.6]
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions on a shared CPU are fastest (and steadiest) on one intra-op thread.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    from dctnet_lite import DCTNet

    torch.manual_seed(0)
    return DCTNet(8).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model):
    from dctnet_lite import save_checkpoint

    path = tmp_path / "tiny-w8.safetensors"
    save_checkpoint(path, tiny_model, dtype="fp32", provenance={"recipe": "test"}, metrics={"lpips": 0.5})
    return path


@pytest.fixture
def image_folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(portrait_like(40, 56, 1)).save(d / "a.png")
    Image.fromarray(portrait_like(40, 56, 2)).save(d / "sub" / "b.jpg")
    Image.fromarray(portrait_like(33, 21, 3)).save(d / "c.png")
    return d

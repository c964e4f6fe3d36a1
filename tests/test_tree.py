"""House rules of the tree itself: no path of one particular machine, package data declared."""
import os
import subprocess
from pathlib import Path

import pytest
from conftest import MACHINE_PATH

REPO = Path(__file__).resolve().parents[1]
BINARY = (".png", ".jpg", ".jpeg", ".safetensors", ".pb", ".npz", ".onnx")


def _tracked():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / p for p in out.decode().split("\0") if p and not p.endswith(BINARY)]


def test_no_machine_specific_path_in_the_tree():
    hits = []
    for f in _tracked():
        if f == Path(__file__).resolve() or not f.is_file():
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{f.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, "machine-specific paths (make them arguments or relative):\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_must():
    checkout = os.path.join(os.sep, "work", "shared", "data", "portraits", "train")
    assert MACHINE_PATH.search(f'calibration="{checkout}"')
    assert MACHINE_PATH.search(f"source: {os.path.join(os.sep, 'home', 'alice', 'runs', 'last.ckpt')}")
    assert MACHINE_PATH.search(os.path.join(os.sep, "tmp", "pytest-of-root", "x.safetensors"))
    relative = os.path.join("a", "work", "b")  # "work" inside a relative path is no machine path
    assert not MACHINE_PATH.search(f"../shared/data/portraits/train and /proc/cpuinfo and {relative}")


def test_shipped_checkpoint_files_hold_no_machine_path():
    for f in list((REPO / "checkpoints").glob("*.safetensors")) + list((REPO / "dctnet_lite/weights").glob("*")):
        raw = f.read_bytes()
        header = raw[8: 8 + int.from_bytes(raw[:8], "little")].decode()
        assert not MACHINE_PATH.search(header.replace("\\/", "/")), f.name


def test_package_data_is_declared_for_the_wheel():
    cfg = (REPO / "setup.cfg").read_text()
    assert "weights/*.safetensors" in cfg and "assets/*.png" in cfg

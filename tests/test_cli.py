import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dctnet_lite.cli import main

from conftest import portrait_like

REPO = Path(__file__).resolve().parents[1]


def test_cartoonize_end_to_end(tiny_ckpt, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["cartoonize", str(image_folder), "-o", str(out), "--checkpoint", str(tiny_ckpt),
               "--strength", "0.5", "--size", "32", "--batch-size", "2", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["ok"]) == 3 and report["failed"] == []
    sizes = {Path(o).name: Image.open(o).size for _, o in report["ok"]}
    assert sizes == {"a.png": (32, 23), "b.png": (32, 23), "c.png": (20, 32)}


def test_cartoonize_overlap_png_level_and_device_resize_options(tiny_ckpt, image_folder, tmp_path, capsys):
    base = ["cartoonize", str(image_folder), "--checkpoint", str(tiny_ckpt), "--size", "32", "--json"]
    assert main(base + ["-o", str(tmp_path / "a"), "--workers", "0", "--png-level", "0"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(base + ["-o", str(tmp_path / "b"), "--workers", "2", "--png-level", "9",
                        "--resize", "device"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert [Path(o).name for _, o in a["ok"]] == [Path(o).name for _, o in b["ok"]]
    for (_, oa), (_, ob) in zip(a["ok"], b["ok"]):
        assert Image.open(oa).size == Image.open(ob).size
        assert Path(oa).stat().st_size > Path(ob).stat().st_size  # stored vs compressed
    rc = main(base + ["-o", str(tmp_path / "c"), "--resize", "device", "--devices", "2"])
    assert rc == 1 and "--resize device works in single-process runs only" in capsys.readouterr().err


def test_cartoonize_broken_file_exits_nonzero_but_writes_the_rest(tiny_ckpt, image_folder, tmp_path, capsys):
    (image_folder / "zz-broken.jpg").write_bytes(b"\xff\xd8 nope")
    rc = main(["cartoonize", str(image_folder / "*.*"), "-o", str(tmp_path / "o"), "--checkpoint",
               str(tiny_ckpt), "--format", "jpg"])
    err = capsys.readouterr().err
    assert rc == 1 and "zz-broken.jpg" in err and "1 input(s) failed" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.jpg", "c.jpg"]


def test_cartoonize_without_trained_checkpoint_fails_clearly(tmp_path, monkeypatch, capsys, image_folder):
    import dctnet_lite.checkpoint as ck

    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(tmp_path / "empty"))
    monkeypatch.setattr(ck, "package_weights_dir", lambda: tmp_path / "pkg")
    monkeypatch.setattr(ck, "repository_checkpoints_dir", lambda: None)
    rc = main(["cartoonize", str(image_folder), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    from dctnet_lite.registry import DEFAULT_WEIGHTS

    assert rc == 1 and f"checkpoint {DEFAULT_WEIGHTS} " in err and "was not found: looked for" in err
    assert str(tmp_path / "pkg") in err and "To get it" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_strength_is_a_usage_error(tiny_ckpt, image_folder, tmp_path, capsys):
    assert main(["cartoonize", str(image_folder), "-o", str(tmp_path), "--checkpoint", str(tiny_ckpt),
                 "--strength", "3"]) == 1
    assert "--strength" in capsys.readouterr().err


def test_info_and_checkpoints(tiny_ckpt, capsys, monkeypatch):
    assert main(["info", "--width", "48", "--resolution", "512", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"]["base_width"] == 48 and info["params"] > 1e6 and info["resolution"] == 512
    assert main(["info", "--checkpoint", str(tiny_ckpt)]) == 0
    assert "width 8" in capsys.readouterr().out
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(tiny_ckpt.parent))
    assert main(["checkpoints", "--json"]) == 0
    assert "tiny-w8" in [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert main(["info", "--checkpoint", "does-not-exist"]) == 1


def test_console_script_runs_as_module(tiny_ckpt, tmp_path):
    Image.fromarray(portrait_like(20, 20)).save(tmp_path / "p.png")
    r = subprocess.run([sys.executable, "-m", "dctnet_lite", "cartoonize", str(tmp_path / "p.png"), "-o",
                        str(tmp_path / "o"), "--checkpoint", str(tiny_ckpt)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "p.png").is_file()


HEAVY = ("lightning", "pytorch_lightning", "torch_pruning", "lpips", "modelscope", "torchmetrics")


def test_inference_path_imports_nothing_heavy(tiny_ckpt, tmp_path):
    """`import dctnet_lite` and `dctnet-lite cartoonize` never import the training stack."""
    Image.fromarray(portrait_like(20, 20)).save(tmp_path / "p.png")
    code = (
        "import sys, dctnet_lite\n"
        "from dctnet_lite.cli import main\n"
        f"rc = main(['cartoonize', {str(tmp_path / 'p.png')!r}, '-o', {str(tmp_path / 'o')!r}, "
        f"'--checkpoint', {str(tiny_ckpt)!r}])\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 []"


def test_old_checkpoint_name_warns_in_one_line_and_main_leaves_the_warning_format_alone():
    import warnings

    before = warnings.formatwarning
    r = subprocess.run([sys.executable, "-m", "dctnet_lite", "info", "--checkpoint", "toon-w40", "--resolution", "64"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "width 40" in r.stdout
    assert r.stderr.strip() == ("dctnet-lite: FutureWarning: checkpoint name 'toon-w40' is deprecated and will "
                                "be removed in dctnet_lite 0.3: use 'dctnet_w40.toon'")
    assert main(["info", "--width", "16", "--resolution", "32"]) == 0
    assert warnings.formatwarning is before

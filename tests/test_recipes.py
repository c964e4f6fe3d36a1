"""Recipes: the finetune/ CPU overlays merge to the full recipes, portable paths, the shared parsing."""
import os
from pathlib import Path

import pytest
import yaml

from dctnet_lite.tools.recipes import one_line, portable_path, portable_tree, rewrite_argv

REPO = Path(__file__).resolve().parents[1]
FT = REPO / "finetune"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.fixture(scope="module")
def merged():
    """``dctnet-lite train --config ... --print_config`` of each recipe as LightningCLI merges it."""
    pytest.importorskip("lightning")
    from dctnet_lite.train import train_main

    import contextlib
    import io

    def run(*names):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            argv = [a for n in names for a in ("--config", str(FT / n))]
            assert train_main(argv + ["--print_config"]) == 0
        return _flat(yaml.safe_load(buf.getvalue()))

    return run


def _diff(a, b):
    return {k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")}


def test_teacher_cpu_overlay_changes_only_the_cpu_keys(merged):
    gpu, cpu = merged("teacher_w64.yaml"), merged("teacher_w64.yaml", "teacher_w64_cpu.yaml")
    assert _diff(gpu, cpu) == {
        "checkpoint_every_n_steps", "trainer.default_root_dir", "trainer.max_steps", "trainer.max_time",
        "trainer.accelerator", "trainer.val_check_interval", "trainer.num_sanity_val_steps",
        "trainer.log_every_n_steps", "model.lr", "model.warmup_steps", "model.ema_decay", "data.crop",
        "data.scale", "data.batch_size", "data.num_workers", "data.val_batch_size"}
    # the shipped teacher's recipe (checkpoints/README.md): 720 steps, 128-px crops, batch 4, lr 5e-4
    assert (cpu["trainer.max_steps"], cpu["data.crop"], cpu["data.batch_size"], cpu["model.lr"]) == (720, 128, 4, 0.0005)
    assert cpu["trainer.accelerator"] == "cpu" and cpu["trainer.precision"] is None
    assert cpu["model.width"] == gpu["model.width"] == 64 and cpu["model.target"] == "renderer"
    assert cpu["data.photo_root"] == "../shared/data/portraits/train"


def test_distill_cpu_overlay_and_the_scratch_control(merged):
    gpu = merged("distill_w48.yaml")
    cpu = merged("distill_w48.yaml", "distill_w48_cpu.yaml")
    scratch = merged("distill_w48.yaml", "distill_w48_cpu.yaml", "scratch_w48_cpu.yaml")
    assert _diff(gpu, cpu) == {
        "checkpoint_every_n_steps", "trainer.default_root_dir", "trainer.max_steps", "trainer.max_time",
        "trainer.accelerator", "trainer.val_check_interval", "trainer.num_sanity_val_steps",
        "trainer.log_every_n_steps", "model.warmup_steps", "model.ema_decay", "data.crop", "data.scale",
        "data.batch_size", "data.num_workers", "data.val_batch_size"}
    for r in (gpu, cpu):
        assert r["model.init_checkpoint"] == "runs/pruned-w48.safetensors" and r["model.target"] == "teacher"
        assert r["model.teacher_checkpoint"] == "dctnet_w64.toon" and r["model.width"] == 48
    assert (cpu["trainer.max_steps"], cpu["data.crop"], cpu["data.batch_size"]) == (500, 128, 4)
    # the control: the same recipe and budget, only another init and run folder
    assert _diff(cpu, scratch) == {"model.init_checkpoint", "trainer.default_root_dir"}
    assert scratch["model.init_checkpoint"] is None and scratch["trainer.default_root_dir"] == "runs/scratch_w48_cpu"


def test_cpu_overlays_hold_only_what_differs():
    """An overlay is not a copy of its base: every key it sets differs from the base's value."""
    for base, over in (("teacher_w64.yaml", "teacher_w64_cpu.yaml"), ("distill_w48.yaml", "distill_w48_cpu.yaml")):
        b = _flat(yaml.safe_load((FT / base).read_text()))
        o = _flat(yaml.safe_load((FT / over).read_text()))
        assert o and all(b.get(k, "<unset>") != v for k, v in o.items()), over


def test_portable_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    assert portable_path("../shared/data/portraits/train") == "../shared/data/portraits/train"
    assert portable_path(tmp_path / "checkpoints" / "x.safetensors") == "checkpoints/x.safetensors"
    assert portable_path(tmp_path / "checkpoints", root=tmp_path) == "checkpoints"
    assert portable_path(tmp_path, root=tmp_path) == "."
    other = tmp_path.parent / "elsewhere" / "deep" / "y.safetensors"
    assert portable_path(other) == portable_path(other, root=tmp_path) == "deep/y.safetensors"
    assert portable_path(other, root=tmp_path.parent) == "elsewhere/deep/y.safetensors"
    assert portable_path(None) is None
    tree = portable_tree({"a": [str(tmp_path / "checkpoints" / "x.safetensors"), 3, None],
                          "why": f"cannot read {tmp_path}/checkpoints/z.safetensors", "rel": "runs/q"})
    assert tree == {"a": ["checkpoints/x.safetensors", 3, None], "why": "cannot read checkpoints/z.safetensors",
                    "rel": "runs/q"}
    assert not any(os.path.isabs(v) for v in tree["a"] if isinstance(v, str))


def test_rewrite_argv_and_one_line(capsys):
    out = rewrite_argv(["--recipe", "a.yaml", "--images=DIR", "--x"], "eval",
                       {"--recipe": "--config", "--images": "--quality.images"})
    assert out == ["--config", "a.yaml", "--quality.images=DIR", "--x"]
    assert capsys.readouterr().err.count("deprecated") == 1
    err = ValueError('Parser key "width":\n  Does not validate against any of the Union subtypes\n'
                     "  Given value type: <class 'str'>\n  Given value: 12.5")
    assert one_line(err) == "invalid value 12.5 for width"


def test_an_overlay_alone_or_before_its_base_is_refused_and_old_recipe_files_say_where_they_went(tmp_path):
    from dctnet_lite.tools.recipes import check_config_files, overlay_bases

    base, over = tmp_path / "base.yaml", tmp_path / "over.yaml"
    base.write_text("a: 1\n")
    over.write_text("# overlay-of: base.yaml\na: 2\n")
    assert overlay_bases(over) == ["base.yaml"] and overlay_bases(base) == []
    check_config_files(["--config", str(base), "--config", str(over), "--a", "3"])  # fine
    for argv in (["--config", str(over)], ["--config", str(over), "--config", str(base)]):
        with pytest.raises(ValueError, match="over.yaml is an overlay of base.yaml: give --config .*base.yaml before it"):
            check_config_files(argv)
    with pytest.raises(FileNotFoundError, match=r"prune/w48.yaml \(.*--config prune/uniform.yaml --width 48\)"):
        check_config_files(["--config", "prune/w48.yaml"])
    with pytest.raises(FileNotFoundError, match=r"^recipe not found: elsewhere/w48.yaml$"):
        check_config_files(["--config", "elsewhere/w48.yaml"])
    # every shipped overlay names a base that exists beside it
    repo = Path(__file__).resolve().parents[1]
    overlays = [p for d in ("finetune", "prune", "eval") for p in (repo / d).glob("*.yaml") if overlay_bases(p)]
    assert len(overlays) >= 5
    for p in overlays:
        assert all((p.parent / b).is_file() for b in overlay_bases(p)), p

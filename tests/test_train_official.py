"""dctnet_lite.train on the official family: teacher runs, distillation across families, export, eval.

Tiny nets (official c8 n1, dctnet width 8), 32-px crops of 8 generated photos, a few CPU steps,
through ``train_main`` and the shipped recipes (finetune/teacher_official*.yaml,
finetune/distill_official_c24*.yaml, finetune/distill_w48*.yaml) with overrides.
"""
import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import portrait_like
from PIL import Image

pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from dctnet_lite import DCTNet, load, save_checkpoint  # noqa: E402
from dctnet_lite.checkpoint import file_sha256, read_info  # noqa: E402
from dctnet_lite.official import OfficialConfig, OfficialGenerator, channel_groups  # noqa: E402
from dctnet_lite.train import CartoonModule, export_checkpoint, train_main  # noqa: E402
from dctnet_lite.train.families import student_config  # noqa: E402
from train_callbacks import ckpt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FT = REPO / "finetune"
C8N1 = json.dumps({"channels": 8, "num_blocks": 1})
#: a pruned-looking official c8 n1: every free group narrower than the uniform table
TABLE = {"x0": 8, "down1": 6, "x1": 12, "down2": 10, "res": 24, "block0": 20, "dec1": 10, "dec0": 6}

pytestmark = pytest.mark.usefixtures("one_thread")


class Track(Callback):
    """Keeps the module, the student's weights at the start of training and the teacher's."""

    last = {}

    def on_train_start(self, trainer, pl_module):
        d = pl_module.distiller
        Track.last = {"start": {k: v.clone() for k, v in pl_module.student.state_dict().items()},
                      "teacher": ({k: v.clone() for k, v in d.teacher.state_dict().items()} if d else None)}

    def on_fit_end(self, trainer, pl_module):
        Track.last.update(module=pl_module, trainer=trainer)


TRACK = ["--trainer.callbacks", json.dumps([{"class_path": "test_train_official.Track"}])]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(8):
        Image.fromarray(portrait_like(40 + 4 * (i % 3), 48, seed=i)).save(d / f"p{i}.png")
    return d


@pytest.fixture(scope="module")
def targets(photos, tmp_path_factory):
    """Per-photo target images (a posterized grey version), as JPEG: matched by name, not extension."""
    d = tmp_path_factory.mktemp("targets")
    for p in photos.glob("*.png"):
        img = Image.open(p).convert("L").point(lambda v: (v // 64) * 64).convert("RGB")
        img.save(d / f"{p.stem}.jpg")
    return d


def small(photos, run, steps=4):
    """Overrides that shrink any recipe to the tiny images and a few steps."""
    return ["--model.warmup_steps", "2", "--model.val_sample_count", "2",
            "--data.photo_root", str(photos), "--data.licenses", "null", "--data.crop", "32",
            "--data.val_crop", "32", "--data.batch_size", "2", "--data.num_workers", "0",
            "--data.val_fraction", "0.3", "--data.val_batch_size", "2",
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint_every_n_steps", "2"]


def recipe(*names):
    return [a for n in names for a in ("--config", str(FT / n))]


def changed(start, now):
    return [k for k, v in now.items() if not torch.equal(v, start[k])]


@pytest.fixture(scope="module")
def teacher_run(photos, tmp_path_factory):
    """finetune/teacher_official.yaml + CPU overlay at official c8 n1: run folder, module, export."""
    d = tmp_path_factory.mktemp("teacher")
    argv = recipe("teacher_official.yaml", "teacher_official_cpu.yaml") + [
        "--model.arch", "null", "--model.family", "official", "--model.arch_config", C8N1] + small(photos, d / "run")
    Track.last = {}
    assert train_main(argv + TRACK) == 0
    out = export_checkpoint(str(d / "run" / "checkpoints" / "last.ckpt"), str(d / "official_c8n1.safetensors"))
    return {"run": d / "run", "export": Path(out.path), **Track.last}


@pytest.fixture(scope="module")
def dctnet_teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dctnet") / "dctnet-w8.safetensors"
    save_checkpoint(path, DCTNet(8).eval(), dtype="fp32", provenance={"recipe": "test teacher"})
    return path


# ------------------------------------------------------------------------------------ architecture
def test_student_architecture_by_arch_family_config_or_width():
    assert student_config(arch="official_c32n4") == OfficialConfig(32, 4)
    assert student_config(arch="dctnet_w48").base_width == 48
    assert student_config(width=48).base_width == 48                      # dctnet, as before
    assert student_config().base_width == 64
    assert student_config(family="official") == OfficialConfig(32, 4)
    assert student_config(family="official", width=24) == OfficialConfig(24, 4)
    assert student_config(family="official", arch_config={"channels": 8, "num_blocks": 1}) == OfficialConfig(8, 1)
    cfg = student_config(family="official", arch_config={"table": TABLE, "num_blocks": 1, "channels": None})
    assert not cfg.is_uniform and cfg.widths == TABLE
    for kw, match in ((dict(arch="official_c32n4", width=48), "give model.arch or model.width"),
                      (dict(arch="official_c32n4", family="dctnet"), "of family 'official'"),
                      (dict(arch="nope"), "unknown model 'nope'"),
                      (dict(family="nope"), "unknown model family"),
                      (dict(family="official", arch_config={"channels": 8, "bogus": 1}), "invalid model.arch_config"),
                      (dict(family="official", width=8, arch_config={"channels": 8}), "not both")):
        with pytest.raises(ValueError, match=match) as e:
            student_config(**kw)
        assert "\n" not in str(e.value)
    module = CartoonModule(arch="official_c16n4", lpips_weight=0)
    assert isinstance(module.student, OfficialGenerator) and module.student.config == OfficialConfig(16, 4)
    assert isinstance(module.ema, OfficialGenerator) and not any(p.requires_grad for p in module.ema.parameters())


def test_training_forward_is_the_same_function_and_reaches_every_weight():
    """The official generator's fused eager paths are not differentiable: the student's training
    forward runs its plain formulation, which must give the same output."""
    torch.manual_seed(0)
    module = CartoonModule(family="official", arch_config={"channels": 8, "num_blocks": 1}, lpips_weight=0)
    x, s = torch.rand(2, 3, 36, 44) * 2 - 1, torch.tensor([1.0, 0.6])
    out = module.student_forward(x, s)
    with torch.no_grad():
        ref = module.student(x, s)
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())


# ------------------------------------------------------------------------------------ recipes
def merged(*names):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert train_main(recipe(*names) + ["--print_config"]) == 0
    return flat(yaml.safe_load(buf.getvalue()))


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def diff(a, b):
    return {k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")}


def test_official_recipes_are_the_dctnet_ones_with_another_network():
    w64, off = merged("teacher_w64.yaml"), merged("teacher_official.yaml")
    w64_cpu, off_cpu = merged("teacher_w64.yaml", "teacher_w64_cpu.yaml"), \
        merged("teacher_official.yaml", "teacher_official_cpu.yaml")
    # same data rules, target, loss, schedule and validation: only the network and the run folder differ
    assert diff(w64, off) == diff(w64_cpu, off_cpu) == {"model.width", "model.arch", "trainer.default_root_dir"}
    assert off["model.arch"] == "official_c32n4" and off["model.width"] is None and off["model.target"] == "renderer"
    assert off_cpu["data.licenses"] == ["MIT", "BSD", "Apache"] and off_cpu["data.val_fraction"] == 0.15
    d48, doff = merged("distill_w48.yaml", "distill_w48_cpu.yaml"), \
        merged("distill_official_c24.yaml", "distill_official_c24_cpu.yaml")
    assert diff(d48, doff) == {"model.width", "model.arch", "model.init_checkpoint", "trainer.default_root_dir"}
    assert doff["model.arch"] == "official_c24n4" and doff["model.target"] == "teacher"
    assert doff["model.teacher_checkpoint"] == "dctnet_w64.toon" and doff["model.feature_weight"] == 0.0
    for base, over in (("teacher_official.yaml", "teacher_official_cpu.yaml"),
                       ("distill_official_c24.yaml", "distill_official_c24_cpu.yaml")):
        b, o = merged(base), flat(yaml.safe_load((FT / over).read_text()))
        assert o and all(b.get(k, "<unset>") != v for k, v in o.items()), over  # an overlay holds only what differs
    # an overlay alone is refused
    assert train_main(recipe("teacher_official_cpu.yaml") + ["--print_config"]) == 2


# ------------------------------------------------------------------------------------ teacher run
def test_official_teacher_trains_and_exports_as_official(teacher_run, photos):
    module = teacher_run["module"]
    assert isinstance(module.student, OfficialGenerator) and module.student.config == OfficialConfig(8, 1)
    assert changed(teacher_run["start"], module.student.state_dict())  # it trained
    state = ckpt(teacher_run["run"] / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4 and {k.split(".")[0] for k in state["state_dict"]} == {"student", "ema"}
    assert state["dctnet_lite"]["family"] == "official"
    info = read_info(teacher_run["export"])
    assert info.family == "official" and info.arch == OfficialConfig(8, 1)
    model = load(teacher_run["export"])
    assert isinstance(model, OfficialGenerator)
    prov = model.checkpoint_info.provenance
    assert prov["steps"] == 4 and prov["weights"] == "ema" and prov["teacher"] is None
    assert prov["parent_checkpoint"] is None and prov["recipe"]["model"]["family"] == "official"
    assert "teacher_official.yaml" in " ".join(prov["recipe"]["config_files"])
    assert 0 < model.checkpoint_info.metrics["val/lpips"] < 1
    x, s = torch.rand(2, 3, 32, 40) * 2 - 1, torch.tensor([1.0, 0.5])
    with torch.no_grad():
        assert torch.allclose(model(x, s), module.ema.eval()(x, s), atol=2e-2)


def test_student_from_a_non_uniform_official_checkpoint_keeps_its_table(photos, tmp_path):
    torch.manual_seed(1)
    cfg = OfficialConfig.from_table(TABLE, num_blocks=1)
    assert not cfg.is_uniform and set(TABLE) == set(channel_groups(1))
    parent = tmp_path / "pruned-official.safetensors"
    save_checkpoint(parent, OfficialGenerator(cfg).eval(), dtype="fp32", provenance={"recipe": "test prune"})
    module = CartoonModule(init_checkpoint=str(parent), lpips_weight=0)
    assert module.student.config == cfg and module.student.config.widths == TABLE
    with pytest.raises(ValueError, match="is a 'official' checkpoint, but the recipe asks for family 'dctnet'"):
        CartoonModule(init_checkpoint=str(parent), family="dctnet", lpips_weight=0)
    run = tmp_path / "run"
    argv = recipe("teacher_official.yaml", "teacher_official_cpu.yaml") + small(photos, run, 2) + [
        "--model.init_checkpoint", str(parent)]
    assert train_main(argv) == 0
    # resume (step, optimizer) continues the same non-uniform student
    resumed = argv[:argv.index("--trainer.max_steps")] + ["--trainer.max_steps", "4"] \
        + argv[argv.index("--trainer.max_steps") + 2:] + ["--ckpt_path", "last"]
    assert train_main(resumed) == 0
    state = ckpt(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4 and int(state["optimizer_states"][0]["state"][0]["step"]) == 4
    assert state["dctnet_lite"]["arch"] == cfg.to_dict() and state["dctnet_lite"]["family"] == "official"
    model = load(export_checkpoint(str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "out.safetensors")).path)
    assert isinstance(model, OfficialGenerator) and model.config.widths == TABLE and not model.config.is_uniform
    assert model.conv_in.out_channels == 8 and model.enc1a.out_channels == 6 and model.blocks[0].conv1.out_channels == 20
    parent_ref = model.checkpoint_info.provenance["parent_checkpoint"]
    assert parent_ref["family"] == "official" and parent_ref["sha256"] == read_info(parent).sha256


# ------------------------------------------------------------------------------------ distillation
def assert_distilled(run, teacher_path, student_cls, tmp_path):
    module = Track.last["module"]
    teacher = module.distiller.teacher
    # the student trained, the teacher is bit-identical to its file, frozen and in no parameter set
    assert changed(Track.last["start"], module.student.state_dict())
    ref = load(teacher_path).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in module.student.parameters()}
    opt_ids = {id(p) for g in Track.last["trainer"].optimizers[0].param_groups for p in g["params"]}
    assert opt_ids == trainable and not opt_ids & {id(p) for p in teacher.parameters()}
    state = ckpt(run / "checkpoints" / "last.ckpt")
    assert {k.split(".")[0] for k in state["state_dict"]} == {"student", "ema"}
    assert set(state["dctnet_lite"]["val_metrics"]) == {"val/lpips", "val/lpips_s1", "val/lpips_s05", "val_step"}
    # export: the student's family and architecture, the teacher by reference
    model = load(export_checkpoint(str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "student.safetensors")).path)
    assert isinstance(model, student_cls) and model.config == module.student.config
    prov = model.checkpoint_info.provenance
    assert prov["teacher"]["sha256"] == file_sha256(teacher_path) == prov["recipe"]["teacher"]["sha256"]
    assert prov["teacher"]["family"] == read_info(teacher_path).family
    assert prov["recipe"]["model"]["target"] == "teacher" and prov["steps"] == 4
    return model


def test_official_student_from_a_dctnet_teacher(photos, dctnet_teacher, tmp_path):
    run = tmp_path / "run"
    argv = recipe("distill_official_c24.yaml", "distill_official_c24_cpu.yaml") + small(photos, run) + [
        "--model.arch", "null", "--model.family", "official", "--model.arch_config", C8N1,
        "--model.teacher_checkpoint", str(dctnet_teacher), "--model.renderer_weight", "0.25"]
    Track.last = {}
    assert train_main(argv + TRACK) == 0
    model = assert_distilled(run, dctnet_teacher, OfficialGenerator, tmp_path)
    assert model.config == OfficialConfig(8, 1) and model.checkpoint_info.family == "official"
    assert isinstance(Track.last["module"].distiller.teacher, DCTNet)


def test_dctnet_student_from_an_official_teacher(photos, teacher_run, tmp_path):
    run, teacher = tmp_path / "run", teacher_run["export"]
    argv = recipe("distill_w48.yaml", "distill_w48_cpu.yaml") + small(photos, run) + [
        "--model.init_checkpoint", "null", "--model.width", "8", "--model.teacher_checkpoint", str(teacher)]
    Track.last = {}
    assert train_main(argv + TRACK) == 0
    model = assert_distilled(run, teacher, DCTNet, tmp_path)
    assert model.config.base_width == 8 and model.checkpoint_info.family == "dctnet"
    assert isinstance(Track.last["module"].distiller.teacher, OfficialGenerator)


def test_feature_distillation_needs_two_dctnets(dctnet_teacher, teacher_run, photos, tmp_path, capsys):
    official = teacher_run["export"]
    pairs = [dict(family="official", arch_config={"channels": 8, "num_blocks": 1}, teacher_checkpoint=str(dctnet_teacher)),
             dict(width=8, teacher_checkpoint=str(official)),
             dict(family="official", arch_config={"channels": 8, "num_blocks": 1}, teacher_checkpoint=str(official))]
    for kw in pairs:
        with pytest.raises(ValueError, match="feature_weight > 0 .* needs a dctnet student and a dctnet teacher") as e:
            CartoonModule(target="teacher", feature_weight=0.5, lpips_weight=0, **kw)
        assert "\n" not in str(e.value)
        assert CartoonModule(target="teacher", feature_weight=0.0, lpips_weight=0, **kw).distiller.projection is None
    # dctnet to dctnet keeps its feature term
    assert CartoonModule(target="teacher", feature_weight=0.5, lpips_weight=0, width=8,
                         teacher_checkpoint=str(dctnet_teacher)).distiller.projection is not None
    # through the CLI: exit 2 with one line, nothing written
    run = tmp_path / "run"
    argv = recipe("distill_official_c24.yaml", "distill_official_c24_cpu.yaml") + small(photos, run) + [
        "--model.teacher_checkpoint", str(dctnet_teacher), "--model.feature_weight", "0.5"]
    capsys.readouterr()
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dctnet-lite train: error: feature_weight > 0") and len(err.splitlines()) == 1
    assert "official student, dctnet teacher" in err and not run.exists()


# ------------------------------------------------------------------------------------ eval
def test_eval_on_official_checkpoints(teacher_run, dctnet_teacher, photos, targets, tmp_path):
    from dctnet_lite.tools.evaluate import evaluate
    from dctnet_lite.tools.report import cli_main

    official = str(teacher_run["export"])
    metrics = ("lpips_alex", "psnr", "ssim")
    res = evaluate([official, str(dctnet_teacher)], str(targets), str(photos), strengths=(1.0, 0.5),
                   sizes=(46,), metrics=metrics, limit=3)
    assert len(res["results"]) == 4 and not res["missing_targets"]
    for row in res["results"]:
        assert row["n"] == 3 and row["family"] in ("official", "dctnet")
        assert all(math.isfinite(v) for m in metrics for v in row["metrics"][m]["per_image"])
    off = [r for r in res["results"] if r["family"] == "official"]
    assert off[0]["arch"] == "official c8 n1" and off[0]["width"] is None
    # an official checkpoint as the reference, a 37-px size (not a multiple of its stride 4)
    res = evaluate([str(dctnet_teacher)], official, str(photos), strengths=(1.0,), sizes=(37,), metrics=metrics, limit=2)
    row = res["results"][0]
    assert res["reference_kind"] == "checkpoint" and row["reference"] == "official_c8n1"
    assert all(math.isfinite(row["metrics"][m]["mean"]) for m in metrics) and row["metrics"]["lpips_alex"]["mean"] > 0
    # dctnet-lite eval (the report verb) on it
    cfg = {"name": "official", "checkpoints": [official], "bench": False, "pareto": False, "extra_bench": [],
           "quality": {"reference": str(targets), "images": str(photos), "sizes": [40], "strengths": [1.0],
                       "metrics": list(metrics), "limit": 2}}
    assert cli_main(["--config", json.dumps(cfg), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = report["quality"]["results"]
    assert len(rows) == 1 and rows[0]["family"] == "official"
    assert all(math.isfinite(rows[0]["metrics"][m]["mean"]) for m in metrics)

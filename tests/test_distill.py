"""dctnet_lite.train.distill: frozen teacher, recipes, export, resume (SIGTERM, SIGKILL) and DDP.

Tiny models: a random width-16 teacher saved with ``save_checkpoint`` and the width-8 student
``prune(teacher, width=8)``; 32-px crops of 8 generated photos. Training runs through
``train_main`` with ``finetune/distill_w48.yaml`` + its CPU overlay ``distill_w48_cpu.yaml`` plus
overrides, so the recipe is exercised.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import portrait_like
from PIL import Image

pytest.importorskip("lightning")
pytest.importorskip("torch_pruning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

import train_callbacks  # noqa: E402
from dctnet_lite import DCTNet, load, save_checkpoint  # noqa: E402
from dctnet_lite.fileutil import portable_path  # noqa: E402
from train_callbacks import ckpt  # noqa: E402
from dctnet_lite.tools.prune import prune  # noqa: E402
from dctnet_lite.train import CartoonModule, export_checkpoint, train_main  # noqa: E402
from dctnet_lite.train.distill import DISTILL_VAL_STRENGTHS, file_sha256  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GPU_RECIPE = REPO / "finetune" / "distill_w48.yaml"
CPU_RECIPE = REPO / "finetune" / "distill_w48_cpu.yaml"
STEPS = 4  # validations (and last.ckpt) at steps 2 and 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """(teacher width 16, student width 8 pruned from it): checkpoint paths."""
    d = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    teacher = d / "teacher-w16.safetensors"
    save_checkpoint(teacher, DCTNet(16).eval(), dtype="fp32", provenance={"recipe": "test teacher"})
    student = d / "student-w8-pruned.safetensors"
    prune(str(teacher), width=8).save(student)
    return teacher, student


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(8):
        path = d / ("sub" if i % 2 else "") / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(portrait_like(40 + 4 * i, 48, seed=i)).save(path)
    return d


def dargs(photos, nets, run, steps=STEPS, *extra):
    """The CPU distillation recipe shrunk to the tiny nets and images (feature + renderer terms on)."""
    teacher, student = nets
    return ["--config", str(GPU_RECIPE), "--config", str(CPU_RECIPE),
            "--model.init_checkpoint", str(student), "--model.teacher_checkpoint", str(teacher),
            "--model.feature_weight", "0.5", "--model.renderer_weight", "0.25",
            "--model.warmup_steps", "2", "--model.val_sample_count", "2",
            "--data.photo_root", str(photos), "--data.licenses", "null", "--data.crop", "32",
            "--data.val_crop", "32", "--data.batch_size", "2", "--data.num_workers", "0",
            "--data.val_fraction", "0.3", "--data.val_batch_size", "2",
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint_every_n_steps", "2", *extra]


def callbacks(*specs) -> list:
    """``--trainer.callbacks`` for callbacks of this module or of ``train_callbacks``."""
    def path(name):
        return f"train_callbacks.{name}" if hasattr(train_callbacks, name) else f"test_distill.{name}"

    return ["--trainer.callbacks", json.dumps([{"class_path": path(name), "init_args": kw}
                                               for name, kw in specs])]


def sub_state(state_dict, prefix):
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def run_subprocess(argv, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "dctnet_lite", "train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ callbacks
class Probe(Callback):
    """Keeps the module and the train/eval modes seen at every training step (in-process runs)."""

    last = {}

    def on_train_batch_start(self, trainer, pl_module, *_):
        d = pl_module.distiller
        Probe.last.setdefault("modes", []).append(
            (trainer.global_step, pl_module.student.training, pl_module.ema.training, d.teacher.training))

    def on_fit_end(self, trainer, pl_module):
        Probe.last.update(module=pl_module, trainer=trainer)


class Snapshot(Callback):
    """At the start of training (after any restore) saves what a resume must have restored."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({"global_step": trainer.global_step,
                    "ema": pl_module.ema.state_dict(),
                    "projection": pl_module.distiller.projection.state_dict(),
                    "optimizer": trainer.optimizers[0].state_dict(),
                    "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict()}, self.path)


def _unwrapped(name: str) -> str:
    """A parameter name of the DDP wrapper as named in the LightningModule ("module." and
    Lightning's "_forward_module." wrapper prefixes removed)."""
    name = name.split("_forward_module.")[-1]
    return name[len("module."):] if name.startswith("module.") else name


class DDPProbe(Callback):
    """Writes, per rank, what DDP wraps and which parameters it reduces."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        ddp = trainer.strategy.model
        info = {"rank": trainer.global_rank, "world_size": trainer.world_size, "wrapper": type(ddp).__name__,
                "find_unused_parameters": getattr(ddp, "find_unused_parameters", None),
                "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                # names as in the LightningModule (DDP -> Lightning's wrapper -> our module)
                "reduced": [_unwrapped(n) for n, p in ddp.named_parameters() if p.requires_grad],
                "module_trainable": [n for n, p in pl_module.named_parameters() if p.requires_grad]}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(info))


# ------------------------------------------------------------------------------------ shared run
@pytest.fixture(scope="module")
def reference(photos, nets, tmp_path_factory):
    """One uninterrupted 4-step distillation (in-process): run folder, module, trainer, modes."""
    run = tmp_path_factory.mktemp("reference") / "run"
    Probe.last = {}
    assert train_main(dargs(photos, nets, run) + callbacks(("Probe", {}))) == 0
    return {"run": run, **Probe.last}


# ------------------------------------------------------------------------------------ recipes
def test_recipes_parse_and_an_overlay_alone_is_refused(capsys):
    fin = REPO / "finetune"
    stacks = [[GPU_RECIPE], [GPU_RECIPE, CPU_RECIPE], [GPU_RECIPE, CPU_RECIPE, fin / "scratch_w48_cpu.yaml"]]
    for stack in stacks:
        argv = [a for f in stack for a in ("--config", str(f))]
        assert train_main(argv + ["--print_config"]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert cfg["model"]["target"] == "teacher" and cfg["model"]["teacher_checkpoint"] == "dctnet_w64.toon"
        assert cfg["model"]["width"] == 48
    # the CPU overlay alone would train on code defaults (a renderer target): refused, one line
    assert train_main(["--config", str(CPU_RECIPE), "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "is an overlay of distill_w48.yaml" in err and len(err.strip().splitlines()) == 1


def test_distiller_only_with_a_teacher(nets):
    teacher, student = nets
    with pytest.raises(ValueError, match="distillation only"):
        CartoonModule(width=8, lpips_weight=0, feature_weight=0.1)
    plain = CartoonModule(width=8, lpips_weight=0, target="teacher", teacher_checkpoint=str(teacher),
                          init_checkpoint=str(student))
    assert plain.distiller.projection is None and plain.distiller.val_strengths == DISTILL_VAL_STRENGTHS
    assert {k.split(".")[0] for k in plain.state_dict()} == {"student", "ema"}
    module = CartoonModule(width=8, lpips_weight=0, target="teacher", teacher_checkpoint=str(teacher),
                           init_checkpoint=str(student), feature_weight=1.0)
    t = module.distiller.teacher
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert not {id(p) for p in t.parameters()} & {id(p) for p in module.parameters()}
    assert {k.split(".")[0] for k in module.state_dict()} == {"student", "ema", "distiller"}
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in [*module.student.parameters(), *module.distiller.projection.parameters()]}
    # projections map the student's fused channels (8/16/32/64) onto the teacher's (16/32/64/128)
    assert [(c.in_channels, c.out_channels) for c in module.distiller.projection.convs] == \
        [(8, 16), (16, 32), (32, 64), (64, 128)]


# ------------------------------------------------------------------------------------ frozen teacher
def test_teacher_frozen_unsaved_and_student_trained(reference, nets):
    teacher_path, student_path = nets
    module, trainer = reference["module"], reference["trainer"]
    teacher = module.distiller.teacher
    # bit-identical to its file, no gradients, eval mode at every step (also after the step-2 validation)
    ref = load(teacher_path).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    modes = reference["modes"]
    assert [m[0] for m in modes] == list(range(STEPS))
    assert all(student and not ema and not t for _, student, ema, t in modes), modes
    assert not teacher.training
    # the student did train
    start = load(student_path).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in module.student.state_dict().items())
    # not in the optimizer: neither the one Lightning used nor a fresh configure_optimizers()
    teacher_ids = {id(p) for p in teacher.parameters()}
    expected = {id(p) for p in [*module.student.parameters(), *module.distiller.projection.parameters()]}
    for opt in (trainer.optimizers[0], module.configure_optimizers()["optimizer"]):
        ids = [id(p) for g in opt.param_groups for p in g["params"]]
        assert set(ids) == expected and len(ids) == len(expected) and not teacher_ids & set(ids)
    # not in any Lightning checkpoint: student, EMA and the projections only; the teacher by reference
    cdir = reference["run"] / "checkpoints"
    n_student = len(module.student.state_dict())
    for path in [cdir / "last.ckpt", *cdir.glob("best-step*.ckpt")]:
        state = ckpt(path)
        sd = state["state_dict"]
        assert {k.split(".")[0] for k in sd} == {"student", "ema", "distiller"}
        assert len(sd) == 2 * n_student + len(module.distiller.projection.state_dict())
        assert not any("teacher" in k for k in sd)
        info = state["dctnet_lite"]
        assert info["teacher"]["sha256"] == file_sha256(teacher_path)
        assert info["teacher"]["path"] == portable_path(teacher_path)  # no absolute path of this machine
        assert not Path(info["teacher"]["path"]).is_absolute()
        assert info["recipe"]["teacher"] == info["teacher"]
        assert state["hyper_parameters"]["teacher_checkpoint"] == str(teacher_path)
    last = ckpt(cdir / "last.ckpt")
    assert last["global_step"] == STEPS
    assert set(last["dctnet_lite"]["val_metrics"]) == {"val/lpips", "val/lpips_s1", "val/lpips_s05", "val_step"}
    m = last["dctnet_lite"]["val_metrics"]
    assert m["val/lpips"] == pytest.approx((m["val/lpips_s1"] + m["val/lpips_s05"]) / 2, rel=1e-5)


def test_export_of_the_distilled_student(reference, nets, tmp_path):
    teacher_path, student_path = nets
    module = reference["module"]
    info = export_checkpoint(str(reference["run"] / "checkpoints" / "last.ckpt"), str(tmp_path / "w8.safetensors"))
    model = load(info.path)
    assert model.config == load(student_path).config and model.config.base_width == 8 and info.dtype == "fp16"
    x, s = torch.rand(2, 3, 40, 40) * 2 - 1, torch.tensor([0.3, 1.0])
    with torch.no_grad():
        ref = module.ema.eval()(x, s)
        assert not torch.allclose(ref, module.student.eval()(x, s))
        assert torch.allclose(model(x, s), ref, atol=2e-2)
    prov = model.checkpoint_info.provenance
    assert prov["steps"] == STEPS and prov["weights"] == "ema"
    assert prov["parent_checkpoint"]["path"] == portable_path(student_path)
    assert not Path(prov["parent_checkpoint"]["path"]).is_absolute()
    assert not Path(prov["source_checkpoint"]).is_absolute()
    assert prov["recipe"]["teacher"]["sha256"] == file_sha256(teacher_path)
    assert prov["recipe"]["model"]["target"] == "teacher"


# ------------------------------------------------------------------------------------ resume
def assert_resumed_from(snapshot, saved):
    """What a resumed run started with equals what the interrupted run saved."""
    assert snapshot["global_step"] == saved["global_step"]
    sd = saved["state_dict"]
    for name in ("ema", "projection"):
        prefix = "ema." if name == "ema" else "distiller.projection."
        want = sub_state(sd, prefix)
        assert want.keys() == snapshot[name].keys()
        assert all(torch.equal(snapshot[name][k], want[k]) for k in want), name
    got, want = snapshot["optimizer"]["state"], saved["optimizer_states"][0]["state"]
    assert got.keys() == want.keys() and len(got) > 0
    for i in want:
        assert int(got[i]["step"]) == int(want[i]["step"]) == saved["global_step"]
        assert torch.equal(got[i]["exp_avg"], want[i]["exp_avg"]) and torch.equal(got[i]["exp_avg_sq"], want[i]["exp_avg_sq"])
    assert snapshot["scheduler"]["last_epoch"] == saved["lr_schedulers"][0]["last_epoch"] == saved["global_step"]


def assert_finished_like(final, reference_final):
    """Same final step, optimizer step counts and LR schedule position as the uninterrupted run."""
    assert final["global_step"] == reference_final["global_step"] == STEPS
    assert all(int(s["step"]) == STEPS for s in final["optimizer_states"][0]["state"].values())
    assert final["lr_schedulers"][0]["last_epoch"] == reference_final["lr_schedulers"][0]["last_epoch"]
    assert final["lr_schedulers"][0]["_last_lr"] == pytest.approx(reference_final["lr_schedulers"][0]["_last_lr"])
    assert len(final["state_dict"]) == len(reference_final["state_dict"])


def test_sigterm_then_resume(reference, photos, nets, tmp_path):
    run, snap = tmp_path / "run", tmp_path / "snapshot.pt"
    rc = train_main(dargs(photos, nets, run) + callbacks(("SigtermAt", {"at_step": 2})))
    assert rc == 128 + signal.SIGTERM
    saved_path = run / "checkpoints" / "on_exception.ckpt"
    saved = ckpt(saved_path)
    assert saved["global_step"] == 2
    assert train_main(dargs(photos, nets, run, STEPS, "--ckpt_path", "last")
                      + callbacks(("Snapshot", {"path": str(snap)}))) == 0
    assert_resumed_from(torch.load(snap, weights_only=True), saved)
    final = ckpt(run / "checkpoints" / "last.ckpt")
    assert_finished_like(final, ckpt(reference["run"] / "checkpoints" / "last.ckpt"))
    assert final["dctnet_lite"]["train_seconds"] > saved["dctnet_lite"]["train_seconds"]
    assert not saved_path.exists()  # removed after the clean end


def test_sigkill_after_checkpoint_then_resume(reference, photos, nets, tmp_path):
    run, snap = tmp_path / "run", tmp_path / "snapshot.pt"
    killed = run_subprocess(dargs(photos, nets, run) + callbacks(("SigkillAfterCheckpoint", {"at_step": 2})))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    cdir = run / "checkpoints"
    assert not (cdir / "on_exception.ckpt").exists()  # SIGKILL: no handler ran
    saved = ckpt(cdir / "last.ckpt")
    assert saved["global_step"] == 2
    resumed = run_subprocess(dargs(photos, nets, run, STEPS, "--ckpt_path", "last")
                             + callbacks(("Snapshot", {"path": str(snap)})))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"done at step {STEPS}" in resumed.stdout
    assert_resumed_from(torch.load(snap, weights_only=True), saved)
    assert_finished_like(ckpt(cdir / "last.ckpt"), ckpt(reference["run"] / "checkpoints" / "last.ckpt"))


# ------------------------------------------------------------------------------------ DDP
def test_ddp_two_cpu_processes(photos, nets, tmp_path):
    """Scale-out is Lightning's: --trainer.strategy ddp on CPU (gloo), find_unused_parameters=False."""
    run, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    done = run_subprocess(dargs(photos, nets, run, 2, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                                "--trainer.accelerator", "cpu") + callbacks(("DDPProbe", {"out_dir": str(probe)})))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["wrapper"] == "DistributedDataParallel" and r["backend"] == "gloo"
        assert r["find_unused_parameters"] is False
        # DDP reduces exactly the student and the projections: no teacher, no EMA
        assert {n.split(".")[0] for n in r["reduced"]} == {"student", "distiller"}
        assert sorted(r["reduced"]) == sorted(r["module_trainable"])
        assert not any("teacher" in n for n in r["reduced"])
    state = ckpt(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 2
    assert {k.split(".")[0] for k in state["state_dict"]} == {"student", "ema", "distiller"}
    assert not any("teacher" in k for k in state["state_dict"])
    assert "val/lpips" in state["dctnet_lite"]["val_metrics"]

"""dctnet_lite.train: targets, a tiny CPU training run, resume (plain and after SIGTERM), export."""
import csv
import signal
from pathlib import Path

import pytest
import torch
from conftest import portrait_like
from PIL import Image

pytest.importorskip("lightning")

from train_callbacks import ckpt  # noqa: E402

from dctnet_lite import DCTNet, load  # noqa: E402
from dctnet_lite.render import render_toon  # noqa: E402
from dctnet_lite.train import CartoonModule, export_checkpoint, make_target_source, train_main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    for i in range(8):
        path = d / ("sub" if i % 2 else "") / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(portrait_like(40 + 4 * i, 48, seed=i)).save(path)
    return d


def args(photos, run, steps=2, *extra):
    return ["--model.width", "8", "--model.warmup_steps", "2", "--model.val_sample_count", "2",
            "--data.photo_root", str(photos), "--data.crop", "32", "--data.val_crop", "32",
            "--data.batch_size", "2", "--data.num_workers", "0", "--data.val_fraction", "0.3",
            "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
            "--trainer.val_check_interval", "2", "--trainer.check_val_every_n_epoch", "null",
            "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--checkpoint_every_n_steps", "2", *extra]


# ------------------------------------------------------------------------------------ targets
def test_strength_targets():
    torch.manual_seed(0)
    photo = torch.rand(3, 3, 24, 24)
    toon = render_toon(photo)
    source = make_target_source("renderer")
    assert torch.equal(source({"photo": photo}, torch.zeros(3)), photo)
    assert torch.allclose(source({"photo": photo}, torch.ones(3)), toon)
    mixed = source({"photo": photo}, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(mixed[0], photo[0]) and torch.allclose(mixed[2], toon[2])
    assert torch.allclose(mixed[1], 0.5 * (photo[1] + toon[1]), atol=1e-6)
    paired = make_target_source("paired")
    target = torch.rand_like(photo)
    assert torch.equal(paired({"photo": photo, "target": target}, torch.zeros(3)), photo)
    assert torch.allclose(paired({"photo": photo, "target": target}, torch.ones(3)), target)
    with pytest.raises(KeyError, match="target_root"):
        paired({"photo": photo}, torch.ones(3))


def test_teacher_target(tiny_ckpt):
    photo = torch.rand(2, 3, 32, 32)
    s = torch.tensor([0.3, 1.0])
    out = make_target_source("teacher", str(tiny_ckpt))({"photo": photo}, s)
    with torch.no_grad():
        ref = (load(tiny_ckpt)(photo * 2 - 1, s) + 1) / 2
    assert torch.allclose(out, ref, atol=1e-6)


def test_strength_sampling_has_mass_at_both_ends():
    module = CartoonModule(width=8, lpips_weight=0)
    s = module.sample_strength(20000)
    assert 0.17 < (s == 0).float().mean() < 0.23 and 0.17 < (s == 1).float().mean() < 0.23
    assert s.min() >= 0 and s.max() <= 1


def test_lpips_is_frozen_and_not_saved():
    module = CartoonModule(width=8, lpips_weight=1.0, ema_decay=0.99)
    assert {k.split(".")[0] for k in module.state_dict()} == {"student", "ema"}
    assert all(p.requires_grad is False for p in module.ema.parameters())
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == \
        sum(p.numel() for p in module.student.parameters())


# ------------------------------------------------------------------------------------ training
def test_recipes_parse(capsys):
    import yaml

    base, cpu = str(REPO / "finetune" / "teacher_w64.yaml"), str(REPO / "finetune" / "teacher_w64_cpu.yaml")
    assert train_main(["--config", base, "--print_config"]) == 0
    gpu_cfg = yaml.safe_load(capsys.readouterr().out)
    assert train_main(["--config", base, "--config", cpu, "--print_config"]) == 0
    cpu_cfg = yaml.safe_load(capsys.readouterr().out)
    assert gpu_cfg["model"]["width"] == cpu_cfg["model"]["width"] == 64
    assert cpu_cfg["model"]["target"] == gpu_cfg["model"]["target"] == "renderer"
    assert cpu_cfg["trainer"]["accelerator"] == "cpu" and cpu_cfg["trainer"]["max_steps"] < gpu_cfg["trainer"]["max_steps"]


def test_two_step_run_writes_checkpoints_logs_and_samples(photos, tmp_path):
    run = tmp_path / "run"
    assert train_main(args(photos, run, 2)) == 0
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and len(list((run / "checkpoints").glob("best-step*.ckpt"))) == 1
    state = ckpt(last)
    assert state["global_step"] == 2
    assert {k.split(".")[0] for k in state["state_dict"]} == {"student", "ema"}
    info = state["dctnet_lite"]
    assert info["arch"]["base_width"] == 8 and info["recipe"]["model"]["width"] == 8
    assert info["data"]["n_files"] == 8 and info["data"]["n_val"] >= 1
    assert set(info["val_metrics"]) >= {"val/lpips", "val/lpips_s1", "val/lpips_s05", "val/lpips_s0"}
    logs = run / "logs" / "version_0"
    with open(logs / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/lpips_s05") for r in rows)
    assert (logs / "config.yaml").is_file() and list((logs / "samples").glob("val_step*.png"))
    assert list((run / "tensorboard" / "version_0").glob("events.out.tfevents*"))
    # a second fresh run into the same folder is refused (it would silently resume otherwise)
    assert train_main(args(photos, run, 2)) == 2


def test_resume_restores_step_optimizer_and_schedule(photos, tmp_path):
    run = tmp_path / "run"
    assert train_main(args(photos, run, 2)) == 0
    first = ckpt(run / "checkpoints" / "last.ckpt")
    assert train_main(args(photos, run, 4, "--ckpt_path", "last")) == 0
    state = ckpt(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4
    adam = state["optimizer_states"][0]["state"][0]
    assert int(adam["step"]) == 4  # a fresh optimizer would have counted 2
    assert state["lr_schedulers"][0]["last_epoch"] == 4
    assert state["dctnet_lite"]["train_seconds"] > first["dctnet_lite"]["train_seconds"]
    assert (run / "logs" / "version_1" / "metrics.csv").is_file()


def test_sigterm_saves_and_resume_continues(photos, tmp_path):
    run = tmp_path / "run"
    sigterm = '[{"class_path": "train_callbacks.SigtermAt", "init_args": {"at_step": 1}}]'
    rc = train_main(args(photos, run, 4, "--trainer.callbacks", sigterm, "--checkpoint_every_n_steps", "100"))
    assert rc == 128 + signal.SIGTERM
    saved = run / "checkpoints" / "on_exception.ckpt"
    assert saved.is_file() and not (run / "checkpoints" / "last.ckpt").exists()
    assert ckpt(saved)["global_step"] == 1
    assert train_main(args(photos, run, 4, "--ckpt_path", "last", "--checkpoint_every_n_steps", "100")) == 0
    state = ckpt(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4 and int(state["optimizer_states"][0]["state"][0]["step"]) == 4
    assert not saved.exists()  # removed after the clean end


def test_paired_run(photos, tmp_path):
    targets = tmp_path / "targets"
    for p in photos.rglob("*.png"):
        out = targets / p.relative_to(photos).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("L").convert("RGB").save(out)
    run = tmp_path / "run"
    assert train_main(args(photos, run, 1, "--model.target", "paired", "--data.target_root", str(targets),
                           "--model.ema_decay", "0")) == 0
    assert {k.split(".")[0] for k in ckpt(run / "checkpoints" / "last.ckpt")["state_dict"]} == {"student"}


# ------------------------------------------------------------------------------------ export
def test_export_matches_the_ema_student(photos, tmp_path):
    run = tmp_path / "run"
    assert train_main(args(photos, run, 2)) == 0
    last = run / "checkpoints" / "last.ckpt"
    module = CartoonModule(width=8, lpips_weight=0)
    module.load_state_dict(ckpt(last)["state_dict"])
    x, s = torch.rand(2, 3, 40, 40) * 2 - 1, torch.tensor([0.0, 0.7])
    with torch.no_grad():
        ref = module.eval_net.eval()(x, s)
        raw = module.student.eval()(x, s)
    assert not torch.allclose(ref, raw)  # EMA and student differ

    info = export_checkpoint(str(last), str(tmp_path / "toon-w8.safetensors"), metrics={"note": 1})
    model = load(info.path)
    assert model.config.base_width == 8 and info.dtype == "fp16"
    with torch.no_grad():
        assert torch.allclose(model(x, s), ref, atol=2e-2)
    prov = model.checkpoint_info.provenance
    assert prov["steps"] == 2 and prov["weights"] == "ema" and prov["recipe"]["model"]["width"] == 8
    assert prov["data"]["n_files"] == 8 and prov["machine"][0]["cpu_count"] and prov["wall_time_s"] > 0
    assert prov["parent_checkpoint"] is None
    metrics = model.checkpoint_info.metrics
    assert metrics["note"] == 1 and metrics["val_step"] == 2 and 0 < metrics["val/lpips"] < 1

    exact = load(export_checkpoint(str(last), str(tmp_path / "fp32.safetensors"), dtype="fp32").path)
    student = load(export_checkpoint(str(last), str(tmp_path / "raw.safetensors"), dtype="fp32", use_ema=False).path)
    with torch.no_grad():
        assert torch.allclose(exact(x, s), ref, atol=1e-6) and torch.allclose(student(x, s), raw, atol=1e-6)
    assert student.checkpoint_info.provenance["weights"] == "student"


def test_init_checkpoint_sets_architecture_and_parent(tiny_ckpt):
    module = CartoonModule(width=64, init_checkpoint=str(tiny_ckpt), lpips_weight=0)
    assert isinstance(module.student, DCTNet) and module.student.config.base_width == 8
    ref = load(tiny_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(module.student.state_dict().values(), ref.state_dict().values()))


def test_machine_summary_holds_plain_types_only():
    """Provenance goes into Lightning checkpoints read back with weights_only=True: no str
    subclasses such as torch's TorchVersion, only plain JSON types."""
    from dctnet_lite.machine import PROVENANCE_KEYS, machine_summary

    m = machine_summary()
    assert tuple(m) == PROVENANCE_KEYS
    assert all(type(v) in (str, int, type(None)) for v in m.values()), {k: type(v) for k, v in m.items()}
    assert m["cpu_count"] >= 1 and m["torch"] == str(torch.__version__)

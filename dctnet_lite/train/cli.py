"""``dctnet-lite train``: a LightningCLI over :class:`CartoonModule` and :class:`PhotoDataModule`.

Every run lives in ``trainer.default_root_dir`` (the run folder)::

    <run>/checkpoints/last.ckpt         every --checkpoint_every_n_steps steps, after validations, at the end
    <run>/checkpoints/best-step*.ckpt   lowest val/lpips so far
    <run>/checkpoints/on_exception.ckpt written on SIGTERM / Ctrl+C / crash, removed after a clean end
    <run>/logs/version_N/               metrics.csv, hparams.yaml, config.yaml, samples/*.png
    <run>/tensorboard/version_N/        TensorBoard events (same N)

``--ckpt_path last`` resumes from the newest of ``last.ckpt`` and ``on_exception.ckpt``
(global step, optimizer, EMA, LR schedule, epoch); on a fresh folder it simply starts. Without
``--ckpt_path`` a folder that already holds checkpoints is refused rather than silently resumed.
``trainer.precision: null`` picks bf16-mixed on a GPU with bf16 (16-mixed on older GPUs), else 32-true.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..checkpoint import CheckpointError
from ..tools.recipes import check_config_files, one_line
from .datamodule import PhotoDataModule
from .module import CartoonModule

EXIT_INTERRUPTED = 128 + 15


def auto_precision() -> str:
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, after each validation (so that it carries
    the newest validation metrics) and at the end of training (whatever the step)."""

    def __init__(self, dirpath, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps)
        self._saved_after_val = -1

    def on_validation_end(self, trainer, pl_module) -> None:
        self.save_now(trainer)
        self._saved_after_val = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_after_val != trainer.global_step:
            self.save_now(trainer)

    def save_now(self, trainer) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.last_model_path = str(Path(self.dirpath) / (self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION))
            trainer.save_checkpoint(self.last_model_path, weights_only=False)


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help='Resume from this Lightning checkpoint; "last": the newest of the run folder')
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=500,
                            help="Write <run>/checkpoints/last.ckpt every this many optimizer steps")

    def parse_arguments(self, parser, args) -> None:
        # argv comes from `dctnet-lite train ...` (or a test): no "args and sys.argv" warning
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        cfg = self.config.trainer
        cfg.default_root_dir = cfg.default_root_dir or "runs/default"
        if cfg.precision is None:
            cfg.precision = auto_precision()

    def instantiate_trainer(self, **kwargs):
        cfg = self.config.trainer
        root = Path(cfg.default_root_dir)
        ckpt_dir = root / "checkpoints"
        self.trainer_defaults["callbacks"] = [
            LastCheckpoint(ckpt_dir, self.config.checkpoint_every_n_steps),
            ModelCheckpoint(dirpath=ckpt_dir, monitor="val/lpips", mode="min", save_top_k=1,
                            filename="best-step{step:07d}-lpips{val/lpips:.4f}", auto_insert_metric_name=False),
            OnExceptionCheckpoint(dirpath=ckpt_dir),
            LearningRateMonitor(logging_interval="step"),
        ]
        if cfg.logger is None or cfg.logger is True:
            csv = CSVLogger(root, name="logs")
            kwargs["logger"] = [csv, TensorBoardLogger(root, name="tensorboard", version=csv.version,
                                                       default_hp_metric=False)]
        return super().instantiate_trainer(**kwargs)


def train_main(argv: Optional[List[str]] = None) -> int:
    """Run a training recipe: ``train_main(["--config", "finetune/teacher_w64.yaml"])``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_config_files(argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"dctnet-lite train: error: {e}", file=sys.stderr)
        return 2
    try:
        cli = TrainCLI(CartoonModule, PhotoDataModule, run=False, seed_everything_default=0,
                       auto_configure_optimizers=False, args=argv,
                       parser_kwargs={"prog": "dctnet-lite train",
                                      "description": "Train a network of any family (dctnet, official) with a LightningCLI "
                                                      "recipe (finetune/*.yaml)."})
    except SystemExit as e:  # --help, parse errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (ValueError, CheckpointError) as e:  # the recipe builds no module (a contradiction, a bad checkpoint)
        print(f"dctnet-lite train: error: {one_line(e)}", file=sys.stderr)
        return 2
    recipe = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    recipe["config_files"] = [str(getattr(p, "relative", p)) for p in cli.config.get("config") or []]
    cli.model.recipe = recipe
    trainer, ckpt_path = cli.trainer, cli.config.ckpt_path
    ckpt_dir = Path(trainer.default_root_dir) / "checkpoints"
    if ckpt_path is None and any(ckpt_dir.glob("*.ckpt")):
        print(f"dctnet-lite train: error: {ckpt_dir} already holds checkpoints: resume with --ckpt_path last, "
              f"or set another --trainer.default_root_dir", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # OnExceptionCheckpoint turns ckpt_path=None into "last"; we checked above there is none
            warnings.filterwarnings("ignore", message=r".*ckpt_path=None\)` was called without a model")
            warnings.filterwarnings("ignore", message=r".*there is no last checkpoint available")
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        print(f"dctnet-lite train: interrupted (SIGTERM) at step {trainer.global_step}; state saved under "
              f"{Path(trainer.default_root_dir) / 'checkpoints'}; resume with --ckpt_path last", file=sys.stderr)
        return EXIT_INTERRUPTED
    ckpts = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    last = next((c.last_model_path for c in ckpts if c.save_last), "")
    best = next((c.best_model_path for c in ckpts if c.monitor), "")
    print(f"dctnet-lite train: done at step {trainer.global_step}; last: {last or '-'}; best: {best or '-'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())

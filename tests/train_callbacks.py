"""Lightning callbacks and helpers shared by the training tests (imported by class path from the
recipes' ``--trainer.callbacks``, so they live in a module of their own on the tests' path)."""
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


def ckpt(path):
    """A Lightning checkpoint's dict, read without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


class SigtermAt(Callback):
    """Sends this process a SIGTERM after optimizer step ``at_step``, like a preempting scheduler."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


class SigkillAfterCheckpoint(Callback):
    """SIGKILLs this process right after the checkpoints of step ``at_step`` are written (no handler
    can run: nothing is saved on the way out). Checkpoint callbacks run after the others, so this
    acts at the start of the next batch."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)

"""Distributed batch inference with Lightning: many processes, GPUs or nodes over one file list.

:func:`predict_files` is :func:`~dctnet_lite.pipeline.cartoonize_files` on ``Trainer.predict``:

- the settings are checked and the inputs expanded and mapped to outputs by the same
  :func:`~dctnet_lite.pipeline.plan_files` as ``cartoonize_files``, in every process; the
  processes check that they agree on the list before starting;
- a :class:`~torch.utils.data.Dataset` reads the images; a file that cannot be read becomes a
  failure record instead of an exception; each rank runs them through its own
  :class:`~dctnet_lite.inference.Cartoonizer` (:meth:`~dctnet_lite.inference.Cartoonizer.run_uint8`
  on runs of same-size neighbours, :func:`~dctnet_lite.inference.same_shape_runs`);
- each rank gets the indices ``rank, rank + world, ...`` from our own :class:`ShardSampler`,
  which never pads, so no input is processed or written twice (a plain ``DistributedSampler``
  repeats samples to even out the ranks; Lightning 2.x swaps in an unrepeated one for predict,
  but with ``use_distributed_sampler=False`` the guarantee is ours, not a version's), and writes
  its own outputs atomically from a ``BasePredictionWriter`` at ``write_interval="batch"``, which
  also skips an index it has already written;
- at the end the ranks all-gather their ok/failed records, so the report (on every rank) lists
  every input exactly once.

Strategies: ``ddp`` (Lightning's default for several devices in a script) re-runs the *command
line* once per extra rank, so call it from a script or the CLI (``dctnet-lite cartoonize ...
--devices 2 --strategy ddp``), never from an interactive session or inside pytest itself;
``ddp_spawn`` starts workers with multiprocessing instead (the module and data must pickle).
On CPU the process group uses gloo.

Lightning is imported by this module only; nothing else in the package imports it at module
level (the CLI imports this module inside the command that needs it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

import lightning.pytorch as L
from lightning.pytorch.callbacks import BasePredictionWriter

from .. import images as imio
from ..checkpoint import default_checkpoint, load
from ..fileutil import atomic_write_bytes
from ..inference import Cartoonizer, same_shape_runs
from ..pipeline import FilesReport, plan_files
from ..precision import PRECISION_CHOICES, check_precision


@dataclasses.dataclass
class PredictReport(FilesReport):
    """A :class:`FilesReport` that also says which process returned it.

    Every rank gets the whole report; print it from ``global_rank == 0`` only.
    """

    global_rank: int = 0
    world_size: int = 1
    written_per_rank: List[int] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(world_size=self.world_size, written_per_rank=list(self.written_per_rank))
        return d


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def read_for_model(path, size: Optional[int]) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
    """An image file -> ((3, H, W) uint8 tensor resized to ``size``, alpha), as the Cartoonizer does."""
    rgb, alpha = imio.read_image(path)
    rgb = imio.resize_rgb(rgb, size)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1), alpha


class ImageFilesDataset(Dataset):
    """Items ``{"index", "image": (3,H,W) uint8 | None, "alpha", "error": str | None}``."""

    def __init__(self, paths: Sequence, size: Optional[int] = None):
        self.paths = [str(p) for p in paths]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            image, alpha = read_for_model(self.paths[i], self.size)
            return {"index": i, "image": image, "alpha": alpha, "error": None}
        except (imio.ImageReadError, ValueError, OSError) as e:
            return {"index": i, "image": None, "alpha": None, "error": str(e)}


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, rank + 2 * world, ...`` of ``range(n)``: no padding, no repeats."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _collate(items: list) -> list:
    return list(items)


def _plan_digest(plan: Sequence[Tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps(list(plan)).encode()).hexdigest()


def _all_gather(obj) -> list:
    """``obj`` of every rank (a one-element list outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


# ---------------------------------------------------------------------------------------------
# Lightning pieces (module level, so that ddp_spawn can pickle them)
# ---------------------------------------------------------------------------------------------
class CartoonizeModule(L.LightningModule):
    """Wraps a :class:`DCTNet`; ``predict_step`` returns one record per input of the batch."""

    def __init__(self, model, strength: float = 1.0, precision: str = "fp32",
                 tile: Optional[int] = None):
        super().__init__()
        self.net = model
        self.strength, self.precision_name, self.tile = strength, precision, tile
        self._cz = None

    def on_predict_start(self) -> None:
        self._cz = Cartoonizer(self.net, device=self.device, precision=self.precision_name, tile=self.tile)

    def predict_step(self, batch: list, batch_idx: int, dataloader_idx: int = 0) -> list:
        records = [{"index": s["index"], "error": s["error"]} for s in batch if s["error"] is not None]
        good = [s for s in batch if s["error"] is None]
        for run in same_shape_runs([s["image"].shape for s in good], max(len(good), 1)):
            try:
                out = self._cz.run_uint8(torch.stack([good[i]["image"] for i in run]), self.strength)
            except Exception as e:  # a whole run failing (e.g. OOM) is reported per file
                records += [{"index": good[i]["index"], "error": f"inference failed: {type(e).__name__}: {e}"}
                            for i in run]
                continue
            records += [{"index": good[i]["index"], "rgb": out[j], "alpha": good[i]["alpha"], "error": None}
                        for j, i in enumerate(run)]
        return records


class FilesData(L.LightningDataModule):
    """The planned inputs, sharded over the ranks by :class:`ShardSampler`."""

    def __init__(self, plan: List[Tuple[str, str]], size: Optional[int], batch_size: int, num_workers: int):
        super().__init__()
        self.plan, self.size, self.batch_size, self.num_workers = plan, size, batch_size, num_workers

    def setup(self, stage: str) -> None:
        digests = set(_all_gather(_plan_digest(self.plan)))
        if len(digests) > 1:
            raise RuntimeError("the ranks expanded the inputs to different file lists (did the "
                               "inputs change while the processes started?); nothing was written")

    def predict_dataloader(self):
        ds = ImageFilesDataset([src for src, _ in self.plan], self.size)
        sampler = ShardSampler(len(ds), self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=_collate,
                          num_workers=self.num_workers)


class FilesWriter(BasePredictionWriter):
    """Writes each batch's outputs atomically; gathers ok/failed records at the end."""

    def __init__(self, plan: List[Tuple[str, str]], report_path: Optional[str] = None,
                 png_level: int = imio.DEFAULT_PNG_LEVEL):
        super().__init__(write_interval="batch")
        self.plan, self.report_path, self.png_level = plan, report_path, png_level
        self.ok: List[Tuple[int, str, str]] = []
        self.failed: List[Tuple[int, str, str]] = []
        self.done: set = set()
        self.gathered: Optional[dict] = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for rec in prediction:
            i = int(rec["index"])
            if i in self.done:  # never write an input twice, whatever the sampler did
                continue
            self.done.add(i)
            src, dst = self.plan[i]
            if rec["error"] is not None:
                self.failed.append((i, src, rec["error"]))
                continue
            try:
                imio.save_image(imio.compose(rec["rgb"], rec["alpha"]), dst, png_level=self.png_level)
                self.ok.append((i, src, dst))
            except (OSError, ValueError) as e:
                self.failed.append((i, src, f"could not write {dst}: {e}"))

    def on_predict_end(self, trainer, pl_module) -> None:
        ranks = _all_gather({"ok": self.ok, "failed": self.failed})
        ok, failed, seen = [], [], set()
        for r in ranks:
            for kind, rows in (("ok", r["ok"]), ("failed", r["failed"])):
                for i, src, x in rows:
                    if i not in seen:
                        seen.add(i)
                        (ok if kind == "ok" else failed).append((i, src, x))
        self.gathered = {"ok": sorted(ok), "failed": sorted(failed), "world_size": len(ranks),
                         "written_per_rank": [len(r["ok"]) for r in ranks]}
        if trainer.global_rank == 0 and self.report_path:
            atomic_write_bytes(self.report_path, json.dumps(self.gathered).encode())


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def predict_files(inputs: Iterable, out_dir, checkpoint=None, *, devices=1, strategy="auto",
                  accelerator: str = "auto", num_nodes: int = 1, strength: float = 1.0,
                  size: Optional[int] = None, batch_size: int = 1, precision: str = "fp32",
                  tile: Optional[int] = None, ext: str = ".png", overwrite_inputs: bool = False,
                  num_workers: int = 0, verbose: bool = False,
                  png_level: int = imio.DEFAULT_PNG_LEVEL) -> PredictReport:
    """Cartoonize files, folders and globs into ``out_dir`` with ``Trainer.predict``.

    ``devices`` / ``strategy`` / ``accelerator`` / ``num_nodes`` go to the Lightning ``Trainer``
    (e.g. ``devices=2, strategy="ddp", accelerator="cpu"``: two CPU processes over gloo).
    Returns a :class:`PredictReport` with every output written and every failure exactly once
    (inputs that are missing or would overwrite an input are reported as in
    :func:`~dctnet_lite.pipeline.cartoonize_files`: both plan with
    :func:`~dctnet_lite.pipeline.plan_files`). With the ``ddp`` strategy every rank's
    process returns the same report; only ``global_rank == 0`` should print it.
    """
    check_precision(precision, PRECISION_CHOICES)  # auto: resolved per rank by its Cartoonizer
    plan = plan_files(inputs, out_dir, ext=ext, overwrite_inputs=overwrite_inputs,
                      batch_size=batch_size, png_level=png_level, strength=strength)
    plan_s = [(str(src), str(dst)) for src, dst in plan.jobs]
    report = PredictReport(failed=list(plan.failed))
    if not plan_s:
        report.seconds = plan.seconds()
        return report
    model = load(checkpoint if checkpoint is not None else default_checkpoint(), device="cpu")

    if not verbose:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    fd, report_path = tempfile.mkstemp(prefix="dctnet-lite-predict-", suffix=".json")
    os.close(fd)
    os.unlink(report_path)  # rank 0 creates it (read back here under ddp_spawn)
    writer = FilesWriter(plan_s, report_path, png_level=png_level)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                        callbacks=[writer], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        use_distributed_sampler=False, default_root_dir=tempfile.gettempdir())
    module = CartoonizeModule(model, strength=float(strength), precision=precision, tile=tile)
    data = FilesData(plan_s, size, batch_size, num_workers)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
            trainer.predict(module, datamodule=data, return_predictions=False)
        gathered = writer.gathered
        if gathered is None:  # ddp_spawn: the workers ran the writer, rank 0 left its report
            try:
                gathered = json.loads(Path(report_path).read_text())
            except (OSError, ValueError):
                raise RuntimeError("the prediction workers ended without a report") from None
    finally:
        try:
            os.unlink(report_path)
        except OSError:
            pass
    report.ok = [(src, dst) for _, src, dst in gathered["ok"]]
    report.failed += [(src, why) for _, src, why in gathered["failed"]]
    report.global_rank, report.world_size = trainer.global_rank, int(gathered["world_size"])
    report.written_per_rank = list(gathered["written_per_rank"])
    report.seconds = plan.seconds()
    return report

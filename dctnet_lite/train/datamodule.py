"""LightningDataModule over a photo folder (optionally paired with a target folder)."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import List, Optional, Tuple

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..data import VAL_FRACTION, PairedFolder, PhotoFolder, files_by_license, seed_worker


class PhotoDataModule(pl.LightningDataModule):
    """Train/val splits of ``photo_root`` (hash-fixed, see :func:`dctnet_lite.data.split_of`).

    ``target_root`` switches to paired mode. ``licenses`` keeps only the files whose row in
    ``manifest`` (default ``<photo_root>/manifest.csv``) has one of these licences (substrings).
    """

    def __init__(
        self,
        photo_root: str,
        target_root: Optional[str] = None,
        crop: int = 256,
        batch_size: int = 8,
        num_workers: int = 4,
        val_fraction: float = VAL_FRACTION,
        val_crop: int = 256,
        val_batch_size: Optional[int] = None,
        scale: Tuple[float, float] = (0.5, 1.0),
        color_jitter: float = 0.1,
        min_side: Optional[int] = None,
        licenses: Optional[List[str]] = None,
        manifest: Optional[str] = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = None
        self.files: Optional[List[str]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if hp.licenses:
            manifest = hp.manifest or str(Path(hp.photo_root) / "manifest.csv")
            self.files = files_by_license(manifest, hp.licenses)
        folder = partial(PairedFolder, hp.photo_root, hp.target_root) if hp.target_root \
            else partial(PhotoFolder, hp.photo_root)
        common = dict(val_fraction=hp.val_fraction, min_side=hp.min_side, files=self.files)
        self.train_set = folder(split="train", crop=hp.crop, scale=tuple(hp.scale),
                                color_jitter=hp.color_jitter, **common)
        self.val_set = folder(split="val", crop=hp.val_crop, **common)

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) >= batch_size,
                          num_workers=workers, persistent_workers=workers > 0, worker_init_fn=seed_worker,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or self.hparams.batch_size, train=False)

    def describe(self) -> dict:
        """What the run trained on (goes into the checkpoint's provenance)."""
        self.setup()
        root = Path(self.hparams.photo_root)
        rel = lambda ds: [Path(p).relative_to(root).as_posix() for p in ds.paths]  # noqa: E731
        return {
            "photo_root": self.hparams.photo_root,
            "target_root": self.hparams.target_root,
            "licenses": self.hparams.licenses,
            "n_files": len(self.train_set) + len(self.val_set),
            "n_train": len(self.train_set),
            "n_val": len(self.val_set),
            "train_files": rel(self.train_set),
            "val_files": rel(self.val_set),
        }

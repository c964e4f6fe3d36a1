"""Checkpoint IO: the one place that reads and writes weights.

A checkpoint is a safetensors file whose string metadata carries:

- ``format`` = ``dctnet-lite``, ``format_version``
- ``arch``: the :class:`~dctnet_lite.model.ArchConfig` as JSON (widths, version)
- ``provenance``: JSON (recipe, data, parent checkpoint, ...), ``metrics``: JSON
- ``dtype``: fp32 / fp16 / bf16 of the stored tensors
- ``sha256``: digest of the tensor payload, checked on load (a tampered file fails)

Nothing is ever unpickled. Writes are atomic (temp file in the same folder, then ``os.replace``).
Names such as ``toon-w48`` resolve through a small registry over the project's ``checkpoints/``
folder (override with ``$DCTNET_LITE_CHECKPOINTS``); ``ms://<model id>`` fetches a ModelScope
model directory with modelscope's ``snapshot_download`` when online.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from .fileutil import atomic_write_bytes
from .model import ArchConfig, DCTNet

FORMAT = "dctnet-lite"
FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CHECKPOINTS = ("toon-w48", "toon-w64")  # the first that exists is the default

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, tampered with, or does not fit the model."""


class NoTrainedCheckpoint(CheckpointError):
    """No trained checkpoint is available for the default model."""


@dataclasses.dataclass
class CheckpointInfo:
    path: Path
    arch: ArchConfig
    dtype: str
    provenance: dict
    metrics: dict
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name[: -len(".safetensors")] if self.path.name.endswith(".safetensors") else self.path.name


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _payload_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: PathLike, model: DCTNet, *, dtype: str = "fp32",
                    provenance: Optional[Mapping] = None, metrics: Optional[Mapping] = None) -> CheckpointInfo:
    """Save ``model`` with its architecture, provenance and metrics, atomically."""
    from safetensors.torch import save

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not isinstance(model, DCTNet):
        raise TypeError(f"save_checkpoint expects a DCTNet, got {type(model).__name__}")
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    digest = _payload_digest(tensors)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "arch": model.config.to_json(),
        "dtype": dtype,
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        "metrics": json.dumps(dict(metrics or {}), sort_keys=True, default=str),
        "sha256": digest,
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return CheckpointInfo(Path(path), model.config, dtype, dict(provenance or {}), dict(metrics or {}), digest)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _read(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    data = path.read_bytes()
    try:
        tensors = load(data)
        # load() ignores metadata: read the header ourselves (8-byte length + JSON).
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8: 8 + n])
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt: {e})") from None
    return tensors, header.get("__metadata__") or {}


def read_info(path: PathLike, tensors: Optional[Mapping[str, torch.Tensor]] = None,
              meta: Optional[Mapping[str, str]] = None) -> CheckpointInfo:
    """Metadata of a checkpoint (validated), without building a model."""
    path = Path(path)
    if meta is None:
        tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dctnet-lite checkpoint (format={meta.get('format')!r})")
    version = int(meta.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this dctnet_lite reads up to "
                              f"{FORMAT_VERSION}: upgrade dctnet_lite")
    try:
        arch = ArchConfig.from_dict(json.loads(meta["arch"]))
        provenance = json.loads(meta.get("provenance", "{}"))
        metrics = json.loads(meta.get("metrics", "{}"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} has invalid metadata: {e}") from None
    return CheckpointInfo(path, arch, meta.get("dtype", "fp32"), provenance, metrics, meta.get("sha256", ""))


def load_state(path: PathLike, expected: Optional[ArchConfig] = None) -> Tuple[Dict[str, torch.Tensor], CheckpointInfo]:
    """Read and verify a checkpoint's tensors; with ``expected``, insist on that architecture."""
    path = Path(path)
    tensors, meta = _read(path)
    info = read_info(path, tensors, meta)
    if not info.sha256 or _payload_digest(tensors) != info.sha256:
        raise CheckpointError(f"{path} failed its integrity check: the tensors do not match the "
                              f"sha256 in its metadata (tampered with or damaged)")
    if expected is not None and expected != info.arch:
        raise CheckpointError(f"architecture mismatch: checkpoint {info.arch.describe()}, model "
                              f"{expected.describe()} ({info.arch.diff(expected)}); file {path}")
    return tensors, info


def load_into(model: DCTNet, path: PathLike) -> CheckpointInfo:
    """Load a checkpoint into an existing model, failing if the architectures differ."""
    tensors, info = load_state(path, expected=model.config)
    _load_strict(model, tensors, path)
    return info


def _load_strict(model: DCTNet, tensors: Mapping[str, torch.Tensor], path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{path} does not fit its declared architecture: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    ref = next(iter(own.values()))
    model.load_state_dict({k: v.to(ref.dtype) for k, v in tensors.items()}, strict=True)


def load(name_or_path: PathLike, device: Union[str, torch.device] = "cpu",
         dtype: Optional[torch.dtype] = torch.float32) -> DCTNet:
    """Build the right :class:`DCTNet` for a checkpoint name or path and load its weights.

    The model is returned in eval mode on ``device``, cast to ``dtype`` (``None`` keeps the
    stored precision). ``model.checkpoint_info`` holds the metadata.
    """
    path = resolve(name_or_path)
    tensors, info = load_state(path)
    with torch.device("meta"):
        model = DCTNet(info.arch)
    model = model.to_empty(device="cpu")
    _load_strict(model, tensors, path)
    model = model.to(device=device, dtype=dtype if dtype is not None else DTYPES[info.dtype])
    model.eval()
    model.checkpoint_info = info
    return model


# ---------------------------------------------------------------------------------------------
# Registry over checkpoints/
# ---------------------------------------------------------------------------------------------
def checkpoint_dirs() -> List[Path]:
    """Folders searched for named checkpoints, in order."""
    dirs = []
    env = os.environ.get("DCTNET_LITE_CHECKPOINTS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    repo = Path(__file__).resolve().parent.parent / "checkpoints"
    dirs.append(repo)
    return dirs


def list_checkpoints() -> List[CheckpointInfo]:
    """Every readable named checkpoint in :func:`checkpoint_dirs` (first folder wins on a name)."""
    seen, out = set(), []
    for d in checkpoint_dirs():
        for p in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            name = p.name[: -len(".safetensors")]
            if name in seen:
                continue
            try:
                out.append(read_info(p))
                seen.add(name)
            except CheckpointError:
                continue
    return out


def resolve(name_or_path: PathLike) -> Path:
    """A checkpoint name (``toon-w48``), a path, or ``ms://<model id>`` -> a local file path."""
    s = os.fspath(name_or_path)
    if s.startswith("ms://"):
        return _from_modelscope(s[len("ms://"):])
    p = Path(s).expanduser()
    if p.suffix == ".safetensors" or os.sep in s or p.exists():
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if len(found) != 1:
                raise CheckpointError(f"{p} is a folder with {len(found)} .safetensors files; name one")
            return found[0]
        if not p.exists():
            raise CheckpointError(f"checkpoint file not found: {p}")
        return p
    for d in checkpoint_dirs():
        cand = d / f"{s}.safetensors"
        if cand.is_file():
            return cand
    names = [c.name for c in list_checkpoints()]
    raise CheckpointError(f"no checkpoint named {s!r}; available: {', '.join(names) or 'none'} "
                          f"(searched {', '.join(str(d) for d in checkpoint_dirs())})")


def default_checkpoint() -> Path:
    """The shipped default (first of :data:`DEFAULT_CHECKPOINTS` present); never random weights."""
    for name in DEFAULT_CHECKPOINTS:
        for d in checkpoint_dirs():
            if (d / f"{name}.safetensors").is_file():
                return d / f"{name}.safetensors"
    raise NoTrainedCheckpoint(
        "no trained checkpoint exists: none of " + ", ".join(f"{n}.safetensors" for n in DEFAULT_CHECKPOINTS)
        + " was found in " + ", ".join(str(d) for d in checkpoint_dirs())
        + ". Train one (finetune/README.md) or pass --checkpoint PATH.")


def _from_modelscope(model_id: str) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise CheckpointError(f"fetching ModelScope model {model_id!r} needs the modelscope package: "
                              f"pip install 'dctnet-lite[modelscope]'") from None
    try:
        local = snapshot_download(model_id)
    except Exception as e:  # network errors come in many types
        raise CheckpointError(f"could not download ModelScope model {model_id!r} (offline? the "
                              f"ModelScope hub must be reachable): {type(e).__name__}: {e}") from None
    return resolve(local)

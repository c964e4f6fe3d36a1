"""Checkpoint IO: the one place that reads, writes and finds weights.

A checkpoint is a safetensors file whose string metadata carries:

- ``format`` = ``dctnet-lite``, ``format_version`` (2; version 1 files have no ``family`` and are
  two-branch ``dctnet`` checkpoints)
- ``family``: the model family (:mod:`dctnet_lite.registry`), ``arch``: its config as JSON
- ``provenance``: JSON (recipe, data, parent checkpoint, ...), ``metrics``: JSON
- ``dtype``: fp32 / fp16 / bf16 of the stored tensors
- ``sha256``: digest of the tensor payload, checked on load (a tampered file fails)

Nothing is ever unpickled. Writes are atomic (temp file in the same folder, then ``os.replace``).

Names: a shipped name (``dctnet_w48.toon``, or a deprecated alias such as ``toon-w48``) is looked
up in :data:`dctnet_lite.registry.WEIGHTS` and searched for, in this order, in the package's own
``weights/`` folder (the default ships inside the wheel), in the folders of
``$DCTNET_LITE_CHECKPOINTS`` (``os.pathsep``-separated) and in the ``checkpoints/`` folder of a
source checkout; a file counts only when its sha256 is the table's. Any other name is looked for
as ``<name>.safetensors`` in the ``$DCTNET_LITE_CHECKPOINTS`` folders and the checkout's
``checkpoints/``. ``ms://<model id>`` fetches a ModelScope model directory when the hub is
reachable (probed first, so offline it fails at once unless ModelScope's local cache holds it).

:func:`verify_checkpoint` is the full check ``dctnet-lite info`` and ``checkpoints`` run: the
payload's sha256, and that the tensors fit the declared family and architecture.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import registry
from .fileutil import atomic_write_bytes
from .registry import Weights

FORMAT = "dctnet-lite"
FORMAT_VERSION = 2
from .precision import DTYPES  # noqa: E402,F401  (the one precision table, dctnet_lite.precision)
ENV_DIRS = "DCTNET_LITE_CHECKPOINTS"

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, tampered with, or does not fit the model."""


class NoTrainedCheckpoint(CheckpointError):
    """No trained checkpoint is available for the default model."""


@dataclasses.dataclass
class CheckpointInfo:
    path: Path
    arch: Any                      #: the family's config (ArchConfig for ``dctnet``)
    dtype: str
    provenance: dict
    metrics: dict
    sha256: str                    #: of the tensor payload (see the module docstring)
    family: str = "dctnet"
    #: the shipped weights this file is (by file sha256), when it was resolved through the table
    weights: Optional[Weights] = None

    @property
    def name(self) -> str:
        if self.weights is not None:
            return self.weights.name
        return self.path.name[: -len(".safetensors")] if self.path.name.endswith(".safetensors") else self.path.name

    def describe(self) -> str:
        return f"family {self.family!r}, {self.arch.describe()}"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def payload_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, shapes, dtypes, bytes): the ``sha256`` a checkpoint stores."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        # reshape(-1): a tensor with size-1 dims can be "contiguous" with odd strides (a 1x1 conv
        # weight in channels_last), which view(uint8) refuses; the element order is the same
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: PathLike, model: nn.Module, *, dtype: str = "fp32",
                    provenance: Optional[Mapping] = None, metrics: Optional[Mapping] = None) -> CheckpointInfo:
    """Save ``model`` (of any registered family) with its family, architecture, provenance and
    metrics, atomically."""
    from safetensors.torch import save

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        family = registry.family_of(model)
    except TypeError as e:
        raise TypeError(f"save_checkpoint expects a model of a registered family: {e}") from None
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    digest = payload_digest(tensors)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "family": family.name,
        "arch": model.config.to_json(),
        "dtype": dtype,
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        "metrics": json.dumps(dict(metrics or {}), sort_keys=True, default=str),
        "sha256": digest,
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return CheckpointInfo(Path(path), model.config, dtype, dict(provenance or {}), dict(metrics or {}),
                          digest, family.name)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return path.read_bytes()


def _parse(path: Path, data: bytes) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        # load() ignores metadata: read the header ourselves (8-byte length + JSON).
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8: 8 + n])
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt: {e})") from None
    return tensors, header.get("__metadata__") or {}


def _read(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    return _parse(path, _read_bytes(path))


def read_info(path: PathLike, tensors: Optional[Mapping[str, torch.Tensor]] = None,
              meta: Optional[Mapping[str, str]] = None) -> CheckpointInfo:
    """Metadata of a checkpoint (validated), without building a model."""
    path = Path(path)
    if meta is None:
        tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dctnet-lite checkpoint (format={meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", -1))
    except ValueError:
        raise CheckpointError(f"{path} has an invalid format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this dctnet_lite reads up to "
                              f"{FORMAT_VERSION}: upgrade dctnet_lite")
    family_name = meta.get("family", registry.DCTNET.name)  # format 1 knew one family
    try:
        family = registry.get_family(family_name)
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]} (upgrade dctnet_lite?)") from None
    try:
        arch = family.config_from_dict(json.loads(meta["arch"]))
        provenance = json.loads(meta.get("provenance", "{}"))
        metrics = json.loads(meta.get("metrics", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has invalid metadata: {e}") from None
    return CheckpointInfo(path, arch, meta.get("dtype", "fp32"), provenance, metrics,
                          meta.get("sha256", ""), family.name)


def _mismatch(info: CheckpointInfo, family: str, config, path) -> Optional[str]:
    if family != info.family:
        return (f"family mismatch: checkpoint {info.describe()}, model family {family!r}, "
                f"{config.describe()}; file {path}")
    if config != info.arch:
        return (f"architecture mismatch: checkpoint {info.arch.describe()}, model "
                f"{config.describe()} ({info.arch.diff(config)}); file {path}")
    return None


def load_state(path: PathLike, expected: Optional[Any] = None) -> Tuple[Dict[str, torch.Tensor], CheckpointInfo]:
    """Read and verify a checkpoint's tensors; with ``expected`` (a config of any family), insist
    on that family and architecture."""
    path = Path(path)
    data = _read_bytes(path)
    tensors, meta = _parse(path, data)
    info = read_info(path, tensors, meta)
    if not info.sha256 or payload_digest(tensors) != info.sha256:
        raise CheckpointError(f"{path} failed its integrity check: the tensors do not match the "
                              f"sha256 in its metadata (tampered with or damaged)")
    info.weights = registry.weights_by_sha256(file_sha256(path, data))
    if expected is not None:
        problem = _mismatch(info, registry.family_of(expected).name, expected, path)
        if problem:
            raise CheckpointError(problem)
    return tensors, info


def _fit_problem(tensors: Mapping[str, torch.Tensor], info: CheckpointInfo) -> Optional[str]:
    """What keeps ``tensors`` from loading into the declared architecture (built on the meta
    device: no memory), or ``None``."""
    try:
        family = registry.get_family(info.family)
        with torch.device("meta"):
            own = family.build(info.arch).state_dict()
    except Exception as e:  # a config the builder refuses
        return f"its declared architecture cannot be built ({type(e).__name__}: {e})"
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or bad:
        return (f"does not fit its declared architecture ({info.describe()}): missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    return None


def verify_checkpoint(path: PathLike) -> CheckpointInfo:
    """Read a checkpoint and check everything short of running it: readable, a dctnet-lite file,
    the payload's sha256 (:func:`load_state`) and that the tensors fit the declared family and
    architecture. Raises :class:`CheckpointError` naming the file and what is wrong."""
    path = Path(path)
    tensors, info = load_state(path)
    problem = _fit_problem(tensors, info)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    return info


def load_into(model: nn.Module, path: PathLike) -> CheckpointInfo:
    """Load a checkpoint into an existing model, failing (naming both sides) if its family or
    architecture differs."""
    tensors, info = load_state(resolve(path), expected=model.config)
    _load_strict(model, tensors, info.path)
    return info


def _load_strict(model: nn.Module, tensors: Mapping[str, torch.Tensor], path, assign: bool = False) -> None:
    """Strict load that names the checkpoint when it does not fit. ``assign=True`` makes the loaded
    tensors the model's own (for a model built on the meta device: no allocation, no copy)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{path} does not fit its declared architecture: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {bad[:3]}")
    ref = next(iter(own.values()))
    model.load_state_dict({k: v.to(ref.dtype) for k, v in tensors.items()}, strict=True, assign=assign)


def load(name_or_path: PathLike, device: Union[str, torch.device] = "cpu",
         dtype: Optional[torch.dtype] = torch.float32) -> nn.Module:
    """Build the right network for a checkpoint name or path (of any family) and load its weights.

    The model is returned in eval mode on ``device``, cast to ``dtype`` (``None`` keeps the
    stored precision). ``model.checkpoint_info`` holds the metadata.
    """
    path = resolve(name_or_path)
    tensors, info = load_state(path)
    family = registry.get_family(info.family)
    # Built on the meta device (no random init), then the checkpoint's tensors are assigned as the
    # parameters. Not ``to_empty()``: on meta tensors it goes through torch._refs, whose first call
    # imports sympy and torch's symbolic shapes (about 0.5-1.4 s of a cold start on a 2-core VM).
    with torch.device("meta"):
        model = family.build(info.arch)
    _load_strict(model, tensors, path, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the state dict does not hold (a non-persistent buffer): a bug of the family
        raise CheckpointError(f"{path}: {info.family} model has tensors no checkpoint fills: {left[:3]}")
    model = model.to(device=device, dtype=dtype if dtype is not None else DTYPES[info.dtype])
    model.eval()
    model.checkpoint_info = info
    return model


# ---------------------------------------------------------------------------------------------
# Finding weights: the package, $DCTNET_LITE_CHECKPOINTS, a source checkout
# ---------------------------------------------------------------------------------------------
def package_weights_dir() -> Path:
    """The package's own weights folder (package data: the default checkpoint ships here)."""
    return Path(__file__).resolve().parent / "weights"


def repository_checkpoints_dir() -> Optional[Path]:
    """``checkpoints/`` of the source checkout this package runs from, or None when installed."""
    root = Path(__file__).resolve().parent.parent
    if (root / "hubconf.py").is_file() and (root / "checkpoints").is_dir():
        return root / "checkpoints"
    return None


def env_checkpoint_dirs() -> List[Path]:
    env = os.environ.get(ENV_DIRS, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def search_dirs() -> List[Tuple[str, Path]]:
    """Where shipped weights are looked for, in order, each with where it comes from."""
    dirs = [("package", package_weights_dir())]
    dirs += [(f"${ENV_DIRS}", d) for d in env_checkpoint_dirs()]
    repo = repository_checkpoints_dir()
    if repo is not None:
        dirs.append(("repository", repo))
    return dirs


def checkpoint_dirs() -> List[Path]:
    """Folders searched for checkpoints of other names (not shipped ones), in order."""
    dirs = env_checkpoint_dirs()
    repo = repository_checkpoints_dir()
    return dirs + ([repo] if repo is not None else [])


_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: PathLike, data: Optional[bytes] = None) -> str:
    """sha256 of a file (streamed, or of ``data`` when its bytes are already read); remembered per
    (path, size, mtime) within the process, so resolving a name and loading it hash it once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        if data is not None and len(data) == st.st_size:
            _SHA_CACHE[key] = hashlib.sha256(data).hexdigest()
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


@dataclasses.dataclass
class Located:
    """Where a shipped weights file was found (``path``), or every place looked (``looked``)."""

    weights: Weights
    path: Optional[Path]
    source: Optional[str]
    looked: List[str]
    mismatched: List[str]


def locate(weights: Weights) -> Located:
    """Find a shipped weights file: the first candidate whose file sha256 is the table's."""
    looked, mismatched = [], []
    names = (weights.file,) + tuple(f"{a}.safetensors" for a in weights.aliases)
    for source, d in search_dirs():
        looked.append(f"{d} ({source})")
        for fname in names:
            cand = d / fname
            if not cand.is_file():
                continue
            sha = file_sha256(cand)
            if sha == weights.sha256:
                return Located(weights, cand, source, looked, mismatched)
            mismatched.append(f"{cand} (sha256 {sha[:12]}..., expected {weights.sha256[:12]}...)")
    return Located(weights, None, None, looked, mismatched)


def how_to_get(weights: Weights) -> str:
    where = ("it ships inside the dctnet-lite wheel: reinstall dctnet-lite" if weights.packaged else
             f"it ships in the source repository's checkpoints/ folder as {weights.file}: put that "
             f"file in a folder named by ${ENV_DIRS}")
    return f"{where}; or rebuild it: {weights.recipe}"


def _missing(loc: Located) -> CheckpointError:
    w = loc.weights
    msg = (f"checkpoint {w.name} ({w.summary}) was not found: looked for {w.file}"
           + (f" (or {', '.join(a + '.safetensors' for a in w.aliases)})" if w.aliases else "")
           + f" in {'; '.join(loc.looked)}")
    if loc.mismatched:
        msg += f"; rejected, sha256 differs from the weights table: {'; '.join(loc.mismatched)}"
    msg += f". To get it: {how_to_get(w)}."
    cls = NoTrainedCheckpoint if w.name == registry.DEFAULT_WEIGHTS else CheckpointError
    return cls(msg)


def resolve(name_or_path: PathLike) -> Path:
    """A checkpoint name (``dctnet_w48.toon``), a path, or ``ms://<model id>`` -> a local file path."""
    s = os.fspath(name_or_path)
    if s.startswith("ms://"):
        return _from_modelscope(s[len("ms://"):])
    p = Path(s).expanduser()
    if p.suffix == ".safetensors" or os.sep in s or (os.altsep and os.altsep in s) or p.exists():
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if len(found) != 1:
                raise CheckpointError(f"{p} is a folder with {len(found)} .safetensors files; name one")
            return found[0]
        if not p.exists():
            raise CheckpointError(f"checkpoint file not found: {p}")
        return p
    weights = registry.find_weights(s)
    if weights is not None:
        loc = locate(weights)
        if loc.path is None:
            raise _missing(loc)
        return loc.path
    for d in checkpoint_dirs():
        cand = d / f"{s}.safetensors"
        if cand.is_file():
            return cand
    others = [c.name for c in list_checkpoints() if c.weights is None]
    raise CheckpointError(
        f"no checkpoint named {s!r}; shipped: {', '.join(w.name for w in registry.list_weights())}"
        + (f"; found: {', '.join(others)}" if others else "")
        + f" (other names are looked for as {s}.safetensors in "
        + (", ".join(str(d) for d in checkpoint_dirs()) or f"the folders of ${ENV_DIRS}, which is unset")
        + ")")


def default_checkpoint() -> Path:
    """The shipped default (:data:`dctnet_lite.registry.DEFAULT_WEIGHTS`); never random weights."""
    return resolve(registry.DEFAULT_WEIGHTS)


def list_checkpoints() -> List[CheckpointInfo]:
    """Every checkpoint available by name: the shipped weights found on disk (table order), then
    every other readable ``*.safetensors`` in :func:`checkpoint_dirs` (first folder wins on a name)."""
    out: List[CheckpointInfo] = []
    for w in registry.list_weights():
        loc = locate(w)
        if loc.path is not None:
            try:
                info = read_info(loc.path)
            except CheckpointError:
                continue
            info.weights = w
            out.append(info)
    shipped_files = {n for w in registry.list_weights()
                     for n in (w.file,) + tuple(f"{a}.safetensors" for a in w.aliases)}
    seen = set()
    for d in checkpoint_dirs():
        for p in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            if p.name in shipped_files or p.name in seen:
                continue
            try:
                out.append(read_info(p))
                seen.add(p.name)
            except CheckpointError:
                continue
    return out


def _from_modelscope(model_id: str) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise CheckpointError(f"fetching ModelScope model {model_id!r} needs the modelscope package: "
                              f"pip install 'dctnet-lite[modelscope]'") from None
    from .tools.import_modelscope import hub_host, hub_reachable  # light: torch and numpy only

    if not hub_reachable():  # ModelScope itself would retry for about 20 s
        host, port = hub_host()
        try:
            local = snapshot_download(model_id, local_files_only=True)  # ModelScope's own cache
        except Exception:
            raise CheckpointError(
                f"cannot fetch ModelScope model {model_id!r}: the hub ({host}:{port}) is not reachable "
                f"(offline?) and it is not in ModelScope's local cache; download it where there is "
                f"network and pass the folder or its .safetensors file instead") from None
        return resolve(local)
    try:
        local = snapshot_download(model_id)
    except Exception as e:  # network errors come in many types
        raise CheckpointError(f"could not download ModelScope model {model_id!r} (offline? the "
                              f"ModelScope hub must be reachable): {type(e).__name__}: {e}") from None
    return resolve(local)


# ---------------------------------------------------------------------------------------------
# Listing and cards
# ---------------------------------------------------------------------------------------------
def _other_checkpoint_files() -> List[Path]:
    """Every ``*.safetensors`` in :func:`checkpoint_dirs` that is not a shipped file name (first
    folder wins on a name), readable or not."""
    shipped_files = {n for w in registry.list_weights()
                     for n in (w.file,) + tuple(f"{a}.safetensors" for a in w.aliases)}
    seen, out = set(), []
    for d in checkpoint_dirs():
        for p in sorted(d.glob("*.safetensors")) if d.is_dir() else []:
            if p.name not in shipped_files and p.name not in seen:
                seen.add(p.name)
                out.append(p)
    return out


def checkpoint_rows(verify: bool = True) -> List[dict]:
    """One row per shipped weights file (found or missing) and per other checkpoint found:
    what ``dctnet-lite checkpoints`` prints. Each row has ``status``: ``"ok"``, ``"missing"``
    (a shipped file not on this machine) or ``"broken"`` with ``problem`` saying why: a shipped
    name whose only candidates have another sha256 than the table's, or another checkpoint that
    fails :func:`verify_checkpoint` (with ``verify``; else only its metadata is read). Shipped
    files are trusted by their file sha256, which is the table's."""
    rows = []
    for w in registry.list_weights():
        loc = locate(w)
        row = w.to_dict()
        row.update(default=w.name == registry.DEFAULT_WEIGHTS, shipped=True,
                   arch_description=w.config().describe(),
                   path=str(loc.path) if loc.path else None, found_in=loc.source,
                   how_to_get=None if loc.path else how_to_get(w),
                   status="ok" if loc.path else ("broken" if loc.mismatched else "missing"),
                   problem=None if loc.path or not loc.mismatched else
                   "sha256 differs from the weights table: " + "; ".join(loc.mismatched))
        rows.append(row)
    for p in _other_checkpoint_files():
        name = p.name[: -len(".safetensors")]
        row = {"name": name, "family": None, "arch": None, "shipped": False, "default": False,
               "arch_description": None, "path": str(p), "found_in": f"${ENV_DIRS} or the checkout",
               "metrics": None, "how_to_get": None, "status": "ok", "problem": None}
        try:
            info = verify_checkpoint(p) if verify else read_info(p)
            row.update(family=info.family, arch_description=info.arch.describe(), metrics=info.metrics)
        except CheckpointError as e:
            row.update(status="broken", problem=str(e))
        rows.append(row)
    return rows

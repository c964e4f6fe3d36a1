"""ModelScope drop-in for the compound system: a head/background pair behind
``pipeline(Tasks.image_portrait_stylization, model=DIR)``, as the official DCT-Net compound models.

Importing this module registers (after :mod:`dctnet_lite.tools.modelscope_pipeline`, whose input
conventions it shares) the model type :data:`MODEL_TYPE` (``dctnet-lite-compound``:
:class:`CompoundModel`, both checkpoints) and the pipeline type :data:`PIPELINE_TYPE`
(``dctnet-lite-compound-portrait-stylization``: :class:`CompoundPipeline`, a
:class:`~dctnet_lite.compound.CompoundCartoonizer`), for the task ``image-portrait-stylization``.
A folder written by :func:`export_modelscope_compound` (``dctnet-lite export-modelscope BACKGROUND
DIR --head HEAD``) names them, so::

    import dctnet_lite.tools.modelscope_compound  # registers the types (once per process)
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    p = pipeline(Tasks.image_portrait_stylization, model="exported/compound")
    bgr = p("photo.jpg")[OutputKeys.OUTPUT_IMG]  # HxWx3 uint8, BGR, at the input's size

with the official pipeline's input and output structure (paths, PIL images, BGR arrays in;
``{OutputKeys.OUTPUT_IMG: HxWx3 uint8 BGR}`` out). The folder holds ``head.safetensors`` and
``background.safetensors`` (the checkpoints' bytes, unchanged), ``configuration.json`` (types,
both checkpoints' metadata, ``min_face`` and ``max_side``), ``ms_wrapper.py`` and a README.
``remote_code=True`` works as for single-model folders (``trust_remote_code=True`` then imports
the registration). Call-time options: ``p(img, strength=0.5, max_side=720)``. The face detector
needs the ``[face]`` extra and facenet-pytorch (see :mod:`dctnet_lite.face`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .. import __version__
from ..checkpoint import load, read_info, resolve
from ..checkpoint import CheckpointError
from ..face import DEFAULT_MIN_FACE
from ..fileutil import atomic_write_bytes
from . import modelscope_pipeline as single
from .modelscope_pipeline import MODELSCOPE_IMPORT_ERROR, TASK, to_rgb

MODEL_TYPE = "dctnet-lite-compound"
PIPELINE_TYPE = "dctnet-lite-compound-portrait-stylization"
HEAD_FILE = "head.safetensors"
BACKGROUND_FILE = "background.safetensors"

if MODELSCOPE_IMPORT_ERROR is None:
    from modelscope.models.base import TorchModel
    from modelscope.models.builder import MODELS
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines.base import Pipeline
    from modelscope.pipelines.builder import PIPELINES
    from modelscope.utils.constant import Tasks

    @MODELS.register_module(Tasks.image_portrait_stylization, module_name=MODEL_TYPE)
    class CompoundModel(TorchModel):
        """A head and a background checkpoint (``head``, ``background``: the loaded networks)."""

        def __init__(self, model_dir: str, *args, head: str = HEAD_FILE, background: str = BACKGROUND_FILE,
                     min_face: int = DEFAULT_MIN_FACE, max_side: Optional[int] = None, **kwargs):
            super().__init__(model_dir, *args, **kwargs)
            folder = Path(model_dir)
            self.head = load(folder / head, device="cpu")
            self.background = load(folder / background, device="cpu")
            self.min_face, self.max_side = int(min_face), max_side

        @classmethod
        def from_folder(cls, model_dir: str, **kwargs) -> "CompoundModel":
            """Load an exported folder directly: its weights are data, no code of it runs."""
            cfg = json.loads((Path(model_dir) / "configuration.json").read_text())
            model = cfg.get("model") or {}
            return cls(model_dir, head=model.get("head", HEAD_FILE),
                       background=model.get("background", BACKGROUND_FILE),
                       min_face=model.get("min_face", DEFAULT_MIN_FACE), max_side=model.get("max_side"),
                       **kwargs)

        def forward(self, x, strength: float = 1.0) -> Dict[str, Any]:
            return {"output": self.background(x, strength)}

    @PIPELINES.register_module(Tasks.image_portrait_stylization, module_name=PIPELINE_TYPE)
    class CompoundPipeline(Pipeline):
        """The compound system with the official pipeline's inputs and outputs. Keyword options of
        ``pipeline(...)``: ``strength``, ``max_side``, ``min_face``, ``precision``, ``tile``."""

        def __init__(self, model, strength: float = 1.0, max_side: Optional[int] = None,
                     min_face: Optional[int] = None, precision: str = "fp32", tile: Optional[int] = None,
                     **kwargs):
            if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
                model = CompoundModel.from_folder(os.fspath(model), device=kwargs.get("device", "gpu"))
            super().__init__(model=model, auto_collate=False, **kwargs)
            if not isinstance(self.model, CompoundModel):
                raise TypeError(f"{PIPELINE_TYPE} needs a {MODEL_TYPE} model (configuration.json "
                                f"model.type), got {type(self.model).__name__}")
            from ..compound import CompoundCartoonizer

            self.strength = float(strength)
            self._kw = dict(precision=precision, tile=tile, device=self.device,
                            min_face=self.model.min_face if min_face is None else int(min_face))
            self.max_side = self.model.max_side if max_side is None else max_side
            self.compound = CompoundCartoonizer(self.model.head, self.model.background, max_side=self.max_side,
                                                **self._kw)

        def _sanitize_parameters(self, **params):
            forward = {k: params.pop(k) for k in ("strength", "max_side") if k in params}
            if params:
                raise TypeError(f"unknown call options {sorted(params)}; use strength= and max_side=")
            return {}, forward, {}

        def preprocess(self, input: Any, **kwargs) -> Dict[str, Any]:
            return {"img": to_rgb(input)}

        def forward(self, inputs: Dict[str, Any], strength: Optional[float] = None,
                    max_side: Optional[int] = None) -> Dict[str, Any]:
            cz = self.compound
            if max_side is not None and max_side != cz.max_side:
                cz.max_side = int(max_side)  # the same models and detector, another working size
            try:
                out = cz(inputs["img"], strength=self.strength if strength is None else float(strength))
            finally:
                cz.max_side = self.max_side
            return {OutputKeys.OUTPUT_IMG: np.ascontiguousarray(np.asarray(out)[..., ::-1])}

        def postprocess(self, inputs: Dict[str, Any], **kwargs) -> Dict[str, Any]:
            return inputs


_SHIM = '''"""Registers the dctnet_lite compound ModelScope model and pipeline types on import.

ModelScope imports this file itself for a folder whose configuration.json says
"allow_remote": true, when the caller passes trust_remote_code=True. It needs the
dctnet-lite package installed (pip install 'dctnet-lite[modelscope,face]').
"""
import dctnet_lite.tools.modelscope_compound  # noqa: F401
'''


def _meta(info) -> dict:
    return {"checkpoint": info.name, "family": info.family, "arch": info.arch.to_dict(),
            "description": info.arch.describe(), "dtype": info.dtype, "sha256": info.sha256,
            "provenance": info.provenance, "metrics": info.metrics}


def configuration(head_info, background_info, *, min_face: int = DEFAULT_MIN_FACE,
                  max_side: Optional[int] = None, remote_code: bool = False) -> dict:
    """The ``configuration.json`` of an exported compound folder."""
    cfg = {
        "framework": "pytorch",
        "task": TASK,
        "model": {"type": MODEL_TYPE, "head": HEAD_FILE, "background": BACKGROUND_FILE,
                  "min_face": int(min_face), "max_side": max_side},
        "pipeline": {"type": PIPELINE_TYPE},
        "dctnet_lite": {
            "version": __version__,
            "head": _meta(head_info),
            "background": _meta(background_info),
            "usage": "import dctnet_lite.tools.modelscope_compound, then modelscope.pipelines.pipeline("
                     f"'{TASK}', model=<this folder>)",
        },
    }
    if remote_code:
        cfg["allow_remote"] = True
    return cfg


def _readme(head_info, background_info, remote_code: bool) -> str:
    call = ", trust_remote_code=True)" if remote_code else ")"
    return (f"# dctnet_lite compound: head {head_info.name}, background {background_info.name}\n\n"
            "A head model on every aligned face over a background model (dctnet_lite's compound "
            "system; needs `pip install 'dctnet-lite[modelscope,face]'` and "
            "`pip install --no-deps facenet-pytorch`).\n\n```python\n"
            + ("" if remote_code else "import dctnet_lite.tools.modelscope_compound  # registers the types\n")
            + "from modelscope.outputs import OutputKeys\nfrom modelscope.pipelines import pipeline\n\n"
            f"p = pipeline('{TASK}', model='<this folder>'{call}\n"
            "bgr = p('photo.jpg')[OutputKeys.OUTPUT_IMG]  # HxWx3 uint8 BGR at the input's size\n```\n")


def export_modelscope_compound(head, background, out_dir, *, remote_code: bool = False,
                               min_face: int = DEFAULT_MIN_FACE, max_side: Optional[int] = None) -> Path:
    """Write a ModelScope model folder for the pair (``head``, ``background``: names or paths)
    into ``out_dir``: ``head.safetensors``, ``background.safetensors``, ``ms_wrapper.py``,
    ``README.md`` and ``configuration.json`` (last). A new folder appears at once, fully written;
    in an existing one each file is replaced atomically. Returns the folder."""
    if max_side is not None and not 16 <= int(max_side) <= 100_000:
        raise ValueError(f"max_side must be None or at least 16 px, got {max_side}")
    if int(min_face) < 1:
        raise ValueError(f"min_face must be >= 1 px, got {min_face}")
    srcs = {HEAD_FILE: resolve(head), BACKGROUND_FILE: resolve(background)}
    infos = {k: read_info(p) for k, p in srcs.items()}  # valid dctnet_lite checkpoints, or CheckpointError
    files = {k: p.read_bytes() for k, p in srcs.items()}
    files[single.SHIM_FILE] = _SHIM.encode()
    files["README.md"] = _readme(infos[HEAD_FILE], infos[BACKGROUND_FILE], remote_code).encode()
    files["configuration.json"] = (json.dumps(configuration(infos[HEAD_FILE], infos[BACKGROUND_FILE],
                                                            min_face=min_face, max_side=max_side,
                                                            remote_code=remote_code),
                                              indent=2, sort_keys=True) + "\n").encode()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o777 & ~umask)
            for name, blob in files.items():
                (tmp / name).write_bytes(blob)
            os.rename(tmp, out)
            return out
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not out.is_dir():
                raise
    for name, blob in files.items():
        atomic_write_bytes(out / name, blob)
    return out

"""ModelScope drop-in: our checkpoints behind ``pipeline(Tasks.image_portrait_stylization, ...)``.

Importing this module registers, in ModelScope's registries,

- the model type :data:`MODEL_TYPE` (``dctnet-lite``): :class:`DCTNetLiteModel`, a
  ``TorchModel`` that loads the exported dctnet_lite safetensors checkpoint, and
- the pipeline type :data:`PIPELINE_TYPE` (``dctnet-lite-portrait-stylization``):
  :class:`DCTNetLitePipeline`,

both for the task ``image-portrait-stylization``. A folder written by :func:`export_modelscope`
names them in its ``configuration.json``, so::

    import dctnet_lite.tools.modelscope_pipeline  # registers the types (once per process)
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    p = pipeline(Tasks.image_portrait_stylization, model="exported/dctnet_w48.toon")
    bgr = p("photo.jpg")[OutputKeys.OUTPUT_IMG]  # HxWx3 uint8, BGR: cv2.imwrite("out.png", bgr)

does what the official DCT-Net pipeline (``modelscope/pipelines/cv/image_cartoon_pipeline.py``)
does, with the same input and output conventions:

- input: a path (or URL) string, a PIL image (any mode, converted to RGB), or a numpy array that
  is **BGR** (``HxWx3``; ``HxW`` gray; ``HxWx4`` BGRA has its alpha dropped), as ModelScope's
  ``LoadImage.convert_to_ndarray`` reads it;
- output: ``{OutputKeys.OUTPUT_IMG: HxWx3 uint8 BGR}`` at the input's size.

Unlike the official pipeline there is no face detector or head/background split: the two-branch
network handles the whole frame. Call-time options: ``p(img, strength=0.5, size=720)`` (``size``:
the longer side the network runs at; the result is resized back to the input's size, as the
official pipeline does with its fixed 720).

Without the explicit import, ModelScope cannot resolve the types: ``configuration.json`` has no
way to name an installed package to import. Its ``plugins`` key would ``pip wheel`` the package
from an index (dctnet-lite is not published, and it needs the network). What works offline is
``export_modelscope(..., remote_code=True)``: it sets ``"allow_remote": true`` and the folder's
``ms_wrapper.py`` (written by every export; one line, ``import dctnet_lite.tools.modelscope_pipeline``)
is then imported by ModelScope itself when the caller passes ``trust_remote_code=True``::

    p = pipeline(Tasks.image_portrait_stylization, model=folder, trust_remote_code=True)

(ModelScope refuses such a folder without ``trust_remote_code=True``, which is why it is opt-in.)

:func:`export_modelscope` itself needs only dctnet_lite; the registration needs ``modelscope``
(``pip install 'dctnet-lite[modelscope]'``, which also pulls what ModelScope's pipeline module
imports: ``addict`` and ``datasets``; OpenCV is not needed).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image, ImageOps

from .. import __version__
from .. import images as imio
from ..checkpoint import CheckpointError, load, read_info, resolve
from ..fileutil import atomic_write_bytes
from ..inference import Cartoonizer

TASK = "image-portrait-stylization"
MODEL_TYPE = "dctnet-lite"
PIPELINE_TYPE = "dctnet-lite-portrait-stylization"
WEIGHTS_FILE = "model.safetensors"
SHIM_FILE = "ms_wrapper.py"
_URL_PREFIXES = ("http://", "https://", "oss://")

try:
    import modelscope.fileio.format.jsonplus  # noqa: F401  (reads configuration.json: simplejson)
    from modelscope.models.base import TorchModel
    from modelscope.models.builder import MODELS
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines.base import Pipeline
    from modelscope.pipelines.builder import PIPELINES
    from modelscope.utils.constant import Tasks
except (ImportError, RuntimeError) as _e:  # RuntimeError: modelscope's lazy imports failing
    MODELSCOPE_IMPORT_ERROR: Optional[Exception] = _e  # export_modelscope works without it
else:
    MODELSCOPE_IMPORT_ERROR = None


def require_modelscope() -> None:
    """Raise a clear ImportError when ModelScope is not importable here."""
    if MODELSCOPE_IMPORT_ERROR is not None:
        raise ImportError(f"the ModelScope pipeline needs the modelscope package "
                          f"(pip install 'dctnet-lite[modelscope]'): {MODELSCOPE_IMPORT_ERROR}")


# ---------------------------------------------------------------------------------------------
# Inputs, the official way
# ---------------------------------------------------------------------------------------------
def to_rgb(image: Any) -> np.ndarray:
    """A pipeline input -> HxWx3 uint8 RGB, with the official pipeline's conventions.

    Strings are paths or URLs (EXIF orientation applied), PIL images are converted to RGB, and
    numpy arrays are BGR (``HxW`` gray, ``HxWx4`` BGRA: alpha dropped), like ModelScope's
    ``LoadImage.convert_to_ndarray``. Alpha is dropped as there (the output is 3-channel BGR).
    """
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if image.startswith(_URL_PREFIXES):
            from modelscope.fileio import File

            with Image.open(io.BytesIO(File.read(image))) as img:
                img.load()
                return imio.split_alpha(ImageOps.exif_transpose(img))[0]
        return imio.read_image(image)[0]
    if isinstance(image, Image.Image):
        return imio.split_alpha(ImageOps.exif_transpose(image))[0]
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., 2::-1]  # BGR(A) -> RGB
        return imio.array_to_rgb(arr)[0]
    raise TypeError(f"input should be a path or URL string, a PIL image or a BGR numpy array, "
                    f"got {type(image).__name__}")


# ---------------------------------------------------------------------------------------------
# Registered model and pipeline
# ---------------------------------------------------------------------------------------------
if MODELSCOPE_IMPORT_ERROR is None:

    @MODELS.register_module(Tasks.image_portrait_stylization, module_name=MODEL_TYPE)
    class DCTNetLiteModel(TorchModel):
        """A dctnet_lite checkpoint as a ModelScope ``TorchModel``.

        ``forward(x, strength)`` takes (B, 3, H, W) RGB in [-1, 1] and returns
        ``{"output": (B, 3, H, W) in [-1, 1]}``; the pipeline does the image conversions.
        """

        def __init__(self, model_dir: str, *args, weights: str = WEIGHTS_FILE, **kwargs):
            super().__init__(model_dir, *args, **kwargs)

            path = Path(model_dir) / weights
            if not path.is_file():
                path = resolve(model_dir)  # the folder's only .safetensors file
            self.net = load(path, device="cpu")
            self.checkpoint_info = self.net.checkpoint_info

        @classmethod
        def from_folder(cls, model_dir: str, **kwargs) -> "DCTNetLiteModel":
            """Load an exported folder directly: its weights are data, no code of it runs."""
            cfg = json.loads((Path(model_dir) / "configuration.json").read_text())
            weights = (cfg.get("model") or {}).get("weights", WEIGHTS_FILE)
            return cls(model_dir, weights=weights, **kwargs)

        def forward(self, x, strength: float = 1.0) -> Dict[str, Any]:
            return {"output": self.net(x, strength)}

    @PIPELINES.register_module(Tasks.image_portrait_stylization, module_name=PIPELINE_TYPE)
    class DCTNetLitePipeline(Pipeline):
        """Portrait stylization with a dctnet_lite model; output as the official DCT-Net pipeline.

        Keyword options of ``pipeline(...)``: ``precision`` (fp32 / fp16 / bf16), ``tile``,
        ``strength`` and ``size`` (defaults for every call; a call can override both).
        """

        def __init__(self, model, strength: float = 1.0, size: Optional[int] = None,
                     precision: str = "fp32", tile: Optional[int] = None, **kwargs):
            if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
                # Built here rather than by Model.from_pretrained: loading safetensors runs no code
                # from the folder, so it needs no trust_remote_code (which ModelScope does not
                # hand on to pipeline classes from outside its own package).
                model = DCTNetLiteModel.from_folder(os.fspath(model), device=kwargs.get("device", "gpu"))
            super().__init__(model=model, auto_collate=False, **kwargs)

            if not isinstance(self.model, DCTNetLiteModel):
                raise TypeError(f"{PIPELINE_TYPE} needs a {MODEL_TYPE} model (configuration.json "
                                f"model.type), got {type(self.model).__name__}")
            self.strength, self.size = float(strength), size
            self.cartoonizer = Cartoonizer(self.model.net, device=self.device, precision=precision, tile=tile)

        def _sanitize_parameters(self, **params):
            forward = {k: params.pop(k) for k in ("strength", "size") if k in params}
            if params:
                raise TypeError(f"unknown call options {sorted(params)}; use strength= and size=")
            return {}, forward, {}

        def preprocess(self, input: Any, **kwargs) -> Dict[str, Any]:
            return {"img": to_rgb(input)}

        def forward(self, inputs: Dict[str, Any], strength: Optional[float] = None,
                    size: Optional[int] = None) -> Dict[str, Any]:
            rgb = inputs["img"]
            h, w = rgb.shape[:2]
            out = self.cartoonizer(rgb, strength=self.strength if strength is None else float(strength),
                                   size=self.size if size is None else size)
            if out.shape[:2] != (h, w):  # back to the input's size, as the official pipeline
                out = np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.LANCZOS))
            return {OutputKeys.OUTPUT_IMG: np.ascontiguousarray(out[..., ::-1])}

        def postprocess(self, inputs: Dict[str, Any], **kwargs) -> Dict[str, Any]:
            return inputs


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
_SHIM = '''"""Registers the dctnet_lite ModelScope model and pipeline types on import.

ModelScope imports this file itself for a folder whose configuration.json says
"allow_remote": true, when the caller passes trust_remote_code=True. It needs the
dctnet-lite package installed (pip install 'dctnet-lite[modelscope]').
"""
import dctnet_lite.tools.modelscope_pipeline  # noqa: F401
'''


def configuration(info, weights: str = WEIGHTS_FILE, remote_code: bool = False) -> dict:
    """The ``configuration.json`` of an exported folder for a checkpoint's :class:`CheckpointInfo`."""
    cfg = {
        "framework": "pytorch",
        "task": TASK,
        "model": {"type": MODEL_TYPE, "weights": weights},
        "pipeline": {"type": PIPELINE_TYPE},
        "dctnet_lite": {
            "version": __version__,
            "checkpoint": info.name,
            "arch": info.arch.to_dict(),
            "description": info.arch.describe(),
            "dtype": info.dtype,
            "sha256": info.sha256,
            "provenance": info.provenance,
            "metrics": info.metrics,
            "usage": "import dctnet_lite.tools.modelscope_pipeline, then modelscope.pipelines.pipeline("
                     f"'{TASK}', model=<this folder>)",
        },
    }
    if remote_code:
        cfg["allow_remote"] = True
    return cfg


def _readme(info, remote_code: bool) -> str:
    call = (", trust_remote_code=True)" if remote_code else ")")
    return (f"# dctnet_lite {info.name}\n\n{info.arch.describe()}, {info.dtype} weights, sha256 "
            f"`{info.sha256[:16]}...`.\n\n```python\n"
            + ("" if remote_code else "import dctnet_lite.tools.modelscope_pipeline  # registers the types\n")
            + "from modelscope.outputs import OutputKeys\nfrom modelscope.pipelines import pipeline\n\n"
            f"p = pipeline('{TASK}', model='<this folder>'{call}\n"
            "bgr = p('photo.jpg')[OutputKeys.OUTPUT_IMG]  # HxWx3 uint8 BGR\n```\n")


def export_modelscope(checkpoint, out_dir, *, remote_code: bool = False) -> Path:
    """Write a ModelScope model folder for ``checkpoint`` (a name or path) into ``out_dir``.

    Files: ``configuration.json`` (framework, task, the registered model and pipeline types,
    and the dctnet_lite architecture, dtype, sha256, provenance and metrics), ``model.safetensors``
    (the checkpoint's bytes, unchanged), ``ms_wrapper.py`` (imports the registration) and a
    ``README.md``. A new folder appears at once, fully written (built beside it, then renamed);
    in an existing folder each file is replaced atomically, ``configuration.json`` last.
    ``remote_code=True`` adds ``"allow_remote": true`` (see the module docstring).
    Returns the folder.
    """
    src = resolve(checkpoint)
    info = read_info(src)  # a dctnet_lite checkpoint with valid metadata, or CheckpointError
    data = src.read_bytes()
    files = {
        WEIGHTS_FILE: data,
        SHIM_FILE: _SHIM.encode(),
        "README.md": _readme(info, remote_code).encode(),
        # last: a folder with a configuration.json is a complete one
        "configuration.json": (json.dumps(configuration(info, WEIGHTS_FILE, remote_code), indent=2,
                                          sort_keys=True) + "\n").encode(),
    }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a folder")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; a model folder is not
            for name, blob in files.items():
                (tmp / name).write_bytes(blob)
            os.rename(tmp, out)
            return out
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not out.is_dir():  # not a lost race with another exporter: a real error
                raise
    for name, blob in files.items():
        atomic_write_bytes(out / name, blob)
    return out

"""dctnet_lite: fast DCT-Net portrait cartoonization at any width.

Inference stays light: importing this package pulls in torch, numpy, pillow and safetensors
only. The tools (pruning, evaluation, LPIPS, ModelScope, ONNX, Lightning) live in
``dctnet_lite.tools`` and ``dctnet_lite.train`` and import their heavy dependencies lazily.
"""
__version__ = "0.2.0"

from .model import ArchConfig, DCTNet  # noqa: E402
from .registry import (DEFAULT_WEIGHTS, WEIGHTS, Weights, create_model, get_weights,  # noqa: E402
                       list_families, list_models, list_weights, register_model)
from .checkpoint import (CheckpointError, NoTrainedCheckpoint, list_checkpoints, load,  # noqa: E402
                         load_into, read_info, save_checkpoint)
from .inference import Cartoonizer, cartoonize, cartoonize_files  # noqa: E402
from .compound import CompoundCartoonizer, cartoonize_files_compound  # noqa: E402  (detector: lazily)


def _install_moved_module_aliases() -> None:
    """``import dctnet_lite.prune`` (and the other tools that moved to ``dctnet_lite.tools`` in 0.2)
    still works until 0.3: it gives the new module, with a FutureWarning. Nothing is imported until
    an old name is asked for."""
    import importlib
    import importlib.abc
    import importlib.util
    import sys
    import warnings

    moved = {"prune", "evaluate", "report", "lpips_offline", "modelscope_pipeline", "predict",
             "onnx_export", "accuracy", "bench"}

    class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            pkg, _, mod = fullname.rpartition(".")
            if pkg != __name__ or mod not in moved:
                return None
            return importlib.util.spec_from_loader(fullname, self)

        def create_module(self, spec):
            new = f"{__name__}.tools.{spec.name.rpartition('.')[2]}"
            warnings.warn(f"{spec.name} moved to {new} in dctnet_lite 0.2; the old name goes in 0.3",
                          FutureWarning, stacklevel=2)
            return importlib.import_module(new)

        def exec_module(self, module):
            pass

    if not any(type(f).__name__ == "_Alias" for f in sys.meta_path):
        sys.meta_path.append(_Alias())


_install_moved_module_aliases()

__all__ = [
    "ArchConfig", "DCTNet", "create_model", "list_models", "register_model", "list_families",
    "WEIGHTS", "Weights", "DEFAULT_WEIGHTS", "get_weights", "list_weights",
    "CheckpointError", "NoTrainedCheckpoint", "list_checkpoints", "load", "load_into", "read_info",
    "save_checkpoint", "Cartoonizer", "cartoonize", "cartoonize_files", "CompoundCartoonizer",
    "cartoonize_files_compound", "__version__",
]

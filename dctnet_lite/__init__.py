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

__all__ = [
    "ArchConfig", "DCTNet", "create_model", "list_models", "register_model", "list_families",
    "WEIGHTS", "Weights", "DEFAULT_WEIGHTS", "get_weights", "list_weights",
    "CheckpointError", "NoTrainedCheckpoint", "list_checkpoints", "load", "load_into", "read_info",
    "save_checkpoint", "Cartoonizer", "cartoonize", "cartoonize_files", "__version__",
]

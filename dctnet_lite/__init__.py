"""dctnet_lite: fast two-branch DCT-Net portrait cartoonization at any width.

Inference stays light: importing this package pulls in torch, numpy, pillow and safetensors
only. Training, pruning, LPIPS and ModelScope support are imported lazily where they are used.
"""
__version__ = "0.1.0"

from .model import ArchConfig, DCTNet, create_model, list_models, register_model  # noqa: E402
from .checkpoint import (CheckpointError, NoTrainedCheckpoint, list_checkpoints, load,  # noqa: E402
                         load_into, read_info, save_checkpoint)
from .inference import Cartoonizer, cartoonize, cartoonize_files  # noqa: E402

__all__ = [
    "ArchConfig", "DCTNet", "create_model", "list_models", "register_model",
    "CheckpointError", "NoTrainedCheckpoint", "list_checkpoints", "load", "load_into", "read_info",
    "save_checkpoint", "Cartoonizer", "cartoonize", "cartoonize_files", "__version__",
]

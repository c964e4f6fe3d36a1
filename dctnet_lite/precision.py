"""The one precision table: every precision name the package accepts, and its torch dtype.

Everything that takes a precision reads this module: checkpoint dtypes
(:data:`dctnet_lite.checkpoint.DTYPES`), the :class:`~dctnet_lite.inference.Cartoonizer` and
:func:`~dctnet_lite.fastpath.resolve_precision` (which also take :data:`AUTO`), the bench and
accuracy variants, ONNX export (:data:`ONNX_PRECISIONS`), quantized artefacts
(:data:`QUANTIZED_PRECISIONS`) and the CLI's choices.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

#: Precision name -> dtype of weights and activations, in the order the CLI lists them.
PRECISIONS: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: The same table under the name checkpoint IO has always used (stored tensor dtypes).
DTYPES = PRECISIONS
#: Resolved per device by :func:`dctnet_lite.fastpath.resolve_precision`.
AUTO = "auto"
#: Integer precision of a quantized artefact (``dctnet-lite quantize``: an ONNX file run by ONNX
#: Runtime, see :mod:`dctnet_lite.tools.quantize`); not a torch dtype, so not in PRECISIONS.
INT8 = "int8"
QUANTIZED_PRECISIONS: Tuple[str, ...] = (INT8,)
#: What ``dctnet-lite cartoonize --precision`` and :func:`~dctnet_lite.fastpath.resolve_precision` accept.
PRECISION_CHOICES: Tuple[str, ...] = (AUTO, *PRECISIONS)
#: What a :class:`~dctnet_lite.inference.Cartoonizer` accepts: ``int8`` too, with an INT8
#: artefact as the checkpoint (``auto`` runs such a file at int8 as well).
CARTOONIZER_PRECISIONS: Tuple[str, ...] = (*PRECISION_CHOICES, INT8)
#: What ONNX export writes: every precision but bf16 (ONNX runtimes rarely run bf16 convolutions).
ONNX_PRECISIONS: Tuple[str, ...] = tuple(p for p in PRECISIONS if p != "bf16")


def check_precision(precision: str, allowed=PRECISION_CHOICES, what: str = "precision") -> str:
    """``precision`` if it is one of ``allowed``, else a ValueError naming them."""
    if precision not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {precision!r}")
    return precision

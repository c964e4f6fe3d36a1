"""The training package's view of the model families: which network a run trains, how it runs.

Every family of :mod:`dctnet_lite.registry` trains the same way; this module holds the few
things that depend on the family, so the module, the distiller and the export need no
``isinstance`` of their own:

- :func:`student_config`: the student's architecture from the module's arguments
  (``arch`` = a registered architecture name, or ``family`` + ``arch_config`` / ``width``);
- :func:`differentiable`: the context a student's forward with gradients runs in (the
  ``official`` generator's fused eager paths write into preallocated buffers, which autograd
  does not support, so its training forward runs :func:`dctnet_lite.official.plain_ops`: the
  same function);
- :func:`family_name`, :func:`net_device`.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Mapping, Optional

import torch
from torch import nn

from .. import registry


def family_name(obj) -> str:
    """The registry family of a network or config (``dctnet``, ``official``)."""
    return registry.family_of(obj).name


def net_device(net: nn.Module) -> torch.device:
    """The device of a network's weights."""
    return next(net.parameters()).device


def differentiable(net: nn.Module) -> ContextManager:
    """The context for a forward of ``net`` that is to be back-propagated."""
    from ..official import OfficialGenerator, plain_ops

    if isinstance(net, OfficialGenerator) and torch.is_grad_enabled():
        return plain_ops()
    return contextlib.nullcontext()


def student_config(width: Optional[int] = None, arch: Optional[str] = None, family: Optional[str] = None,
                   arch_config: Optional[Mapping[str, Any]] = None):
    """The config of the student to build (any family); ValueError, one line, on a contradiction.

    - ``arch``: a registered architecture (``official_c32n4``, ``dctnet_w48``); ``family``, if
      given, must be its family; ``width`` and ``arch_config`` must be unset;
    - else ``family`` (default ``dctnet``) with ``arch_config`` (the family's config as a dict,
      e.g. ``{"channels": 8, "num_blocks": 1}`` or ``{"table": {...}, "num_blocks": 4}`` for
      ``official``) or ``width`` (the base width: ``dctnet`` width, ``official`` channels), or the
      family's default config when neither is given (``dctnet`` width 64, ``official`` c32 n4).
    """
    if arch is not None:
        try:
            a = registry.get_arch(arch)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if family is not None and family != a.family:
            raise ValueError(f"model.arch {arch!r} is of family {a.family!r}, not model.family {family!r}")
        given = [k for k, v in (("model.width", width), ("model.arch_config", arch_config)) if v is not None]
        if given:
            raise ValueError(f"give model.arch or {' / '.join(given)}, not both (model.arch {arch!r} "
                             f"is {a.config().describe()})")
        return a.config()
    try:
        fam = registry.get_family(family or registry.DCTNET.name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if arch_config is not None:
        if width is not None:
            raise ValueError("give model.arch_config or model.width, not both")
        if not isinstance(arch_config, Mapping):
            raise ValueError(f"model.arch_config must be a mapping, got {type(arch_config).__name__}")
        try:
            return fam.config_from_dict(dict(arch_config))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"invalid model.arch_config for family {fam.name!r}: {e}") from None
    if width is None:
        return fam.config_cls()
    if fam.from_width is None:
        raise ValueError(f"family {fam.name!r} has no base width: give model.arch or model.arch_config")
    try:
        return fam.from_width(width)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid model.width for family {fam.name!r}: {e}") from None


def check_init_family(init_family: str, arch: Optional[str] = None, family: Optional[str] = None,
                      init_checkpoint: str = "") -> None:
    """With ``init_checkpoint`` its architecture wins over ``width``/``arch``/``arch_config``; a
    family named by ``family`` or implied by ``arch`` must still be the checkpoint's."""
    want = family
    if arch is not None:
        try:
            want = registry.get_arch(arch).family
        except KeyError as e:
            raise ValueError(e.args[0]) from None
    if want is not None and want != init_family:
        raise ValueError(f"model.init_checkpoint {init_checkpoint} is a {init_family!r} checkpoint, "
                         f"but the recipe asks for family {want!r}")

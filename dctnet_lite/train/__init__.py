"""Training (Lightning): :class:`CartoonModule`, :class:`PhotoDataModule`, :func:`train_main`,
:func:`export_checkpoint`. Lightning is imported only when one of these is first used."""
import importlib

_EXPORTS = {
    "CartoonModule": ".module",
    "PhotoDataModule": ".datamodule",
    "train_main": ".cli",
    "export_checkpoint": ".export",
    "make_target_source": ".targets",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

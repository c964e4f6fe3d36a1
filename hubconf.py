"""torch.hub entry points for dctnet_lite, offline from a local clone::

    import torch
    net = torch.hub.load("/path/to/dctnet_lite", "dctnet_w48", source="local")   # dctnet_w48.toon, eval mode
    net = torch.hub.load(repo, "dctnet_w64", source="local", weights="dctnet_w64.toon")
    net = torch.hub.load(repo, "dctnet", source="local", checkpoint="my.safetensors")
    cz = torch.hub.load(repo, "cartoonizer", source="local", checkpoint="dctnet_w48.toon", device="cpu")
    y = net(x, strength=1.0)  # x: (B, 3, H, W) RGB in [-1, 1] -> same in [-1, 1]

One entry per architecture that has shipped weights, generated from the registry's weights table
(``dctnet_lite.registry.WEIGHTS``): the entry's name is the architecture's, its default weights
the table's first for it. Weights come from the package, ``$DCTNET_LITE_CHECKPOINTS`` or the
clone's ``checkpoints/`` folder, checked by sha256: nothing is downloaded. The old entries
``toon_w64``/``toon_w48`` still work for one release, with a deprecation warning.
"""
import warnings

from dctnet_lite import registry as _registry  # torch.hub puts this clone first on sys.path

dependencies = ["torch", "numpy", "PIL", "safetensors"]


def _load(checkpoint, pretrained: bool, arch: str):
    from dctnet_lite.checkpoint import CheckpointError, load, resolve

    if not pretrained:
        return _registry.create_model(arch).eval()
    try:
        path = resolve(checkpoint)
    except CheckpointError as e:
        raise RuntimeError(
            f"dctnet_lite hub: checkpoint {str(checkpoint)!r} is not available offline ({e}) "
            f"Pass checkpoint=PATH to the 'dctnet' entry, or pretrained=False for random weights.") from None
    return load(path, device="cpu")


def _arch_entry(arch: str):
    default = _registry.default_weights_for(arch)
    others = [w.name for w in _registry.list_weights() if w.arch == arch]

    def entry(pretrained: bool = True, weights: str = None):
        name = default.name if weights is None else weights
        if name not in others and _registry.canonical_name(name, warn=False) not in others:
            raise ValueError(f"{arch}: weights {name!r} are not for this architecture; its weights: "
                             f"{', '.join(others)}")
        return _load(name, pretrained, arch)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (f"The {default.family} architecture ``{arch}`` ({default.config().describe()}); "
                     f"weights (default first): {', '.join(others)}. Default: {default.summary}. "
                     f"``pretrained=False`` returns an untrained network.")
    return entry


for _arch in dict.fromkeys(w.arch for w in _registry.list_weights()):
    globals()[_arch] = _arch_entry(_arch)


def _deprecated_entry(old: str, arch: str):
    def entry(pretrained: bool = True):
        warnings.warn(f"hub entry {old!r} is deprecated and will be removed in dctnet_lite "
                      f"{_registry.ALIASES_REMOVED_IN}: use {arch!r}", FutureWarning, stacklevel=2)
        return globals()[arch](pretrained=pretrained)

    entry.__name__ = entry.__qualname__ = old
    entry.__doc__ = f"Deprecated name of the ``{arch}`` entry."
    return entry


toon_w64 = _deprecated_entry("toon_w64", "dctnet_w64")
toon_w48 = _deprecated_entry("toon_w48", "dctnet_w48")


def dctnet(checkpoint=None, pretrained: bool = True, width: int = 64):
    """Any dctnet_lite checkpoint of any family: a name of the weights table, another name found
    in ``$DCTNET_LITE_CHECKPOINTS``, or a path. ``checkpoint=None`` takes the shipped default
    (``dctnet_w48.toon``); ``pretrained=False`` returns an untrained two-branch network of base
    ``width``."""
    if not pretrained:
        return _registry.create_model(width).eval()
    return _load(_registry.DEFAULT_WEIGHTS if checkpoint is None else checkpoint, True, None)


def cartoonizer(checkpoint=None, **kwargs):
    """A ready :class:`dctnet_lite.Cartoonizer` (images in, images out); kwargs go to it."""
    from dctnet_lite.inference import Cartoonizer

    return Cartoonizer(dctnet(checkpoint), **kwargs)

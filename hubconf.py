"""torch.hub entry points for dctnet_lite, offline from a local clone::

    import torch
    net = torch.hub.load("/path/to/dctnet_lite", "toon_w48", source="local")   # a DCTNet, eval mode
    net = torch.hub.load(repo, "dctnet", source="local", checkpoint="my.safetensors")
    cz = torch.hub.load(repo, "cartoonizer", source="local", checkpoint="toon-w48", device="cpu")
    y = net(x, strength=1.0)  # x: (B, 3, H, W) RGB in [-1, 1] -> same in [-1, 1]

Weights come from the clone's ``checkpoints/`` folder (or ``$DCTNET_LITE_CHECKPOINTS``) through
``dctnet_lite.checkpoint``: nothing is downloaded. A missing checkpoint is a clear error.
"""
dependencies = ["torch", "numpy", "PIL", "safetensors"]


def _load(checkpoint, pretrained: bool, fallback_width: int):
    from dctnet_lite.checkpoint import CheckpointError, load, resolve
    from dctnet_lite.model import create_model

    if not pretrained:
        return create_model(fallback_width).eval()
    try:
        path = resolve(checkpoint)
    except CheckpointError as e:
        raise RuntimeError(
            f"dctnet_lite hub: checkpoint {str(checkpoint)!r} is not available offline ({e}). Put the "
            f"trained .safetensors file in the repo's checkpoints/ folder, pass checkpoint=PATH to "
            f"the 'dctnet' entry, or pretrained=False for random weights.") from None
    return load(path, device="cpu")


def toon_w64(pretrained: bool = True):
    """The width-64 reference DCT-Net (``checkpoints/toon-w64.safetensors``)."""
    return _load("toon-w64", pretrained, 64)


def toon_w48(pretrained: bool = True):
    """The pruned, distilled width-48 DCT-Net (``checkpoints/toon-w48.safetensors``)."""
    return _load("toon-w48", pretrained, 48)


def dctnet(checkpoint=None, pretrained: bool = True, width: int = 64):
    """Any dctnet_lite checkpoint: a name from ``checkpoints/`` or a path.

    ``checkpoint=None`` takes the shipped default (toon-w48, else toon-w64);
    ``pretrained=False`` returns an untrained network of base ``width``.
    """
    if checkpoint is None and pretrained:
        from dctnet_lite.checkpoint import NoTrainedCheckpoint, default_checkpoint

        try:
            checkpoint = default_checkpoint()
        except NoTrainedCheckpoint as e:
            raise RuntimeError(f"dctnet_lite hub: {e}") from None
    return _load(checkpoint, pretrained, width)


def cartoonizer(checkpoint=None, **kwargs):
    """A ready :class:`dctnet_lite.Cartoonizer` (images in, images out); kwargs go to it."""
    from dctnet_lite.inference import Cartoonizer

    return Cartoonizer(dctnet(checkpoint), **kwargs)

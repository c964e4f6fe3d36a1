"""Two-branch DCT-Net UNet at any width.

Topology for base width ``w`` (reference ``w=64``; the pruned target is ``w=48``)::

    x (3, H, W) ──┬─ content encoder ─ c1 (w, H/2) c2 (2w, H/4) c3 (4w, H/8) c4 (8w, H/16)
                  └─ texture encoder ─ t1 ...      t2 ...       t3 ...       t4 ...
    fuse_i = c_i + (s * g_i) * (t_i - c_i),  g_i = sigmoid(conv1x1([c_i, t_i]))   s in [0, 1]
    bottleneck(fuse_4) ─ up ─ [· , fuse_3] ─ up ─ [· , fuse_2] ─ up ─ [· , fuse_1] ─ up ─ [· , x] ─ tanh

The style strength ``s`` scales the fusion gates only: every ``s`` runs the same convolutions.
Each encoder is a 7x7 stride-2 stem followed by three stride-2 stages (two 3x3 convs each); the
decoder upsamples bilinearly, convolves, concatenates the fused skip of each scale and, at full
resolution, the input itself, so fine detail is reachable without a full-resolution encoder.

Every convolution's channel count comes from one :class:`ArchConfig`, either derived from a base
width or given as an explicit per-group channel table (what a non-uniform pruning produces), so
a pruned network is still a plain :class:`DCTNet`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

ARCH_VERSION = 1
STRIDE = 16  # total downsampling of the encoders: inputs are padded to a multiple of this
CHANNEL_MULTIPLE = 8
NUM_RES_BLOCKS = 1
BRANCHES = ("content", "texture")


def channel_groups(num_res_blocks: int = NUM_RES_BLOCKS) -> tuple:
    """Names of the independently sized channel groups, in a fixed order.

    ``scale1..scale4`` are the encoder outputs per scale; content, texture, fusion gate and the
    bottleneck's residual stream share them (they are added element-wise). ``<branch>.mid2..4``
    are the first conv of each stride-2 stage, ``bottleneck.mid<i>`` the inner width of each
    residual block, ``up<i>``/``merge<i>`` the decoder's upsampling and merging convs at 1/2**i.
    """
    names = [f"scale{i}" for i in range(1, 5)]
    names += [f"{b}.mid{i}" for b in BRANCHES for i in range(2, 5)]
    names += [f"bottleneck.mid{i}" for i in range(num_res_blocks)]
    for i in (3, 2, 1, 0):
        names += [f"up{i}", f"merge{i}"]
    return tuple(names)


def widths_from_base(w: int, num_res_blocks: int = NUM_RES_BLOCKS) -> Dict[str, int]:
    """Channel table of the uniform network of base width ``w``."""
    mult = {1: 1, 2: 2, 3: 4, 4: 8}
    table = {f"scale{i}": w * m for i, m in mult.items()}
    for b in BRANCHES:
        for i in (2, 3, 4):
            table[f"{b}.mid{i}"] = w * mult[i]
    for i in range(num_res_blocks):
        table[f"bottleneck.mid{i}"] = 8 * w
    for i in (3, 2, 1):
        table[f"up{i}"] = table[f"merge{i}"] = w * mult[i]
    table["up0"] = table["merge0"] = w
    return table


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Architecture of a :class:`DCTNet`: a base width or an explicit channel table.

    ``ArchConfig(base_width=48)`` is the uniform width-48 network. A pruned network that is not
    uniform carries ``channels`` (every group of :func:`channel_groups`) and ``base_width=None``.
    """

    base_width: Optional[int] = 64
    channels: Optional[Mapping[str, int]] = None
    num_res_blocks: int = NUM_RES_BLOCKS
    version: int = ARCH_VERSION

    def __post_init__(self):
        if self.version != ARCH_VERSION:
            raise ValueError(f"architecture version {self.version} is not supported "
                             f"(this dctnet_lite builds version {ARCH_VERSION})")
        if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be a non-negative integer, got {self.num_res_blocks!r}")
        if self.channels is None:
            if self.base_width is None:
                raise ValueError("ArchConfig needs a base_width or an explicit channels table")
            _check_width("base_width", self.base_width)
            return
        table = dict(self.channels)
        expected = channel_groups(self.num_res_blocks)
        missing = [k for k in expected if k not in table]
        extra = [k for k in table if k not in expected]
        if missing or extra:
            raise ValueError(f"channel table does not match the architecture: missing {missing}, "
                             f"unknown {extra}")
        for k in expected:
            _check_width(f"channels[{k!r}]", table[k])
        if self.base_width is not None:
            _check_width("base_width", self.base_width)
        object.__setattr__(self, "channels", {k: int(table[k]) for k in expected})

    @classmethod
    def from_width(cls, width: int, num_res_blocks: int = NUM_RES_BLOCKS) -> "ArchConfig":
        return cls(base_width=width, num_res_blocks=num_res_blocks)

    @classmethod
    def from_channels(cls, channels: Mapping[str, int],
                      num_res_blocks: int = NUM_RES_BLOCKS) -> "ArchConfig":
        """Explicit table; collapses to the uniform form when it equals one."""
        table = dict(channels)
        w = table.get("scale1")
        if isinstance(w, int) and w > 0 and w % CHANNEL_MULTIPLE == 0 \
                and widths_from_base(w, num_res_blocks) == table:
            return cls(base_width=w, num_res_blocks=num_res_blocks)
        return cls(base_width=None, channels=table, num_res_blocks=num_res_blocks)

    @property
    def widths(self) -> Dict[str, int]:
        """The full channel table (derived from the base width when uniform)."""
        if self.channels is not None:
            return dict(self.channels)
        return widths_from_base(self.base_width, self.num_res_blocks)

    @property
    def is_uniform(self) -> bool:
        return self.channels is None

    def describe(self) -> str:
        """Short human name: ``width 48`` or ``non-uniform (scale1..4 = 40/88/176/344)``."""
        if self.is_uniform:
            return f"width {self.base_width}"
        t = self.widths
        return "non-uniform (scale1..4 = " + "/".join(str(t[f"scale{i}"]) for i in range(1, 5)) + ")"

    def diff(self, other: "ArchConfig") -> str:
        """Where two configs differ, in words (for mismatch errors)."""
        if self.is_uniform and other.is_uniform and self.base_width != other.base_width:
            return f"width {self.base_width} vs width {other.base_width}"
        a, b = self.widths, other.widths
        diffs = [f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if self.num_res_blocks != other.num_res_blocks:
            diffs.insert(0, f"num_res_blocks: {self.num_res_blocks} vs {other.num_res_blocks}")
        return ", ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")

    def to_dict(self) -> dict:
        d = {"version": self.version, "num_res_blocks": self.num_res_blocks,
             "base_width": self.base_width}
        if self.channels is not None:
            d["channels"] = dict(self.channels)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArchConfig":
        known = {"version", "num_res_blocks", "base_width", "channels"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(base_width=d.get("base_width"), channels=d.get("channels"),
                   num_res_blocks=d.get("num_res_blocks", NUM_RES_BLOCKS),
                   version=d.get("version", ARCH_VERSION))


def _check_width(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % CHANNEL_MULTIPLE:
        raise ValueError(f"{name} must be a positive multiple of {CHANNEL_MULTIPLE}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Plain formulation vs a fused CPU inference path (the official family has one:
# dctnet_lite.official; the flag and the predicate are shared so every tool can ask for the plain
# formulation of any family)
# --------------------------------------------------------------------------------------------
_PLAIN = [False]


@contextlib.contextmanager
def plain_ops():
    """Run the networks with their plain formulation only: every conv through its module's own
    ``forward`` (so forward hooks see it: torch-pruning's DependencyGraph, MACs counters) and no
    fused inference path. The same function, slower."""
    before, _PLAIN[0] = _PLAIN[0], True
    try:
        yield
    finally:
        _PLAIN[0] = before


def plain_ops_active() -> bool:
    return _PLAIN[0]


def _compiling() -> bool:
    """Under torch.compile / torch.export (dynamo records the plain ops, which it can fuse itself)."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - older torch
        return False


_FUSED: list = []


def fused_cpu_available() -> bool:
    """oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``: conv + bias + an
    activation, or + a second tensor then an activation, in one pass) is in this torch build. It
    is the op ``torch.compile``'s CPU backend lowers to; called eagerly here, it needs no
    compilation."""
    if not _FUSED:
        try:
            ok = bool(torch.backends.mkldnn.is_available())
            ok = ok and hasattr(torch.ops.mkldnn, "_convolution_pointwise") \
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
        except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
            ok = False
        _FUSED.append(ok)
    return _FUSED[0]


def fused_cpu_inference(x: torch.Tensor) -> bool:
    """Whether the fused CPU inference path may run on ``x``: a CPU fp32/bf16 tensor, gradients
    off (``no_grad``/``inference_mode``), eager (not traced, scripted, compiled or exported), not
    under :func:`plain_ops`, oneDNN present. Otherwise the plain formulation runs."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not (_PLAIN[0] or torch.is_grad_enabled() or torch.jit.is_tracing()
                     or torch.jit.is_scripting() or _compiling())
            and fused_cpu_available())


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class Encoder(nn.Module):
    """7x7 stride-2 stem and three stride-2 stages; returns the features of the four scales."""

    def __init__(self, widths: Mapping[str, int], branch: str):
        super().__init__()
        self.stem = nn.Sequential(conv(3, widths["scale1"], 7, stride=2), act())
        stages = []
        for i in (2, 3, 4):
            mid = widths[f"{branch}.mid{i}"]
            stages.append(nn.Sequential(conv(widths[f"scale{i - 1}"], mid, 3, stride=2), act(),
                                        conv(mid, widths[f"scale{i}"]), act()))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class AdaptiveFusion(nn.Module):
    """``c + (s * g) * (t - c)`` with a learned per-pixel, per-channel gate ``g`` in (0, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, c: torch.Tensor, t: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([c, t], dim=1)))
        return c + (strength * g) * (t - c)


class ResBlock(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.body = nn.Sequential(conv(channels, mid), act(), conv(mid, channels))

    def forward(self, x):
        return x + self.body(x)


class UpBlock(nn.Module):
    """Bilinear x2, conv, concatenate the skip, conv."""

    def __init__(self, cin: int, cup: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.Sequential(conv(cin, cup), act())
        self.merge = nn.Sequential(conv(cup + cskip, cout), act())

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([self.up(x), skip], dim=1))


class DCTNet(nn.Module):
    """The two-branch DCT-Net UNet. Input and output are RGB in [-1, 1].

    Every family's network offers the same interface: ``forward(x, strength)`` on any size,
    ``forward_padded(x, strength)`` (the body, on sides that are multiples of :attr:`stride`) and
    ``stride`` (its total downsampling), which the Cartoonizer and the ONNX export rely on.

    ``forward(x, strength)`` takes any spatial size: it pads to a multiple of :data:`STRIDE`
    (:func:`pad_to_multiple`), runs :meth:`forward_padded` and crops back. ``strength`` is a float
    or a per-sample ``(B,)`` tensor in [0, 1] (:func:`strength_vector`).
    """

    stride = STRIDE

    def __init__(self, config: Union[ArchConfig, int, None] = None):
        super().__init__()
        if config is None:
            config = ArchConfig()
        elif isinstance(config, int):
            config = ArchConfig.from_width(config)
        self.config = config
        w = config.widths
        self.content = Encoder(w, "content")
        self.texture = Encoder(w, "texture")
        self.fusions = nn.ModuleList(AdaptiveFusion(w[f"scale{i}"]) for i in range(1, 5))
        self.bottleneck = nn.Sequential(*[ResBlock(w["scale4"], w[f"bottleneck.mid{i}"])
                                          for i in range(config.num_res_blocks)])
        decoder, cin = [], w["scale4"]
        for i in (3, 2, 1, 0):
            cskip = w[f"scale{i}"] if i else 3
            decoder.append(UpBlock(cin, w[f"up{i}"], cskip, w[f"merge{i}"]))
            cin = w[f"merge{i}"]
        self.decoder = nn.ModuleList(decoder)
        self.head = conv(cin, 3)

    def forward(self, x: torch.Tensor, strength: Union[float, torch.Tensor] = 1.0) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DCTNet expects a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, STRIDE)
        s = strength_vector(strength, x.shape[0], x.device, x.dtype)
        return self.forward_padded(x, s.view(-1, 1, 1, 1))[..., :h, :w]

    def forward_padded(self, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """The network body, shared by :meth:`forward` and the ONNX export: ``x`` (B, 3, H, W) in
        [-1, 1] with H and W multiples of :data:`STRIDE` (padded by the caller), ``strength`` a
        (B, 1, 1, 1) tensor of ``x``'s dtype (checked by the caller) -> tanh output, same shape."""
        fused = [f(c, t, strength) for f, c, t in zip(self.fusions, self.content(x), self.texture(x))]
        y = self.bottleneck(fused[3])
        for block, skip in zip(self.decoder, (fused[2], fused[1], fused[0], x)):
            y = block(y, skip)
        return torch.tanh(self.head(y))


# --------------------------------------------------------------------------------------------
# The strength rule and the padding rule (the Cartoonizer, shape buckets, CUDA graphs and the
# ONNX export use these; nothing else decides how a strength is checked or an image padded)
# --------------------------------------------------------------------------------------------
def strength_vector(strength, batch: int, device: Union[str, torch.device, None] = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A float, a scalar / ``(B,)`` tensor or a sequence of ``B`` floats -> a ``(B,)`` tensor on
    ``device`` in ``dtype``. Values must lie in [0, 1]; they are checked for floats, sequences and
    CPU tensors, not for device tensors (checking would synchronise) nor while compiling."""
    if isinstance(strength, numbers.Real):  # float, int, numpy scalar
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        return torch.full((batch,), float(strength), device=device, dtype=dtype)
    if not isinstance(strength, torch.Tensor):
        try:
            strength = torch.as_tensor(strength, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"strength must be a float in [0, 1] or a ({batch},) tensor, "
                             f"got {type(strength).__name__}") from None
    if strength.device.type == "cpu" and not torch.compiler.is_compiling() \
            and not bool(((strength >= 0) & (strength <= 1)).all()):
        raise ValueError(f"strength must lie in [0, 1], got {strength.tolist()}")
    s = strength.to(device=device, dtype=dtype, non_blocking=True)
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"strength must be a scalar or a ({batch},) tensor, got shape {tuple(s.shape)}")
    return s


def padded_side(n: int, multiple: int = STRIDE) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def pad_to_shape(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to (height, width). The rule: reflect when the padding
    is smaller than the side on both axes, else replicate (reflect needs padding < side)."""
    h, w = x.shape[-2:]
    ph, pw = height - h, width - w
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {h}x{w} down to {height}x{width}")
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE) -> torch.Tensor:
    """Pad H and W at the bottom/right to a multiple, by the rule of :func:`pad_to_shape`."""
    h, w = x.shape[-2:]
    return pad_to_shape(x, padded_side(h, multiple), padded_side(w, multiple))


def _pad_index(n, padded, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(reflect, replicate) gather indices that pad a side of ``n`` to ``padded``."""
    i = torch.arange(padded, device=device)
    return torch.where(i < n, i, 2 * (n - 1) - i), i.clamp(max=n - 1)


def pad_to_multiple_traceable(x: torch.Tensor, multiple: int = STRIDE) -> torch.Tensor:
    """:func:`pad_to_multiple` written without Python branches on the shape, for graph export:
    index gathers whose indices and reflect/replicate choice are tensor ops on the runtime size
    (a trace or ``torch.export`` would freeze :func:`pad_to_shape`'s ``if``s to the example's
    branch). The same pixels as :func:`pad_to_multiple` for every size (tested)."""
    h, w = x.shape[-2], x.shape[-1]
    refl_h, rep_h = _pad_index(h, (h + multiple - 1) // multiple * multiple, x.device)
    refl_w, rep_w = _pad_index(w, (w + multiple - 1) // multiple * multiple, x.device)
    # the rule of pad_to_shape: the reflect index of the last padded row/column is >= 0 exactly
    # when the padding is smaller than the side
    reflect = (refl_h[-1] >= 0) & (refl_w[-1] >= 0)
    x = x.index_select(2, torch.where(reflect, refl_h, rep_h))
    return x.index_select(3, torch.where(reflect, refl_w, rep_w))

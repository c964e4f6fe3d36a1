"""The official DCT-Net generator (ModelScope's ``unet_generator`` + guided filter), exact to TF.

This is the network inside ModelScope's DCT-Net model folders (``cartoon_h.pb``, ``cartoon_bg.pb``,
``cartoon_anime_*.pb``, frozen by ``CartoonTranslationExporter``), as a second model family
(``official``) of the registry. :mod:`dctnet_lite.tools.import_modelscope` turns those graphs into
checkpoints of this family. Topology for base channels ``c`` and ``n`` residual blocks
(``modelscope/models/cv/cartoon/network.py``)::

    x0 = lrelu(conv7x7(photo, c))                                    conv_in
    x1 = lrelu(conv3x3(lrelu(conv3x3/2(x0, c)), 2c))                 enc1a (stride 2), enc1b
    r  = lrelu(conv3x3(lrelu(conv3x3/2(x1, 2c)), 4c))                enc2a (stride 2), enc2b
    r  = r + conv3x3(lrelu(conv3x3(r, 4c)), 4c)      (n times)       blocks[i].conv1, .conv2
    y  = lrelu(conv3x3(r, 2c))                                       dec2
    y  = lrelu(conv3x3(lrelu(conv3x3(up2(y) + x1, 2c)), c))          dec1a, dec1b
    y  = conv7x7(lrelu(conv3x3(up2(y) + x0, c)), 3)                  dec0, conv_out
    cartoon = guided_filter(photo, y, r=1, eps=1e-2)

with leaky ReLU 0.2, TF ``'SAME'`` padding (stride 2: the odd pixel of padding goes at the
bottom/right), TF1's legacy ``resize_bilinear`` (``align_corners=False, half_pixel_centers=False``:
``src = dst * in / out``) and a box filter by zero-padded depthwise convolution divided by the box
filter of ones. The graph only accepts sides that are multiples of 4 (the additive skips need
``2 * ceil(ceil(n / 2) / 2) == ceil(n / 2)``), hence :attr:`OfficialGenerator.stride` = 4.

Conventions (the library's, so every tool treats this family like the other one):

- **RGB.** The graphs take BGR. The importer reverses the first conv's input channels and the last
  conv's output channels (and bias), so this module runs on RGB natively; the guided filter works
  per channel, so that is the same function. :func:`official_uint8` takes BGR like the graph.
- **Range.** ``forward`` takes and returns RGB in [-1, 1] (the cartoon is clamped to [-1, 1]).
- **Strength** is the output blend ``(1 - s) * photo + s * cartoon`` (``s = 0`` returns the photo
  exactly, ``s = 1`` the cartoon exactly); a float or a ``(B,)`` tensor in [0, 1].
- **Sizes that are not multiples of 4.** By default (the library's path, also what the
  Cartoonizer does with :attr:`stride`) the input is padded bottom/right to a multiple of 4 by
  :func:`dctnet_lite.model.pad_to_multiple` (reflection) and cropped back: at most 3 extra rows and
  columns of mirrored image, so the borders look like the rest of the picture, and sides that are
  multiples of 4 run exactly the graph. ``official_pad=True`` does what ModelScope's pipeline does
  (``padTo16x``: white padding to the next multiple of 16, bottom/right, then cropped), which
  reproduces the official results bit for bit (:func:`pad_to_16x`) but lets up to 16 rows of white
  bleed into the bottom/right borders through the receptive field and the guided filter.
"""
from __future__ import annotations

import copy
import functools
import dataclasses
import json
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import (_compiling, fused_cpu_available, fused_cpu_inference, pad_to_multiple,  # noqa: F401
                    plain_ops, plain_ops_active, strength_vector)

OFFICIAL_VERSION = 1
STRIDE = 4               #: the graph needs sides that are multiples of 4
OFFICIAL_PAD = 16        #: ModelScope's pipeline pads to multiples of 16 (padTo16x)
LEAKY_SLOPE = 0.2        #: tf.nn.leaky_relu's default alpha
GF_RADIUS = 1
GF_EPS = 1e-2
CLIP = 0.999999          #: the exported graph clips to +-0.999999 before (y + 1) * 127.5 -> uint8
DEFAULT_CHANNELS = 32    #: every released model: c = 32, n = 4
DEFAULT_BLOCKS = 4


def channel_groups(num_blocks: int = DEFAULT_BLOCKS) -> Tuple[str, ...]:
    """Names of the independently sized channel groups, in graph order.

    Groups joined by an additive skip share one entry: ``x0`` is the 7x7 stem's output and the
    second decoder conv at half resolution (``dec1b``, added to ``x0`` after the upsampling);
    ``x1`` the encoder's 2c output and the decoder conv before the first upsampling (``dec2``);
    ``res`` the residual stream (``enc2b`` and every block's second conv). The others are free:
    ``down1``/``down2`` (the stride-2 convs), ``block<i>`` (each block's inner width), ``dec1``
    (``dec1a``) and ``dec0`` (the full-resolution 3x3 before the output conv).
    """
    return ("x0", "down1", "x1", "down2", "res") + tuple(f"block{i}" for i in range(num_blocks)) \
        + ("dec1", "dec0")


def widths_from_channels(c: int, num_blocks: int = DEFAULT_BLOCKS) -> Dict[str, int]:
    """Channel table of the uniform generator of base channels ``c``."""
    t = {"x0": c, "down1": c, "x1": 2 * c, "down2": 2 * c, "res": 4 * c}
    t.update({f"block{i}": 4 * c for i in range(num_blocks)})
    t.update(dec1=2 * c, dec0=c)
    return t


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class OfficialConfig:
    """Architecture of an :class:`OfficialGenerator`.

    ``OfficialConfig(channels=32, num_blocks=4)`` is the released generator. A non-uniform one
    (after pruning) carries ``table`` (every group of :func:`channel_groups`) and ``channels=None``.
    Channel counts are any positive integers (a graph is imported as it is); the registered
    architectures use multiples of 8.
    """

    channels: Optional[int] = DEFAULT_CHANNELS
    num_blocks: int = DEFAULT_BLOCKS
    table: Optional[Mapping[str, int]] = None
    version: int = OFFICIAL_VERSION

    def __post_init__(self):
        if self.version != OFFICIAL_VERSION:
            raise ValueError(f"official generator config version {self.version} is not supported "
                             f"(this dctnet_lite builds version {OFFICIAL_VERSION})")
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative integer, got {self.num_blocks!r}")
        if self.table is None:
            if self.channels is None:
                raise ValueError("OfficialConfig needs base channels or an explicit channel table")
            _check_positive("channels", self.channels)
            return
        t = dict(self.table)
        expected = channel_groups(self.num_blocks)
        missing = [k for k in expected if k not in t]
        extra = [k for k in t if k not in expected]
        if missing or extra:
            raise ValueError(f"channel table does not match {self.num_blocks} residual blocks: "
                             f"missing {missing}, unknown {extra}")
        object.__setattr__(self, "table", {k: _check_positive(f"table[{k!r}]", t[k]) for k in expected})
        if self.channels is not None:
            raise ValueError("give base channels or a channel table, not both")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_channels(cls, c: int, num_blocks: int = DEFAULT_BLOCKS) -> "OfficialConfig":
        return cls(channels=c, num_blocks=num_blocks)

    @classmethod
    def from_table(cls, table: Mapping[str, int], num_blocks: Optional[int] = None) -> "OfficialConfig":
        """An explicit table; collapses to the uniform form when it is one."""
        t = {k: int(v) for k, v in table.items()}
        if num_blocks is None:
            num_blocks = sum(1 for k in t if k.startswith("block"))
        c = t.get("x0")
        if isinstance(c, int) and c > 0 and widths_from_channels(c, num_blocks) == t:
            return cls(channels=c, num_blocks=num_blocks)
        return cls(channels=None, num_blocks=num_blocks, table=t)

    # -- views --------------------------------------------------------------------------------
    @property
    def widths(self) -> Dict[str, int]:
        """The full channel table (derived from ``channels`` when uniform)."""
        if self.table is not None:
            return dict(self.table)
        return widths_from_channels(self.channels, self.num_blocks)

    @property
    def is_uniform(self) -> bool:
        return self.table is None

    def describe(self) -> str:
        """``official c32 n4`` or ``official non-uniform (x0/x1/res = 24/48/120) n4``."""
        if self.is_uniform:
            return f"official c{self.channels} n{self.num_blocks}"
        t = self.widths
        return f"official non-uniform (x0/x1/res = {t['x0']}/{t['x1']}/{t['res']}) n{self.num_blocks}"

    def diff(self, other) -> str:
        """Where two configs differ, in words (for mismatch errors)."""
        if not isinstance(other, OfficialConfig):
            return f"{self.describe()} vs a {type(other).__name__}"
        diffs = []
        if self.num_blocks != other.num_blocks:
            diffs.append(f"num_blocks: {self.num_blocks} vs {other.num_blocks}")
        if self.is_uniform and other.is_uniform:
            if self.channels != other.channels:
                diffs.append(f"channels: {self.channels} vs {other.channels}")
        else:
            a, b = self.widths, other.widths
            diffs += [f"{k}: {a.get(k)} vs {b.get(k)}" for k in channel_groups(max(self.num_blocks, other.num_blocks))
                      if a.get(k) != b.get(k)]
        return ", ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "") if diffs else "identical"

    def to_dict(self) -> dict:
        d = {"version": self.version, "channels": self.channels, "num_blocks": self.num_blocks}
        if self.table is not None:
            d["table"] = dict(self.table)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> "OfficialConfig":
        known = {"version", "channels", "num_blocks", "table"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown official generator config fields {sorted(unknown)}")
        return cls(channels=d.get("channels"), num_blocks=d.get("num_blocks", DEFAULT_BLOCKS),
                   table=d.get("table"), version=d.get("version", OFFICIAL_VERSION))

    def __eq__(self, other) -> bool:  # a table equal to the uniform one is the same architecture
        if not isinstance(other, OfficialConfig):
            return NotImplemented
        return self.num_blocks == other.num_blocks and self.widths == other.widths \
            and self.version == other.version

    def __hash__(self) -> int:
        return hash((self.version, self.num_blocks, tuple(sorted(self.widths.items()))))


# ---------------------------------------------------------------------------------------------
# TF's operations, exactly
# ---------------------------------------------------------------------------------------------
def same_pads(n: int, k: int, s: int) -> Tuple[int, int]:
    """TF 'SAME' padding of one side of length ``n``: (before, after); the odd pixel goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _side(n) -> Optional[int]:
    return n if isinstance(n, int) else None  # symbolic (export): the caller's sides are even


def conv_same(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (built with padding 0) with TF 'SAME' zero padding computed from the input size."""
    k, s = conv.kernel_size[0], conv.stride[0]
    if plain_ops_active():
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = same_pads(h, k, s), same_pads(w, k, s)
        return conv(F.pad(x, (pw[0], pw[1], ph[0], ph[1])))
    h, w = _side(x.shape[-2]), _side(x.shape[-1])
    ph = same_pads(h, k, s) if h is not None else same_pads(2, k, s)
    pw = same_pads(w, k, s) if w is not None else same_pads(2, k, s)
    if s == 1 and ph[0] == ph[1] == pw[0] == pw[1]:
        # symmetric: the convolution's own zero padding is the same arithmetic, without a copy
        if conv.out_channels <= 4 and k == conv.kernel_size[1] == 2 * ph[0] + 1 >= 5 \
                and conv.bias is not None and _cpu_fast(x):
            return _conv_few_out(x, conv)
        return F.conv2d(x, conv.weight, conv.bias, 1, ph[0])
    return conv(F.pad(x, (pw[0], pw[1], ph[0], ph[1])))


def _eager(x: torch.Tensor) -> bool:
    """Inference in eager mode: not traced or scripted (export), not under :func:`plain_ops`, and
    gradients off (``torch.no_grad`` / ``torch.inference_mode``: the fast paths write into
    buffers in place, which autograd refuses). Only then do the fast eager paths below run;
    otherwise the plain formulation (the same function) does, so training just works."""
    return not (plain_ops_active() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.is_grad_enabled()
                or _compiling())


def conv_fused(x: torch.Tensor, conv: nn.Conv2d, act: bool = True,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`conv_same` + bias (+ leaky ReLU when ``act``) as one oneDNN call on CPU, or
    ``residual += conv_same(x)`` written into ``residual`` (the residual blocks' skip) when
    ``residual`` is given. The same arithmetic as the unfused ops (bias, then the activation or
    the add, in fp32); ``x`` channels_last. Inference only (see :func:`~dctnet_lite.model.fused_cpu_inference`)."""
    k, s = conv.kernel_size[0], conv.stride[0]
    ph, pw = same_pads(x.shape[-2], k, s), same_pads(x.shape[-1], k, s)
    if ph[0] != ph[1] or pw[0] != pw[1] or ph[0] != pw[0]:  # stride 2: the odd pixel goes at the end
        return conv_padded(F.pad(x, (pw[0], pw[1], ph[0], ph[1])), conv, 0, act, residual)
    return conv_padded(x, conv, ph[0], act, residual)


def conv_padded(x: torch.Tensor, conv: nn.Conv2d, pad: int, act: bool = True,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`conv_fused` with an explicit symmetric zero padding ``pad`` (the fused generator
    arranges its own padding: see :meth:`OfficialGenerator._generator_fused`)."""
    s = conv.stride[0]
    pad = [pad, pad]
    mk = torch.ops.mkldnn
    if residual is not None:
        return mk._convolution_pointwise_(residual, x, conv.weight, conv.bias, pad, [s, s], [1, 1], 1,
                                          "add", None, None, [], None)
    if act:
        return mk._convolution_pointwise(x, conv.weight, conv.bias, pad, [s, s], [1, 1], 1,
                                         "leaky_relu", [LEAKY_SLOPE], "")
    return mk._convolution_pointwise(x, conv.weight, conv.bias, pad, [s, s], [1, 1], 1, "none", [], "")


def _cpu_fast(x: torch.Tensor) -> bool:
    """The CPU forward path: channels_last activations and the few-output 7x7 conv below."""
    return x.device.type == "cpu" and _eager(x)


def upsample2x_legacy(x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TF1 ``resize_bilinear(x, 2 * size)`` (align_corners=False, half_pixel_centers=False),
    plus ``skip`` when given (the decoder's additive skip, fused into the same buffer).

    ``src = dst * in / out = dst / 2``: even outputs copy input ``i``, odd ones are
    ``a + (b - a) * 0.5`` with ``b`` the next input clamped at the last one (so ``a`` itself);
    TF lerps along the width first, then the height, in that formula. In eager mode the result
    is written channels_last (NHWC) into one buffer: the same arithmetic, without the stack and
    reshape copies."""
    if not _eager(x) or x.shape[-1] < 2 or x.shape[-2] < 2:
        def along(t: torch.Tensor, dim: int) -> torch.Tensor:
            nxt = torch.cat([t.narrow(dim, 1, t.shape[dim] - 1), t.narrow(dim, t.shape[dim] - 1, 1)], dim)
            odd = t + (nxt - t) * 0.5
            y = torch.stack([t, odd], dim=dim + 1)
            shape = list(t.shape)
            shape[dim] = -1
            return y.reshape(shape)

        y = along(along(x, 3), 2)
        return y if skip is None else y + skip
    n, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1)                                            # NHWC view
    out = torch.empty((n, 2 * h, 2 * w, c), dtype=x.dtype, device=x.device)
    o = out.view(n, h, 2, w, 2, c)
    rows = o[:, :, 0]                                                    # even rows: (n, h, w, 2, c)
    rows[:, :, :, 0].copy_(t)                                            # even columns: a
    odd = rows[:, :, :-1, 1]
    torch.sub(t[:, :, 1:], t[:, :, :-1], out=odd)                        # (b - a)
    odd.mul_(0.5).add_(t[:, :, :-1])                                     # a + (b - a) * 0.5
    rows[:, :, -1, 1].copy_(t[:, :, -1])                                 # clamped: a
    r = o[:, :, 0]                                                       # width-lerped rows
    odd_rows = o[:, :-1, 1]
    torch.sub(r[:, 1:], r[:, :-1], out=odd_rows)
    odd_rows.mul_(0.5).add_(r[:, :-1])
    o[:, -1, 1].copy_(r[:, -1])
    y = out.permute(0, 3, 1, 2)                                          # (n, c, 2h, 2w), channels_last
    if skip is not None:
        y.add_(skip)
    return y


def _zero_tail(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero the rows from ``h`` and the columns from ``w`` of ``t`` in place; returns ``t``."""
    t[..., h:, :].zero_()
    t[..., :h, w:].zero_()
    return t


@functools.lru_cache(maxsize=16)
def _bilinear_kernel(channels: int, dtype: torch.dtype) -> torch.Tensor:
    """The depthwise 3x3 kernel ``[.5, 1, .5]^T [.5, 1, .5]`` of a stride-2 transposed conv that
    is TF1's legacy x2 ``resize_bilinear`` (see :func:`upsample2x_deconv`)."""
    k1 = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float32)
    return (k1[:, None] * k1[None, :]).expand(channels, 1, 3, 3).contiguous().to(dtype)


def upsample2x_deconv(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """:func:`upsample2x_legacy` ``(x) + skip`` for CPU inference, as one depthwise stride-2
    transposed conv (oneDNN) and one add: even outputs take ``x[i]``, odd ones
    ``(x[i] + x[i + 1]) / 2`` with the last input replicated (TF's clamp), then cropped to
    ``2 * size``. The same values as TF's ``a + (b - a) * 0.5`` up to the last bit of the
    rounding; about 2.5x faster than the strided formulation at 1024 px. Channels_last in and
    out, in ``skip``'s dtype.

    With a bf16 ``skip`` the transposed conv runs in float32 (oneDNN's bf16 depthwise transposed
    conv is the slowest way), its result is rounded to bf16 once and ``skip`` is added there:
    a float32 + bf16 add is a mixed-dtype loop, 5x slower than the conversion and a bf16 add
    together (measured at 1024 px, 24 and 32 channels; eval/reports/cpu_bf16/)."""
    n, c, h, w = x.shape
    xp = F.pad(x.float(), (0, 1, 0, 1), mode="replicate")
    y = F.conv_transpose2d(xp, _bilinear_kernel(c, torch.float32), None, 2, 1, 0, c)[..., :2 * h, :2 * w]
    if skip.dtype != torch.float32:
        return y.to(skip.dtype).add_(skip)
    return torch.add(y, skip)


def _conv_few_out(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A stride-1 k x k 'SAME' conv with few output channels (the 7x7 to RGB), the same sum in
    another order: one (1 x k) conv to ``out * k`` channels (one per output channel and kernel
    row, zero rows above and below from the conv's own padding), then the k rows shifted and
    added. oneDNN vectorises over output channels; 3 of them waste most of each vector."""
    k = conv.kernel_size[0]
    p = k // 2
    oc, ic = conv.weight.shape[:2]
    h = x.shape[-2]
    w1 = conv.weight.permute(0, 2, 1, 3).reshape(oc * k, ic, 1, k)      # [c * k + ky, ci, 1, kx]
    z = F.conv2d(x, w1, None, 1, (p, p)).unflatten(1, (oc, k))          # (n, oc, k, h + 2p, w)
    out = z[:, :, 0, 0:h] + conv.bias.view(1, oc, 1, 1)
    for ky in range(1, k):
        out.add_(z[:, :, ky, ky:ky + h])
    return out


@functools.lru_cache(maxsize=16)
def _row_sum_kernel(out_channels: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Grouped (k x 1) kernel that sums row ``ky`` of channel ``c * k + ky`` shifted by ``ky``:
    the second half of :func:`_conv_few_out_grouped`."""
    g = torch.zeros((out_channels, k, k, 1), dtype=torch.float32)
    for ky in range(k):
        g[:, ky, ky, 0] = 1.0
    return g.to(dtype)


def _conv_few_out_grouped(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """:func:`_conv_few_out` for CPU inference with the k shifted rows summed (and the bias
    added) by one grouped (k x 1) conv of 0/1 weights instead of k strided adds: one read of the
    intermediate instead of k, which is what bounds it at 1024 px. Channels_last result in
    ``x``'s dtype."""
    k = conv.kernel_size[0]
    p = k // 2
    oc, ic = conv.weight.shape[:2]
    w1 = conv.weight.permute(0, 2, 1, 3).reshape(oc * k, ic, 1, k)      # [c * k + ky, ci, 1, kx]
    z = F.conv2d(x, w1, None, 1, (p, p))                                # (n, oc * k, h + 2p, w)
    return F.conv2d(z, _row_sum_kernel(oc, k, z.dtype), conv.bias, 1, 0, 1, oc)


def box_filter(x: torch.Tensor, r: int = GF_RADIUS) -> torch.Tensor:
    """ModelScope's ``tf_box_filter``: depthwise conv with a (2r+1)^2 kernel of ``1/(2r+1)^2``
    (float32) and zero 'SAME' padding."""
    c = x.shape[1]
    k = 2 * r + 1
    weight = torch.full((c, 1, k, k), float(np.float32(1.0 / k ** 2)), dtype=x.dtype, device=x.device)
    return F.conv2d(x, weight, None, 1, r, 1, c)


@functools.lru_cache(maxsize=2)
def _box_count(h: int, w: int, r: int, c: int) -> torch.Tensor:
    """``box_filter(ones(1, 1, h, w), r)`` on the CPU (the guided filter's normaliser) as a
    contiguous (1, h, w, c) tensor: one value per pixel, repeated for the ``c`` channels so that
    the divisions below run on contiguous memory. Per size, the last 2 kept (at most 96 MB at
    2048 x 2048 and c = 3, the CPU's largest untiled call)."""
    n = box_filter(torch.ones((1, 1, h, w), dtype=torch.float32), r)
    return n.view(1, h, w, 1).expand(1, h, w, c).contiguous()


def _guided_filter_nhwc(x: torch.Tensor, y: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """:func:`guided_filter` for CPU inference, in float32: the same operations in the same order
    (identical values), with each stage's inputs stacked along the **batch** dimension of one
    channels_last buffer (``[x, y, x*y, x*x]``, then ``[a, b]``): each box-filter stage is one
    depthwise conv (oneDNN) and every elementwise operation reads and writes contiguous
    (h, w, c) blocks, where a stack along the channels made them 3-element strided runs (about
    1.7x slower at 1024 px). Returns the result channels_last."""
    n, c, h, w = x.shape
    size = n * c * h * w
    count = _box_count(h, w, r, c)                                       # (1, h, w, c)

    def stacked(k: int) -> torch.Tensor:   # k channels_last (n, c, h, w) blocks, one after another
        return torch.empty(k * size, dtype=torch.float32, device=x.device).as_strided(
            (k, n, c, h, w), (size, c * h * w, 1, w * c, c))

    def box_mean(t: torch.Tensor) -> torch.Tensor:   # (k, n, c, h, w) -> box means, same layout
        k = t.shape[0]
        m = box_filter(t.reshape(k * n, c, h, w), r)                     # a view: channels_last
        m.permute(0, 2, 3, 1).div_(count)
        return m.view(k, n, c, h, w)

    st = stacked(4)
    xt, yt = st[0].copy_(x), st[1].copy_(y)                              # float32 channels_last
    torch.mul(xt, yt, out=st[2])
    torch.mul(xt, xt, out=st[3])
    mean_x, mean_y, mean_xy, mean_xx = box_mean(st).unbind(0)
    ab = stacked(2)
    a, b = ab.unbind(0)
    tmp = torch.mul(mean_x, mean_y)
    torch.sub(mean_xy, tmp, out=a)                                       # cov_xy
    torch.mul(mean_x, mean_x, out=tmp)
    torch.sub(mean_xx, tmp, out=tmp).add_(eps)                           # var_x + eps
    a.div_(tmp)
    torch.mul(a, mean_x, out=tmp)
    torch.sub(mean_y, tmp, out=b)
    mean_a, mean_b = box_mean(ab).unbind(0)
    return torch.mul(mean_a, xt).add_(mean_b)


def guided_filter(x: torch.Tensor, y: torch.Tensor, r: int = GF_RADIUS, eps: float = GF_EPS) -> torch.Tensor:
    """ModelScope's ``guided_filter(x, y, r, eps)`` (loss.py), per channel, NCHW.

    The same arithmetic as the graph's; the box filters of one stage run as one depthwise conv
    over the concatenated channels (a per-channel filter: identical values, fewer passes). On the
    CPU inference path it runs in float32 through :func:`_guided_filter_nhwc`."""
    if x.device.type == "cpu" and _eager(x) and x.dim() == 4:
        return _guided_filter_nhwc(x, y, r, eps)
    c = x.shape[1]
    n = box_filter(torch.ones_like(x[:, :1]), r)
    means = box_filter(torch.cat([x, y, x * y, x * x], 1), r) / n
    mean_x, mean_y, mean_xy, mean_xx = means.split(c, 1)
    cov_xy = mean_xy - mean_x * mean_y
    var_x = mean_xx - mean_x * mean_x
    a = cov_xy / (var_x + eps)
    b = mean_y - a * mean_x
    mean_ab = box_filter(torch.cat([a, b], 1), r) / n
    return mean_ab[:, :c] * x + mean_ab[:, c:]


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------
class _ResBlock(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, mid, 3)
        self.conv2 = nn.Conv2d(mid, channels, 3)

    def forward(self, x):
        return x + conv_same(F.leaky_relu(conv_same(x, self.conv1), LEAKY_SLOPE, inplace=True), self.conv2)


#: (module name, TF scope) of every conv in graph order; block convs are inserted at "blocks"
CONV_ORDER = ("conv_in", "enc1a", "enc1b", "enc2a", "enc2b", "blocks", "dec2", "dec1a", "dec1b",
              "dec0", "conv_out")


class OfficialGenerator(nn.Module):
    """ModelScope's DCT-Net generator with its guided filter. Input and output: RGB in [-1, 1].

    ``forward(x, strength=1.0, official_pad=False)`` takes any size (see the module docstring for
    the padding); ``forward_padded(x, strength)`` is the body on sides that are multiples of
    :attr:`stride` with ``strength`` a (B, 1, 1, 1) tensor (the Cartoonizer and the ONNX export
    call it); :meth:`cartoon` is the graph's function itself (no strength, no clamp).
    """

    stride = STRIDE

    def __init__(self, config: Union[OfficialConfig, int, None] = None):
        super().__init__()
        if config is None:
            config = OfficialConfig()
        elif isinstance(config, int) and not isinstance(config, bool):
            config = OfficialConfig.from_channels(config)
        self.config = config
        t = config.widths
        self.conv_in = nn.Conv2d(3, t["x0"], 7)
        self.enc1a = nn.Conv2d(t["x0"], t["down1"], 3, stride=2)
        self.enc1b = nn.Conv2d(t["down1"], t["x1"], 3)
        self.enc2a = nn.Conv2d(t["x1"], t["down2"], 3, stride=2)
        self.enc2b = nn.Conv2d(t["down2"], t["res"], 3)
        self.blocks = nn.ModuleList(_ResBlock(t["res"], t[f"block{i}"]) for i in range(config.num_blocks))
        self.dec2 = nn.Conv2d(t["res"], t["x1"], 3)
        self.dec1a = nn.Conv2d(t["x1"], t["dec1"], 3)
        self.dec1b = nn.Conv2d(t["dec1"], t["x0"], 3)
        self.dec0 = nn.Conv2d(t["x0"], t["dec0"], 3)
        self.conv_out = nn.Conv2d(t["dec0"], 3, 7)

    def convs(self):
        """Every conv in graph order (the order of the TF graph's Conv, Conv_1, ... scopes)."""
        out = []
        for name in CONV_ORDER:
            if name == "blocks":
                for b in self.blocks:
                    out += [b.conv1, b.conv2]
            else:
                out.append(getattr(self, name))
        return out

    def generator(self, x: torch.Tensor) -> torch.Tensor:
        """``unet_generator``: the raw output before the guided filter."""
        if fused_cpu_inference(x):
            return self._generator_fused(x.contiguous(memory_format=torch.channels_last))
        act = lambda t: F.leaky_relu(t, LEAKY_SLOPE, inplace=True)  # noqa: E731  (on fresh conv outputs)
        x0 = act(conv_same(x, self.conv_in))
        x1 = act(conv_same(act(conv_same(x0, self.enc1a)), self.enc1b))
        y = act(conv_same(act(conv_same(x1, self.enc2a)), self.enc2b))
        for block in self.blocks:
            y = block(y)
        y = act(conv_same(y, self.dec2))
        y = act(conv_same(upsample2x_legacy(y, x1), self.dec1a))
        y = act(conv_same(y, self.dec1b))
        y = act(conv_same(upsample2x_legacy(y, x0), self.dec0))
        return conv_same(y, self.conv_out)

    def _generator_fused(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`generator` on the CPU inference path: every conv fused with its bias and leaky
        ReLU (or, in the residual blocks, with the skip's add, written in place) by oneDNN, no
        separate activation passes; the upsampling as :func:`upsample2x_deconv`; the 7x7 to RGB as
        :func:`_conv_few_out_grouped`. bf16 weights and input run the convs in bf16 (oneDNN
        accumulates in fp32; the upsampling in fp32 with its skip added in bf16, the 7x7 to RGB
        as one conv: the fastest there); the guided filter always runs in fp32."""
        f, g = conv_fused, conv_padded
        h, w = x.shape[-2:]
        if h % 4 == 0 and w % 4 == 0:
            # TF's stride-2 'SAME' pads one zero row/column at the end. Instead of copying x0 and
            # x1 into padded buffers for enc1a / enc2a, the layers before them compute a few
            # rows/columns more (on a zero-padded 3-channel input) and those are set to zero:
            # x0p[:h, :w] is x0 exactly, x0p[h:, w:] = 0, and likewise x1p at half size.
            x0p = _zero_tail(g(F.pad(x, (0, 3, 0, 3)), self.conv_in, 3), h, w)      # (h+3, w+3)
            a = _zero_tail(g(x0p, self.enc1a, 0), h // 2, w // 2)                    # (h/2+1, ..)
            x1p = _zero_tail(g(a, self.enc1b, 1), h // 2, w // 2)                    # (h/2+1, ..)
            y = f(g(x1p, self.enc2a, 0), self.enc2b)                                 # (h/4, w/4)
            x0, x1 = x0p[..., :h, :w], x1p[..., :h // 2, :w // 2]
        else:
            x0 = f(x, self.conv_in)
            x1 = f(f(x0, self.enc1a), self.enc1b)
            y = f(f(x1, self.enc2a), self.enc2b)
        for block in self.blocks:
            y = f(f(y, block.conv1), block.conv2, residual=y)
        y = f(y, self.dec2)
        up = upsample2x_deconv                  # in float32, then the add in x's dtype
        y = f(f(up(y, x1), self.dec1a), self.dec1b)
        y = f(up(y, x0), self.dec0)
        if x.dtype != torch.float32:  # AMX / AVX512-BF16 run the plain 7x7 to RGB fastest
            return f(y, self.conv_out, act=False)
        return _conv_few_out_grouped(y, self.conv_out)

    def cartoon(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's function: ``guided_filter(x, generator(x), r=1, eps=1e-2)``, unclamped.

        On CPU it runs channels_last (oneDNN's fastest layout for these convs, measured in
        eval/reports/official_tf/); the result is channels_last then, the same values."""
        if _cpu_fast(x) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return guided_filter(x, self.generator(x))

    def forward_padded(self, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W) in [-1, 1], H and W multiples of :attr:`stride`; ``strength`` a
        (B, 1, 1, 1) tensor of ``x``'s dtype -> ``(1 - s) * x + s * clamp(cartoon, -1, 1)``."""
        if _cpu_fast(x):
            x = x.contiguous(memory_format=torch.channels_last)
            y = self.cartoon(x).clamp_(-1.0, 1.0)                        # float32, a fresh tensor
            if bool((strength == 1).all()):
                return y
            return torch.lerp(x.float(), y, strength.float())           # exact at s = 0 and s = 1
        y = self.cartoon(x).clamp(-1.0, 1.0)
        return (1.0 - strength) * x + strength * y

    def forward(self, x: torch.Tensor, strength: Union[float, torch.Tensor] = 1.0,
                official_pad: bool = False) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"OfficialGenerator expects a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = strength_vector(strength, x.shape[0], x.device, x.dtype).view(-1, 1, 1, 1)
        xp = pad_white_16x(x) if official_pad else pad_to_multiple(x, STRIDE)
        y = self.forward_padded(xp, s)
        return y[..., :h, :w]


# ---------------------------------------------------------------------------------------------
# ModelScope's pipeline conventions
# ---------------------------------------------------------------------------------------------
def official_padded_side(h: int, w: int) -> Tuple[int, int]:
    """``padTo16x``'s size: unchanged when both sides are multiples of 16, else **both** sides go to
    ``(side // 16 + 1) * 16`` (so a side that already is a multiple of 16 gains 16 rows of white
    when the other is not: ModelScope's quirk, kept for bit-exact results)."""
    if h % OFFICIAL_PAD == 0 and w % OFFICIAL_PAD == 0:
        return h, w
    return (h // OFFICIAL_PAD + 1) * OFFICIAL_PAD, (w // OFFICIAL_PAD + 1) * OFFICIAL_PAD


def pad_to_16x(image: np.ndarray) -> Tuple[np.ndarray, int, int]:
    """ModelScope's ``padTo16x`` on an HxWx3 array: (padded with 255 bottom/right, h, w)."""
    h, w = image.shape[:2]
    nh, nw = official_padded_side(h, w)
    if (nh, nw) == (h, w):
        return image, h, w
    out = np.full((nh, nw) + image.shape[2:], 255, dtype=image.dtype)
    out[:h, :w] = image
    return out, h, w


def pad_white_16x(x: torch.Tensor) -> torch.Tensor:
    """:func:`pad_to_16x` on a (B, 3, H, W) tensor in [-1, 1] (white = 1.0 = 255 / 127.5 - 1)."""
    h, w = x.shape[-2:]
    nh, nw = official_padded_side(h, w)
    if (nh, nw) == (h, w):
        return x
    return F.pad(x, (0, nw - w, 0, nh - h), value=1.0)


def official_uint8(model: OfficialGenerator, bgr: np.ndarray, official_pad: bool = False,
                   precision: str = "fp32") -> np.ndarray:
    """The exported graph's uint8 path: ``bgr`` HxWx3 BGR, float (or uint8) in 0..255 ->
    ``cast_uint8((clip(cartoon, +-0.999999) + 1) * 127.5)``, HxWx3 BGR uint8 (truncation).

    Like the graph, it needs sides that are multiples of 4; ``official_pad=True`` does what
    ModelScope's pipeline does instead (``padTo16x`` with white, run, crop back).
    ``precision="bf16"`` runs the generator in bf16 (the guided filter stays fp32): how far the
    fast path lands from TensorFlow's output; fp32 is the exact one."""
    a = np.asarray(bgr)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"official_uint8 expects an HxWx3 BGR image, got shape {a.shape}")
    h, w = a.shape[:2]
    if official_pad:
        a, _, _ = pad_to_16x(a)
    elif h % STRIDE or w % STRIDE:
        raise ValueError(f"the official graph needs sides that are multiples of {STRIDE}, got {h}x{w}; "
                         f"pass official_pad=True to pad as ModelScope's pipeline does")
    from .precision import PRECISIONS, check_precision

    dtype = PRECISIONS[check_precision(precision, tuple(PRECISIONS))]
    p = next(model.parameters())
    net = model if p.dtype == dtype else copy.deepcopy(model).to(dtype)
    x = torch.from_numpy(np.ascontiguousarray(a[:, :, ::-1], dtype=np.float32))  # BGR -> RGB
    x = x.permute(2, 0, 1)[None].to(p.device, torch.float32)
    with torch.no_grad():
        x = x / 127.5 - 1.0
        y = net.cartoon(x.to(dtype)).float()
        y = (y.clamp(-CLIP, CLIP) + 1.0) * 127.5
        out = y.to(torch.uint8)  # truncation toward zero, as tf.cast
    return out[0].permute(1, 2, 0).flip(-1)[:h, :w].cpu().numpy()

"""Import ModelScope's DCT-Net graphs (TF1 frozen GraphDefs) as ``official`` checkpoints.

``import_modelscope(source, out)`` reads

- a ModelScope model folder: each generator graph in it (``cartoon_h.pb`` / ``cartoon_anime_h.pb``
  for heads, ``cartoon_bg.pb`` / ``cartoon_anime_bg.pb`` for whole images) becomes one checkpoint
  in the folder ``out`` (``head.safetensors``, ``background.safetensors``); the style is taken
  from the folder's ``configuration.json`` where it says;
- one ``.pb`` file: ``out`` is the ``.safetensors`` path;
- a model id (``damo/cv_unet_person-image-cartoon_compound-models``), fetched with ModelScope's
  ``snapshot_download`` when the hub is reachable; offline it fails at once, naming the id and
  the folder to pass instead.

The GraphDef is parsed **without TensorFlow**: TF's protobuf messages ship in tensorboard
(``tensorboard.compat.proto``), tensors are decoded with numpy. The graph is matched on structure
from ``output_image`` back to ``input_image`` (the exporter's node names): the exporter's pre- and
post-processing, ModelScope's guided filter, and ``unet_generator``, accepting the op spellings of
both TF eras (``Add``/``AddV2``; leaky ReLU as ``LeakyRelu`` or ``Mul`` + ``Maximum``; ``Identity``
chains). Base channels and block count are read from the graph (an unevenly sized graph becomes an
explicit channel table). Anything else (a missing, extra or renamed node, another op, a wrong
shape or constant, a truncated or non-protobuf file) fails with a one-line
:class:`GraphImportError` naming what is wrong, and nothing is written.

Channel order: the graphs take BGR; the importer reverses the first conv's input channels and the
last conv's output channels, so the checkpoint runs on RGB like every dctnet_lite network.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..official import GF_EPS, LEAKY_SLOPE, OfficialConfig, OfficialGenerator

PathLike = Union[str, os.PathLike]

INPUT_NODE = "input_image"
OUTPUT_NODE = "output_image"
SCOPE = "generator"
#: generator graph file -> (role, output name); the anime spelling of older folders too
GRAPH_FILES = {
    "cartoon_h.pb": ("head", "head"),
    "cartoon_bg.pb": ("background", "background"),
    "cartoon_anime_h.pb": ("head", "anime_head"),
    "cartoon_anime_bg.pb": ("background", "anime_background"),
}
HUB_PROBE_TIMEOUT_S = 3.0
_ADD = ("Add", "AddV2")
_COMMUTATIVE = {"Add", "AddV2", "Mul", "Maximum", "Minimum"}
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# TF DataType enum values used here
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT64 = 1, 2, 3, 4, 9
_NP_DTYPES = {DT_FLOAT: "<f4", DT_DOUBLE: "<f8", DT_INT32: "<i4", DT_INT64: "<i8", DT_UINT8: "u1"}
_VALUE_FIELDS = {DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val",
                 DT_INT64: "int64_val", DT_UINT8: "int_val"}


class GraphImportError(ValueError):
    """The file is not a DCT-Net generator graph this importer can read (one line)."""


# ---------------------------------------------------------------------------------------------
# GraphDef reading
# ---------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg.replace("tensorboard.GraphDef", "tensorflow.GraphDef")


def parse_graphdef(data: bytes, label: str = "graph"):
    """Bytes -> ``tensorflow.GraphDef`` message (tensorboard's copy of TF's protos)."""
    try:
        from tensorboard.compat.proto import graph_pb2
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        raise GraphImportError("reading TensorFlow graphs needs tensorboard's protobuf messages: "
                               "pip install tensorboard") from None
    from google.protobuf.message import DecodeError

    if not data:
        raise GraphImportError(f"{label} is empty, not a TensorFlow GraphDef")
    gd = graph_pb2.GraphDef()
    try:
        gd.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise GraphImportError(f"{label} is not a readable TensorFlow GraphDef (truncated, or not a "
                               f"protobuf file: {_first_line(e)})") from None
    if not len(gd.node):
        raise GraphImportError(f"{label} parses as a protobuf but holds no graph nodes: not a "
                               f"TensorFlow GraphDef")
    return gd


def tensor_to_numpy(t, where: str) -> np.ndarray:
    """A ``TensorProto`` -> numpy array (tensor_content or the typed value lists)."""
    if t.dtype not in _NP_DTYPES:
        raise GraphImportError(f"{where}: unsupported tensor dtype {t.dtype}")
    shape = tuple(int(d.size) for d in t.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise GraphImportError(f"{where}: constant with unknown shape {list(shape)}")
    count = int(np.prod(shape)) if shape else 1
    dt = np.dtype(_NP_DTYPES[t.dtype])
    if t.tensor_content:
        if len(t.tensor_content) != count * dt.itemsize:
            raise GraphImportError(f"{where}: tensor data is {len(t.tensor_content)} bytes for shape "
                                   f"{list(shape)} ({count * dt.itemsize} expected): corrupt graph")
        return np.frombuffer(t.tensor_content, dtype=dt).reshape(shape).copy()
    vals = np.asarray(getattr(t, _VALUE_FIELDS[t.dtype]), dtype=dt.newbyteorder("="))
    if vals.size == 0:
        return np.zeros(shape, dt.newbyteorder("="))
    if vals.size == count:
        return vals.reshape(shape)
    if vals.size < count:  # TF repeats the last value
        return np.concatenate([vals, np.full(count - vals.size, vals[-1])]).reshape(shape)
    raise GraphImportError(f"{where}: {vals.size} values for shape {list(shape)}: corrupt graph")


@dataclass
class _Conv:
    scope: str
    weight: np.ndarray      #: HWIO as in the graph
    bias: np.ndarray
    stride: int
    weight_node: str = ""
    bias_node: str = ""


class _Matcher:
    """Walks a GraphDef from its output, marking every node a DCT-Net generator accounts for."""

    def __init__(self, gd, label: str):
        self.label = label
        self.nodes = {}
        for n in gd.node:
            if n.name in self.nodes:
                raise self.error(f"node {n.name!r} is defined twice")
            self.nodes[n.name] = n
        self.used: set = set()

    def error(self, msg: str) -> GraphImportError:
        return GraphImportError(f"{self.label}: {msg}")

    # -- nodes --------------------------------------------------------------------------------
    def get(self, name: str, user: Optional[str] = None):
        if name.startswith("^"):
            raise self.error(f"node {user!r} has a control dependency on {name[1:]!r}, which a "
                             f"DCT-Net generator graph does not have")
        base, _, port = name.partition(":")
        if port not in ("", "0"):
            raise self.error(f"node {user!r} reads output {port} of {base!r}; a DCT-Net generator "
                             f"only reads first outputs")
        n = self.nodes.get(base)
        if n is None:
            raise self.error(f"missing node {base!r}" + (f" (an input of {user!r})" if user else ""))
        self.used.add(base)
        return n

    def inputs(self, n, count: int) -> list:
        """The ``count`` inputs of ``n``, through Identity chains."""
        if len(n.input) != count:
            raise self.error(f"node {n.name!r} ({n.op}) has {len(n.input)} inputs where a DCT-Net "
                             f"generator's has {count}")
        out = []
        for s in n.input:
            m = self.get(s, n.name)
            while m.op == "Identity":
                if len(m.input) != 1:
                    raise self.error(f"Identity node {m.name!r} has {len(m.input)} inputs")
                m = self.get(m.input[0], m.name)
            out.append(m)
        return out

    def expect(self, n, ops, what: str):
        ops = (ops,) if isinstance(ops, str) else tuple(ops)
        if n.op not in ops:
            raise self.error(f"node {n.name!r} is a {n.op} where a DCT-Net generator has {what} "
                             f"({'/'.join(ops)})")
        return n

    def attr_i(self, n, key, default=0) -> int:
        return int(n.attr[key].i) if key in n.attr else default

    def const(self, n, what: str) -> np.ndarray:
        self.expect(n, "Const", what)
        return tensor_to_numpy(n.attr["value"].tensor, f"{self.label}: node {n.name!r}")

    def scalar(self, n, value: float, what: str) -> None:
        v = self.const(n, what)
        want = np.asarray(value, dtype=v.dtype)
        if v.size != 1 or v.reshape(()) != want:
            got = ", ".join(f"{float(e):.7g}" for e in v.reshape(-1)[:4]) + (" ..." if v.size > 4 else "")
            raise self.error(f"node {n.name!r} is [{got}] where a DCT-Net generator has {what} = {value:g}")

    def float_op(self, n, dtype: int = DT_FLOAT) -> None:
        if "T" in n.attr and n.attr["T"].type != dtype:
            raise self.error(f"node {n.name!r} ({n.op}) computes in dtype {n.attr['T'].type}, not "
                             f"{'float32' if dtype == DT_FLOAT else dtype}")

    # -- binary ops (either operand order for the commutative ones) ---------------------------
    def binary(self, n, ops, what: str, first=None, dtype: int = DT_FLOAT) -> Tuple:
        """Inputs (a, b) of a binary op; with ``first(node) -> bool`` and a commutative op, the
        operand for which ``first`` holds is returned first."""
        self.expect(n, ops, what)
        self.float_op(n, dtype)
        a, b = self.inputs(n, 2)
        if first is not None and n.op in _COMMUTATIVE and not first(a) and first(b):
            a, b = b, a
        return a, b

    def same(self, a, b, what: str) -> None:
        if a.name != b.name:
            raise self.error(f"{what}: found {a.name!r} ({a.op}) where {b.name!r} ({b.op}) belongs")

    # -- building blocks ----------------------------------------------------------------------
    def leaky(self, n, what: str):
        """Leaky ReLU 0.2 (``LeakyRelu``, or ``Maximum(Mul(0.2, x), x)``) -> its input node."""
        self.expect(n, ("LeakyRelu", "Maximum"), f"a leaky ReLU ({what})")
        self.float_op(n)
        if n.op == "LeakyRelu":
            (x,) = self.inputs(n, 1)
            alpha = n.attr["alpha"].f if "alpha" in n.attr else 0.2
            if np.float32(alpha) != np.float32(LEAKY_SLOPE):
                raise self.error(f"leaky ReLU {n.name!r} has alpha {alpha}, not {LEAKY_SLOPE}")
            return x
        a, b = self.inputs(n, 2)
        if a.op != "Mul" and b.op == "Mul":
            a, b = b, a
        self.expect(a, "Mul", f"alpha * x of a leaky ReLU ({what})")
        self.float_op(a)
        p, q = self.inputs(a, 2)
        if p.op != "Const" and q.op == "Const":
            p, q = q, p
        self.scalar(p, LEAKY_SLOPE, f"the leaky ReLU slope ({what})")
        self.same(q, b, f"leaky ReLU {n.name!r}")
        return b

    def conv(self, n, k: int, stride: int, what: str) -> Tuple[object, _Conv]:
        """``BiasAdd(Conv2D(x, W), b)`` -> (x, the conv's weights)."""
        self.expect(n, "BiasAdd", f"a conv's bias add ({what})")
        self.float_op(n)
        c2d, bnode = self.inputs(n, 2)
        self.expect(c2d, "Conv2D", f"a {k}x{k} conv ({what})")
        self.float_op(c2d)
        for node in (n, c2d):
            fmt = node.attr["data_format"].s.decode() if "data_format" in node.attr else "NHWC"
            if fmt != "NHWC":
                raise self.error(f"node {node.name!r} uses data_format {fmt}, not NHWC")
        x, wnode = self.inputs(c2d, 2)
        strides = list(c2d.attr["strides"].list.i)
        if strides != [1, stride, stride, 1]:
            raise self.error(f"conv {c2d.name!r} has strides {strides}, expected [1, {stride}, {stride}, 1] ({what})")
        pad = c2d.attr["padding"].s.decode() if "padding" in c2d.attr else ""
        if pad != "SAME":
            raise self.error(f"conv {c2d.name!r} has padding {pad!r}, expected 'SAME'")
        dil = list(c2d.attr["dilations"].list.i) if "dilations" in c2d.attr else []
        if dil and dil != [1, 1, 1, 1]:
            raise self.error(f"conv {c2d.name!r} has dilations {dil}")
        w = self.const(wnode, f"the weights of a conv ({what})").astype(np.float32)
        b = self.const(bnode, f"the biases of a conv ({what})").astype(np.float32)
        if w.ndim != 4 or w.shape[:2] != (k, k):
            want = [k, k] + (list(w.shape[2:]) if w.ndim == 4 else ["cin", "cout"])
            raise self.error(f"{wnode.name} has shape {list(w.shape)}, expected {want} ({what})")
        if b.shape != (w.shape[3],):
            raise self.error(f"{bnode.name} has shape {list(b.shape)}, expected [{w.shape[3]}] ({what})")
        scope = wnode.name[: -len("/weights")] if wnode.name.endswith("/weights") else wnode.name
        return x, _Conv(scope, w, b, stride, wnode.name, bnode.name)

    def strided_slice(self, n, begin, end, strides, shrink: int, what: str):
        self.expect(n, "StridedSlice", what)
        x, b, e, s = self.inputs(n, 4)
        got = [self.const(c, f"a slice bound ({what})").reshape(-1).tolist() for c in (b, e, s)]
        masks = {k: self.attr_i(n, k) for k in ("begin_mask", "end_mask", "ellipsis_mask",
                                                 "new_axis_mask", "shrink_axis_mask")}
        if got != [list(begin), list(end), list(strides)] or masks["shrink_axis_mask"] != shrink \
                or masks["ellipsis_mask"] or masks["new_axis_mask"] or masks["begin_mask"] or masks["end_mask"]:
            raise self.error(f"node {n.name!r} is not {what}")
        return x

    def shape_dim(self, n, dim: int, what: str):
        """``tf.shape(t)[dim]`` -> t."""
        shp = self.strided_slice(n, [dim], [dim + 1], [1], 1, f"tf.shape(...)[{dim}] ({what})")
        self.expect(shp, "Shape", f"tf.shape ({what})")
        (t,) = self.inputs(shp, 1)
        return t

    def pack(self, n, count: int, what: str) -> list:
        self.expect(n, "Pack", what)
        if self.attr_i(n, "axis") != 0:
            raise self.error(f"node {n.name!r} packs along axis {self.attr_i(n, 'axis')}")
        return self.inputs(n, count)

    def box(self, n, what: str, channels: Optional[int] = None):
        """ModelScope's ``tf_box_filter(x, r=1)``: depthwise 3x3 of 1/9, 'SAME' -> x."""
        self.expect(n, "DepthwiseConv2dNative", f"the guided filter's box filter ({what})")
        self.float_op(n)
        x, k = self.inputs(n, 2)
        kern = self.const(k, f"the box filter kernel ({what})")
        if kern.ndim != 4 or kern.shape[:2] != (3, 3) or kern.shape[3] != 1 \
                or (channels is not None and kern.shape[2] != channels) \
                or not np.all(kern == np.float32(1.0 / 9.0)):
            raise self.error(f"{k.name} (shape {list(kern.shape)}) is not the r=1 box kernel of "
                             f"1/9 over {channels or 'C'} channels ({what})")
        if list(n.attr["strides"].list.i) != [1, 1, 1, 1] or n.attr["padding"].s.decode() != "SAME":
            raise self.error(f"box filter {n.name!r} is not stride 1 'SAME'")
        return x

    def mean(self, n, ones, what: str):
        """``box(t) / N`` -> t (``N`` the box filter of ones, node ``ones``)."""
        num, den = self.binary(n, "RealDiv", f"box(...) / N ({what})")
        self.same(den, ones, f"{n.name!r} divides by another node than N ({what})")
        return self.box(num, what)

    def product(self, n, what: str, first=None, dtype: int = DT_FLOAT) -> Tuple:
        return self.binary(n, "Mul", what, first, dtype)


# ---------------------------------------------------------------------------------------------
# The DCT-Net graph
# ---------------------------------------------------------------------------------------------
@dataclass
class ParsedGraph:
    """What the importer read from one graph."""

    config: OfficialConfig
    convs: List[_Conv]                     #: in graph order (Conv, Conv_1, ..., Conv_9)
    input_node: str = INPUT_NODE
    output_node: str = OUTPUT_NODE
    producer: int = 0
    nodes: int = 0
    ops: Dict[str, int] = field(default_factory=dict)


def _expected_scopes(num_blocks: int) -> List[str]:
    names = [f"{SCOPE}/Conv"] + [f"{SCOPE}/Conv_{i}" for i in range(1, 5)]
    for i in range(num_blocks):
        names += [f"{SCOPE}/block_{i}/conv1", f"{SCOPE}/block_{i}/conv2"]
    return names + [f"{SCOPE}/Conv_{i}" for i in range(5, 10)]


def _upsample(m: _Matcher, n, what: str):
    """``resize_bilinear(t, (2 * shape(t)[1], 2 * shape(t)[2]))`` (legacy) -> t."""
    m.expect(n, "ResizeBilinear", f"a bilinear x2 upsampling ({what})")
    m.float_op(n)
    for key in ("align_corners", "half_pixel_centers"):
        if key in n.attr and n.attr[key].b:
            raise m.error(f"{n.name!r} has {key}=True; DCT-Net's generator uses TF1's legacy "
                          f"resize_bilinear (align_corners=False, half_pixel_centers=False)")
    t, size = m.inputs(n, 2)
    for dim, part in zip((1, 2), m.pack(size, 2, f"the upsampling size ({what})")):
        a, b = m.product(part, f"2 * the size of the upsampled tensor ({what})",
                         first=lambda x: x.op != "Const", dtype=DT_INT32)
        m.scalar(b, 2, f"the upsampling factor ({what})")
        m.same(m.shape_dim(a, dim, what), t, f"the size of upsampling {n.name!r}")
    return t


def _generator(m: _Matcher, y) -> Tuple[object, List[_Conv]]:
    """``unet_generator`` from its output ``y`` -> (its input node, convs in graph order)."""
    x, conv_out = m.conv(y, 7, 1, "the output conv")
    x, dec0 = m.conv(m.leaky(x, "after the full-resolution decoder conv"), 3, 1, "the full-resolution decoder conv")
    up, x0 = m.binary(x, _ADD, "the skip addition up(x) + x0", first=lambda t: t.op == "ResizeBilinear")
    x = _upsample(m, up, "to full resolution")
    x, dec1b = m.conv(m.leaky(x, "after the decoder's second half-resolution conv"), 3, 1, "the decoder's c-channel conv")
    x, dec1a = m.conv(m.leaky(x, "after the decoder's first half-resolution conv"), 3, 1, "the decoder's 2c-channel conv")
    up, x1 = m.binary(x, _ADD, "the skip addition up(x) + x1", first=lambda t: t.op == "ResizeBilinear")
    x = _upsample(m, up, "to half resolution")
    r, dec2 = m.conv(m.leaky(x, "after the conv that ends the residual blocks"), 3, 1, "the conv after the residual blocks")
    blocks = []
    while r.op in _ADD:
        body, skip = m.binary(r, _ADD, "a residual block", first=lambda t: t.op == "BiasAdd")
        scope = r.name.rsplit("/", 1)[0]
        if body.op != "BiasAdd":
            raise m.error(f"missing conv {scope}/conv2: {r.name} adds {body.name!r} ({body.op}) and "
                          f"{skip.name!r} ({skip.op}), where a residual block adds its input to its "
                          f"second 3x3 conv")
        h, conv2 = m.conv(body, 3, 1, f"the second conv of residual block {scope}")
        h, conv1 = m.conv(m.leaky(h, f"inside residual block {scope}"), 3, 1, f"the first conv of residual block {scope}")
        m.same(h, skip, f"residual block {scope} does not add its own input")
        blocks[:0] = [conv1, conv2]
        r = skip
    x, enc2b = m.conv(m.leaky(r, "after the encoder's 4c conv"), 3, 1, "the encoder's 4c conv")
    x, enc2a = m.conv(m.leaky(x, "after the second stride-2 conv"), 3, 2, "the second stride-2 conv")
    m.same(x, x1, "the skip x1 is not the input of the second stride-2 conv")
    x, enc1b = m.conv(m.leaky(x, "after the encoder's 2c conv"), 3, 1, "the encoder's 2c conv")
    x, enc1a = m.conv(m.leaky(x, "after the first stride-2 conv"), 3, 2, "the first stride-2 conv")
    m.same(x, x0, "the skip x0 is not the input of the first stride-2 conv")
    x, conv_in = m.conv(m.leaky(x, "after the 7x7 input conv"), 7, 1, "the 7x7 input conv")
    return x, [conv_in, enc1a, enc1b, enc2a, enc2b] + blocks + [dec2, dec1a, dec1b, dec0, conv_out]


def _guided_filter(m: _Matcher, n) -> Tuple[object, object]:
    """ModelScope's ``guided_filter(x, y, r=1, eps=1e-2)`` from its output -> (x, y)."""
    is_const = lambda t: t.op == "Const"  # noqa: E731
    prod, mean_b = m.binary(n, _ADD, "mean_A * x + mean_b", first=lambda t: t.op == "Mul")
    mean_a, x = m.product(prod, "mean_A * x", first=lambda t: t.op == "RealDiv")
    # N: the box filter of tf.ones((1, H, W, 1)) with H, W from tf.shape(x)
    ones_box = m.binary(mean_a, "RealDiv", "box(A) / N")[1]
    fill = m.box(ones_box, "N = box(ones)", channels=1)
    m.expect(fill, "Fill", "tf.ones((1, H, W, 1)) for N")
    shape, one = m.inputs(fill, 2)
    m.scalar(one, 1.0, "the value of tf.ones")
    d0, h, w, d3 = m.pack(shape, 4, "the shape (1, H, W, 1) of tf.ones")
    m.scalar(d0, 1, "the batch of tf.ones")
    m.scalar(d3, 1, "the channels of tf.ones")
    m.same(m.shape_dim(h, 1, "the height of N"), x, "N's height is not the input's")
    m.same(m.shape_dim(w, 2, "the width of N"), x, "N's width is not the input's")

    a = m.mean(mean_a, ones_box, "mean_A")
    b = m.mean(mean_b, ones_box, "mean_b")
    cov, var_eps = m.binary(a, "RealDiv", "A = cov_xy / (var_x + eps)")
    var, eps = m.binary(var_eps, _ADD, "var_x + eps", first=lambda t: not is_const(t))
    m.scalar(eps, GF_EPS, "the guided filter's eps")
    mean_y, a_mx = m.binary(b, "Sub", "b = mean_y - A * mean_x")
    a2, mean_x = m.product(a_mx, "A * mean_x", first=lambda t: t.name == a.name)
    m.same(a2, a, "b = mean_y - A * mean_x reads another A")
    m.same(m.mean(mean_x, ones_box, "mean_x"), x, "mean_x is not the mean of the input")
    y = m.mean(mean_y, ones_box, "mean_y")
    # cov_xy = box(x * y) / N - mean_x * mean_y
    bxy, mxy = m.binary(cov, "Sub", "cov_xy = box(x*y)/N - mean_x*mean_y")
    p, q = m.product(m.mean(bxy, ones_box, "box(x*y)/N"), "x * y", first=lambda t: t.name == x.name)
    m.same(p, x, "cov_xy: x * y")
    m.same(q, y, "cov_xy: x * y")
    p, q = m.product(mxy, "mean_x * mean_y", first=lambda t: t.name == mean_x.name)
    m.same(p, mean_x, "cov_xy: mean_x * mean_y")
    m.same(q, mean_y, "cov_xy: mean_x * mean_y")
    # var_x = box(x * x) / N - mean_x * mean_x
    bxx, mxx = m.binary(var, "Sub", "var_x = box(x*x)/N - mean_x*mean_x")
    p, q = m.product(m.mean(bxx, ones_box, "box(x*x)/N"), "x * x")
    m.same(p, x, "var_x: x * x")
    m.same(q, x, "var_x: x * x")
    p, q = m.product(mxx, "mean_x * mean_x")
    m.same(p, mean_x, "var_x: mean_x * mean_x")
    m.same(q, mean_x, "var_x: mean_x * mean_x")
    return x, y


def _input_chain(m: _Matcher, x):
    """``input_image[:, :, :][tf.newaxis] / 127.5 - 1`` from its end -> the placeholder."""
    is_const = lambda t: t.op == "Const"  # noqa: E731
    div, one = m.binary(x, "Sub", "input / 127.5 - 1")
    m.scalar(one, 1.0, "the 1 of input / 127.5 - 1")
    t, scale = m.binary(div, "RealDiv", "input / 127.5", first=lambda t: not is_const(t))
    m.scalar(scale, 127.5, "the input scale")
    new_axes = 0
    while t.op == "StridedSlice":
        src, b, e, s = m.inputs(t, 4)
        bounds = [m.const(c, "a slice bound of the input").reshape(-1) for c in (b, e, s)]
        masks = {k: m.attr_i(t, k) for k in ("begin_mask", "end_mask", "ellipsis_mask",
                                              "new_axis_mask", "shrink_axis_mask")}
        if masks["shrink_axis_mask"] or masks["ellipsis_mask"] or np.any(bounds[2] != 1) \
                or not (len(bounds[0]) == len(bounds[1]) == len(bounds[2])):
            raise m.error(f"node {t.name!r} is not the input's [:, :, :][tf.newaxis]")
        for i in range(len(bounds[0])):
            bit = 1 << i
            if masks["new_axis_mask"] & bit:
                new_axes += 1
            elif not ((masks["begin_mask"] & bit or bounds[0][i] == 0) and masks["end_mask"] & bit):
                raise m.error(f"node {t.name!r} crops the input; a DCT-Net graph takes it whole")
        t = src
    if new_axes != 1:
        raise m.error(f"the input reaches the generator with {new_axes} new axes, not one batch axis")
    m.expect(t, "Placeholder", f"the input placeholder {INPUT_NODE!r}")
    if t.name != INPUT_NODE:
        raise m.error(f"the input placeholder is named {t.name!r}, not {INPUT_NODE!r} (renamed node?)")
    if t.attr["dtype"].type != DT_FLOAT:
        raise m.error(f"the input placeholder {t.name!r} is not float32")
    return t


def read_graph(data: bytes, label: str = "graph") -> ParsedGraph:
    """Parse and match one frozen DCT-Net graph (bytes of a ``.pb``) -> :class:`ParsedGraph`."""
    gd = parse_graphdef(data, label)
    m = _Matcher(gd, label)
    if OUTPUT_NODE not in m.nodes:
        raise m.error(f"missing node {OUTPUT_NODE!r} (the exported graph's output)")
    if INPUT_NODE not in m.nodes:
        raise m.error(f"missing node {INPUT_NODE!r} (the exported graph's input)")
    out = m.get(OUTPUT_NODE)
    m.expect(out, "Cast", "the final cast to uint8")
    if out.attr["DstT"].type != DT_UINT8 or out.attr["SrcT"].type != DT_FLOAT:
        raise m.error(f"{OUTPUT_NODE!r} does not cast float32 to uint8")
    (t,) = m.inputs(out, 1)
    is_const = lambda n: n.op == "Const"  # noqa: E731
    t, s = m.product(t, "(y + 1) * 127.5", first=lambda n: not is_const(n))
    m.scalar(s, 127.5, "the output scale")
    t, one = m.binary(t, _ADD, "y + 1", first=lambda n: not is_const(n))
    m.scalar(one, 1.0, "the 1 of (y + 1)")
    t, lo = m.binary(t, "Maximum", "clip_by_value's lower bound", first=lambda n: not is_const(n))
    m.scalar(lo, -0.999999, "the clip's lower bound")
    t, hi = m.binary(t, "Minimum", "clip_by_value's upper bound", first=lambda n: not is_const(n))
    m.scalar(hi, 0.999999, "the clip's upper bound")
    t = m.strided_slice(t, [0], [1], [1], 1, "the [0] that drops the batch axis")
    x, y = _guided_filter(m, t)
    gen_in, convs = _generator(m, y)
    m.same(gen_in, x, "the generator's input is not the guided filter's guide")
    _input_chain(m, x)

    extra = [n for n in gd.node if n.name not in m.used]
    if extra:
        listed = ", ".join(f"{n.name!r} ({n.op})" for n in extra[:4]) + (" ..." if len(extra) > 4 else "")
        raise m.error(f"{len(extra)} extra node(s) that are not part of a DCT-Net generator: {listed}")

    num_blocks = (len(convs) - 10) // 2
    for conv, want in zip(convs, _expected_scopes(num_blocks)):
        for got, expect in ((conv.weight_node, want + "/weights"), (conv.bias_node, want + "/biases")):
            if got != expect:
                raise m.error(f"conv {'weights' if expect.endswith('weights') else 'biases'} {got!r} where "
                              f"a DCT-Net generator has {expect!r} (renamed node?)")
    config = _config_from_convs(m, convs, num_blocks)
    ops: Dict[str, int] = {}
    for n in gd.node:
        ops[n.op] = ops.get(n.op, 0) + 1
    return ParsedGraph(config, convs, producer=int(gd.versions.producer), nodes=len(gd.node),
                       ops=dict(sorted(ops.items())))


def _config_from_convs(m: _Matcher, convs: List[_Conv], num_blocks: int) -> OfficialConfig:
    """The channel table, checking every conv's input channels against its producer."""
    cout = [c.weight.shape[3] for c in convs]
    names = ["conv_in", "enc1a", "enc1b", "enc2a", "enc2b"]
    names += [f"block{i}.conv{j}" for i in range(num_blocks) for j in (1, 2)]
    names += ["dec2", "dec1a", "dec1b", "dec0", "conv_out"]
    idx = {n: i for i, n in enumerate(names)}
    res = cout[idx["enc2b"]]
    table = {"x0": cout[idx["conv_in"]], "down1": cout[idx["enc1a"]], "x1": cout[idx["enc1b"]],
             "down2": cout[idx["enc2a"]], "res": res}
    for i in range(num_blocks):
        table[f"block{i}"] = cout[idx[f"block{i}.conv1"]]
    table.update(dec1=cout[idx["dec1a"]], dec0=cout[idx["dec0"]])
    # (conv, expected input channels, expected output channels or None)
    want = {"conv_in": (3, None), "enc1a": (table["x0"], None), "enc1b": (table["down1"], None),
            "enc2a": (table["x1"], None), "enc2b": (table["down2"], None),
            "dec2": (res, table["x1"]), "dec1a": (table["x1"], None),
            "dec1b": (table["dec1"], table["x0"]), "dec0": (table["x0"], None),
            "conv_out": (table["dec0"], 3)}
    for i in range(num_blocks):
        want[f"block{i}.conv1"] = (res, None)
        want[f"block{i}.conv2"] = (table[f"block{i}"], res)
    for name, (cin, co) in want.items():
        conv = convs[idx[name]]
        shape = list(conv.weight.shape)
        expect = shape[:2] + [cin, co if co is not None else shape[3]]
        if shape != expect:
            raise m.error(f"{conv.scope}/weights has shape {shape}, expected {expect}")
    try:
        return OfficialConfig.from_table(table, num_blocks)
    except ValueError as e:
        raise m.error(str(e)) from None


def build_model(parsed: ParsedGraph) -> OfficialGenerator:
    """An :class:`OfficialGenerator` with the graph's weights (HWIO -> OIHW; BGR -> RGB)."""
    model = OfficialGenerator(parsed.config)
    convs = model.convs()
    last = len(convs) - 1
    with torch.no_grad():
        for i, (mod, c) in enumerate(zip(convs, parsed.convs)):
            w = c.weight.transpose(3, 2, 0, 1)        # HWIO -> OIHW
            b = c.bias
            if i == 0:
                w = w[:, ::-1]                        # the graph's input is BGR
            if i == last:
                w, b = w[::-1], b[::-1]               # and so is its output
            mod.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            mod.bias.copy_(torch.from_numpy(np.ascontiguousarray(b)))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Sources: a file, a folder, a model id
# ---------------------------------------------------------------------------------------------
def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GraphImportError(f"cannot read {path}: {e.strerror or e}") from None


def import_graph(data: bytes, label: str) -> Tuple[OfficialGenerator, ParsedGraph]:
    parsed = read_graph(data, label)
    return build_model(parsed), parsed


def _style_from_config(folder: Path) -> Optional[str]:
    """The style named in a ModelScope folder's configuration.json, if it names one."""
    cfg = folder / "configuration.json"
    if not cfg.is_file():
        return None
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict):
        return None
    for section in (d, d.get("model"), d.get("pipeline"), d.get("preprocessor")):
        if isinstance(section, dict):
            for key in ("style", "cartoon_style"):
                if isinstance(section.get(key), str) and section[key]:
                    return section[key]
    return None


def _style_from_model_id(model_id: Optional[str]) -> Optional[str]:
    """``damo/cv_unet_person-image-cartoon-3d_compound-models`` -> ``3d``; the plain one -> anime."""
    if not model_id:
        return None
    mt = re.search(r"person-image-cartoon(?:-([\w-]+?))?_compound-models", model_id)
    if not mt:
        return None
    return mt.group(1) or "anime"


def _provenance(path: Path, data: bytes, parsed: ParsedGraph, *, model_id: Optional[str],
                style: Optional[str], role: Optional[str]) -> dict:
    prov = {
        "source": "modelscope",
        "source_file": path.name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
        "input_node": parsed.input_node,
        "output_node": parsed.output_node,
        "tf_graph_producer": parsed.producer,
        "channel_order": "RGB (the graph's BGR: first conv's input and last conv's output reversed)",
        "importer": "dctnet_lite.tools.import_modelscope",
    }
    if model_id:
        prov["model_id"] = model_id
    if style:
        prov["style"] = style
    if role:
        prov["role"] = role
    return prov


@dataclass
class Imported:
    """One written checkpoint."""

    path: Path
    source_file: str
    role: Optional[str]
    config: OfficialConfig
    provenance: dict


def _folder_graphs(folder: Path) -> List[Tuple[Path, str, str]]:
    found = [(folder / f, role, name) for f, (role, name) in GRAPH_FILES.items() if (folder / f).is_file()]
    if not found:
        others = sorted(p.name for p in folder.glob("*.pb"))
        raise GraphImportError(f"{folder} holds no DCT-Net generator graph (looked for "
                               f"{', '.join(GRAPH_FILES)}" + (f"; found {', '.join(others)}" if others else "")
                               + ")")
    roles = [r for _, r, _ in found]
    # plain names when each role appears once
    return [(p, role, role if roles.count(role) == 1 else name) for p, role, name in found]


def _import_folder(folder: Path, out: Path, model_id: Optional[str], style: Optional[str]) -> List[Imported]:
    if out.exists() and not out.is_dir():
        raise GraphImportError(f"{out} exists and is not a folder; importing a model folder writes "
                               f"one checkpoint per graph into a folder")
    style = style or _style_from_config(folder) or _style_from_model_id(model_id)
    todo = []
    for path, role, name in _folder_graphs(folder):  # read and check every graph before writing
        data = _read_file(path)
        model, parsed = import_graph(data, path.name)
        todo.append((out / f"{name}.safetensors", path, data, model, parsed, role))
    written = []
    for target, path, data, model, parsed, role in todo:
        prov = _provenance(path, data, parsed, model_id=model_id, style=style, role=role)
        save_checkpoint(target, model, provenance=prov)
        written.append(Imported(target, path.name, role, parsed.config, prov))
    return written


def _import_file(path: Path, out: Path, model_id: Optional[str], style: Optional[str]) -> List[Imported]:
    if out.is_dir():
        raise GraphImportError(f"{out} is a folder; for one graph give the .safetensors file to write")
    if out.suffix != ".safetensors":
        raise GraphImportError(f"output {out} must be a .safetensors path")
    data = _read_file(path)
    model, parsed = import_graph(data, path.name)
    role = GRAPH_FILES.get(path.name, (None,))[0]
    if style is None and path.parent.is_dir():
        style = _style_from_config(path.parent)
    prov = _provenance(path, data, parsed, model_id=model_id, style=style or _style_from_model_id(model_id),
                       role=role)
    save_checkpoint(out, model, provenance=prov)
    return [Imported(out, path.name, role, parsed.config, prov)]


def hub_host() -> Tuple[str, int]:
    """The ModelScope hub's host and port (``$MODELSCOPE_DOMAIN``, as ModelScope reads it)."""
    dom = os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn")
    dom = re.sub(r"^\w+://", "", dom).split("/", 1)[0]
    host, _, port = dom.partition(":")
    return host, int(port) if port.isdigit() else 443


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers HTTPS at all (any HTTP status counts), within ``timeout`` seconds
    in all (name resolution included: the probe runs in a thread that is not waited for longer)."""
    import urllib.error
    import urllib.request

    host, port = hub_host()
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            req = urllib.request.Request(f"https://{host}:{port}/", method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            ok.append(True)
        except urllib.error.HTTPError:  # it answered
            ok.append(True)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _download(model_id: str) -> Path:
    offline_hint = (f"download it where there is network (modelscope download --model {model_id} "
                    f"--local_dir DIR) and pass that folder instead: dctnet-lite import-modelscope DIR -o OUT")
    if not hub_reachable():
        host, port = hub_host()
        raise GraphImportError(f"cannot fetch ModelScope model {model_id!r}: the hub ({host}:{port}) "
                               f"is not reachable (offline?); {offline_hint}")
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise GraphImportError(f"fetching ModelScope model {model_id!r} needs the modelscope package "
                               f"(pip install 'dctnet-lite[modelscope]'); or {offline_hint}") from None
    try:
        return Path(snapshot_download(model_id))
    except Exception as e:  # network and hub errors come in many types
        msg = str(e).splitlines()[0] if str(e) else ""
        raise GraphImportError(f"could not download ModelScope model {model_id!r} ({type(e).__name__}: "
                               f"{msg}); {offline_hint}") from None


def import_modelscope(source: PathLike, out: PathLike, *, model_id: Optional[str] = None,
                      style: Optional[str] = None) -> List[Imported]:
    """Import a ModelScope DCT-Net folder, one ``.pb`` graph, or a model id (see the module
    docstring) -> the checkpoints written. ``style`` overrides the one read from the folder."""
    src, dst = Path(os.fspath(source)).expanduser(), Path(os.fspath(out)).expanduser()
    if src.is_dir():
        return _import_folder(src, dst, model_id, style)
    if src.is_file():
        return _import_file(src, dst, model_id, style)
    s = os.fspath(source)
    if _MODEL_ID.match(s) and not s.endswith(".pb"):
        folder = _download(s)
        return _import_folder(folder, dst, model_id or s, style)
    raise GraphImportError(f"{s} is neither a ModelScope model folder, a .pb graph, nor a model id "
                           f"(owner/name)")

"""Faces for the compound system: a 5-point detector, the official alignment and a soft mask.

Three parts, each usable alone:

- **Detection** (:class:`MTCNNDetector`): faces with a box, a score and 5 landmarks (the eye on
  the image's left, the other eye, the nose tip, the mouth corners left and right), from
  facenet-pytorch's MTCNN, whose weights ship inside its wheel (``facenet_pytorch/data/*.pt``,
  read here with ``torch.load(weights_only=True)``: nothing is unpickled, nothing downloaded).
  The package is imported lazily, when a detector is built: ``import dctnet_lite`` (and this
  module) never imports it. Install: ``pip install 'dctnet-lite[face]'`` and
  ``pip install --no-deps facenet-pytorch`` (its pins, torch<2.3 and numpy<2, clash with
  today's torch; its code runs on them unchanged). Any callable ``rgb -> List[Face]`` can stand
  in for it (a test's fixed landmarks, another detector).
- **Alignment** (:func:`alignment`): the similarity transform of ModelScope's DCT-Net pipeline,
  ``warp_and_crop_face(ratio=0.75, reference_pts=get_reference_facial_points(default_square=True),
  crop_size=(288, 288))`` from ``modelscope/models/cv/cartoon/mtcnn_pytorch/src/align_trans.py``
  and ``matlab_cp2tform.py``, computed the same way (including the way it picks between the
  plain and the mirrored fit: see :func:`similarity_transform`), as 2x3 matrices in OpenCV's
  convention, and :func:`warp_affine`, a bilinear ``cv2.warpAffine`` in torch (no OpenCV).
- **Mask** (:func:`soft_mask`): our own feathered head mask in crop coordinates (ModelScope
  ships a picture, ``alpha.jpg``; this is a formula): 1 on the face, a raised-cosine fall-off to
  exactly 0, and 0 everywhere near the crop's border, so a pasted head has no seam and pixels
  outside the mask are the background model's, unchanged.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

#: ModelScope's 5 reference points in a 96x112 crop (align_trans.REFERENCE_FACIAL_POINTS, dx=dy=1).
REFERENCE_FACIAL_POINTS = np.array([
    [30.29459953 + 1, 51.69630051 + 1],  # eye on the image's left
    [65.53179932 + 1, 51.50139999 + 1],  # eye on the image's right
    [48.02519989 + 1, 71.73660278 + 1],  # nose tip
    [33.54930115 + 1, 92.3655014 + 1],   # mouth corner, left
    [62.72990036 + 1, 92.20410156 + 1],  # mouth corner, right
], dtype=np.float64)
DEFAULT_CROP_SIZE = (96, 112)
#: The official pipeline's alignment: ratio, crop side (px).
OFFICIAL_RATIO = 0.75
CROP = 288
#: Faces whose box's shorter side is below this (px, in the image the networks see) are left
#: to the background model; also the detector's smallest face (its pyramid starts there).
DEFAULT_MIN_FACE = 40

FACE_INSTALL = "pip install 'dctnet-lite[face]' && pip install --no-deps facenet-pytorch"


class FaceDetectorUnavailable(ImportError):
    """The face detector's package is not installed (message: how to install it)."""


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x0, y0, x1, y1) and ``points`` (5, 2) as (x, y) in pixels of
    the image it was found in, ``score`` in [0, 1]."""

    box: Tuple[float, float, float, float]
    points: np.ndarray
    score: float = 1.0

    @property
    def size(self) -> float:
        """The box's shorter side (px): what :data:`DEFAULT_MIN_FACE` is compared with."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def scaled(self, sx: float, sy: Optional[float] = None) -> "Face":
        """This face in an image scaled by (sx, sy)."""
        sy = sx if sy is None else sy
        x0, y0, x1, y1 = self.box
        pts = np.asarray(self.points, dtype=np.float64) * np.array([sx, sy])
        return Face((x0 * sx, y0 * sy, x1 * sx, y1 * sy), pts, self.score)


# ---------------------------------------------------------------------------------------------
# Alignment: ModelScope's geometry
# ---------------------------------------------------------------------------------------------
def reference_points(default_square: bool = True) -> np.ndarray:
    """``get_reference_facial_points(default_square=...)`` with no output size or padding: the
    96x112 reference points, shifted to the centre of a 112x112 square when ``default_square``."""
    pts = REFERENCE_FACIAL_POINTS.copy()
    if default_square:
        crop = np.array(DEFAULT_CROP_SIZE, dtype=np.float64)
        pts += (crop.max() - crop) / 2
    return pts


def crop_reference(ratio: float = OFFICIAL_RATIO, crop: int = CROP, default_square: bool = True) -> np.ndarray:
    """The 5 points a face is mapped to in a ``crop`` x ``crop`` crop, as ``warp_and_crop_face``
    computes them (in float32, as it does): scaled by ``ratio`` about (56, 56), then by crop/112."""
    ref = np.float32(reference_points(default_square))
    ref = (ref - np.float32(112 / 2)) * np.float32(ratio) + np.float32(112 / 2)
    ref *= np.float32(crop / 112.0)
    return ref


def _nonreflective(uv: np.ndarray, xy: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """matlab_cp2tform.findNonreflectiveSimilarity: 3x3 T (uv -> xy, row-vector form) and Tinv."""
    m = xy.shape[0]
    x, y = xy[:, 0].reshape(-1, 1), xy[:, 1].reshape(-1, 1)
    a = np.vstack((np.hstack((x, y, np.ones((m, 1)), np.zeros((m, 1)))),
                   np.hstack((y, -x, np.zeros((m, 1)), np.ones((m, 1))))))
    u = np.vstack((uv[:, 0].reshape(-1, 1), uv[:, 1].reshape(-1, 1)))
    if np.linalg.matrix_rank(a) < 4:
        raise ValueError("the face landmarks are degenerate (fewer than two distinct points)")
    r = np.squeeze(np.linalg.lstsq(a, u, rcond=None)[0])
    sc, ss, tx, ty = r
    t_inv = np.array([[sc, -ss, 0], [ss, sc, 0], [tx, ty, 1]])
    t = np.linalg.inv(t_inv)
    t[:, 2] = np.array([0, 0, 1])
    return t, t_inv


def _fwd(t: np.ndarray, uv: np.ndarray) -> np.ndarray:
    return np.hstack((uv, np.ones((uv.shape[0], 1)))).dot(t)[:, :-1]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """ModelScope's ``get_similarity_transform_for_cv2(src, dst)`` (reflective): 2x3 matrices
    ``M`` (src -> dst) and ``M_inv`` (dst -> src) in OpenCV's convention.

    As there, both a plain and a mirrored similarity are fitted and the one with the smaller
    residual is kept; and as there, the residuals are measured against the *mirrored* target
    points (``findSimilarity`` mirrors ``xy`` in place, so the comparison that follows sees the
    mirrored array). This is reproduced so the matrices are the official ones; the inverse is
    exact either way, so a mirrored pick only mirrors the crop the head model sees.
    """
    uv = np.asarray(src, dtype=np.float32)
    xy = np.array(dst, dtype=np.float32)
    t1, t1_inv = _nonreflective(uv, xy)
    xy[:, 0] = -xy[:, 0]  # the official aliasing: xyR = xy; xyR[:, 0] = -xyR[:, 0]
    t2r, _ = _nonreflective(uv, xy)
    t2 = t2r.dot(np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    norm1 = np.linalg.norm(_fwd(t1, uv) - xy)
    norm2 = np.linalg.norm(_fwd(t2, uv) - xy)
    t, t_inv = (t1, t1_inv) if norm1 <= norm2 else (t2, np.linalg.inv(t2))
    return t[:, 0:2].T.copy(), t_inv[:, 0:2].T.copy()


def alignment(points, ratio: float = OFFICIAL_RATIO, crop: int = CROP) -> Tuple[np.ndarray, np.ndarray]:
    """(M, M_inv): the official face alignment of 5 landmarks (``points``, (5, 2) as (x, y)):
    ``M`` maps image pixels to the ``crop`` x ``crop`` aligned crop, ``M_inv`` back (2x3,
    ``cv2.warpAffine`` convention)."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape == (2, 5):
        pts = pts.T
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"face landmarks must be 5 finite (x, y) points, got shape {pts.shape}")
    return similarity_transform(pts, crop_reference(ratio, crop))


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (``cv2.invertAffineTransform``)."""
    full = np.vstack([np.asarray(m, dtype=np.float64), [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def warp_affine(src: torch.Tensor, m: np.ndarray, out_hw: Tuple[int, int], *, border: float = 0.0,
                origin: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``cv2.warpAffine(src, m, (w, h), INTER_LINEAR, BORDER_CONSTANT, border)`` in torch.

    ``src``: (C, H, W) or (B, C, H, W) float; ``m``: 2x3, mapping source pixels to destination
    pixels (pixel centres at integer coordinates); ``out_hw``: (h, w) of the result. ``origin``
    (x0, y0): the result is the window of the destination whose top-left pixel is (x0, y0)
    (a face's window of a large image, without warping the whole of it). Samples outside
    ``src`` count as ``border``, bilinearly, as OpenCV does.
    """
    single = src.dim() == 3
    x = src[None] if single else src
    b, _, h, w = x.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    inv = torch.as_tensor(invert_affine(m), dtype=torch.float64)
    ys = torch.arange(oh, dtype=torch.float64) + origin[1]
    xs = torch.arange(ow, dtype=torch.float64) + origin[0]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    u = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    v = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    grid = torch.stack([(2 * u + 1) / w - 1, (2 * v + 1) / h - 1], -1).to(x.dtype)
    grid = grid.to(x.device)[None].expand(b, oh, ow, 2)
    y = F.grid_sample(x - border if border else x, grid, mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    if border:
        y = y + border
    return y[0] if single else y


def face_window(m_inv: np.ndarray, crop: int, hw: Tuple[int, int]) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1): the pixels of an (h, w) image that the ``crop`` x ``crop`` square covers
    under ``m_inv`` (crop -> image), one pixel of margin, clipped; ``None`` when it misses it."""
    corners = np.array([[-1, -1, 1], [crop, -1, 1], [-1, crop, 1], [crop, crop, 1]], dtype=np.float64)
    pts = corners @ np.asarray(m_inv, dtype=np.float64).T
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    h, w = hw
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


# ---------------------------------------------------------------------------------------------
# Our soft mask
# ---------------------------------------------------------------------------------------------
#: The mask's ellipse in a 288 px crop: centre (x, y), semi-axes (x, y), and the share of the
#: radius at full weight (the rest falls off as a raised cosine). With the official alignment the
#: eyes sit at y ~ 137 and the mouth at y ~ 216, so this covers forehead, cheeks and chin.
MASK_CENTRE = (144.0, 150.0)
MASK_AXES = (112.0, 132.0)
MASK_INNER = 0.6


def soft_mask(crop: int = CROP, inner: float = MASK_INNER) -> np.ndarray:
    """Our feathered head mask, (crop, crop) float32 in [0, 1]: 1 inside ``inner`` of the
    ellipse's radius, a raised cosine to exactly 0 at the ellipse, 0 beyond (and so on every
    pixel near the crop's border). Defined at 288 px and scaled with ``crop``."""
    if not 0.0 <= inner < 1.0:
        raise ValueError(f"inner must lie in [0, 1), got {inner}")
    s = crop / CROP
    yy, xx = np.mgrid[0:crop, 0:crop].astype(np.float64)
    r = np.sqrt(((xx - MASK_CENTRE[0] * s) / (MASK_AXES[0] * s)) ** 2
                + ((yy - MASK_CENTRE[1] * s) / (MASK_AXES[1] * s)) ** 2)
    t = np.clip((r - inner) / (1.0 - inner), 0.0, 1.0)
    m = 0.5 * (1.0 + np.cos(math.pi * t))
    m[r >= 1.0] = 0.0
    return m.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------
Detector = Callable[[np.ndarray], List[Face]]


def mtcnn_weights_dir() -> Path:
    """The folder of the MTCNN weights inside the installed facenet-pytorch package (found
    without importing it), or :class:`FaceDetectorUnavailable`."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorUnavailable(f"the face detector needs facenet-pytorch (MTCNN with its weights in "
                                      f"the wheel): {FACE_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    missing = [n for n in ("pnet.pt", "rnet.pt", "onet.pt") if not (folder / n).is_file()]
    if missing:
        raise FaceDetectorUnavailable(f"facenet-pytorch is installed without its MTCNN weights "
                                      f"({', '.join(missing)} missing in {folder}): reinstall it")
    return folder


class MTCNNDetector:
    """Faces and 5 landmarks with MTCNN (facenet-pytorch's networks and weights, loaded here with
    ``weights_only=True``). Callable: ``detector(rgb) -> List[Face]``, ``rgb`` an (H, W, 3)
    uint8 array; no face is an empty list, not an error.

    ``min_face``: the smallest face searched for (px; the detector's pyramid starts there, so it
    also sets the cost: on the shared portraits MTCNN took about half the time at 40 as at 20); ``thresholds``: the
    three stages' score thresholds (facenet-pytorch's defaults); ``factor``: the pyramid's step.
    One detector can be called from several threads (calls are serialised: torch already uses
    the cores).
    """

    name = "mtcnn"

    def __init__(self, min_face: int = DEFAULT_MIN_FACE, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, device: Union[str, torch.device] = "cpu"):
        if not 12 <= int(min_face) <= 100_000:
            raise ValueError(f"min_face must be at least 12 px (MTCNN's smallest face), got {min_face}")
        folder = mtcnn_weights_dir()
        try:
            from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
            from facenet_pytorch.models.utils.detect_face import detect_face
        except ImportError as e:
            raise FaceDetectorUnavailable(f"facenet-pytorch is installed but cannot be imported ({e}): "
                                          f"{FACE_INSTALL}") from None
        self._detect_face = detect_face
        self.device = torch.device(device)
        nets = []
        for cls, fname in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
            net = cls(pretrained=False)
            net.load_state_dict(torch.load(folder / fname, map_location="cpu", weights_only=True))
            nets.append(net.eval().to(self.device))
        self.pnet, self.rnet, self.onet = nets
        self.min_face = int(min_face)
        self.thresholds = [float(t) for t in thresholds]
        self.factor = float(factor)
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray) -> List[Face]:
        rgb = np.ascontiguousarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"the detector takes an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        if min(h, w) < self.min_face:
            return []
        with self._lock, torch.inference_mode():
            boxes, points = self._detect_face(rgb[None], self.min_face, self.pnet, self.rnet, self.onet,
                                              self.thresholds, self.factor, self.device)
        faces = []
        for box, pts in zip(np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5),
                            np.asarray(points[0], dtype=np.float64).reshape(-1, 5, 2)):
            if np.isfinite(box).all() and np.isfinite(pts).all():
                faces.append(Face(tuple(float(v) for v in box[:4]), pts, float(box[4])))
        return faces


def load_detector(detector: Union[str, Detector, None] = "mtcnn", min_face: int = DEFAULT_MIN_FACE,
                  device: Union[str, torch.device] = "cpu") -> Optional[Detector]:
    """``"mtcnn"`` -> :class:`MTCNNDetector`; a callable is used as it is; ``None`` -> ``None``
    (no faces: background only)."""
    if detector is None or callable(detector):
        return detector
    if detector == "mtcnn":
        return MTCNNDetector(min_face=min_face, device=device)
    raise ValueError(f"unknown face detector {detector!r}: give 'mtcnn', a callable or None")

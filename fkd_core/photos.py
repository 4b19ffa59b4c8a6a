"""Keypoints on any photo: decode, find faces, frame them like the training faces, predict,
map back to the photo's pixels.

The models only know 96×96 grayscale faces framed like the training set's (faces15: scaled
and shifted so that the eyes and mouth sit at about the same place in every crop). A photo's
face is brought into that frame by a similarity transform (scale, rotation, shift):

1. **first pass** — from a face box (dlib's HOG detector, a ``--box`` given by hand, or the
   whole photo): the box's size and centre give the scale and shift (:data:`BOX_SCALE`,
   :data:`BOX_CENTRE`, fitted on training faces, see there);
2. **refinement** — the first pass's 15 keypoints are aligned to the training set's mean
   shape (:data:`MEAN_SHAPE`) by least squares, the face is cropped again through that
   transform and predicted again; its keypoints are mapped back through the inverse.

Coordinates inside this module are pixel indices (pixel centres on integers, as in
:mod:`fkd_core.keypoints`). A run whose labels sit ``label_offset`` pixels off that
convention (faces15: about one pixel right of and below it, from a 1-based annotation) has
its predictions moved into index coordinates before they are mapped and moved back after, so
photo coordinates follow the same convention as the run's data set.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fkd_core.keypoints import COLUMN_NAMES, IMAGE_SIZE, N_COORDS, N_KEYPOINTS

#: The largest photo decoded (pixels); checked from the header before any decoding.
MAX_PIXELS = 50_000_000
#: Smallest face (box side in photo pixels) the detector looks for by default.
MIN_FACE = 48
#: dlib's HOG window is 80 px: a photo is scaled by 80 / min_face before detection …
_HOG_WINDOW = 80
#: … but never beyond this many pixels on its long side (large photos are shrunk instead;
#: their smallest findable face grows accordingly).
DETECT_MAX_SIDE = 800
#: Detections scoring at least this are faces; dlib's own default threshold.
DETECT_THRESHOLD = 0.0
#: When nothing passes DETECT_THRESHOLD, the single best detection above this is taken
#: (a photo given to ``fkd predict`` is expected to hold a face).
FALLBACK_THRESHOLD = -0.5
#: Last resort, when not even that is found: the detector again at these multiples of the
#: detection scale (a face's score swings by ±0.3 with a few pixels of resizing), the single
#: best detection above LAST_RESORT_THRESHOLD taken. Chosen after looking at the one photos15
#: photo the detector missed (a hand over the nose; −0.45 at one scale, −0.56 to −0.81 at
#: others), not fitted to its labels; −0.8 keeps uniform noise (best −0.95) faceless.
RETRY_FACTORS = (0.6, 1.2, 1.5, 1.8)
LAST_RESORT_THRESHOLD = -0.8

#: The training faces' mean shape (15 keypoints, x and y in 96×96 crop pixel indices): the
#: mean of faces15's 957 complete training rows, moved into the index convention by its
#: measured label offset (0.88 px, :func:`fkd_core.calibration.estimate_label_offset`;
#: applied to x and y). This is the frame every crop is aligned to.
MEAN_SHAPE = np.array([
    [63.60, 37.82], [30.38, 38.19], [57.06, 38.18], [69.79, 37.44], [36.82, 38.42],
    [24.15, 37.89], [56.41, 27.14], [76.63, 29.03], [37.15, 27.44], [16.55, 29.59],
    [47.97, 57.83], [61.03, 74.55], [34.21, 74.88], [47.99, 70.80], [48.25, 81.45],
], np.float64)

#: Where a detector box puts a face in the crop: a box of width w becomes BOX_SCALE crop
#: pixels wide, its centre lands on BOX_CENTRE. Fitted on faces15's *training* faces: each
#: 96×96 face scaled ×2 and edge-padded by 64 px, dlib's HOG detector run on it (3251 of 3372
#: found), the mean of the 933 complete rows' keypoints in box units (box width 1, top-left 0)
#: fitted to MEAN_SHAPE by scale and shift (least squares; residual 0.04 px). No photos15
#: label was used. The box-to-face scale varies by ±13 % (1 sd) between faces; refinement
#: takes that out.
BOX_SCALE = 79.12
BOX_CENTRE = (46.86, 53.45)

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L"


class PhotoError(ValueError):
    """A photo that cannot be used; the message starts with the file's name."""


# -- decoding ---------------------------------------------------------------------------


def load_image(source: bytes | str | os.PathLike, name: str | None = None, *,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file's bytes or path, upright (EXIF orientation
    applied). Transparency is composited on white; 16-bit images are scaled to 8 bits.

    Anything that is not a decodable image of at most ``max_pixels`` pixels is a
    :class:`PhotoError` naming the file; the size is checked from the header, before
    decoding, and Pillow's own decompression-bomb guard stays on.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if name is None:
        name = "photo" if isinstance(source, (bytes, bytearray)) else Path(source).name
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) \
            else Path(source).read_bytes()
    except OSError as exc:
        raise PhotoError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise PhotoError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise PhotoError(f"{name}: {w}×{h} pixels is over the limit of "
                                     f"{max_pixels:,} pixels")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError(f"{name}: not an image file (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PhotoError(f"{name}: too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise PhotoError(f"{name}: broken or truncated image ({reason})") from None


def _to_rgb(img) -> np.ndarray:
    """RGB uint8 of any Pillow mode: alpha on white, 16/32-bit and float scaled to 8 bits."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(1.0, float(a.max(initial=0)))
        g = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, np.uint8).copy()


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale uint8 (H, W) of an RGB (H, W, 3) or gray (H, W) image (ITU-R 601 luma)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.uint8, copy=False)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    g = image[..., :3].astype(np.float32) @ _GRAY_WEIGHTS
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


# -- finding faces ----------------------------------------------------------------------

_local = threading.local()


def _hog():
    """This thread's dlib detector: one object used by two threads at once corrupts memory
    (the dashboard predicts in worker threads)."""
    detector = getattr(_local, "detector", None)
    if detector is None:
        import dlib

        detector = _local.detector = dlib.get_frontal_face_detector()
    return detector


def detection_scale(shape: tuple[int, int], min_face: int = MIN_FACE) -> float:
    """The factor a photo of ``shape`` (H, W) is resized by for detection."""
    h, w = shape[:2]
    return min(_HOG_WINDOW / max(1, min_face), DETECT_MAX_SIDE / max(1, h, w))


def find_faces(image: np.ndarray, *, min_face: int = MIN_FACE
               ) -> list[tuple[tuple[float, float, float, float], float]]:
    """Faces in a photo as ``((x, y, w, h), score)`` in photo pixels, best first.

    dlib's frontal HOG detector on the grayscale photo resized so that a ``min_face``-pixel
    face fills the detector's 80-pixel window (see :func:`detection_scale`). Detections
    scoring at least :data:`DETECT_THRESHOLD` are faces; when there is none, the single best
    one above :data:`FALLBACK_THRESHOLD` is; when there is not even that, the best one above
    :data:`LAST_RESORT_THRESHOLD` at the other scales of :data:`RETRY_FACTORS`.
    """
    gray = to_gray(image)
    f = detection_scale(gray.shape, min_face)
    found = _detect(gray, f, FALLBACK_THRESHOLD)
    faces = [b for b in found if b[1] >= DETECT_THRESHOLD]
    if faces or found:
        return faces if faces else found[:1]
    longest = DETECT_MAX_SIDE / max(1, *gray.shape[:2])
    retries = [d for k in RETRY_FACTORS
               for d in _detect(gray, min(f * k, longest), LAST_RESORT_THRESHOLD)]
    return sorted(retries, key=lambda b: -b[1])[:1]


def _detect(gray: np.ndarray, f: float, threshold: float
            ) -> list[tuple[tuple[float, float, float, float], float]]:
    """dlib's detections above ``threshold`` on ``gray`` resized by ``f``, in its pixels."""
    from PIL import Image

    h, w = gray.shape
    if abs(f - 1.0) > 1e-3:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = Image.fromarray(gray).resize(size, Image.BILINEAR, reducing_gap=None
                                             if f > 0.5 else 2.0)
        gray = np.asarray(small)
        fx, fy = size[0] / w, size[1] / h
    else:
        fx = fy = 1.0
    rects, scores, _ = _hog().run(gray, 0, threshold)
    found = []
    for r, s in zip(rects, scores):
        # dlib's rectangles are inclusive pixel ranges; a box spans [left, right + 1).
        x0, y0 = r.left() / fx, r.top() / fy
        bw, bh = (r.right() + 1 - r.left()) / fx, (r.bottom() + 1 - r.top()) / fy
        found.append(((float(x0), float(y0), float(bw), float(bh)), float(s)))
    found.sort(key=lambda b: -b[1])
    return found


# -- framing ----------------------------------------------------------------------------


def box_transform(box, shape: np.ndarray | None = None) -> np.ndarray:
    """The 2×3 photo → crop matrix that frames the face in a box like a training face.

    A non-square box counts by its geometric-mean side, centred on the box. ``shape`` is the
    run's mean shape when it differs from faces15's (:data:`MEAN_SHAPE`): the box's face is
    then moved onto it by scale and shift.
    """
    x, y, w, h = (float(v) for v in box)
    side = math.sqrt(max(w, 1e-6) * max(h, 1e-6))
    s = BOX_SCALE / side
    # The box covers [x, x + w) in continuous coordinates; its centre in index coordinates
    # is x + w/2 − 0.5.
    cx, cy = x + w / 2 - 0.5, y + h / 2 - 0.5
    m = np.array([[s, 0.0, BOX_CENTRE[0] - s * cx], [0.0, s, BOX_CENTRE[1] - s * cy]])
    if shape is None:
        return m
    return compose(shape_transform(MEAN_SHAPE, rotate=False, target=shape), m)


def whole_box(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box taken for a whole photo: the central square of its short side."""
    h, w = shape[:2]
    side = min(h, w)
    return ((w - side) / 2, (h - side) / 2, float(side), float(side))


def shape_transform(points: np.ndarray, *, rotate: bool = True,
                    target: np.ndarray | None = None) -> np.ndarray:
    """The 2×3 photo → crop matrix that best aligns 15 keypoints (30,) or (15, 2) to
    ``target`` (default :data:`MEAN_SHAPE`; least squares, rotation too unless ``rotate``
    is False). Missing points are left out."""
    target = MEAN_SHAPE if target is None else np.asarray(target, np.float64).reshape(-1, 2)
    p = np.asarray(points, np.float64).reshape(N_KEYPOINTS, 2)
    ok = np.isfinite(p).all(axis=1) & np.isfinite(target).all(axis=1)
    p, q = p[ok], target[ok]
    pm, qm = p.mean(0), q.mean(0)
    pc, qc = p - pm, q - qm
    denom = (pc ** 2).sum()
    if rotate:
        a = (pc * qc).sum() / denom
        b = (pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0]).sum() / denom
        m = np.array([[a, -b], [b, a]])
    else:
        m = np.eye(2) * ((pc * qc).sum() / denom)
    return np.concatenate([m, (qm - m @ pm)[:, None]], axis=1)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of ``outer`` after ``inner``."""
    return np.concatenate([outer[:, :2] @ inner[:, :2],
                           (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]], axis=1)


def invert(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2×3 affine matrix."""
    m = np.linalg.inv(matrix[:, :2])
    return np.concatenate([m, (-m @ matrix[:, 2])[:, None]], axis=1)


def apply(matrix: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Keypoints (..., 30) through a 2×3 affine matrix."""
    kp = np.asarray(keypoints, np.float64)
    pts = kp.reshape(*kp.shape[:-1], N_KEYPOINTS, 2)
    out = pts @ matrix[:, :2].T + matrix[:, 2]
    return out.reshape(kp.shape)


def crop(gray: np.ndarray, matrix: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The (size, size) uint8 crop whose pixel (i, j) shows the photo at the inverse of
    ``matrix`` (photo → crop) at (j, i); bilinear, edges extended, rounded to nearest.

    A face larger than the crop is first shrunk with Pillow's antialiasing resize (only the
    part of the photo the crop shows), so that a large face is averaged, not sampled, as
    a camera or a resized training face would be."""
    from PIL import Image

    gray = np.asarray(gray, np.uint8)
    h, w = gray.shape
    m = matrix
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.95:
        inv = invert(m)
        edge = np.array([-0.5, size - 0.5])
        corners = np.array([[x, y] for x in edge for y in edge]) @ inv[:, :2].T + inv[:, 2]
        margin = 2.0 / scale + 2.0
        x0 = int(np.clip(np.floor(corners[:, 0].min() - margin), 0, w - 1))
        y0 = int(np.clip(np.floor(corners[:, 1].min() - margin), 0, h - 1))
        x1 = int(np.clip(np.ceil(corners[:, 0].max() + margin), x0 + 1, w))
        y1 = int(np.clip(np.ceil(corners[:, 1].max() + margin), y0 + 1, h))
        nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        gray = np.asarray(Image.fromarray(gray).resize((nw, nh), Image.BILINEAR,
                                                       box=(x0, y0, x1, y1)))
        # Pillow maps shrunk pixel j's centre to photo x0 + (j + 0.5)·(x1 − x0)/nw − 0.5
        fx, fy = (x1 - x0) / nw, (y1 - y0) / nh
        m = compose(m, np.array([[fx, 0.0, x0 + 0.5 * fx - 0.5],
                                 [0.0, fy, y0 + 0.5 * fy - 0.5]]))
        h, w = gray.shape
    inv = invert(m)
    jj, ii = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    px = np.clip(inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2], 0, w - 1)
    py = np.clip(inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2], 0, h - 1)
    x0 = np.minimum(np.floor(px).astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(np.floor(py).astype(np.intp), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = px - x0, py - y0
    g = gray.astype(np.float32)
    top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
    bottom = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


# -- predicting -------------------------------------------------------------------------


@dataclass
class FaceResult:
    """One face of a photo: where it was found, its keypoints and the crop the model saw."""

    box: tuple[float, float, float, float]  # x, y, w, h in photo pixels
    score: float  # the detector's score; NaN for a given box or the whole photo
    keypoints: np.ndarray  # (30,) Kaggle order, photo pixels
    crop: np.ndarray  # (96, 96) uint8, the last crop the model saw
    crop_keypoints: np.ndarray  # (30,) in that crop's pixels
    source: str = "detector"  # "detector" | "box" | "whole"
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2, 3), repr=False)


def _predict(predictor, crops: np.ndarray, tta: bool, model) -> np.ndarray:
    if len(crops) == 0:
        return np.zeros((0, N_COORDS), np.float32)
    if model is not None:
        return np.asarray(predictor.predict(crops, tta=tta, model=model), np.float64)
    return np.asarray(predictor.predict(crops, tta=tta), np.float64)


def _mean_shape(predictor) -> np.ndarray | None:
    """The predictor's own training framing (``mean_shape``, (15, 2) index coordinates), or
    None for faces15's :data:`MEAN_SHAPE`."""
    shape = getattr(predictor, "mean_shape", None)
    if shape is None and hasattr(predictor, "val_predictions"):  # a plain fkd_core.runs.Run
        shape = run_mean_shape(predictor)
    return None if shape is None else np.asarray(shape, np.float64).reshape(N_KEYPOINTS, 2)


def _offset(predictor) -> float:
    """The run's label convention, taken as the same offset on x and y."""
    return float(getattr(predictor, "label_offset", 0.0) or 0.0)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x, y, w, h"`` (photo pixels, commas or spaces) → a box, for ``fkd predict --box``
    and the Photos tab alike; a ValueError says what is wrong."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"the box {text.strip()!r} is not four numbers x, y, w, h "
                         "(photo pixels)") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"the box {text.strip()!r} needs finite numbers and a width and height "
                         "above 0")
    return x, y, w, h


def face_boxes(image: np.ndarray, *, min_face: int = MIN_FACE, box=None, whole: bool = False,
               fallback: str | None = None) -> list[tuple[tuple, float, str]]:
    """The boxes to predict in a photo as ``(box, score, source)``: the given box, the
    whole photo, or the detector's faces (with ``fallback="whole"``, the whole photo when
    it finds none)."""
    if box is not None:
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"box {box!r} must be x, y, w, h with w and h > 0")
        return [((x, y, w, h), math.nan, "box")]
    if whole:
        return [(whole_box(image.shape), math.nan, "whole")]
    found = [(b, s, "detector") for b, s in find_faces(image, min_face=min_face)]
    if not found and fallback == "whole":
        return [(whole_box(image.shape), math.nan, "whole")]
    return found


def predict_photos(images: list[np.ndarray], predictor, *, tta: bool = False,
                   refine: bool | int = True, rotate: bool = True, min_face: int = MIN_FACE,
                   box=None, whole: bool = False, fallback: str | None = None, model=None,
                   boxes: list | None = None) -> list[list[FaceResult]]:
    """:func:`predict_photo` for many photos, every face of every photo in one model batch
    per pass (a model call has a fixed cost far above a face's). ``boxes`` gives each
    photo's face boxes as :func:`face_boxes` returns them, when already known."""
    grays = [to_gray(im) for im in images]
    if boxes is None:
        boxes = [face_boxes(g, min_face=min_face, box=box, whole=whole, fallback=fallback)
                 for g in grays]
    owners = [(i, b) for i, found in enumerate(boxes) for b in found]
    if not owners:
        return [[] for _ in images]
    offset, shape = _offset(predictor), _mean_shape(predictor)
    matrices = [box_transform(b[0], shape) for _, b in owners]
    passes = 1 + int(refine)  # refine=True: one refinement pass; an int: that many
    for n in range(passes):
        crops = np.stack([crop(grays[i], m) for (i, _), m in zip(owners, matrices)])
        pred = _predict(predictor, crops, tta, model)
        photo_kp = np.stack([apply(invert(m), k) for m, k in zip(matrices, pred - offset)])
        if n + 1 < passes:
            matrices = [shape_transform(k, rotate=rotate, target=shape) for k in photo_kp]
    results: list[list[FaceResult]] = [[] for _ in images]
    for j, (i, (b, score, source)) in enumerate(owners):
        results[i].append(FaceResult(
            box=tuple(float(v) for v in b), score=float(score),
            keypoints=(photo_kp[j] + offset).astype(np.float32), crop=crops[j],
            crop_keypoints=pred[j].astype(np.float32), source=source, matrix=matrices[j]))
    return results


def predict_photo(image: np.ndarray, predictor, *, tta: bool = False, refine: bool = True,
                  rotate: bool = True, min_face: int = MIN_FACE, box=None,
                  whole: bool = False, fallback: str | None = None,
                  model=None) -> list[FaceResult]:
    """Every face of an RGB (or gray) photo with its 15 keypoints in photo pixels.

    ``predictor`` is anything with ``predict(images_uint8 (N, 96, 96), *, tta) -> (N, 30)``
    in its data set's convention (a :class:`fkd_core.runs.Run`; ``model`` is passed through
    to it so that a loaded model is not loaded again). ``box`` (x, y, w, h) or ``whole``
    replace the detector; ``refine`` re-crops each face aligned by its first keypoints
    (``rotate``: also upright) and predicts again.
    """
    return predict_photos([image], predictor, tta=tta, refine=refine, rotate=rotate,
                          min_face=min_face, box=box, whole=whole, fallback=fallback,
                          model=model)[0]


class LoadedRun:
    """A run with its model loaded once: the ``predictor`` for many photos.

    Its faces are framed like its own training faces: ``mean_shape`` is the mean of each
    keypoint over its labelled validation faces (``val_predictions.npz``), in pixel
    indices (:func:`run_mean_shape`); without it, faces15's :data:`MEAN_SHAPE`.
    """

    def __init__(self, run):
        self.run = run
        self.model = run.load_model()
        self.label_offset = run.label_offset
        self.mean_shape = run_mean_shape(run)

    def predict(self, images: np.ndarray, *, tta: bool = False, model=None) -> np.ndarray:
        return self.run.predict(images, tta=tta, model=model or self.model)


def run_mean_shape(run, min_rows: int = 10) -> np.ndarray | None:
    """A run's training framing (see :class:`LoadedRun`): the mean of each keypoint over its
    labelled validation faces, or None when a keypoint has fewer than ``min_rows``."""
    try:
        truth = np.asarray(run.val_predictions["truth"], np.float64)
    except (KeyError, OSError, ValueError):
        return None
    if truth.ndim != 2 or truth.shape[1] != N_COORDS:
        return None
    if (np.isfinite(truth).sum(axis=0) < min_rows).any():
        return None
    return np.nanmean(truth, axis=0).reshape(N_KEYPOINTS, 2) - run.label_offset


# -- many files -------------------------------------------------------------------------

#: What a folder given to ``fkd predict`` is searched for (files named one by one are always
#: tried, whatever their extension).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(inputs) -> list[Path]:
    """The photos named by files and folders (a folder's images, sorted, not recursive)."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(item)
    return found


@dataclass
class FileResult:
    """One photo file's outcome: its faces, or the reason it was skipped."""

    path: Path
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name


def predict_files(paths, predictor, *, chunk: int = 32, progress=None,
                  timings: dict | None = None, keep_images: bool = False, model=None,
                  **options):
    """Yield a :class:`FileResult` per photo file, in order, predicting ``chunk`` photos'
    faces per model batch. A file that cannot be used is a result with its error; the
    batch goes on. ``timings`` collects seconds spent decoding, detecting and in the model
    (cropping included); ``options`` are :func:`predict_photos`'s."""
    import time

    paths = list(paths)
    t = timings if timings is not None else {}
    for k in ("decode", "detect", "model"):
        t.setdefault(k, 0.0)
    detect_options = {k: options[k] for k in ("min_face", "box", "whole", "fallback")
                      if k in options}
    done = 0
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        results, images, boxes = [], [], []
        for path in part:
            t0 = time.perf_counter()
            try:
                image = load_image(path)
            except PhotoError as exc:
                results.append(FileResult(Path(path), error=str(exc)))
                t["decode"] += time.perf_counter() - t0
                continue
            gray = to_gray(image)  # once: detection and cropping both work on it
            t1 = time.perf_counter()
            boxes.append(face_boxes(gray, **detect_options))
            t["decode"] += t1 - t0
            t["detect"] += time.perf_counter() - t1
            images.append(gray)
            results.append(FileResult(Path(path), image=image))
        t0 = time.perf_counter()
        faces = predict_photos(images, predictor, model=model, boxes=boxes, **options) \
            if images else []
        t["model"] += time.perf_counter() - t0
        ok = iter(faces)
        for r in results:
            if r.error is None:
                r.faces = next(ok)
                if not keep_images:
                    r.image = None
            done += 1
            if progress is not None:
                progress(done, len(paths))
            yield r


# -- writing ----------------------------------------------------------------------------

CSV_COLUMNS = ("file", "face", "box_x", "box_y", "box_w", "box_h", "detector_score",
               "source", *COLUMN_NAMES)


def csv_rows(name: str, faces: list[FaceResult]) -> list[list[str]]:
    """The CSV rows of one photo: one per face, or one with empty coordinates if none."""
    if not faces:
        return [[name, "", "", "", "", "", "", "none"] + [""] * N_COORDS]
    rows = []
    for i, f in enumerate(faces, 1):
        score = "" if not math.isfinite(f.score) else f"{f.score:.3f}"
        rows.append([name, str(i), *(f"{v:.1f}" for v in f.box), score, f.source,
                     *(f"{v:.2f}" if math.isfinite(v) else "" for v in
                       np.asarray(f.keypoints, float))])
    return rows


def write_csv(file, items) -> None:
    """Write ``(name, faces)`` pairs as keypoints CSV to an open text file."""
    w = csv.writer(file, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for name, faces in items:
        w.writerows(csv_rows(name, faces))


def overlay(image: np.ndarray, faces: list[FaceResult]) -> np.ndarray:
    """The photo (RGB uint8) with each face's box and keypoints drawn in the dashboard's
    colours (subject's left warm, right cool)."""
    from PIL import Image, ImageDraw

    from fkd_core.keypoints import KEYPOINT_COLOURS, KEYPOINT_NAMES

    img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(img)
    r = max(1.5, min(img.size) / 150)
    for f in faces:
        x, y, w, h = f.box
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline="#00ff00",
                       width=max(1, round(r / 2)))
        pts = np.asarray(f.keypoints, float).reshape(N_KEYPOINTS, 2)
        for name, (px, py) in zip(KEYPOINT_NAMES, pts):
            if np.isfinite([px, py]).all():
                draw.ellipse([px - r, py - r, px + r, py + r], fill=KEYPOINT_COLOURS[name],
                             outline="#000000")
    return np.asarray(img)

"""Procedural demo faces with exact keypoints: the embedded data when a user has no Kaggle files.

Each face is a few dozen random parameters in *face coordinates* ``(u, v)``: origin near the
nose, ``u`` towards the subject's left (the image's right, as in Kaggle), ``v`` down, one unit
is one image pixel at scale 1. Keypoints are computed in those coordinates and pushed through
the same yaw + similarity transform that the renderer inverts per pixel, so every label sits on
its drawn feature by construction. Rendering is vectorised over batches of faces; a batch's
random stream depends only on ``(seed, stream, batch index)``, so output is reproducible and a
shorter run is a prefix of a longer one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from fkd_core import kaggle
from fkd_core import keypoints as kp

_BATCH = 8
_THREADS = 2
_STREAM_TRAIN, _STREAM_TEST, _STREAM_LAYOUT = 0, 1, 2
#: How far (face units per unit of yaw) the inner features slide sideways when the head turns.
_YAW_SHIFT = 16.0
#: The nose protrudes, so it slides further than the eyes and mouth.
_NOSE_YAW_SHIFT = 7.0
_MARGIN = 3.0  # keypoints are kept at least this far inside the frame

_GRID = np.arange(kp.IMAGE_SIZE, dtype=np.float32)
_X = _GRID[None, None, :]
_Y = _GRID[None, :, None]

Progress = Callable[[int, int], None]


def _sample_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Draw one batch of face parameters (each an (n,) float32 array)."""

    def uni(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(np.float32)

    def chance(prob: float) -> np.ndarray:
        return (rng.random(n) < prob).astype(np.float32)

    p: dict[str, np.ndarray] = {}
    # Pose: similarity transform plus a little yaw.
    p["scale"] = uni(0.85, 1.15)
    p["roll"] = np.deg2rad(uni(-15.0, 15.0)).astype(np.float32)
    p["cx"] = 47.5 + uni(-5.0, 5.0)
    p["cy"] = 50.0 + uni(-5.0, 5.0)
    p["yaw"] = uni(-0.14, 0.14)
    # Eyes.
    p["eye_x"] = uni(15.0, 19.0)
    p["eye_y"] = uni(-15.0, -11.0)
    p["eye_w"] = uni(5.5, 7.5)
    p["eye_h"] = uni(2.6, 3.8)
    p["eye_lower"] = uni(0.6, 0.9)
    p["iris_r"] = uni(2.6, 3.4)
    p["pupil_r"] = p["iris_r"] * uni(0.35, 0.55)
    p["gaze_x"] = uni(-1.0, 1.0)
    p["gaze_y"] = uni(-0.4, 0.4)
    p["lash_w"] = uni(0.3, 0.8)
    # Eyebrows: a two-segment stroke (inner end, arch, outer end) above each eye.
    p["brow_gap"] = uni(6.5, 9.0)
    p["brow_in"] = p["eye_x"] - p["eye_w"] * uni(0.75, 1.0)
    p["brow_out"] = p["eye_x"] + p["eye_w"] * uni(1.05, 1.35)
    p["brow_arch"] = uni(0.3, 2.2)
    p["brow_droop"] = uni(-1.0, 2.0)
    p["brow_w"] = uni(1.0, 1.7)
    # Nose.
    p["nose_y"] = uni(4.0, 9.0)
    p["nose_w"] = uni(3.5, 5.5)
    p["nose_tip_r"] = uni(1.8, 2.8)
    p["nose_side"] = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    # Mouth: the lip line bends up at the corners by `smile`.
    p["mouth_y"] = uni(19.0, 24.0)
    p["mouth_w"] = uni(9.0, 13.5)
    p["lip_top"] = uni(2.5, 4.5)
    p["lip_bottom"] = uni(3.0, 5.5)
    p["smile"] = uni(-1.0, 2.5)
    p["mouth_line_w"] = uni(0.4, 0.8)
    # Head outline (not yawed): an egg, narrower at the jaw.
    p["head_v"] = uni(-5.0, -1.0)
    p["head_b"] = np.maximum(uni(42.0, 48.0), p["mouth_y"] + p["lip_bottom"] + 10.0 - p["head_v"])
    p["head_a"] = np.maximum(p["head_b"] / uni(1.15, 1.4), p["brow_out"] + 8.0)
    p["jaw"] = uni(0.1, 0.35)
    p["head_shade"] = uni(0.1, 0.35)
    # Tones. Features are defined relative to the skin so contrast survives any skin tone.
    p["skin"] = uni(70.0, 215.0)
    p["sclera"] = np.minimum(p["skin"] + uni(20.0, 60.0), 248.0)
    p["iris"] = np.minimum(uni(15.0, 90.0), p["skin"] * 0.55)
    p["pupil"] = p["iris"] * uni(0.15, 0.5)
    p["brow"] = p["skin"] * uni(0.15, 0.45)
    p["lip"] = p["skin"] * uni(0.5, 0.72)
    p["mouth_dark"] = p["skin"] * uni(0.15, 0.35)
    p["nose_hl"] = np.minimum(p["skin"] * uni(1.06, 1.18) + 8.0, 250.0)
    dark_hair = rng.random(n) < 0.7
    p["hair"] = np.where(dark_hair, uni(8.0, 80.0), uni(110.0, 210.0)).astype(np.float32)
    style = rng.choice(3, size=n, p=[0.15, 0.5, 0.35])
    p["hair_top"] = (style > 0).astype(np.float32)
    p["hair_long"] = (style == 2).astype(np.float32)
    p["hair_len"] = uni(0.2, 0.85)
    p["hairline"] = p["eye_y"] - p["brow_gap"] - uni(10.0, 16.0)
    p["hairline_curve"] = uni(1.0, 5.0)
    p["hair_phase"] = uni(0.0, 6.3)
    p["hair_freq"] = uni(0.6, 1.8)
    p["hair_amp"] = uni(0.03, 0.18)
    p["clothes"] = uni(20.0, 235.0)
    # Glasses: thin rings around the eyes, clear of the irises and of the brows.
    p["glasses"] = chance(0.2)
    p["glasses_rx"] = p["eye_w"] + uni(2.5, 4.0)
    p["glasses_ry"] = np.minimum(p["eye_h"] + uni(3.0, 5.0), p["brow_gap"] - 1.0)
    p["glasses_w"] = uni(0.35, 0.7)
    p["glasses_level"] = np.where(rng.random(n) < 0.75, uni(5.0, 60.0), uni(150.0, 230.0))
    p["glasses_tint"] = np.where(rng.random(n) < 0.5, 1.0, uni(0.82, 0.97)).astype(np.float32)
    # Scene: background, clutter, light, camera.
    p["bg"] = uni(0.0, 255.0)
    p["bg_grad"] = uni(-60.0, 60.0)
    p["bg_angle"] = uni(0.0, 6.3)
    p["stripes"] = chance(0.3) * uni(5.0, 30.0)
    p["stripe_fx"] = uni(-0.8, 0.8)
    p["stripe_fy"] = uni(-0.8, 0.8)
    for k in range(3):
        p[f"clutter{k}"] = chance(0.6)
        p[f"clutter{k}_x"] = uni(0.0, 96.0)
        p[f"clutter{k}_y"] = uni(0.0, 96.0)
        p[f"clutter{k}_w"] = uni(4.0, 30.0)
        p[f"clutter{k}_h"] = uni(4.0, 30.0)
        p[f"clutter{k}_level"] = uni(0.0, 255.0)
    p["light"] = uni(0.0, 0.35)
    p["light_angle"] = uni(0.0, 6.3)
    p["contrast"] = uni(-0.3, 0.3)
    p["blur"] = uni(0.0, 0.9)
    p["noise"] = uni(1.0, 7.0)
    return p


def _yaw_forward(uf: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Face-feature u to head u: slide towards the turn and foreshorten the far side."""
    return yaw * _YAW_SHIFT + uf * (1.0 - yaw * np.sign(uf))


def _yaw_inverse(u: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Exact inverse of `_yaw_forward` (its scale factor keeps the sign, so split on w >= 0)."""
    w = u - yaw * _YAW_SHIFT
    neg = 1.0 / (1.0 + yaw)
    return w * neg + np.maximum(w, 0.0) * (1.0 / (1.0 - yaw) - neg)


def _feature_points(p: dict[str, np.ndarray]) -> np.ndarray:
    """The 15 keypoints in feature coordinates, (n, 15, 2), in `keypoints.KEYPOINT_NAMES` order."""
    ex, ey, ew = p["eye_x"], p["eye_y"], p["eye_w"]
    gx, gy = p["gaze_x"], p["gaze_y"]
    by = ey - p["brow_gap"]
    bo_y = by + p["brow_droop"]
    mw, my = p["mouth_w"], p["mouth_y"]
    corner_y = my - p["smile"]
    nose_u = p["yaw"] * _NOSE_YAW_SHIFT
    mid = np.zeros_like(mw)
    pts = [
        (ex + gx, ey + gy),  # left_eye_center (subject's left: +u, image right)
        (-ex + gx, ey + gy),  # right_eye_center
        (ex - ew, ey),  # left_eye_inner_corner
        (ex + ew, ey),  # left_eye_outer_corner
        (-ex + ew, ey),  # right_eye_inner_corner
        (-ex - ew, ey),  # right_eye_outer_corner
        (p["brow_in"], by),  # left_eyebrow_inner_end
        (p["brow_out"], bo_y),  # left_eyebrow_outer_end
        (-p["brow_in"], by),  # right_eyebrow_inner_end
        (-p["brow_out"], bo_y),  # right_eyebrow_outer_end
        (nose_u, p["nose_y"]),  # nose_tip
        (mw, corner_y),  # mouth_left_corner
        (-mw, corner_y),  # mouth_right_corner
        (mid, my - p["lip_top"] + 1.0),  # mouth_center_top_lip: just inside its top edge
        (mid, my + p["lip_bottom"] - 1.0),  # mouth_center_bottom_lip
    ]
    return np.stack([np.stack([u, v], axis=-1) for u, v in pts], axis=1).astype(np.float32)


def _to_image(points: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Feature coordinates (n, k, 2) to image coordinates (n, k, 2): yaw, then similarity."""
    col = {k: p[k][:, None] for k in ("yaw", "roll", "scale", "cx", "cy")}
    u = _yaw_forward(points[..., 0], col["yaw"])
    v = points[..., 1]
    c, s = np.cos(col["roll"]), np.sin(col["roll"])
    x = col["cx"] + col["scale"] * (c * u - s * v)
    y = col["cy"] + col["scale"] * (s * u + c * v)
    return np.stack([x, y], axis=-1).astype(np.float32)


def _fit_in_frame(p: dict[str, np.ndarray]) -> np.ndarray:
    """Translate faces whose keypoints would leave the frame; return image keypoints (n, 15, 2)."""
    pts = _to_image(_feature_points(p), p)
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    top = kp.IMAGE_SIZE - 1 - _MARGIN
    shift = np.maximum(0.0, _MARGIN - lo) - np.maximum(0.0, hi - top)
    p["cx"] = (p["cx"] + shift[:, 0]).astype(np.float32)
    p["cy"] = (p["cy"] + shift[:, 1]).astype(np.float32)
    return (pts + shift[:, None, :]).astype(np.float32)


def _soft(signed_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    alpha = 0.5 - signed_px
    return np.clip(alpha, 0.0, 1.0, out=alpha)


def _bump(x2: np.ndarray) -> np.ndarray:
    """A cheap smooth falloff of a squared normalised distance: 1 at 0, 0 from 1 on."""
    return np.maximum(1.0 - x2, 0.0) ** 2


def _paint(canvas: np.ndarray, alpha: np.ndarray, level) -> None:
    """Composite a flat grey `level` over `canvas` in place with coverage `alpha`."""
    canvas += alpha * (level - canvas)


def _ellipse_dist(du: np.ndarray, dv: np.ndarray, ra, rb) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius and an approximate signed distance (face units) for an ellipse."""
    r = np.sqrt((du / ra) ** 2 + (dv / rb) ** 2)
    return r, (r - 1.0) * np.minimum(ra, rb)


def _segment_dist(u: np.ndarray, v: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    """Distance from (u, v) to the segment a-b (endpoints are broadcastable arrays)."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv + 1e-6), 0.0, 1.0)
    return np.sqrt((u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2)


def _box3(img: np.ndarray) -> np.ndarray:
    """3×3 box blur with edge replication over the last two axes."""
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = pad[:, :-2, :] + pad[:, 1:-1, :] + pad[:, 2:, :]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _render(p: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Draw a batch of faces from their parameters; returns float32 (n, 96, 96) in [0, 255]."""
    q = {k: v[:, None, None] for k, v in p.items()}
    s = q["scale"]
    c, sn = np.cos(q["roll"]), np.sin(q["roll"])
    dx, dy = _X - q["cx"], _Y - q["cy"]
    u = (c * dx + sn * dy) / s  # head coordinates (pixel -> face, inverse similarity)
    v = (-sn * dx + c * dy) / s
    uf = _yaw_inverse(u, q["yaw"])  # feature coordinates
    ua = np.abs(uf)  # folded: symmetric features are drawn once for both sides

    # Background: gradient, optional stripes, a few flat blocks of clutter.
    ga = q["bg_angle"]
    canvas = q["bg"] + q["bg_grad"] * ((_X - 47.5) * np.cos(ga) + (_Y - 47.5) * np.sin(ga)) / 48
    canvas = canvas + q["stripes"] * np.sin(q["stripe_fx"] * _X + q["stripe_fy"] * _Y)
    for k in range(3):
        cx, cy = q[f"clutter{k}_x"], q[f"clutter{k}_y"]
        hw, hh = q[f"clutter{k}_w"] / 2, q[f"clutter{k}_h"] / 2
        if k < 2:
            d = np.maximum(np.abs(_X - cx) - hw, np.abs(_Y - cy) - hh)
        else:
            d = _ellipse_dist(_X - cx, _Y - cy, hw, hh)[1]
        _paint(canvas, _soft(d) * q[f"clutter{k}"], q[f"clutter{k}_level"])

    skin, ha, hb, hv = q["skin"], q["head_a"], q["head_b"], q["head_v"]
    # Shoulders and neck behind the head.
    _paint(canvas, _soft(_ellipse_dist(u, v - hv - hb - 26.0, ha * 2.3, 30.0)[1] * s), q["clothes"])
    neck = np.maximum(np.abs(u) - ha * 0.5, hv - v) * s
    _paint(canvas, _soft(neck), skin * 0.82)
    # Long hair falls behind the head down to `hair_len`.
    strands = np.sin(q["hair_freq"] * (u + 0.3 * v) + q["hair_phase"])
    hair_tex = q["hair"] * (1.0 + q["hair_amp"] * strands)
    long_d = np.maximum(
        _ellipse_dist(u, v - hv, ha * 1.25, hb * 1.08)[1], v - hv - hb * q["hair_len"]
    )
    _paint(canvas, _soft(long_d * s) * q["hair_long"], hair_tex)
    # Ears on the sides at eye height.
    ear_d = _ellipse_dist(np.abs(u) - ha * 0.97, v - q["eye_y"] - 5.0, 3.5, 7.0)[1]
    _paint(canvas, _soft(ear_d * s), skin * 0.92)
    # Head: an egg narrowing to the jaw, darker towards the rim.
    a_eff = ha * (1.0 - q["jaw"] * np.clip((v - hv) / hb, 0.0, 1.0) ** 2)
    head_r, head_d = _ellipse_dist(u, v - hv, a_eff, hb)
    head_alpha = _soft(head_d * s)
    _paint(canvas, head_alpha, skin)
    canvas *= 1.0 - q["head_shade"] * head_alpha * np.minimum(head_r, 1.0) ** 4
    # Hair on top, above a hairline that dips towards the temples.
    hairline = q["hairline"] + q["hairline_curve"] * (u / ha) ** 2
    top_d = np.maximum(_ellipse_dist(u, v - hv + hb * 0.03, ha * 1.06, hb * 1.05)[1], v - hairline)
    _paint(canvas, _soft(top_d * s) * q["hair_top"], hair_tex)

    _draw_brows(canvas, ua, v, q)
    _draw_eyes(canvas, uf, ua, v, q)
    _draw_nose(canvas, uf, v, q)
    _draw_mouth(canvas, ua, v, q)
    worn = np.flatnonzero(p["glasses"])
    if worn.size:
        part = canvas[worn]
        _draw_glasses(part, ua[worn], v[worn], {k: val[worn] for k, val in q.items()})
        canvas[worn] = part

    # Light, camera: a directional gradient, gamma, blur and sensor noise.
    la = q["light_angle"]
    canvas *= 1.0 + q["light"] * ((_X - 47.5) * np.cos(la) + (_Y - 47.5) * np.sin(la)) / 48
    np.clip(canvas, 0.0, 255.0, out=canvas)
    canvas += q["contrast"] * canvas * (1.0 - canvas / 255.0)  # a cheap monotone gamma
    canvas += q["blur"] * (_box3(canvas) - canvas)
    canvas += q["noise"] * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.clip(canvas, 0.0, 255.0)


def _draw_brows(canvas: np.ndarray, ua: np.ndarray, v: np.ndarray, q: dict) -> None:
    """Dark tapered strokes from the inner end over an arch to the outer end (the keypoints)."""
    by = q["eye_y"] - q["brow_gap"]
    bi, bo = q["brow_in"], q["brow_out"]
    inner, outer = (bi, by), (bo, by + q["brow_droop"])
    arch = (bi + 0.45 * (bo - bi), by - q["brow_arch"])
    d = np.minimum(_segment_dist(ua, v, inner, arch), _segment_dist(ua, v, arch, outer))
    along = np.clip((ua - bi) / (bo - bi), 0.0, 1.0)
    width = q["brow_w"] * (1.1 - 0.2 * along)
    _paint(canvas, _soft((d - width) * q["scale"]), q["brow"])


def _draw_eyes(canvas: np.ndarray, uf: np.ndarray, ua: np.ndarray, v: np.ndarray, q: dict) -> None:
    """Almond of sclera whose tips are the corners, a dark iris and pupil, and a lash line."""
    s = q["scale"]
    du, dv = ua - q["eye_x"], v - q["eye_y"]
    upper = q["eye_h"] * (1.0 - (du / q["eye_w"]) ** 2)  # lid height above the corner line
    eye_alpha = _soft(np.maximum(-dv - upper, dv - q["eye_lower"] * upper) * s)
    _paint(canvas, eye_alpha, q["sclera"])
    gu, gv = uf - q["gaze_x"], (dv - q["gaze_y"]) ** 2
    di = np.sqrt(np.minimum((gu - q["eye_x"]) ** 2, (gu + q["eye_x"]) ** 2) + gv) * s
    _paint(canvas, _soft(di - q["iris_r"] * s) * eye_alpha, q["iris"])
    _paint(canvas, _soft(di - q["pupil_r"] * s) * eye_alpha, q["pupil"])
    lash = np.maximum(np.abs(dv + upper) - q["lash_w"], np.abs(du) - q["eye_w"])
    _paint(canvas, _soft(lash * s), q["mouth_dark"])


def _draw_nose(canvas: np.ndarray, uf: np.ndarray, v: np.ndarray, q: dict) -> None:
    """A shaded bridge on one side, a shadow under a highlighted tip, and two nostrils."""
    s, skin, ny, nw = q["scale"], q["skin"], q["nose_y"], q["nose_w"]
    un = uf - q["yaw"] * _NOSE_YAW_SHIFT
    side = q["nose_side"]
    bridge = _segment_dist(un, v, (side * 3.0, q["eye_y"] + 3.0), (side * nw * 0.9, ny - 1.0))
    canvas *= 1.0 - 0.12 * _bump((bridge * s / 3.0) ** 2)
    under = (un / (nw * 1.3)) ** 2 + ((v - ny - 2.0) / 2.3) ** 2
    canvas *= 1.0 - 0.22 * _bump(under)
    tip = (un**2 + (v - ny) ** 2) / (1.8 * q["nose_tip_r"] ** 2)
    _paint(canvas, 0.85 * _bump(tip), q["nose_hl"])
    nostril = _ellipse_dist(np.abs(un) - nw * 0.72, v - ny - 2.0, 1.5, 0.9)[1]
    _paint(canvas, _soft(nostril * s), skin * 0.4)


def _draw_mouth(canvas: np.ndarray, ua: np.ndarray, v: np.ndarray, q: dict) -> None:
    """Two lips around a curved dark line, with dark commissures at the corner keypoints."""
    s, mw = q["scale"], q["mouth_w"]
    t2 = (ua / mw) ** 2
    line = q["mouth_y"] - q["smile"] * t2
    fullness = np.sqrt(np.clip(1.0 - t2, 0.0, 1.0))
    lip_d = np.maximum(
        (v - line) - q["lip_bottom"] * fullness, (line - v) - q["lip_top"] * fullness
    )
    lip_d = np.maximum(lip_d, ua - mw)
    _paint(canvas, _soft(lip_d * s), q["lip"])
    line_d = np.maximum(np.abs(v - line) - q["mouth_line_w"], ua - mw)
    _paint(canvas, _soft(line_d * s), q["mouth_dark"])
    corner = np.sqrt((ua - mw) ** 2 + (v - q["mouth_y"] + q["smile"]) ** 2) - 1.3
    _paint(canvas, _soft(corner * s), q["mouth_dark"])


def _draw_glasses(canvas: np.ndarray, ua: np.ndarray, v: np.ndarray, q: dict) -> None:
    """Thin rings around the eyes plus bridge and arms; lenses only tint, so irises stay dark."""
    s = q["scale"]
    ex, cy = q["eye_x"], q["eye_y"] + 0.5
    rx, ry, w = q["glasses_rx"], q["glasses_ry"], q["glasses_w"]
    d = _ellipse_dist(ua - ex, v - cy, rx, ry)[1]
    canvas *= 1.0 - (1.0 - q["glasses_tint"]) * _soft(d * s)
    ring = np.abs(d) - w
    bar_v = np.abs(v - cy + 1.0) - w
    bridge = np.maximum(bar_v, ua - (ex - rx * 0.98))
    arms = np.maximum(bar_v, np.maximum(ex + rx * 0.98 - ua, ua - q["head_a"]))
    frame = np.minimum(ring, np.minimum(bridge, arms))
    _paint(canvas, _soft(frame * s), q["glasses_level"])


def _generate(
    n: int,
    seed: int,
    stream: int,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render `n` faces of one random stream in batches seeded on their own, so batches can be
    drawn on two threads (numpy releases the GIL) and still give the same bytes."""
    images = np.empty((n, kp.IMAGE_SIZE, kp.IMAGE_SIZE), dtype=np.uint8)
    keypoints = np.empty((n, kp.N_COORDS), dtype=np.float32)
    total = n if total is None else total

    def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream, b])
        p = _sample_params(rng, _BATCH)
        pts = _fit_in_frame(p)
        return np.rint(_render(p, rng)).astype(np.uint8), pts.reshape(_BATCH, kp.N_COORDS)

    starts = range(0, n, _BATCH)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for start, (img, pts) in zip(starts, pool.map(batch, range(len(starts)))):
            stop = min(start + _BATCH, n)
            images[start:stop] = img[: stop - start]
            keypoints[start:stop] = pts[: stop - start]
            if progress is not None:
                progress(offset + stop, total)
    return images, keypoints


def generate_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` varied synthetic faces: images uint8 (n, 96, 96), keypoints float32 (n, 30).

    Keypoints are in Kaggle column order and image pixel coordinates (subject's left eye at the
    larger x). Same seed, same bytes; the first k faces do not depend on `n`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _generate(n, seed, _STREAM_TRAIN)


def demo_test_faces(n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The images and hidden true keypoints of `write_demo`'s test.csv (a separate stream)."""
    return _generate(n_test, seed, _STREAM_TEST)


def demo_test_keypoints(n_test: int, seed: int = 0) -> np.ndarray:
    """True keypoints (n_test, 30) of `write_demo`'s test images; never written to disk."""
    return demo_test_faces(n_test, seed)[1]


def _demo_layout(n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which training rows keep only the always-present labels (~70 %, as in Kaggle), and which
    test images ask for all 30 coordinates (~1/3)."""
    rng = np.random.default_rng([seed, _STREAM_LAYOUT])
    partial = np.zeros(n_train, dtype=bool)
    partial[rng.permutation(n_train)[: round(0.7 * n_train)]] = True
    full = np.zeros(n_test, dtype=bool)
    full[rng.permutation(n_test)[: round(n_test / 3)]] = True
    return partial, full


def write_demo(
    out_dir, n_train: int = 2000, n_test: int = 500, seed: int = 0,
    progress: Progress | None = None, source_offset: tuple[float, float] = (0.0, 0.0),
) -> dict:
    """Write a Kaggle-shaped demo dataset (training, test, IdLookupTable, SampleSubmission).

    Test labels are not written, like Kaggle; `demo_test_keypoints` regenerates them.
    ``source_offset`` (dx, dy) pixels moves every label of the four-keypoint rows, as if a
    second labelling source with its own convention had marked them (Kaggle's real data has
    two); the complete rows keep the exact positions. Returns the four paths and the row
    counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = n_train + n_test
    train_img, train_kp = _generate(n_train, seed, _STREAM_TRAIN, progress, 0, total)
    test_img, _ = _generate(n_test, seed, _STREAM_TEST, progress, n_train, total)
    partial, full = _demo_layout(n_train, n_test, seed)

    always = set(kp.column_indices(kp.ALWAYS_PRESENT).tolist())
    sparse = np.array([i not in always for i in range(kp.N_COORDS)])
    labels = train_kp.astype(np.float64)
    labels[np.ix_(partial, sparse)] = np.nan
    labels[partial, 0::2] += float(source_offset[0])
    labels[partial, 1::2] += float(source_offset[1])

    always_cols = [kp.COLUMN_NAMES[i] for i in sorted(always)]
    image_ids, features = [], []
    for image_id, ask_all in enumerate(full, start=1):
        cols = kp.COLUMN_NAMES if ask_all else always_cols
        image_ids += [image_id] * len(cols)
        features += list(cols)
    row_ids = np.arange(1, len(features) + 1)
    lookup = pd.DataFrame({"RowId": row_ids, "ImageId": image_ids, "FeatureName": features})
    paths = {
        "training": out / "training.csv",
        "test": out / "test.csv",
        "lookup": out / "IdLookupTable.csv",
        "sample_submission": out / "SampleSubmission.csv",
    }
    kaggle.write_training_csv(paths["training"], train_img, labels)
    kaggle.write_test_csv(paths["test"], np.arange(1, n_test + 1), test_img)
    kaggle.write_lookup_csv(paths["lookup"], lookup)
    kaggle.write_submission_csv(paths["sample_submission"], row_ids, np.zeros(len(row_ids)))
    return {
        **paths,
        "n_train": n_train,
        "n_train_partial": int(partial.sum()),
        "n_test": n_test,
        "n_test_full": int(full.sum()),
        "n_lookup_rows": len(row_ids),
    }

"""Keypoint-aware augmentation: one TensorFlow definition for training and for previews.

The maths lives in :func:`augment_batch`, written only with graph-compatible TF ops on a whole
batch, so the same code runs inside a parallel ``tf.data`` pipeline and, eagerly, behind the
NumPy helpers the dashboard uses (:func:`augment`, :func:`augment_samples`, :func:`flip_pair`).
A preview therefore shows exactly what the model is trained on.

Randomness comes from stateless ops keyed by an explicit ``(2,)`` seed: the same seed gives the
same batch, and because the counter-based generator fills tensors in order, image ``i`` of a
batch depends only on the seed and ``i`` (not on the batch size). ``augment(..., seed=s)`` is
therefore element 0 of ``augment_batch(..., seed=[s, 0])``.

Coordinates follow :mod:`fkd_core.keypoints`: pixel centres on integers, so the image centre
is (47.5, 47.5) and a flip maps x to 95 − x. ``ImageProjectiveTransformV3`` uses the same
convention (it maps output pixel index (x, y) to an input point in pixel-index units), so one
affine matrix serves both the image and its keypoints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from fkd_core.keypoints import (
    FLIP_COLUMN_PERMUTATION,
    FLIP_X_SUM,
    FRAME,
    IMAGE_SIZE,
    N_COORDS,
    N_KEYPOINTS,
)

#: Rotation/scale centre: the middle of the pixel-centre grid 0..95.
CENTRE = FLIP_X_SUM / 2.0
#: Pixels sampled from outside the source image mirror the border: no black wedges and no
#: smeared streaks after rotations. Shifts are small, so no mirrored features appear.
FILL_MODE = "REFLECT"
#: Upper bounds that keep a transform meaningful (a flip-of-sign scale or contrast is not an
#: augmentation) and keep the blur kernel small relative to a 96-px image.
_MAX_ROTATE_DEG = 180.0
_MAX_BLUR_SIGMA = 5.0
#: Columns of the per-image uniform draw; one draw per batch keeps the op count low.
_N_UNIFORMS = 16


@dataclass(frozen=True)
class AugmentConfig:
    """Per-transform probability and strength. Defaults are mild enough to keep faces upright.

    Strengths are maxima: each applied transform draws uniformly up to them.
    ``rotate_deg`` is the max |angle|; ``scale`` 0.1 means a factor in [0.9, 1.1];
    ``shift_px`` bounds each axis; ``brightness`` is additive in [0, 1] units (0.2 ≈ 51/255);
    ``contrast`` 0.3 means a factor in [0.7, 1.3] around the image mean; ``noise_std`` and
    ``blur_sigma`` bound the Gaussian noise σ ([0, 1] units) and blur σ (pixels).
    """

    flip_prob: float = 0.5
    rotate_prob: float = 0.5
    rotate_deg: float = 15.0
    scale_prob: float = 0.5
    scale: float = 0.1
    shift_prob: float = 0.5
    shift_px: float = 8.0
    brightness_prob: float = 0.5
    brightness: float = 0.2
    contrast_prob: float = 0.5
    contrast: float = 0.3
    noise_prob: float = 0.3
    noise_std: float = 0.03
    blur_prob: float = 0.2
    blur_sigma: float = 1.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"AugmentConfig.{f.name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"AugmentConfig.{f.name} must be finite, got {value!r}")
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} is a probability in [0, 1], got {value}")
            if value < 0.0:
                raise ValueError(f"AugmentConfig.{f.name} must be >= 0, got {value}")
            object.__setattr__(self, f.name, value)  # ints from JSON become floats
        upper = {
            "rotate_deg": (_MAX_ROTATE_DEG, True),
            "scale": (1.0, False),
            "contrast": (1.0, True),
            "blur_sigma": (_MAX_BLUR_SIGMA, True),
        }
        for name, (bound, inclusive) in upper.items():
            value = getattr(self, name)
            if value > bound or (value == bound and not inclusive):
                rel = "<=" if inclusive else "<"
                raise ValueError(f"AugmentConfig.{name} must be {rel} {bound}, got {value}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every transform off (strengths kept, so switching one probability on just works)."""
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls) if f.name.endswith("_prob")})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of ``dataclasses.asdict``; missing keys take defaults, unknown keys fail."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown AugmentConfig field(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @property
    def geometric(self) -> bool:
        """Whether any transform can move pixels (otherwise the warp is skipped entirely)."""
        return (
            self.flip_prob > 0
            or (self.rotate_prob > 0 and self.rotate_deg > 0)
            or (self.scale_prob > 0 and self.scale > 0)
            or (self.shift_prob > 0 and self.shift_px > 0)
        )


def _seed_tensor(seed) -> tf.Tensor:
    """A (2,) int64 seed; a scalar ``s`` means ``(s, 0)``."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an integer tensor, got {seed.dtype.name}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return tf.ensure_shape(seed, [2])


def _sample_params(batch_size, seed: tf.Tensor, config: AugmentConfig) -> dict[str, tf.Tensor]:
    """Draw every per-image parameter from one (B, 16) uniform tensor.

    Disabled transforms get their exact identity value (angle 0, scale 1, …), which keeps
    ``AugmentConfig.none()`` and the flip-only config bit-exact.
    """
    u = tf.random.stateless_uniform([batch_size, _N_UNIFORMS], seed=seed)

    def gate(i: int, prob: float) -> tf.Tensor:
        return u[:, i] < prob

    def signed(i: int) -> tf.Tensor:
        return 2.0 * u[:, i] - 1.0

    zero, one = tf.zeros_like(u[:, 0]), tf.ones_like(u[:, 0])
    c = config
    shift = tf.stack([signed(6), signed(7)], axis=1) * c.shift_px
    return {
        "flip": gate(0, c.flip_prob),
        "angle": tf.where(gate(1, c.rotate_prob), signed(2) * math.radians(c.rotate_deg), zero),
        "scale": tf.where(gate(3, c.scale_prob), 1.0 + signed(4) * c.scale, one),
        "shift": tf.where(gate(5, c.shift_prob)[:, None], shift, tf.zeros_like(shift)),
        "brightness": tf.where(gate(8, c.brightness_prob), signed(9) * c.brightness, zero),
        "contrast": tf.where(gate(10, c.contrast_prob), 1.0 + signed(11) * c.contrast, one),
        "noise_std": tf.where(gate(12, c.noise_prob), u[:, 13] * c.noise_std, zero),
        "blur_sigma": tf.where(gate(14, c.blur_prob), u[:, 15] * c.blur_sigma, zero),
    }


def affine_matrices(angle, scale, shift, flip) -> tuple[tf.Tensor, tf.Tensor]:
    """Forward (input → output) and inverse (output → input) affines, each (B, 2, 3).

    Forward: p_out = c + s·R(θ)·F·(p_in − c) + shift with F = diag(−1, 1) when flipping, so a
    bare flip is x → 95 − x. The inverse is what ``ImageProjectiveTransformV3`` wants.
    """
    angle = tf.convert_to_tensor(angle, tf.float32)
    scale = tf.convert_to_tensor(scale, tf.float32)
    shift = tf.convert_to_tensor(shift, tf.float32)
    f = tf.where(tf.convert_to_tensor(flip, tf.bool), -1.0, 1.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    s = scale[:, None, None]
    fwd = tf.reshape(tf.stack([f * cos, -sin, f * sin, cos], axis=1), [-1, 2, 2]) * s
    inv = tf.reshape(tf.stack([f * cos, f * sin, -sin, cos], axis=1), [-1, 2, 2]) / s
    centre = tf.constant([CENTRE, CENTRE], tf.float32)
    # b = c + shift − A·c ;  b_inv = c − A⁻¹·(c + shift)
    fwd_b = centre + shift - tf.linalg.matvec(fwd, tf.broadcast_to(centre, tf.shape(shift)))
    inv_b = centre - tf.linalg.matvec(inv, centre + shift)
    return (
        tf.concat([fwd, fwd_b[:, :, None]], axis=2),
        tf.concat([inv, inv_b[:, :, None]], axis=2),
    )


def warp_batch(images, keypoints, forward, inverse, flip) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply one affine per image to images and keypoints; flipped rows swap left/right labels.

    Keypoints landing outside the frame (:data:`fkd_core.keypoints.FRAME`) become NaN (both
    coordinates) rather than wrong values.
    """
    transforms = tf.concat(
        [tf.reshape(inverse, [-1, 6]), tf.zeros([tf.shape(inverse)[0], 2], tf.float32)], axis=1
    )
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([IMAGE_SIZE, IMAGE_SIZE], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode=FILL_MODE,
    )
    sets = _keypoint_sets(keypoints)
    pts = tf.reshape(keypoints, [-1, sets * N_KEYPOINTS, 2])
    pts = tf.einsum("bij,bkj->bki", forward[:, :, :2], pts) + forward[:, None, :, 2]
    inside = tf.reduce_all((pts >= FRAME[0]) & (pts <= FRAME[1]), axis=2, keepdims=True)
    pts = tf.where(inside, pts, tf.constant(np.nan, tf.float32))
    kp = tf.reshape(pts, [-1, sets * N_COORDS])
    permutation = np.concatenate([FLIP_COLUMN_PERMUTATION + i * N_COORDS for i in range(sets)])
    kp = tf.where(flip[:, None], tf.gather(kp, permutation, axis=1), kp)
    return images, kp


def _keypoint_sets(keypoints: tf.Tensor) -> int:
    """How many sets of 30 columns ``keypoints`` holds side by side (training with
    pseudo-labels carries the real labels and the pseudo-labels as two sets, moved alike)."""
    columns = keypoints.shape[-1]
    if columns is None or columns % N_COORDS:
        raise ValueError(f"keypoints must have a multiple of {N_COORDS} columns, not {columns}")
    return columns // N_COORDS


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur with a per-image σ (σ = 0 is the identity).

    The batch is moved into the channel axis so one depthwise convolution per direction blurs
    every image with its own kernel. Borders are reflected so edges don't darken.
    """
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    s = tf.maximum(sigma, 1e-3)[:, None]  # exp(-k²/2σ²) → a delta as σ → 0, never 0/0
    w = tf.exp(-0.5 * tf.square(taps[None, :] / s))
    w = tf.transpose(w / tf.reduce_sum(w, axis=1, keepdims=True))  # (K, B)
    x = tf.transpose(images, [3, 1, 2, 0])  # (1, H, W, B)
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, w[:, None, :, None], [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, w[None, :, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(x, [3, 1, 2, 0])


def augment_batch(images, keypoints, seed, config: AugmentConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """Augment a batch: images (B, 96, 96, 1) in [0, 1] (or uint8), keypoints (B, 30) in pixels
    (or (B, 30·k): k sets of keypoints of the same faces, each moved and flipped alike).

    Geometry (rotation, scale, shift, flip) is one affine per image, applied to pixels and
    keypoints alike; then brightness, contrast, blur and noise (noise last so blur doesn't
    erase it), then a clip to [0, 1]; images come back float32. ``seed`` is an int (2,)
    tensor (a scalar s means (s, 0)). ``config`` is static: disabled transforms cost nothing.
    Graph-safe, so it runs inside ``tf.data`` maps.
    """
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:  # the data sets store uint8; scaling here saves a map step
        images = tf.cast(images, tf.float32) / 255.0
    elif not images.dtype.is_floating:
        raise ValueError(f"images must be uint8 or floating, got {images.dtype.name}")
    images = tf.ensure_shape(tf.cast(images, tf.float32), [None, IMAGE_SIZE, IMAGE_SIZE, 1])
    keypoints = tf.cast(keypoints, tf.float32)
    keypoints = tf.ensure_shape(keypoints, [None, _keypoint_sets(keypoints) * N_COORDS])
    seed = _seed_tensor(seed)
    param_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    p = _sample_params(tf.shape(images)[0], param_seed, config)

    if config.geometric:
        forward, inverse = affine_matrices(p["angle"], p["scale"], p["shift"], p["flip"])
        images, keypoints = warp_batch(images, keypoints, forward, inverse, p["flip"])

    c = config
    if c.brightness_prob > 0 and c.brightness > 0:
        images = images + p["brightness"][:, None, None, None]
    if c.contrast_prob > 0 and c.contrast > 0:
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * p["contrast"][:, None, None, None] + mean
    if c.blur_prob > 0 and c.blur_sigma > 0:
        radius = max(1, math.ceil(3 * c.blur_sigma))
        images = _on_subset(
            images,
            p["blur_sigma"] > 0,
            lambda x, idx: gaussian_blur(x, tf.gather(p["blur_sigma"], idx), radius),
        )
    if c.noise_prob > 0 and c.noise_std > 0:

        def add_noise(x, idx):
            noise = tf.random.stateless_normal(tf.shape(x), seed=noise_seed)
            return x + noise * tf.gather(p["noise_std"], idx)[:, None, None, None]

        images = _on_subset(images, p["noise_std"] > 0, add_noise)
    return tf.clip_by_value(images, 0.0, 1.0), keypoints


def _on_subset(images: tf.Tensor, mask: tf.Tensor, fn) -> tf.Tensor:
    """Run ``fn(selected_images, indices)`` only where ``mask`` holds, to skip wasted work.

    Noise and blur hit a minority of images and dominate the cost when run on all of them.
    The k-th selected image gets the k-th noise slab, so results still depend only on the seed
    and on the images at or before it in the batch.
    """
    idx = tf.where(mask)[:, 0]

    def run() -> tf.Tensor:
        return tf.tensor_scatter_nd_update(images, idx[:, None], fn(tf.gather(images, idx), idx))

    return tf.cond(tf.size(idx) > 0, run, lambda: images)


def make_augment_fn(
    config: AugmentConfig, base_seed: int = 0
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """``fn(images, keypoints, step)`` for ``tf.data``: batch ``step`` uses seed (base_seed, step).

    Pair each batch with a deterministic step, e.g.::

        steps = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((batched, steps)).map(
            lambda batch, step: fn(*batch, step), num_parallel_calls=tf.data.AUTOTUNE)

    ``step`` may also be a (2,) int tensor (e.g. from ``Dataset.random(seed).batch(2)``), which
    is then mixed with ``base_seed`` so different base seeds still give different streams.
    A ``counter()`` restarts with every iteration, so each epoch would repeat the same
    augmentations; :func:`augment_dataset` avoids that.
    """
    base = tf.constant(int(base_seed), tf.int64)

    def fn(images, keypoints, step):
        step = tf.cast(step, tf.int64)
        if step.shape.rank == 0:
            seed = tf.stack([base, step])
        else:
            seed = tf.ensure_shape(step, [2]) + tf.stack([base, tf.constant(0, tf.int64)])
        return augment_batch(images, keypoints, seed, config)

    return fn


def augment_dataset(ds: tf.data.Dataset, config: AugmentConfig, seed: int = 0) -> tf.data.Dataset:
    """Augment a *batched* ``(images, keypoints)`` dataset with a parallel, ordered map.

    Per-batch seeds come from ``Dataset.random(seed, rerandomize_each_iteration=True)``: the
    result is reproducible for a given seed, yet each new iteration (each Keras epoch, or each
    pass of a later ``.repeat()``) sees fresh augmentations.
    """
    fn = make_augment_fn(config, seed)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda batch, step: fn(batch[0], batch[1], step),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


# --------------------------------------------------------------------------- NumPy API


def _image_to_float(image: np.ndarray) -> tuple[np.ndarray, np.dtype, tuple[int, ...]]:
    image = np.asarray(image)
    if image.shape not in ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE, IMAGE_SIZE, 1)):
        raise ValueError(f"image must be (96, 96) or (96, 96, 1), got {image.shape}")
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        if image.size and np.nanmax(image) > 1.0 + 1e-6:
            raise ValueError("float images must be scaled to [0, 1] (pass uint8 for 0..255)")
        x = image.astype(np.float32)
    else:
        raise ValueError(f"image dtype must be uint8 or floating, got {image.dtype}")
    return x.reshape(IMAGE_SIZE, IMAGE_SIZE, 1), image.dtype, image.shape


def _float_to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return x.astype(dtype)


def _keypoints_1d(keypoints) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.shape != (N_COORDS,):
        raise ValueError(f"keypoints must be ({N_COORDS},) in pixels, got {kp.shape}")
    return kp


def augment_samples(
    image, keypoints, n: int, config: AugmentConfig | None = None, seed=0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` augmentations of one image in a single batched call (for a preview grid).

    Returns images (n, 96, 96) in the input dtype and float32 keypoints (n, 30). Sample ``i``
    depends only on ``seed`` and ``i``, so growing ``n`` keeps the earlier samples.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    config = AugmentConfig() if config is None else config
    x, dtype, _ = _image_to_float(image)
    kp = _keypoints_1d(keypoints)
    out_x, out_kp = augment_batch(
        np.broadcast_to(x, (n, *x.shape)), np.broadcast_to(kp, (n, N_COORDS)), seed, config
    )
    return _float_to_dtype(out_x.numpy()[..., 0], dtype), out_kp.numpy()


def augment(image, keypoints, config: AugmentConfig | None = None, seed=0):
    """Augment one image (uint8 or float in [0, 1], (96, 96) or (96, 96, 1)) and its keypoints.

    Returns the image in the input dtype and shape plus float32 keypoints (30,). Pure: equal to
    element 0 of ``augment_batch(..., seed=[seed, 0])``.
    """
    _, _, shape = _image_to_float(image)
    images, kps = augment_samples(image, keypoints, 1, config, seed)
    return images[0].reshape(shape), kps[0]


def flip_pair(image, keypoints):
    """The horizontally flipped image and keypoints, computed by the training code itself."""
    return augment(image, keypoints, dataclasses.replace(AugmentConfig.none(), flip_prob=1.0))

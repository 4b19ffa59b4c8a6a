"""Keypoint-aware augmentation: geometry is exact, labels follow flips, results are reproducible.

Blob centroids track transformed keypoints to ~0.06 px; the 0.15 px tolerance still catches
any half-pixel convention slip between the image warp and the keypoint maths.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from fkd_core import keypoints as K
from fkd_core.augment import (
    AugmentConfig,
    affine_matrices,
    augment,
    augment_batch,
    augment_dataset,
    augment_samples,
    flip_pair,
    gaussian_blur,
    make_augment_fn,
    warp_batch,
)

NONE = AugmentConfig.none()
GEOMETRIC = dataclasses.replace(
    NONE, flip_prob=0.5, rotate_prob=1.0, rotate_deg=20.0, scale_prob=1.0, scale=0.15,
    shift_prob=1.0, shift_px=6.0,
)  # fmt: skip
PHOTOMETRIC = dataclasses.replace(
    NONE, brightness_prob=1.0, contrast_prob=1.0, noise_prob=1.0, blur_prob=1.0
)
FLIP_ONLY = dataclasses.replace(NONE, flip_prob=1.0)

# 15 points on a 4×4 grid (15 px apart, all well inside the frame), one per keypoint column.
_GRID = np.array([(x, y) for y in (26.3, 41.1, 56.6, 71.2) for x in (25.7, 40.9, 55.2, 70.6)])
BLOB_KP = _GRID[:15].reshape(-1).astype(np.float32)


def blob_image(kp: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Small Gaussian dots (≈3×3 px) at sub-pixel keypoint positions on black, (96, 96) float32."""
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    img = np.zeros((96, 96), np.float32)
    for x, y in K.as_points(kp):
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    img[img < 1e-6] = 0.0  # TF flushes denormals to zero; keep exact comparisons meaningful
    return np.clip(img, 0, 1)


def centroid(img: np.ndarray, x: float, y: float, r: int = 4) -> tuple[float, float]:
    """Brightness-weighted centroid of the window of radius r around (x, y)."""
    cx, cy = int(round(x)), int(round(y))
    win = img[cy - r : cy + r + 1, cx - r : cx + r + 1]
    yy, xx = np.mgrid[cy - r : cy + r + 1, cx - r : cx + r + 1]
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


def assert_blobs_follow(images: np.ndarray, kps: np.ndarray, min_checked: int) -> None:
    checked = 0
    for img, kp in zip(images.reshape(-1, 96, 96), kps):
        for x, y in K.as_points(kp):
            if not (np.isfinite(x) and 8 <= x <= 87 and 8 <= y <= 87):
                continue
            gx, gy = centroid(img, x, y)
            assert abs(gx - x) < 0.15 and abs(gy - y) < 0.15, ((x, y), (gx, gy))
            checked += 1
    assert checked >= min_checked


def batch_of(img: np.ndarray, kp: np.ndarray, n: int):
    return np.repeat(img[None, :, :, None], n, 0), np.repeat(kp[None], n, 0)


def test_random_geometry_moves_blobs_and_keypoints_together():
    images, kps = batch_of(blob_image(BLOB_KP), BLOB_KP, 12)
    out, out_kp = augment_batch(images, kps, [3, 4], GEOMETRIC)
    out, out_kp = out.numpy(), out_kp.numpy()
    assert not np.allclose(out_kp, kps)  # something actually moved
    assert_blobs_follow(out, out_kp, min_checked=12 * 13)


def test_quarter_turn_is_exact_and_centred():
    """A 90° turn about (47.5, 47.5) maps the pixel grid onto itself: equals np.rot90."""
    rng = np.random.default_rng(0)
    img = rng.random((1, 96, 96, 1)).astype(np.float32)
    kp = np.array([[10.0, 20.0] * 15], np.float32)
    fwd, inv = affine_matrices([np.pi / 2], [1.0], [[0.0, 0.0]], [False])
    out, out_kp = warp_batch(img, kp, fwd, inv, tf.constant([False]))
    np.testing.assert_allclose(out.numpy()[0, ..., 0], np.rot90(img[0, ..., 0], -1), atol=1e-4)
    np.testing.assert_allclose(out_kp.numpy()[0, :2], [95 - 20.0, 10.0], atol=1e-4)
    assert out.numpy()[0, 10, 75, 0] == pytest.approx(img[0, 20, 10, 0], abs=1e-4)


def test_flip_swaps_labels_and_matches_keypoints_module():
    rng = np.random.default_rng(1)
    img = rng.random((96, 96)).astype(np.float32)
    kp = rng.uniform(0, 95, 30).astype(np.float32)
    kp[K.column_indices(["nose_tip"])] = np.nan
    f_img, f_kp = flip_pair(img, kp)
    np.testing.assert_array_equal(f_img, K.flip_images(img))
    np.testing.assert_allclose(f_kp, K.flip_keypoints(kp), atol=1e-5)
    le, re = K.column_indices(["left_eye_center"]), K.column_indices(["right_eye_center"])
    np.testing.assert_allclose(f_kp[le], [95 - kp[re][0], kp[re][1]], atol=1e-5)
    np.testing.assert_allclose(f_kp[re], [95 - kp[le][0], kp[le][1]], atol=1e-5)
    assert np.isnan(f_kp[K.column_indices(["nose_tip"])]).all()

    back_img, back_kp = flip_pair(f_img, f_kp)
    np.testing.assert_array_equal(back_img, img)
    np.testing.assert_allclose(back_kp, kp, atol=1e-5)
    quarter = np.round(kp * 4) / 4  # exactly representable: the double flip is bit-exact
    np.testing.assert_array_equal(flip_pair(img, flip_pair(img, quarter)[1])[1], quarter)


def test_flip_in_a_batch_only_permutes_flipped_rows():
    images, kps = batch_of(blob_image(BLOB_KP), BLOB_KP, 16)
    cfg = dataclasses.replace(NONE, flip_prob=0.5)
    out, out_kp = (t.numpy() for t in augment_batch(images, kps, [9, 9], cfg))
    flipped = ~np.isclose(out_kp[:, 0], kps[:, 0])
    assert 0 < flipped.sum() < 16
    np.testing.assert_allclose(out_kp[flipped], K.flip_keypoints(kps[flipped]), atol=1e-5)
    np.testing.assert_array_equal(out[~flipped], images[~flipped])
    np.testing.assert_array_equal(out[flipped], K.flip_images(images[flipped]))


def test_a_second_set_of_keypoints_moves_and_flips_with_the_first():
    """Training with pseudo-labels augments (real labels, pseudo-labels) side by side: each
    set must come out exactly as it would alone under the same seed."""
    images, kps = batch_of(blob_image(BLOB_KP), BLOB_KP, 16)
    other = kps[:, ::-1] * 0.5 + 20.0  # another set of points, other left/right pairs
    other[3, 4:8] = np.nan
    cfg = AugmentConfig()
    out, both = (t.numpy() for t in augment_batch(images, np.concatenate([kps, other], 1),
                                                  [4, 2], cfg))
    alone_img, alone = (t.numpy() for t in augment_batch(images, kps, [4, 2], cfg))
    other_alone = augment_batch(images, other, [4, 2], cfg)[1].numpy()
    assert both.shape == (16, 60)
    np.testing.assert_array_equal(out, alone_img)
    np.testing.assert_allclose(both[:, :30], alone, atol=1e-5)
    np.testing.assert_allclose(both[:, 30:], other_alone, atol=1e-5)
    assert np.isnan(both[3, 34:38]).all()
    with pytest.raises(ValueError, match="multiple of 30 columns"):
        augment_batch(images, kps[:, :20], [4, 2], cfg)


def test_out_of_frame_keypoints_become_nan():
    kp = np.array(
        [47.5, 47.5, 1.0, 47.5, 94.0, 47.5, 47.5, 1.0, 47.5, 94.0] + [np.nan, np.nan] + [60.0] * 18,
        np.float32,
    )
    images = np.zeros((32, 96, 96, 1), np.float32)
    kps = np.repeat(kp[None], 32, 0)
    cfg = dataclasses.replace(NONE, shift_prob=1.0, shift_px=30.0)
    out_kp = augment_batch(images, kps, [5, 6], cfg)[1].numpy()
    shift = out_kp[:, :2] - 47.5  # the centre point never leaves the frame
    expected = (K.as_points(kps) + shift[:, None, :]).reshape(32, 30)
    outside = (~K.in_frame(expected)).repeat(2, axis=1)
    assert outside.any() and (~outside).any()
    assert np.isnan(out_kp[outside]).all()
    inside = ~outside & np.isfinite(kps)
    np.testing.assert_allclose(out_kp[inside], expected[inside], atol=1e-4)
    assert np.isnan(out_kp[:, 10:12]).all()  # missing stays missing
    assert (np.isnan(out_kp[:, 0::2]) == np.isnan(out_kp[:, 1::2])).all()


def test_same_seed_same_output_different_seed_differs():
    images, kps = batch_of(blob_image(BLOB_KP), BLOB_KP, 4)
    cfg = AugmentConfig()
    a = [t.numpy() for t in augment_batch(images, kps, [1, 2], cfg)]
    b = [t.numpy() for t in augment_batch(images, kps, [1, 2], cfg)]
    c = [t.numpy() for t in augment_batch(images, kps, [1, 3], cfg)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_numpy_entry_points_equal_the_batch_function():
    all_on = AugmentConfig(
        **{k: (1.0 if k.endswith("_prob") else v) for k, v in AugmentConfig().to_dict().items()}
    )
    rng = np.random.default_rng(2)
    img = rng.random((96, 96)).astype(np.float32)
    images = np.concatenate([img[None, :, :, None], rng.random((3, 96, 96, 1))]).astype("f4")
    kps = np.repeat(BLOB_KP[None], 4, 0)
    b_img, b_kp = (t.numpy() for t in augment_batch(images, kps, [7, 0], all_on))

    one_img, one_kp = augment(img, BLOB_KP, all_on, seed=7)
    assert one_img.shape == (96, 96) and one_img.dtype == np.float32
    assert one_kp.shape == (30,) and one_kp.dtype == np.float32
    np.testing.assert_allclose(one_img, b_img[0, ..., 0], atol=1e-6)
    np.testing.assert_allclose(one_kp, b_kp[0], atol=1e-6)

    s_img, s_kp = augment_samples(img, BLOB_KP, 5, all_on, seed=7)
    assert s_img.shape == (5, 96, 96) and s_kp.shape == (5, 30)
    np.testing.assert_allclose(s_img[0], one_img, atol=1e-6)
    s3_img, s3_kp = augment_samples(img, BLOB_KP, 3, all_on, seed=7)  # prefix-stable
    np.testing.assert_allclose(s3_img, s_img[:3], atol=1e-6)
    np.testing.assert_allclose(s3_kp, s_kp[:3], atol=1e-6)

    u8 = (img * 255).astype(np.uint8)[:, :, None]
    u_img, _ = augment(u8, BLOB_KP, GEOMETRIC, seed=3)
    assert u_img.dtype == np.uint8 and u_img.shape == (96, 96, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        augment(img * 255, BLOB_KP)


def test_none_is_identity():
    rng = np.random.default_rng(3)
    images = rng.random((3, 96, 96, 1)).astype(np.float32)
    kps = rng.uniform(0, 95, (3, 30)).astype(np.float32)
    kps[1, 4:8] = np.nan
    out, out_kp = augment_batch(images, kps, [0, 1], NONE)
    np.testing.assert_array_equal(out.numpy(), images)
    np.testing.assert_array_equal(out_kp.numpy(), kps)
    u8 = (images[0, ..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(augment(u8, kps[0], NONE)[0], u8)


def test_uint8_batches_are_scaled_to_unit_range():
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, (2, 96, 96, 1), dtype=np.uint8)
    kps = rng.uniform(0, 95, (2, 30)).astype(np.float32)
    out, _ = augment_batch(u8, kps, [0, 0], NONE)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), u8 / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 or floating"):
        augment_batch(u8.astype(np.int32), kps, [0, 0], NONE)


def test_photometric_changes_pixels_not_keypoints():
    images, kps = batch_of(blob_image(BLOB_KP) * 0.6 + 0.2, BLOB_KP, 6)
    kps[2, :6] = np.nan
    out, out_kp = augment_batch(images, kps, [4, 4], PHOTOMETRIC)
    np.testing.assert_array_equal(out_kp.numpy(), kps)
    assert not np.allclose(out.numpy(), images, atol=1e-3)
    assert out.numpy().min() >= 0.0 and out.numpy().max() <= 1.0


def test_blur_is_identity_at_zero_sigma_and_keeps_blob_centres():
    img = blob_image(BLOB_KP)[None, :, :, None]
    images = np.repeat(img, 2, 0)
    out = gaussian_blur(tf.constant(images), tf.constant([0.0, 1.5]), radius=5).numpy()
    np.testing.assert_allclose(out[0], images[0], atol=1e-6)
    assert out[1].max() < 0.8 * images[1].max()  # visibly blurred
    assert_blobs_follow(out[1:], BLOB_KP[None], min_checked=15)


def test_tf_data_pipeline_with_parallel_map():
    images, kps = batch_of(blob_image(BLOB_KP), BLOB_KP, 32)
    ds = tf.data.Dataset.from_tensor_slices((images, kps)).batch(8)
    aug = augment_dataset(ds, dataclasses.replace(GEOMETRIC, brightness_prob=1.0), seed=11)
    first = [(x.numpy(), k.numpy()) for x, k in aug]
    assert len(first) == 4
    for x, k in first:
        assert x.shape == (8, 96, 96, 1) and x.dtype == np.float32
        assert k.shape == (8, 30) and k.dtype == np.float32
    # Brightness may lift the background uniformly; subtract it before taking centroids.
    xs = np.concatenate([x for x, _ in first])
    xs = xs - np.median(xs, axis=(1, 2, 3), keepdims=True)
    assert_blobs_follow(np.clip(xs, 0, None), np.concatenate([k for _, k in first]), 32 * 12)

    again = [x.numpy() for x, _ in augment_dataset(ds, GEOMETRIC, seed=11)]
    rebuilt = [x.numpy() for x, _ in augment_dataset(ds, GEOMETRIC, seed=11)]
    assert all(np.array_equal(a, b) for a, b in zip(again, rebuilt))

    fn = make_augment_fn(GEOMETRIC, base_seed=5)
    steps = tf.data.Dataset.counter()
    mapped = tf.data.Dataset.zip((ds, steps)).map(
        lambda batch, step: fn(*batch, step), num_parallel_calls=tf.data.AUTOTUNE
    )
    x0, _ = next(iter(mapped))
    np.testing.assert_array_equal(
        x0.numpy(), augment_batch(images[:8], kps[:8], [5, 0], GEOMETRIC)[0]
    )


def test_demo_faces_keep_eye_centres_on_dark_irises():
    synthetic = pytest.importorskip("fkd_core.synthetic")
    faces, kps = synthetic.generate_faces(8, seed=0)
    cfg = dataclasses.replace(AugmentConfig(), noise_prob=0.0, flip_prob=0.5, rotate_prob=1.0)
    eyes = K.column_indices(["left_eye_center", "right_eye_center"])
    yy, xx = np.mgrid[0:96, 0:96]
    checked = 0
    for i, (face, kp) in enumerate(zip(faces, kps)):
        imgs, out_kp = augment_samples(face, kp, 4, cfg, seed=i)
        for img, k in zip(imgs.astype(np.float32), out_kp):
            for x, y in k[eyes].reshape(-1, 2):
                if np.isfinite(x):
                    disc = (xx - x) ** 2 + (yy - y) ** 2 <= 1.5**2
                    assert img[disc].mean() < img.mean(), (i, x, y)
                    checked += 1
    assert checked >= 60


@pytest.mark.parametrize(
    "field, value",
    [
        ("flip_prob", 1.5),
        ("noise_prob", -0.1),
        ("rotate_deg", -1.0),
        ("scale", 1.0),
        ("contrast", 2.0),
        ("blur_sigma", float("nan")),
        ("shift_px", "8"),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_config_round_trips_through_json():
    cfg = dataclasses.replace(AugmentConfig(), rotate_deg=10, noise_prob=0.0)
    back = AugmentConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and isinstance(back.rotate_deg, float)
    assert all(v == 0.0 for k, v in dataclasses.asdict(NONE).items() if k.endswith("_prob"))
    with pytest.raises(ValueError, match="bogus"):
        AugmentConfig.from_dict({"bogus": 1})

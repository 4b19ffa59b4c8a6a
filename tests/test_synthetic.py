"""The demo faces: reproducible, varied, and labelled exactly where the features are drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fkd_core import keypoints as K
from fkd_core import synthetic

N_CHECK = 300


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate_faces(N_CHECK, seed=11)


def _disc_mean(images: np.ndarray, pts: np.ndarray, r: float = 1.5) -> np.ndarray:
    """Mean intensity of the pixels whose centres lie within `r` of each face's point (n, 2)."""
    n = len(images)
    rows = np.arange(n)
    cx, cy = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    total, count = np.zeros(n), np.zeros(n)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            px, py = cx + dx, cy + dy
            inside = (px >= 0) & (px < K.IMAGE_SIZE) & (py >= 0) & (py < K.IMAGE_SIZE)
            near = (px - pts[:, 0]) ** 2 + (py - pts[:, 1]) ** 2 <= r * r
            vals = images[rows, np.clip(py, 0, 95), np.clip(px, 0, 95)].astype(float)
            total += np.where(inside & near, vals, 0.0)
            count += inside & near
    return total / np.maximum(count, 1)


def _feature_checks(images: np.ndarray, keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """Per face and keypoint: is the label on its feature? Each check compares the disc at the
    keypoint with a nearby disc that should be skin, along the face's own axes (so roll and
    flips do not matter), and would fail if the label were a few pixels off."""
    p = K.as_points(keypoints).astype(float)
    at = {name: p[:, i] for i, name in enumerate(K.KEYPOINT_NAMES)}
    right = at["left_eye_center"] - at["right_eye_center"]  # towards the image's right
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    up = np.stack([right[:, 1], -right[:, 0]], axis=1)
    eye_mid = (at["left_eye_center"] + at["right_eye_center"]) / 2
    eye_mouth = np.linalg.norm(at["mouth_center_bottom_lip"] - eye_mid, axis=1, keepdims=True)

    def disc(name: str, offset=0.0) -> np.ndarray:
        return _disc_mean(images, at[name] + offset)

    out = {}
    for name in ("left_eye_center", "right_eye_center"):  # dark iris above a lighter cheek
        out[name] = disc(name) < disc(name, -0.3 * eye_mouth * up) - 15
    for name in K.GROUPS["eyebrows"]:  # dark stroke below a lighter forehead
        out[name] = disc(name) < 0.85 * disc(name, 4 * up)
    # Dark commissures with skin just outside them; lips darker than the skin beyond their edge.
    out["mouth_left_corner"] = disc("mouth_left_corner") < disc("mouth_left_corner", 4 * right) - 10
    out["mouth_right_corner"] = (
        disc("mouth_right_corner") < disc("mouth_right_corner", -4 * right) - 10
    )
    top, bottom = "mouth_center_top_lip", "mouth_center_bottom_lip"
    out[top] = disc(top) < disc(top, 3.5 * up) - 8
    out[bottom] = disc(bottom) < disc(bottom, -3.5 * up) - 8
    out["nose_tip"] = disc("nose_tip") > disc("nose_tip", -2 * up) + 5  # highlight over shadow
    return out


def test_shapes_dtypes_and_frame(faces):
    images, kps = faces
    assert images.shape == (N_CHECK, 96, 96) and images.dtype == np.uint8
    assert kps.shape == (N_CHECK, 30) and kps.dtype == np.float32
    assert np.isfinite(kps).all()
    assert kps.min() >= 0.0 and kps.max() <= 95.0


def test_deterministic_per_seed_and_prefix_stable():
    a_img, a_kp = synthetic.generate_faces(40, seed=3)
    b_img, b_kp = synthetic.generate_faces(40, seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_kp.tobytes() == b_kp.tobytes()
    c_img, c_kp = synthetic.generate_faces(40, seed=4)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_kp, c_kp)
    d_img, d_kp = synthetic.generate_faces(21, seed=3)
    np.testing.assert_array_equal(d_img, a_img[:21])
    np.testing.assert_array_equal(d_kp, a_kp[:21])
    assert synthetic.generate_faces(0)[0].shape == (0, 96, 96)


def test_faces_vary(faces):
    images, kps = faces[0][:200], faces[1][:200]
    p = K.as_points(kps)
    assert images.reshape(200, -1).mean(axis=1).std() > 15  # skin, background, light
    inter_eye = np.linalg.norm(p[:, 0] - p[:, 1], axis=1)
    assert inter_eye.std() > 2.0 and inter_eye.max() - inter_eye.min() > 10
    roll = np.degrees(np.arctan2(p[:, 0, 1] - p[:, 1, 1], p[:, 0, 0] - p[:, 1, 0]))
    assert roll.std() > 5 and np.abs(roll).max() < 20
    assert p[:, K.keypoint_index("nose_tip")].std(axis=0).min() > 2  # position shifts
    assert images.std(axis=0).mean() > 30  # pixels differ from face to face


def test_subject_left_is_image_right(faces):
    p = K.as_points(faces[1])
    x = {name: p[:, i, 0] for i, name in enumerate(K.KEYPOINT_NAMES)}
    assert (x["left_eye_center"] > x["right_eye_center"]).all()
    assert (x["left_eye_outer_corner"] > x["left_eye_inner_corner"]).all()
    assert (x["right_eye_inner_corner"] > x["right_eye_outer_corner"]).all()
    assert (x["left_eyebrow_outer_end"] > x["left_eyebrow_inner_end"]).all()
    assert (x["mouth_left_corner"] > x["mouth_right_corner"]).all()


def test_keypoints_sit_on_drawn_features(faces):
    checks = _feature_checks(*faces)
    assert set(checks) == set(K.KEYPOINT_NAMES) - set(K.GROUPS["eyes"][2:])
    rates = {name: ok.mean() for name, ok in checks.items()}
    assert min(rates.values()) >= 0.95, rates
    p = K.as_points(faces[1])
    for side in ("left", "right"):  # each eye centre lies between its own corners
        c, i, o = (
            p[:, K.keypoint_index(f"{side}_eye_{n}")]
            for n in ("center", "inner_corner", "outer_corner")
        )
        assert (np.sum((c - i) * (o - i), axis=1) > 0).all()
        assert (np.sum((c - o) * (i - o), axis=1) > 0).all()


@pytest.mark.parametrize("shift", [(6, 0), (-6, 0), (0, 6), (0, -6)])
def test_feature_checks_reject_misplaced_keypoints(faces, shift):
    """The checks above have teeth: labels moved 6 px fail them on most faces."""
    images, kps = faces
    moved = kps.copy()
    moved[:, 0::2] += shift[0]
    moved[:, 1::2] += shift[1]
    checks = _feature_checks(images, moved)
    assert np.all(np.stack(list(checks.values())), axis=0).mean() < 0.2
    assert sum(ok.mean() < 0.95 for ok in checks.values()) >= 4


def test_flip_keeps_labels_on_features(faces):
    images, kps = faces
    f_img, f_kp = K.flip_images(images), K.flip_keypoints(kps)
    fp = K.as_points(f_kp)
    left, right = K.keypoint_index("left_eye_center"), K.keypoint_index("right_eye_center")
    assert (fp[:, left, 0] > fp[:, right, 0]).all()  # subject's left still at larger x
    checks = _feature_checks(f_img, f_kp)
    rates = {name: ok.mean() for name, ok in checks.items()}
    assert min(rates.values()) >= 0.95, rates


def test_yaw_transform_round_trips():
    u = np.linspace(-40, 40, 81, dtype=np.float32)
    for yaw in (-0.14, 0.0, 0.1):
        yaw = np.float32(yaw)
        back = synthetic._yaw_inverse(synthetic._yaw_forward(u, yaw), yaw)
        np.testing.assert_allclose(back, u, atol=1e-4)


def test_write_demo_files(tmp_path):
    calls = []
    out = synthetic.write_demo(
        tmp_path / "demo", n_train=60, n_test=18, seed=2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls and calls[-1] == (78, 78)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    train = pd.read_csv(out["training"])
    assert list(train.columns) == [*K.COLUMN_NAMES, "Image"]
    assert len(train) == out["n_train"] == 60
    always = K.column_indices(K.ALWAYS_PRESENT)
    coords = train[list(K.COLUMN_NAMES)].to_numpy()
    assert not np.isnan(coords[:, always]).any()
    partial = np.isnan(coords).any(axis=1)
    assert (np.isnan(coords).sum(axis=1)[partial] == 22).all()
    assert abs(partial.mean() - 0.7) < 0.05 and partial.sum() == out["n_train_partial"]
    images, kps = synthetic.generate_faces(60, seed=2)
    pixels = np.stack([np.array(s.split(), dtype=np.uint8) for s in train["Image"]])
    np.testing.assert_array_equal(pixels.reshape(-1, 96, 96), images)
    np.testing.assert_allclose(coords[~partial], kps[~partial], atol=1e-5)

    test = pd.read_csv(out["test"])
    assert list(test.columns) == ["ImageId", "Image"]
    assert test["ImageId"].tolist() == list(range(1, 19))
    test_pixels = np.stack([np.array(s.split(), dtype=np.uint8) for s in test["Image"]])
    test_images, test_kps = synthetic.demo_test_faces(18, seed=2)
    np.testing.assert_array_equal(test_pixels.reshape(-1, 96, 96), test_images)
    assert not np.array_equal(test_images, images[:18])  # a stream of its own
    np.testing.assert_array_equal(synthetic.demo_test_keypoints(18, seed=2), test_kps)

    lookup = pd.read_csv(out["lookup"])
    assert list(lookup.columns) == ["RowId", "ImageId", "FeatureName", "Location"]
    assert lookup["Location"].isna().all()
    assert lookup["RowId"].tolist() == list(range(1, len(lookup) + 1))
    per_image = lookup.groupby("ImageId")["FeatureName"].agg(list)
    assert per_image.index.tolist() == list(range(1, 19))
    always_names = [K.COLUMN_NAMES[i] for i in always]
    full = [names == list(K.COLUMN_NAMES) for names in per_image]
    assert all(f or names == always_names for f, names in zip(full, per_image))
    assert sum(full) == out["n_test_full"] == 6
    assert len(lookup) == out["n_lookup_rows"] == 6 * 30 + 12 * 8

    sample = pd.read_csv(out["sample_submission"])
    assert list(sample.columns) == ["RowId", "Location"]
    assert sample["RowId"].tolist() == lookup["RowId"].tolist()
    assert (sample["Location"] == 0).all()
    written = sorted(f.name for f in (tmp_path / "demo").iterdir())  # no temp files, no labels
    assert written == ["IdLookupTable.csv", "SampleSubmission.csv", "test.csv", "training.csv"]

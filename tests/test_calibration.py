"""Label-offset calibration: the labels' x convention measured from the faces themselves."""

from __future__ import annotations

import numpy as np
import pytest

from fkd_core.calibration import estimate_label_offset, image_symmetry_axes
from fkd_core.keypoints import flip_images, flip_keypoints
from fkd_core.synthetic import generate_faces


@pytest.fixture(scope="module")
def faces():
    return generate_faces(300, seed=11)


def test_demo_labels_follow_the_index_convention(faces):
    images, kp = faces
    assert estimate_label_offset(images, kp) == 0.0


@pytest.mark.parametrize("shift", [1.0, -0.8, 0.5])
def test_shifted_labels_are_measured(faces, shift):
    images, kp = faces
    moved = kp.copy()
    moved[:, 0::2] += shift
    assert estimate_label_offset(images, moved) == pytest.approx(shift, abs=0.2)


def test_symmetry_axis_follows_image_shift(faces):
    images, _ = faces
    base = image_symmetry_axes(images[:50])
    shifted = np.roll(images[:50], 3, axis=2)
    assert np.median(image_symmetry_axes(shifted) - base) == pytest.approx(3.0, abs=0.3)
    mirrored = image_symmetry_axes(flip_images(images[:50]))
    assert np.median(mirrored + base) == pytest.approx(95.0, abs=0.3)


def test_flip_with_offset_mirrors_about_the_labels_axis():
    kp = np.full(30, 40.0, np.float32)
    assert flip_keypoints(kp, 1.0)[0] == pytest.approx(95 + 2 - 40)
    np.testing.assert_allclose(flip_keypoints(flip_keypoints(kp, 0.7), 0.7), kp, atol=1e-5)

"""The keypoint schema: one flip permutation, one coordinate convention, distinct colours."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fkd_core import keypoints as K


def test_columns_in_kaggle_order():
    assert len(K.COLUMN_NAMES) == 30
    assert K.COLUMN_NAMES[:4] == (
        "left_eye_center_x", "left_eye_center_y", "right_eye_center_x", "right_eye_center_y",
    )
    assert K.COLUMN_NAMES[-1] == "mouth_center_bottom_lip_y"


def test_flip_permutation_swaps_sides_and_is_an_involution():
    perm = K.FLIP_PERMUTATION
    np.testing.assert_array_equal(perm[perm], np.arange(15))
    np.testing.assert_array_equal(K.FLIP_COLUMN_PERMUTATION[K.FLIP_COLUMN_PERMUTATION],
                                  np.arange(30))
    for i, name in enumerate(K.KEYPOINT_NAMES):
        partner = K.KEYPOINT_NAMES[perm[i]]
        if name.startswith("left_") or "_left_" in name:
            assert partner == name.replace("left", "right")
        elif "right" in name:
            assert partner == name.replace("right", "left")
        else:
            assert partner == name  # nose tip and lip centres stay


def test_flip_keypoints_mirrors_x_and_swaps_labels():
    kp = np.arange(30, dtype=np.float32)
    kp[1::2] += 100  # distinguish y from x
    flipped = K.flip_keypoints(kp)
    le, re = K.keypoint_index("left_eye_center"), K.keypoint_index("right_eye_center")
    assert flipped[2 * le] == 95 - kp[2 * re] and flipped[2 * le + 1] == kp[2 * re + 1]
    np.testing.assert_array_equal(K.flip_keypoints(flipped), kp)
    missing = kp.copy()
    missing[4:8] = np.nan
    assert np.isnan(K.flip_keypoints(missing)).sum() == 4


def test_flip_images_mirrors_columns():
    img = np.zeros((2, 96, 96), np.uint8)
    img[:, 10, 3] = 255
    out = K.flip_images(img)
    assert out[0, 10, 92] == 255 and out[0, 10, 3] == 0
    np.testing.assert_array_equal(K.flip_images(img[..., None])[..., 0], out)


def test_groups_cover_every_keypoint_once_and_colours_distinguish_sides():
    members = [n for g in K.GROUPS.values() for n in g]
    assert sorted(members) == sorted(K.KEYPOINT_NAMES)
    colours = list(K.KEYPOINT_COLOURS.values())
    assert len(set(colours)) == 15
    for i, name in enumerate(K.KEYPOINT_NAMES):
        partner = K.KEYPOINT_NAMES[K.FLIP_PERMUTATION[i]]
        if partner != name:
            assert K.KEYPOINT_COLOURS[name] != K.KEYPOINT_COLOURS[partner]
    assert set(K.ALWAYS_PRESENT) < set(K.KEYPOINT_NAMES)


def test_reading_data_does_not_import_tensorflow(demo_dir):
    code = (
        "import sys; from fkd_core.cli import main\n"
        "try:\n    main(['data', 'summary', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
        "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-ABSENT')"
    )
    out = subprocess.run([sys.executable, "-c", code, str(demo_dir)], capture_output=True,
                         text=True, timeout=120)
    assert "training rows" in out.stdout, out.stderr
    assert out.stdout.strip().endswith("TF-ABSENT")

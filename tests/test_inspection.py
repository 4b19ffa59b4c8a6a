"""Activation maps and the flip audit, on a real tiny model and demo faces."""

from __future__ import annotations

import numpy as np
import pytest

from fkd_core import activations, dataset
from fkd_core.architectures import create_model
from fkd_core.audit import flip_audit, swap_labels
from fkd_core.keypoints import flip_keypoints


@pytest.fixture(scope="module")
def model():
    return create_model("alexnet", width=0.125, head="heatmap")


def test_feature_maps_and_tiles(model, demo_dir):
    face = dataset.load(demo_dir).train.images[0]
    layers = activations.conv_layer_names(model)
    assert len(layers) >= 3
    name, shape = layers[0]
    maps = activations.feature_maps(model, name, face)
    assert maps.shape == shape[1:]
    assert activations.submodel(model, name) is activations.submodel(model, name)
    tiled = activations.tile(maps, activations.top_channels(maps, 4), columns=2)
    h, w = maps.shape[:2]
    assert tiled.shape == (2 * h + 1, 2 * w + 1)
    assert np.nanmin(tiled) >= 0 and np.nanmax(tiled) <= 1
    assert np.isnan(tiled[h, :]).all()  # the padding row between tiles
    means = activations.channel_means(maps)
    top = activations.top_channels(maps, 3)
    assert means[top[0]] == means.max() and means[top[0]] >= means[top[1]] >= means[top[2]]


def test_flip_audit_flags_swapped_labels(demo_dir):
    """A model that predicts the truth exactly exposes a row whose labels were swapped."""
    train = dataset.load(demo_dir).train

    class Oracle:
        """Predicts the mirrored truth for mirrored faces: a perfect model for this test."""

        def __init__(self, truth):
            self.truth = truth

        def predict(self, x, batch_size=None, verbose=0):
            from fkd_core.targets import normalise_keypoints

            return normalise_keypoints(flip_keypoints(self.truth))

    rows = np.flatnonzero(train.complete)[:10]
    labels = train.keypoints.copy()
    true_labels = labels.copy()
    labels[rows[3]] = swap_labels(labels[rows[3]])
    audit = flip_audit(Oracle(true_labels[rows]), train.images, labels, rows=rows)
    table = audit.table(train.row_ids)
    assert table.row.iloc[0] == train.row_ids[rows[3]]
    assert table.likely_swap.iloc[0] and not table.likely_swap.iloc[1:].any()
    assert table.flip_rmse.iloc[1:].max() < 1e-3

"""Architectures, heads, masked loss and target scaling: tiny models, one training step each."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fkd_core.architectures import (
    ARCHITECTURES,
    SoftArgmax,
    conv_layers,
    create_model,
    list_architectures,
)
from fkd_core.keypoints import IMAGE_SIZE
from fkd_core.losses import MaskedMSE, MaskedRMSEPixels, masked_mse, masked_rmse_pixels
from fkd_core.targets import denormalise_keypoints, normalise_keypoints

TINY = 0.125

# Keras' own saving code trips NumPy 2's __array__(copy=...) deprecation on every variable.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    y = rng.uniform(-0.8, 0.8, (n, 30)).astype(np.float32)
    y[rng.random(y.shape) < 0.4] = np.nan
    y[0, :] = np.nan  # an unlabelled image in the batch must not break anything
    y[1, :4] = 0.1  # and at least some labels
    return x, y


def _train_step(model, x, y, run_eagerly):
    model.compile(
        optimizer="adam",
        loss=masked_mse,
        metrics=[MaskedRMSEPixels(), masked_rmse_pixels],
        run_eagerly=run_eagerly,
        jit_compile=False,
    )
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert np.isfinite(history.history["rmse_px"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.slow
@pytest.mark.parametrize("head", ["regression", "heatmap"])
@pytest.mark.parametrize("name", list_architectures())
def test_builds_trains_saves_and_loads(name, head, tmp_path):
    keras.utils.set_random_seed(0)
    model = create_model(name, width=TINY, head=head)
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert model.output_shape == (None, 30)

    convs = conv_layers(model)
    assert convs and all(len(shape) == 4 for _, shape in convs)

    x, y = _batch()
    # Eager: tracing a graph costs ~10× the step itself here; test_trains_in_graph_mode covers it.
    _train_step(model, x, y, run_eagerly=True)

    path = tmp_path / f"{name}_{head}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(
        loaded(x, training=False).numpy(), model(x, training=False).numpy(), rtol=1e-6, atol=1e-6
    )
    assert conv_layers(loaded) == convs


@pytest.mark.slow
def test_trains_in_graph_mode():
    model = create_model("alexnet", width=TINY, depth=2, head="heatmap")
    x, y = _batch()
    _train_step(model, x, y, run_eagerly=False)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_compiled_model_loads_in_safe_mode(tmp_path):
    model = create_model("simple", width=TINY)
    model.compile(optimizer="adam", loss=masked_mse, metrics=[MaskedRMSEPixels()])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.loss is masked_mse


def test_simple_matches_the_slides():
    model = create_model("simple")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1
    assert convs[0].filters == 6 and convs[0].kernel_size == (3, 3)
    assert convs[0].padding == "same" and convs[0].activation is keras.activations.relu
    out = model.layers[-1]
    assert isinstance(out, keras.layers.Dense) and out.units == 30
    assert out.activation is keras.activations.linear
    assert model.count_params() == 96 * 96 * 6 * 30 + 30 + 6 * 9 + 6 == 1_658_970


def test_every_output_is_linear():
    for name in list_architectures():
        out = create_model(name, width=TINY).layers[-1]
        assert out.activation is keras.activations.linear, name


def test_unknown_architecture_names_the_valid_ones():
    with pytest.raises(ValueError, match="resnet") as info:
        create_model("nope")
    assert all(name in str(info.value) for name in ARCHITECTURES)


def test_unknown_head_and_option_are_refused():
    with pytest.raises(ValueError, match="heatmap"):
        create_model("simple", head="segmentation")
    with pytest.raises(TypeError, match="grid_size"):
        create_model("simple", head="heatmap", hidden=10)


# --- masked loss ---------------------------------------------------------------------------

Y_TRUE = np.array([[0.5, np.nan, -0.25, 1.0], [np.nan, 0.0, np.nan, -1.0]], np.float32)
Y_PRED = np.array([[0.25, 3.0, 0.0, 0.5], [7.0, 0.5, -2.0, -0.5]], np.float32)


def _loss_and_grad(y_true, y_pred):
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        loss = masked_mse(tf.constant(y_true), pred)
    return float(loss), tape.gradient(loss, pred).numpy()


def test_masked_mse_ignores_nan_targets():
    labelled = ~np.isnan(Y_TRUE)
    n = labelled.sum()
    diff = (Y_PRED - Y_TRUE)[labelled]
    loss, grad = _loss_and_grad(Y_TRUE, Y_PRED)
    np.testing.assert_allclose(loss, np.mean(diff**2), rtol=1e-6)
    assert not np.isnan(grad).any()
    assert (grad[~labelled] == 0).all()
    np.testing.assert_allclose(grad[labelled], 2 * diff / n, rtol=1e-6)


def test_pseudo_labels_count_at_their_weight_and_are_not_scored():
    """(real, pseudo) targets: squared errors and counts of the pseudo-labels are weighted;
    the RMSE metric reads the real labels only."""
    pseudo = np.where(np.isnan(Y_TRUE), 0.1, np.nan).astype(np.float32)
    y_true = np.concatenate([Y_TRUE, pseudo], axis=1)
    real, guessed = ~np.isnan(Y_TRUE), ~np.isnan(pseudo)
    w = 0.25
    expected = (np.sum((Y_PRED - Y_TRUE)[real] ** 2)
                + w * np.sum((Y_PRED - pseudo)[guessed] ** 2)) / (real.sum() + w * guessed.sum())
    loss = MaskedMSE(w)
    np.testing.assert_allclose(float(loss(y_true, Y_PRED)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(loss(Y_TRUE, Y_PRED)), float(masked_mse(Y_TRUE, Y_PRED)),
                               rtol=1e-6)
    assert keras.losses.deserialize(keras.losses.serialize(loss)).pseudo_weight == w
    metric = MaskedRMSEPixels()
    metric.update_state(y_true, Y_PRED)
    np.testing.assert_allclose(float(metric.result()),
                               float(masked_rmse_pixels(Y_TRUE, Y_PRED)), rtol=1e-6)


def test_masked_mse_of_an_unlabelled_batch_is_zero():
    loss, grad = _loss_and_grad(np.full_like(Y_TRUE, np.nan), Y_PRED)
    assert loss == 0.0
    assert (grad == 0).all()


def test_masked_rmse_is_in_pixels():
    labelled = ~np.isnan(Y_TRUE)
    expected = np.sqrt(np.mean((Y_PRED - Y_TRUE)[labelled] ** 2)) * 48
    np.testing.assert_allclose(float(masked_rmse_pixels(Y_TRUE, Y_PRED)), expected, rtol=1e-6)
    metric = MaskedRMSEPixels()
    metric.update_state(Y_TRUE[:1], Y_PRED[:1])
    metric.update_state(Y_TRUE[1:], Y_PRED[1:])
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)


# --- soft-argmax and target scaling --------------------------------------------------------


@pytest.mark.parametrize("grid", [12, 24])
def test_soft_argmax_finds_a_sharp_peak_at_the_cell_centre(grid):
    rows = np.array([0, 5, grid - 1])
    cols = np.array([grid - 1, 2, 0])
    logits = np.zeros((1, grid, grid, len(rows)), np.float32)
    logits[0, rows, cols, np.arange(len(rows))] = 1e4
    xy = denormalise_keypoints(SoftArgmax()(logits).numpy()).reshape(-1, 2)
    cell = IMAGE_SIZE / grid
    np.testing.assert_allclose(xy[:, 0], (cols + 0.5) * cell - 0.5, atol=1e-4)
    np.testing.assert_allclose(xy[:, 1], (rows + 0.5) * cell - 0.5, atol=1e-4)


def test_soft_argmax_of_a_flat_heatmap_is_the_image_centre():
    xy = denormalise_keypoints(SoftArgmax()(np.zeros((2, 24, 24, 15), np.float32)).numpy())
    assert xy.shape == (2, 30)
    np.testing.assert_allclose(xy, 47.5, atol=1e-4)


def test_spread_term_is_the_maps_variance_in_training_only():
    """Two cells of equal mass 8 px apart along x: the variance is (4 px / 48)² in x and 0 in
    y, so the added loss is weight × that; inference adds nothing."""
    logits = np.full((1, 24, 24, 1), -1e4, np.float32)
    logits[0, 10, [5, 7], 0] = 0.0
    layer = SoftArgmax(spread_weight=0.5)
    layer(logits, training=True)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), 0.5 * (4 / 48) ** 2, rtol=1e-4)
    layer = SoftArgmax(spread_weight=0.5)
    layer(logits, training=False)
    assert layer.losses == []
    model = create_model("resnet", head="heatmap", depth=2, spread_weight=0.25)
    restored = keras.Model.from_config(model.get_config())
    assert restored.get_layer("keypoints").spread_weight == 0.25


def test_target_scaling_round_trips_and_keeps_nan():
    px = np.array([[0.0, 47.5, 95.0, np.nan]], np.float32)
    norm = normalise_keypoints(px)
    np.testing.assert_allclose(norm, [[-47.5 / 48, 0.0, 47.5 / 48, np.nan]])
    np.testing.assert_allclose(denormalise_keypoints(norm), px)
    assert normalise_keypoints([[48, 0]]).dtype == np.float32
    tensor = denormalise_keypoints(tf.constant(norm))
    assert tf.is_tensor(tensor)
    np.testing.assert_allclose(tensor.numpy(), px)

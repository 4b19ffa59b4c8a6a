"""NaN-aware loss and metric: most Kaggle rows label only 4 of the 15 keypoints.

Missing targets are NaN. They are masked out of the loss rather than imputed, so the ~70 %
of partially labelled images still teach the model the keypoints they do have. NaNs are
replaced by 0 on *both* sides with ``where`` before any arithmetic: masking after the
subtraction would still propagate NaN into the gradient (0 * NaN = NaN).

All are registered with Keras, so a model compiled with them saves to ``.keras`` and loads
with ``safe_mode=True`` (with or without ``compile``) once this module is imported.
"""

from __future__ import annotations

import keras
from keras import ops

from fkd_core.targets import SCALE


def _masked_squared_error(y_true, y_pred):
    """(sum of squared errors over labelled entries, number of labelled entries)."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    labelled = ops.logical_not(ops.isnan(y_true))
    zeros = ops.zeros_like(y_pred)
    diff = ops.where(labelled, y_pred, zeros) - ops.where(labelled, y_true, zeros)
    return ops.sum(ops.square(diff)), ops.sum(ops.cast(labelled, y_pred.dtype))


@keras.saving.register_keras_serializable(package="fkd")
def masked_mse(y_true, y_pred):
    """Mean squared error over the labelled (non-NaN) entries of the whole batch.

    Averaging over labelled entries, not all 30 × batch, keeps the loss scale independent
    of how many keypoints a batch happens to have. A batch with no labels gives 0.
    """
    sse, n = _masked_squared_error(y_true, y_pred)
    return sse / ops.maximum(n, 1.0)


def _real_and_pseudo(y_true, y_pred):
    """Targets are the real labels (30 columns), or the real labels followed by pseudo-labels
    (60 columns, the pseudo-labels NaN wherever the real label exists)."""
    n = y_pred.shape[-1]
    if y_true.shape[-1] == 2 * n:
        return y_true[..., :n], y_true[..., n:]
    return y_true, None


@keras.saving.register_keras_serializable(package="fkd")
class MaskedMSE(keras.losses.Loss):
    """:func:`masked_mse` that also learns from pseudo-labels, each counted ``pseudo_weight``
    times a real label: a teacher's guess is worth less than a person's mark."""

    def __init__(self, pseudo_weight=1.0, name="masked_mse", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pseudo_weight = float(pseudo_weight)

    def call(self, y_true, y_pred):
        real, pseudo = _real_and_pseudo(y_true, y_pred)
        sse, n = _masked_squared_error(real, y_pred)
        if pseudo is not None:
            pseudo_sse, pseudo_n = _masked_squared_error(pseudo, y_pred)
            sse, n = sse + self.pseudo_weight * pseudo_sse, n + self.pseudo_weight * pseudo_n
        return sse / ops.maximum(n, 1.0)

    def get_config(self):
        return {**super().get_config(), "pseudo_weight": self.pseudo_weight}


@keras.saving.register_keras_serializable(package="fkd")
def masked_rmse_pixels(y_true, y_pred):
    """RMSE in pixels over one batch's labelled entries (Kaggle's score, per batch).

    As a compile metric Keras averages it over batches, which is not the RMSE of the epoch;
    use :class:`MaskedRMSEPixels` for that.
    """
    return ops.sqrt(masked_mse(y_true, y_pred)) * SCALE


@keras.saving.register_keras_serializable(package="fkd")
class MaskedRMSEPixels(keras.metrics.Metric):
    """Kaggle's score over everything seen: sqrt(total squared error / labelled entries) × 48.

    Real labels only: pseudo-labels (:class:`MaskedMSE`) are not scored."""

    def __init__(self, name="rmse_px", **kwargs):
        super().__init__(name=name, **kwargs)
        self.sse = self.add_variable(shape=(), initializer="zeros", name="sse")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        sse, n = _masked_squared_error(_real_and_pseudo(y_true, y_pred)[0], y_pred)
        self.sse.assign_add(ops.cast(sse, self.dtype))
        self.count.assign_add(ops.cast(n, self.dtype))

    def result(self):
        return ops.sqrt(self.sse / ops.maximum(self.count, 1.0)) * SCALE

    def reset_state(self):
        self.sse.assign(0.0)
        self.count.assign(0.0)

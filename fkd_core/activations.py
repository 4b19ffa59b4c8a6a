"""Convolution-layer activation maps: what each filter of a trained model responds to.

A sub-model from the input to one layer is built once per (model, layer) and reused, since
building it costs far more than running it on one face.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

# model → {layer name → sub-model}; entries vanish with their model.
_SUBMODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def conv_layer_names(model) -> list[tuple[str, tuple]]:
    """(name, output shape) of each convolution, including inside composite runs' members."""
    from fkd_core.architectures import conv_layers

    found = list(conv_layers(model))
    for layer in model.layers:
        if hasattr(layer, "layers") and layer is not model:  # a nested member model
            found += [(f"{layer.name}/{n}", s) for n, s in conv_layers(layer)]
    return found


def _resolve(model, name: str):
    if "/" in name:
        outer, inner = name.split("/", 1)
        member = model.get_layer(outer)
        return member, member.get_layer(inner)
    return model, model.get_layer(name)


def submodel(model, name: str):
    """A cached model from ``model``'s input to layer ``name``'s output."""
    import keras

    with _LOCK:
        built = _SUBMODELS.setdefault(model, {})
        if name not in built:
            owner, layer = _resolve(model, name)
            built[name] = keras.Model(owner.inputs, layer.output)
        return built[name]


def feature_maps(model, name: str, image: np.ndarray) -> np.ndarray:
    """Activations (H, W, C) of layer ``name`` for one uint8 face (96, 96)."""
    x = np.asarray(image, np.float32).reshape(1, 96, 96, 1) / 255.0
    out = submodel(model, name)([x], training=False)
    return np.asarray(out)[0]


def channel_means(maps: np.ndarray) -> np.ndarray:
    """Mean activation per channel (C,): the per-layer summary bar chart."""
    return maps.reshape(-1, maps.shape[-1]).mean(axis=0)


def top_channels(maps: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k channels with the highest mean activation, strongest first."""
    return np.argsort(-channel_means(maps), kind="stable")[:k]


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Scale each channel to [0, 1] on its own, so weak filters are still visible."""
    lo = maps.min(axis=(0, 1), keepdims=True)
    span = maps.max(axis=(0, 1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0).astype(np.float32)


def tile(maps: np.ndarray, channels=None, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """The chosen channels of normalised maps (H, W, C) as one tiled image (rows×H, cols×W).

    Padding is NaN so a view can draw it as background.
    """
    maps = normalise_maps(maps)
    channels = np.arange(maps.shape[-1]) if channels is None else np.asarray(channels)
    n = len(channels)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    h, w = maps.shape[:2]
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad), np.nan, np.float32)
    for i, c in enumerate(channels):
        r, q = divmod(i, columns)
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = maps[..., c]
    return out

"""Model architectures for 96×96 keypoint regression, behind one registry.

Every model maps a (batch, 96, 96, 1) image scaled to [0, 1] to (batch, 30) keypoints in
normalised coordinates (:mod:`fkd_core.targets`) through a *linear* output — the slides'
lesson: a ReLU or sigmoid on a regression output clips the targets.

An architecture is a short function building a backbone; it returns its stage outputs
(feature maps, coarsest last). The heads are shared code:

* ``regression``: flatten the last feature map → optional hidden Dense → Dense(30). Flatten
  rather than global pooling by default, because pooling throws away *where* features are,
  which is exactly what we regress (``pooling="avg"`` is available).
* ``heatmap``: a small U-Net-style decoder (bilinear ×2 upsampling, concatenating the
  backbone's feature map of that size, 3×3 conv) to a coarse grid of 15 heatmaps, read out
  by :class:`SoftArgmax`. The output and loss are the same as regression, so training,
  evaluation and the dashboard need not know which head a model has. The logits are the
  layer named ``heatmap_logits``.

``width`` multiplies every channel count (``width=0.125`` builds toy models for tests);
``depth`` is the number of stages (conv/pool stages, residual stages, inception stages…).
All layers are plain Keras layers in one functional graph, so convolutions are reachable
through ``model.layers`` (see :func:`conv_layers`) and models save to ``.keras`` and load
with ``safe_mode=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from fkd_core.keypoints import IMAGE_SIZE, N_COORDS, N_KEYPOINTS
from fkd_core.targets import normalise_keypoints

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
HEADS = ("regression", "heatmap")


@dataclass(frozen=True)
class Architecture:
    """A backbone builder and the defaults that make it a sensible model at width 1."""

    build: Callable[..., list]  # (image, width, depth, dropout) -> stage outputs, coarsest last
    depth: int
    max_depth: int
    dropout: float  # the rate after the last stage / before the output, see create_model
    hidden: int | None = None  # hidden Dense units of the regression head (before width)

    @property
    def description(self) -> str:
        return (self.build.__doc__ or "").strip().splitlines()[0]


ARCHITECTURES: dict[str, Architecture] = {}


def _register(name: str, **defaults):
    def wrap(build):
        ARCHITECTURES[name] = Architecture(build, **defaults)
        return build

    return wrap


def list_architectures() -> list[str]:
    return list(ARCHITECTURES)


# --- building blocks -----------------------------------------------------------------------


def _ch(n: float, width: float) -> int:
    return max(1, round(n * width))


def _batch_norm(name):
    """Batch norm with momentum 0.9 rather than Keras' 0.99.

    At ~100 steps per epoch on this small dataset, 0.99 leaves the moving variance near its
    initial 1 for hundreds of steps, and a model evaluated in inference mode then looks
    untrained long after it has learned.
    """
    return layers.BatchNormalization(momentum=0.9, name=name)


def _conv_bn(x, filters, kernel, name, strides=1, activation="relu"):
    """Conv (no bias: BN supplies it) → BN → activation; the unit of most backbones."""
    conv = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=name)
    x = _batch_norm(name=f"{name}_bn")(conv(x))
    return layers.Activation(activation, name=f"{name}_{activation}")(x)


def _dropout(x, rate, name):
    return layers.Dropout(rate, name=name)(x) if rate > 0 else x


# --- architectures -------------------------------------------------------------------------


@_register("simple", depth=1, max_depth=1, dropout=0.0)
def simple(x, width, depth, dropout):
    """The slides' one-layer baseline: six 3×3 filters, then straight to the 30 outputs."""
    return [layers.Conv2D(_ch(6, width), 3, padding="same", activation="relu", name="conv3x3")(x)]


@_register("alexnet", depth=3, max_depth=4, dropout=0.3, hidden=512)
def alexnet(x, width, depth, dropout):
    """AlexNet-style: conv/BN/pool stages after a large strided conv; dropout rising with depth.

    AlexNet's 11×11 stride-4 first conv assumes 227 px; on 96 px faces stride 2 keeps a 48×48
    map, so eye corners a few pixels apart are not merged before the first pooling. Filters
    double per stage from 32; stage k of n gets dropout ``dropout * k / n`` (0.1, 0.2, 0.3 by
    default), the slides' "applied after every conv/pool layer at an increasing rate".
    """
    kernels = (11, 5, 3, 3)
    stages = []
    for i in range(depth):
        name = f"stage{i + 1}"
        strides = 2 if i == 0 else 1
        x = _conv_bn(x, _ch(32 * 2**i, width), kernels[i], f"{name}_conv", strides=strides)
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        stages.append(_dropout(x, dropout * (i + 1) / depth, f"{name}_dropout"))
        x = stages[-1]
    return stages


@_register("vgg", depth=4, max_depth=5, dropout=0.3, hidden=512)
def vgg(x, width, depth, dropout):
    """VGG-style: stages of 3×3 convs (two, then three), BN before each pooling, dropout.

    Channels double per stage from 32 (VGG's 64 halved: 96 px grayscale needs less, and the
    workbench trains on CPUs) up to 256. Dropout rises with depth as in :func:`alexnet`.
    """
    stages = []
    for i in range(depth):
        name = f"stage{i + 1}"
        for j in range(2 if i < 2 else 3):
            x = layers.Conv2D(
                _ch(min(32 * 2**i, 256), width),
                3,
                padding="same",
                activation="relu",
                name=f"{name}_conv{j + 1}",
            )(x)
        x = _batch_norm(name=f"{name}_bn")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        stages.append(_dropout(x, dropout * (i + 1) / depth, f"{name}_dropout"))
        x = stages[-1]
    return stages


# GoogLeNet's module widths (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection) for
# modules 3a/3b, 4a/4b and 5a/5b; 4c–4e are left out to keep a CPU training step affordable.
_INCEPTION_STAGES = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)


def _inception_module(x, filters, width, name):
    """Parallel 1×1, 1×1→3×3, 1×1→5×5 and pool→1×1 branches: the model picks the scale."""
    f1, f3r, f3, f5r, f5, fp = (_ch(f, width) for f in filters)
    b1 = _conv_bn(x, f1, 1, f"{name}_1x1")
    b3 = _conv_bn(_conv_bn(x, f3r, 1, f"{name}_3x3_reduce"), f3, 3, f"{name}_3x3")
    b5 = _conv_bn(_conv_bn(x, f5r, 1, f"{name}_5x5_reduce"), f5, 5, f"{name}_5x5")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    bp = _conv_bn(bp, fp, 1, f"{name}_pool_proj")
    return layers.Concatenate(name=f"{name}_concat")([b1, b3, b5, bp])


@_register("inception", depth=3, max_depth=3, dropout=0.2)
def inception(x, width, depth, dropout):
    """GoogLeNet-style: a strided stem to 24×24, then two inception modules per stage.

    Each stage halves the map first (12, 6, 3). BN after every conv (Inception v2) so it
    trains without GoogLeNet's auxiliary classifiers.
    """
    x = _conv_bn(x, _ch(64, width), 5, "stem_conv1", strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    x = _conv_bn(x, _ch(64, width), 1, "stem_conv2")
    stages = [_conv_bn(x, _ch(192, width), 3, "stem_conv3")]
    for i, modules in enumerate(_INCEPTION_STAGES[:depth]):
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"stage{i + 1}_pool")(stages[-1])
        for j, filters in enumerate(modules):
            x = _inception_module(x, filters, width, f"inception{i + 3}{'ab'[j]}")
        stages.append(x)
    return stages


def _residual_block(x, filters, strides, name):
    """Post-activation basic block: relu(x + BN(conv(relu(BN(conv(x)))))).

    The shortcut is the identity unless the block changes shape; then a strided 1×1
    projection (with BN) matches it.
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_projection"
        )(x)
        shortcut = _batch_norm(name=f"{name}_projection_bn")(shortcut)
    y = _conv_bn(x, filters, 3, f"{name}_conv1", strides=strides)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _batch_norm(name=f"{name}_conv2_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


@_register("resnet", depth=4, max_depth=4, dropout=0.0)
def resnet(x, width, depth, dropout):
    """ResNet-18 layout (two basic blocks per stage) at half its channels (32→256).

    A 5×5 stride-2 stem and max pooling bring 96 px to 24×24, where ResNet's 224 px stem
    leaves 56×56; each further stage halves it (12, 6, 3). Half width keeps a training
    step on two CPU cores under a second at batch 64; ``width=2`` gives ResNet-18's channels.
    """
    x = _conv_bn(x, _ch(32, width), 5, "stem_conv", strides=2)
    stages = [layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)]
    for i in range(depth):
        x = stages[-1]
        for j in range(2):
            strides = 2 if i > 0 and j == 0 else 1
            x = _residual_block(x, _ch(32 * 2**i, width), strides, f"stage{i + 1}_block{j + 1}")
        stages.append(x)
    return stages


# MobileNet v1's depthwise separable blocks after the first, grouped into stages that each
# start with a stride-2 block: 48 → 24 → 12 → 6 → 3.
_MOBILENET_STAGES = ((128, 128), (256, 256), (512,) * 6, (1024, 1024))


def _separable_block(x, filters, strides, name):
    """Depthwise 3×3 then pointwise 1×1, each BN + ReLU6: ~8× fewer multiplies than a conv."""
    x = layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = _batch_norm(name=f"{name}_depthwise_bn")(x)
    x = layers.Activation("relu6", name=f"{name}_depthwise_relu6")(x)
    return _conv_bn(x, filters, 1, f"{name}_pointwise", activation="relu6")


@_register("mobilenet", depth=4, max_depth=4, dropout=0.0)
def mobilenet(x, width, depth, dropout):
    """MobileNet v1: depthwise separable convolutions; ``width`` is its width multiplier α."""
    x = _conv_bn(x, _ch(32, width), 3, "stem_conv", strides=2, activation="relu6")
    stages = [_separable_block(x, _ch(64, width), 1, "block1")]
    n = 1
    for filters in _MOBILENET_STAGES[:depth]:
        x = stages[-1]
        for j, f in enumerate(filters):
            n += 1
            x = _separable_block(x, _ch(f, width), 2 if j == 0 else 1, f"block{n}")
        stages.append(x)
    return stages


# --- heads ---------------------------------------------------------------------------------


def _cell_centres(cells: int) -> np.ndarray:
    """Normalised coordinates of the centres of ``cells`` equal cells spanning the image.

    Cell i covers pixels [i·96/G, (i+1)·96/G), whose centre in pixel-index coordinates
    (pixel centres on integers) is (i + 0.5)·96/G − 0.5.
    """
    pixels = (np.arange(cells) + 0.5) * IMAGE_SIZE / cells - 0.5
    return normalise_keypoints(pixels.astype(np.float32))


@keras.saving.register_keras_serializable(package="fkd")
class SoftArgmax(layers.Layer):
    """Heatmap logits (batch, H, W, K) → (batch, 2K): expected (x, y) per channel, interleaved.

    A softmax over each channel's grid turns logits into a distribution; its mean is a
    differentiable, sub-cell-accurate location in normalised coordinates, so the heatmap
    head trains on the same targets with the same loss as a regression head.

    Logits are multiplied by an inverse temperature, initially ``1 / temperature`` and
    learnable by default (kept as its log so it stays positive): one scalar lets the model
    sharpen every map at once early in training instead of growing all logits.
    ``learn_temperature=False`` fixes it.

    ``spread_weight`` > 0 adds, in training, that weight times each map's variance around
    its mean (normalised units²) to the loss: with a Gaussian-like target t, the expected
    squared distance E‖c − t‖² of the map's mass is the coordinate loss ‖μ − t‖² plus this
    variance, so the term keeps maps peaked without needing the targets (a diffuse map's
    mean is pulled toward the image centre).
    """

    def __init__(self, temperature=1.0, learn_temperature=True, spread_weight=0.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.learn_temperature = bool(learn_temperature)
        self.spread_weight = float(spread_weight)

    def build(self, input_shape):
        _, height, width, _ = input_shape
        self.log_inverse_temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(-math.log(self.temperature)),
            trainable=self.learn_temperature,
            name="log_inverse_temperature",
        )
        self._x_centres = _cell_centres(width)
        self._y_centres = _cell_centres(height)

    def call(self, logits, training=None):
        _, height, width, channels = logits.shape
        scaled = logits * ops.exp(self.log_inverse_temperature)
        flat = ops.reshape(ops.transpose(scaled, (0, 3, 1, 2)), (-1, channels, height * width))
        prob = ops.reshape(ops.softmax(flat, axis=-1), (-1, channels, height, width))
        px, py = ops.sum(prob, axis=2), ops.sum(prob, axis=3)
        x = ops.sum(px * self._x_centres, axis=-1)
        y = ops.sum(py * self._y_centres, axis=-1)
        if training and self.spread_weight > 0:
            variance = (ops.sum(px * ops.square(self._x_centres - x[..., None]), axis=-1)
                        + ops.sum(py * ops.square(self._y_centres - y[..., None]), axis=-1))
            self.add_loss(self.spread_weight * ops.mean(variance))
        return ops.reshape(ops.stack([x, y], axis=-1), (-1, 2 * channels))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "learn_temperature": self.learn_temperature,
            "spread_weight": self.spread_weight,
        }


def _regression_head(stages, width, dropout, hidden, pooling="flatten"):
    if pooling not in ("flatten", "avg"):
        raise ValueError(f"pooling must be 'flatten' or 'avg', not {pooling!r}")
    x = stages[-1]
    if pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    if hidden:
        x = layers.Dense(_ch(hidden, width), activation="relu", name="hidden")(x)
    x = _dropout(x, dropout, "head_dropout")
    return layers.Dense(N_COORDS, name="keypoints", dtype="float32")(x)


def _heatmap_head(
    stages,
    width,
    dropout,
    grid_size=24,
    decoder_filters=64,
    temperature=1.0,
    learn_temperature=True,
    spread_weight=0.0,
):
    """Upsample the coarsest map to the grid, concatenating same-size backbone maps on the way.

    A backbone that stays finer than the grid (``simple``) is max-pooled down to it instead.
    Either way at least one conv + BN precedes the logits: it puts them on a scale where
    the softmax can sharpen within a few hundred steps (raw ``simple`` features cannot).
    """
    if IMAGE_SIZE % grid_size:
        raise ValueError(f"grid_size must divide {IMAGE_SIZE}, not {grid_size}")
    by_size = {int(s.shape[1]): s for s in stages}  # deeper maps win ties
    x = stages[-1]
    size = int(x.shape[1])
    if size > grid_size:
        if size % grid_size:
            raise ValueError(f"cannot pool a {size}×{size} feature map to {grid_size}×{grid_size}")
        x = layers.MaxPooling2D(size // grid_size, name="decoder_pool")(x)
        size = grid_size
    level = 0
    while size < grid_size:
        level, size = level + 1, size * 2
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder{level}_up")(x)
        if size in by_size:
            x = layers.Concatenate(name=f"decoder{level}_skip")([x, by_size[size]])
        x = _conv_bn(x, _ch(decoder_filters, width), 3, f"decoder{level}_conv")
    if size != grid_size:
        raise ValueError(f"cannot upsample to a {grid_size}×{grid_size} grid from this backbone")
    if level == 0:
        x = _conv_bn(x, _ch(decoder_filters, width), 3, "decoder1_conv")
    x = layers.Conv2D(N_KEYPOINTS, 1, name="heatmap_logits")(x)
    return SoftArgmax(temperature, learn_temperature, spread_weight, name="keypoints",
                      dtype="float32")(x)


_HEADS = {"regression": _regression_head, "heatmap": _heatmap_head}
_HEAD_OPTIONS = {
    "regression": ("hidden", "pooling"),
    "heatmap": ("grid_size", "decoder_filters", "temperature", "learn_temperature",
                "spread_weight"),
}


def create_model(
    name: str,
    *,
    width: float = 1.0,
    depth: int | None = None,
    head: str = "regression",
    dropout: float | None = None,
    **options,
) -> keras.Model:
    """Build an (uncompiled) model: (batch, 96, 96, 1) in [0, 1] → (batch, 30) normalised.

    ``depth`` and ``dropout`` default per architecture (see ``ARCHITECTURES``). ``dropout``
    is the rate before the output layer (regression head); alexnet and vgg also apply
    dropout after every stage, rising linearly to it.

    Head options: regression — ``hidden`` (units of a hidden ReLU Dense before the output,
    scaled by width; None for none; default per architecture) and ``pooling`` ("flatten" or
    "avg"); heatmap — ``grid_size`` (24: cells of 4×4 px), ``decoder_filters`` (64, scaled
    by width), ``temperature`` (1.0), ``learn_temperature`` (True) and ``spread_weight``
    (0: see :class:`SoftArgmax`).
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of {', '.join(list_architectures())}"
        )
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    unknown = set(options) - set(_HEAD_OPTIONS[head])
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(sorted(unknown))} for head {head!r}; "
            f"expected {', '.join(_HEAD_OPTIONS[head])}"
        )
    arch = ARCHITECTURES[name]
    depth = arch.depth if depth is None else depth
    dropout = arch.dropout if dropout is None else dropout
    if not 1 <= depth <= arch.max_depth:
        raise ValueError(f"{name} depth must be in 1..{arch.max_depth}, not {depth}")
    if width <= 0:
        raise ValueError(f"width must be positive, not {width}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), not {dropout}")
    if head == "regression":
        options.setdefault("hidden", arch.hidden)

    image = keras.Input(shape=INPUT_SHAPE, name="image")
    stages = arch.build(image, width, depth, dropout)
    keypoints = _HEADS[head](stages, width, dropout, **options)
    return keras.Model(image, keypoints, name=f"{name}_{head}")


_CONV_TYPES = (
    layers.Conv2D,
    layers.DepthwiseConv2D,
    layers.SeparableConv2D,
    layers.Conv2DTranspose,
)


def conv_layers(model: keras.Model) -> list[tuple[str, tuple]]:
    """(name, output shape) of each convolution, in graph order, for activation-map views."""
    return [
        (layer.name, tuple(layer.output.shape))
        for layer in model.layers
        if isinstance(layer, _CONV_TYPES)
    ]

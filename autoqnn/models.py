"""Reference models of the benchmark and the demo (Fashion-MNIST sized).

Example:
    >>> from autoqnn.models import build_model
    >>> build_model("cnn").count_params() > 0
    True
    >>> 100_000 < build_model("vit").count_params() < 300_000
    True
    >>> build_model("resnet").count_params() < build_model("mobilenetv2").count_params()
    True
"""

from __future__ import annotations

import keras

MODELS = ("cnn", "mobilenet", "vit", "mobilenetv2", "resnet")


@keras.saving.register_keras_serializable(package="autoqnn")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned `(tokens, dim)` table to a `(batch, tokens, dim)` input.

    The table is a float weight, like a bias (QAG has no handler for it; TFLite adds it
    as a constant).

    Args:
        num_positions: number of tokens.
        dim: embedding size (the input's last axis).
    """

    def __init__(self, num_positions, dim, **kwargs):
        super().__init__(**kwargs)
        self.num_positions = int(num_positions)
        self.dim = int(dim)

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table", shape=(self.num_positions, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + self.table

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_positions": self.num_positions, "dim": self.dim}


def build_cnn(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """The reference `cnn`.

    2x[Conv3x3(32)+BN+ReLU], MaxPool, 2x[Conv3x3(64)+BN+ReLU], MaxPool, Flatten,
    Dense(128, relu), Dense(num_classes) logits.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block, filters in enumerate((32, 64)):
        for i in range(2):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"conv{block + 1}_{i + 1}"
            )(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{block + 1}_{i + 1}")(x)
            x = keras.layers.ReLU(name=f"relu{block + 1}_{i + 1}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{block + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn")


def build_mobilenet(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """The reference `mobilenet`.

    Conv3x3(16, stride 2)+BN+ReLU6, depthwise-separable blocks (32,1), (64,2), (64,1),
    (128,1) of DW3x3+BN+ReLU6 and PW1x1+BN+ReLU6, global average pooling, Dense logits.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (64, 1), (128, 1))):
        x = keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False, name=f"dw{i + 1}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"dw{i + 1}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"dw{i + 1}_relu")(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"pw{i + 1}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"pw{i + 1}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet")


def build_vit(input_shape=(28, 28, 1), num_classes=10, *, patch_size=4, dim=64, depth=3,
              heads=4, mlp_dim=256) -> keras.Model:
    """The reference `vit`: a small vision transformer (about 155k parameters).

    Patch embedding (Conv `patch_size`x`patch_size`, stride `patch_size`: 7x7 = 49
    tokens of `dim`), a learned position embedding, `depth` pre-norm encoder blocks
    (LayerNorm, MultiHeadAttention(`heads`), residual Add; LayerNorm, Dense(`mlp_dim`,
    gelu), Dense(`dim`), residual Add), a final LayerNorm, global average pooling and
    a Dense logits head.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(dim, patch_size, strides=patch_size, name="patch_embed")(inputs)
    tokens = (input_shape[0] // patch_size) * (input_shape[1] // patch_size)
    x = keras.layers.Reshape((tokens, dim), name="tokens")(x)
    x = PositionEmbedding(tokens, dim, name="pos_embed")(x)
    for i in range(1, depth + 1):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
        y = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_mha")(y, y)
        x = keras.layers.Add(name=f"block{i}_add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
        y = keras.layers.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp1")(y)
        y = keras.layers.Dense(dim, name=f"block{i}_mlp2")(y)
        x = keras.layers.Add(name=f"block{i}_add2")([x, y])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vit")


def build_mobilenetv2(input_shape=(28, 28, 1), num_classes=10, *, alpha=0.35) -> keras.Model:
    """The reference `mobilenetv2`: keras.applications MobileNetV2 (`alpha`, random
    weights) as a nested model, on the input zero-padded to a multiple of 32 (28x28 ->
    32x32), global average pooling, Dense logits.

    Inverted residuals with linear bottlenecks (no activation after the projection, so
    signed tensors reach the residual Adds), ReLU6, depthwise convolutions. The
    application's BatchNorm momentum (0.999) is lowered to 0.9 so that a few epochs give
    usable moving statistics.
    """
    pad = [(-size) % 32 for size in input_shape[:2]]
    padded = (input_shape[0] + pad[0], input_shape[1] + pad[1], input_shape[2])
    base = keras.applications.MobileNetV2(input_shape=padded, alpha=alpha, weights=None,
                                          include_top=False, pooling="avg")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.ZeroPadding2D(((pad[0] // 2, pad[0] - pad[0] // 2),
                                    (pad[1] // 2, pad[1] - pad[1] // 2)), name="pad")(inputs)
    x = base(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2")


def build_resnet(input_shape=(28, 28, 1), num_classes=10, *, widths=(16, 32, 64)) -> keras.Model:
    """The reference `resnet`: a small ResNet-style network.

    Conv3x3(`widths[0]`)+BN+ReLU, then one stage per width of two basic blocks
    (Conv3x3+BN+ReLU, Conv3x3+BN, residual Add, ReLU; the first block of a later stage
    has stride 2 and a 1x1 Conv+BN projection shortcut), global average pooling, Dense
    logits.
    """
    def conv_bn(x, filters, kernel, stride, name, relu=True):
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, widths[0], 3, 1, "stem")
    for stage, filters in enumerate(widths, start=1):
        for block in (1, 2):
            name = f"s{stage}b{block}"
            stride = 2 if stage > 1 and block == 1 else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False)
            y = conv_bn(x, filters, 3, stride, f"{name}_conv1")
            y = conv_bn(y, filters, 3, 1, f"{name}_conv2", relu=False)
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet")


def build_model(name: str, input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """Builds a reference model by name (one of `MODELS`: "cnn", "mobilenet", "vit",
    "mobilenetv2", "resnet")."""
    builders = {"cnn": build_cnn, "mobilenet": build_mobilenet, "vit": build_vit,
                "mobilenetv2": build_mobilenetv2, "resnet": build_resnet}
    if name not in builders:
        raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")
    return builders[name](input_shape, num_classes)


def first_and_last_layers(model) -> tuple[str, str]:
    """Names of the first and last weighted layers (kept at 8 bits in low-bit runs)."""
    weighted = [
        layer.name
        for layer in model.layers
        if layer.weights and not isinstance(
            layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
    ]
    return weighted[0], weighted[-1]

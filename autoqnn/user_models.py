"""Small models written the way keras.io examples write them, for tests and benchmarks.

keras.io examples copied into a notebook are not tidy: custom layers whose
`__init__` takes no `**kwargs` (so `from_config(get_config())` fails), an
adapted `Normalization`, `layers.Lambda`, softmax and GELU heads, GELU then
BatchNorm (ConvMixer), `Rescaling`, a StochasticDepth-style training-only
layer, a `Sequential` inside a custom layer (a convolutional tokenizer) and a
position-embedding layer. `STYLES` names one builder per style; every builder
takes the (28, 28, 1) Fashion-MNIST images it adapts to and returns an
uncompiled float model.

The custom layers are registered (so the quantized twins autoqnn saves can be
loaded), but written as the examples write them: without `**kwargs`.

Example:
    >>> import numpy as np
    >>> from autoqnn.user_models import STYLES
    >>> model = STYLES["convmixer"](np.zeros((4, 28, 28, 1), "float32"))
    >>> model.output.shape
    (None, 10)
"""

from __future__ import annotations

import keras
from keras import layers, ops

PACKAGE = "autoqnn_user_models"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Patches(layers.Layer):
    """Image -> flat patches (keras.io ViT); no `**kwargs`, weight-free."""

    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def call(self, images):
        patches = ops.image.extract_patches(images, size=self.patch_size)
        batch = ops.shape(patches)[0]
        count = patches.shape[1] * patches.shape[2]
        return ops.reshape(patches, (batch, count, patches.shape[-1]))

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEncoder(layers.Layer):
    """Projection plus a learned position embedding (keras.io ViT); no `**kwargs`."""

    def __init__(self, num_patches, projection_dim):
        super().__init__()
        self.num_patches = num_patches
        self.projection_dim = projection_dim
        self.projection = layers.Dense(units=projection_dim)
        self.position_embedding = layers.Embedding(input_dim=num_patches,
                                                   output_dim=projection_dim)

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), 0)
        return self.projection(patch) + self.position_embedding(positions)

    def get_config(self):
        config = super().get_config()
        config.update({"num_patches": self.num_patches, "projection_dim": self.projection_dim})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvTokenizer(layers.Layer):
    """A `Sequential` of Conv2D/ReLU/MaxPool inside a custom layer (keras.io CCT)."""

    def __init__(self, filters=(16, 24)):
        super().__init__()
        self.filters = list(filters)
        stack = []
        for f in self.filters:
            stack += [layers.Conv2D(f, 3, padding="same", use_bias=False, activation="relu"),
                      layers.MaxPooling2D(2)]
        self.conv_model = keras.Sequential(stack)

    def call(self, images):
        outputs = self.conv_model(images)
        return ops.reshape(outputs, (-1, outputs.shape[1] * outputs.shape[2],
                                     outputs.shape[-1]))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each token's position; no `**kwargs`."""

    def __init__(self, sequence_length, output_dim):
        super().__init__()
        self.sequence_length = sequence_length
        self.output_dim = output_dim
        self.embedding = layers.Embedding(sequence_length, output_dim)

    def call(self, tokens):
        return tokens + self.embedding(ops.arange(self.sequence_length))

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length,
                "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(layers.Layer):
    """Drops the residual branch per sample while training only (keras.io CCT)."""

    def __init__(self, drop_prop):
        super().__init__()
        self.drop_prob = drop_prop
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, x, training=None):
        if training:
            keep = 1 - self.drop_prob
            shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
            random = keep + keras.random.uniform(shape, 0, 1, seed=self.seed_generator)
            return (x / keep) * ops.floor(random)
        return x

    def get_config(self):
        return {**super().get_config(), "drop_prop": self.drop_prob}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SequencePooling(layers.Layer):
    """Attention pooling over tokens (keras.io CCT): Dense(1), softmax, weighted sum."""

    def __init__(self):
        super().__init__()
        self.attention = layers.Dense(1)

    def call(self, x):
        weights = ops.softmax(self.attention(x), axis=1)
        weights = ops.transpose(weights, axes=(0, 2, 1))
        return ops.squeeze(ops.matmul(weights, x), -2)


def _mlp(x, units, dropout=0.0):
    for n in units:
        x = layers.Dense(n, activation=keras.activations.gelu)(x)
        if dropout:
            x = layers.Dropout(dropout)(x)
    return x


def vit(images):
    """ViT (keras.io): adapted Normalization, Patches, PatchEncoder, one encoder block."""
    dim, patch = 32, 7
    count = (28 // patch) ** 2
    normalization = layers.Normalization(name="normalization")
    normalization.adapt(images)
    inputs = keras.Input((28, 28, 1))
    x = normalization(inputs)
    x = PatchEncoder(count, dim)(Patches(patch)(x))
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.MultiHeadAttention(num_heads=2, key_dim=16, dropout=0.1)(y, y)
    x = layers.Add()([y, x])
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = _mlp(y, [dim * 2, dim], dropout=0.1)
    x = layers.Add()([y, x])
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vit")


def cct(images):
    """CCT (keras.io): conv tokenizer (a Sequential in a custom layer), position
    embedding, StochasticDepth residuals, SequencePooling, softmax head."""
    del images
    inputs = keras.Input((28, 28, 1))
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = ConvTokenizer((16, 24))(x)
    x = PositionEmbedding(49, 24)(x)
    y = layers.LayerNormalization(epsilon=1e-5)(x)
    y = _mlp(y, [48, 24])
    x = layers.Add()([StochasticDepth(0.1)(y), x])
    x = layers.LayerNormalization(epsilon=1e-5)(x)
    x = SequencePooling()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="cct")


def convmixer(images):
    """ConvMixer (keras.io): patch stem, GELU then BatchNorm after every conv."""
    del images

    def gelu_bn(x):
        x = layers.Activation("gelu")(x)
        return layers.BatchNormalization(momentum=0.9)(x)

    inputs = keras.Input((28, 28, 1))
    x = layers.Rescaling(1.0)(inputs)
    x = gelu_bn(layers.Conv2D(32, kernel_size=2, strides=2)(x))
    for _ in range(2):
        y = gelu_bn(layers.DepthwiseConv2D(kernel_size=3, padding="same")(x))
        x = layers.Add()([y, x])
        x = gelu_bn(layers.Conv2D(32, kernel_size=1)(x))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="convmixer")


def gated_cnn(images):
    """A CNN with `layers.Lambda`, swish, a sigmoid squeeze-excite gate (Multiply),
    Concatenate and a softmax head."""
    del images
    inputs = keras.Input((28, 28, 1))
    x = layers.Lambda(lambda t: t - 0.5)(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="swish")(x)
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Dense(4, activation="relu")(gate)
    gate = layers.Dense(16, activation="sigmoid")(gate)
    x = layers.Multiply()([x, gate])
    y = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.Concatenate()([x, y])
    x = layers.Conv2D(24, 3, strides=2, padding="same")(x)
    x = layers.Activation("swish")(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="gated_cnn")


STYLES = {"vit": vit, "cct": cct, "convmixer": convmixer, "gated_cnn": gated_cnn}

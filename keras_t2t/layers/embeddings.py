"""What the backbone adds to the tokens and how it reads them out.

``ClassToken`` prepends the learned class token, ``SinusoidPositionEmbedding``
adds the fixed position table (``sinusoid_table``), ``TokenPooling`` turns the
sequence into one vector (the class token, or the mean of the patch tokens).
The ViT baseline's tokenizer and table are here too: ``PatchEmbedding``
(non-overlapping patches) and ``LearnedPositionEmbedding``.
"""

import keras
import numpy as np
from keras import ops

from keras_t2t.layers.common import PACKAGE, ConfigFields, truncated_normal


def sinusoid_table(num_positions, dim):
    """The fixed position table of spec section 6, shape (1, num_positions, dim)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = positions / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return table[None].astype("float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends the learned class token (stored as ``cls_token``, (1, 1, D))."""

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            shape=(1, 1, input_shape[-1]),
            initializer=truncated_normal(),
            name="cls_token",
        )

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[-1])

    def call(self, x):
        cls = ops.cast(self.cls_token, x.dtype)
        cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([cls, x], axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SinusoidPositionEmbedding(keras.layers.Layer):
    """Adds the fixed sinusoid position table (stored, not trained, as ``pos_embed``).

    The table is a weight rather than a constant because checkpoints carry it:
    the released 384x384 weights hold a bicubically resized table, not a
    fresh sinusoid.
    """

    def build(self, input_shape):
        num_positions, dim = int(input_shape[1]), int(input_shape[2])
        table = sinusoid_table(num_positions, dim)
        self.pos_embed = self.add_weight(
            shape=(1, num_positions, dim),
            initializer=lambda shape, dtype=None: ops.convert_to_tensor(table, dtype=dtype),
            trainable=False,
            name="pos_embed",
            dtype="float32",
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        return x + ops.cast(self.pos_embed, x.dtype)


POOLINGS = ("token", "avg")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenPooling(ConfigFields, keras.layers.Layer):
    """Sequence -> one vector: the class token ("token") or the mean of the patch tokens ("avg")."""

    def __init__(self, mode="token", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (or None without the head); got {mode!r}.")
        # === config ===
        self.mode = mode

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def call(self, x):
        if self.mode == "token":
            return x[:, 0]
        return ops.mean(x[:, 1:], axis=1)

    CONFIG_FIELDS = ("mode",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(ConfigFields, keras.layers.Layer):
    """Non-overlapping ``p x p`` patches -> tokens ``(B, (H/p) * (W/p), D)``, row-major.

    A ``Conv2D`` with kernel = stride = ``patch_size`` (``proj``, as timm names it):
    the same as flattening each patch in (row, column, channel) order and
    applying one Dense whose kernel is ``proj.kernel.reshape(p * p * C, D)``.
    Its kernel starts as PyTorch's ``Conv2d`` default (uniform in
    ``+-1/sqrt(p * p * C)``): the authors' ViT re-initialises only its Linear
    and LayerNorm layers.
    """

    def __init__(self, patch_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)

        self.proj = keras.layers.Conv2D(
            self.embed_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_initializer="zeros",
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.proj.build(input_shape)

    def compute_output_shape(self, input_shape):
        _, height, width, _ = input_shape
        return (input_shape[0], (height // self.patch_size) * (width // self.patch_size), self.embed_dim)

    def call(self, images):
        x = self.proj(images)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.embed_dim))

    CONFIG_FIELDS = ("patch_size", "embed_dim")


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedPositionEmbedding(keras.layers.Layer):
    """Adds a trained position table ``pos_embed`` (1, tokens, D), truncated normal std 0.02 as in timm.

    Named ``pos_embed`` like the sinusoid table so the optimizer's no-decay rule covers it.
    """

    def build(self, input_shape):
        self.pos_embed = self.add_weight(
            shape=(1, int(input_shape[1]), int(input_shape[2])),
            initializer=truncated_normal(),
            name="pos_embed",
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        return x + ops.cast(self.pos_embed, x.dtype)

"""The paper's tokens-to-token module: soft split, T2T layer, re-structurization.

``SoftSplit`` cuts an image into overlapping windows, one token each (the
unfold); a T2T layer (``TokenPerformer`` or ``TokenTransformer``) transforms
the tokens; ``restructurization`` puts them back onto their grid as an image
for the next soft split. ``TokensToToken`` runs the whole chain and projects
to the backbone width.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_t2t.layers.attention import AttentionTracing, chunked_attention
from keras_t2t.layers.common import PACKAGE, ConfigFields, dense, layer_norm
from keras_t2t.layers.transformer import Mlp

# The reference's performer adds this to the normaliser D (spec section 3).
PERFORMER_EPSILON = 1e-8
# TokenTransformer: above this many tokens (3136 in T2T-ViT_t's first layer; 784 in
# its second is below) the attention runs over chunks of this many queries.
DEFAULT_ATTENTION_CHUNK_THRESHOLD = 1024
DEFAULT_ATTENTION_CHUNK_SIZE = 392


def unfold_grid(size, kernel_size, strides, padding):
    """Output side of an unfold: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel_size) // strides + 1



def _unfold_indices(padded_height, padded_width, kernel_size, strides):
    """Flat pixel index of every window pixel, (gh * gw * k * k,) int32, window-major.

    Index ``(t * k + i) * k + j`` of the result is pixel (row, col) =
    (s * (t // gw) + i, s * (t % gw) + j) of the padded image, row-major.
    """
    k, s = kernel_size, strides
    gh = (padded_height - k) // s + 1
    gw = (padded_width - k) // s + 1
    rows = (np.arange(gh) * s)[:, None, None, None] + np.arange(k)[None, None, :, None]
    cols = (np.arange(gw) * s)[None, :, None, None] + np.arange(k)[None, None, None, :]
    return (rows * padded_width + cols).reshape(-1).astype("int32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SoftSplit(ConfigFields, keras.layers.Layer):
    """Soft split: every ``k x k`` window (zero padded) becomes one token.

    Equivalent to ``torch.nn.Unfold``: input ``(B, H, W, C)`` channels-last,
    output ``(B, Ho * Wo, C * k * k)`` with tokens in row-major order of the
    output grid and features in the reference's channel-major order
    ``c * k * k + i * k + j``, so the authors' weights apply unpermuted.
    """

    def __init__(self, kernel_size, strides, padding, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.padding = int(padding)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def output_grid(self, height, width):
        args = (self.kernel_size, self.strides, self.padding)
        return unfold_grid(height, *args), unfold_grid(width, *args)

    def compute_output_shape(self, input_shape):
        _, height, width, channels = input_shape
        gh, gw = self.output_grid(height, width)
        return (input_shape[0], gh * gw, channels * self.kernel_size**2)

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if height is None or width is None or channels is None:
            raise ValueError(
                f"SoftSplit {self.name!r} needs a fixed image height, width and channels when it is built: its "
                "unfold gathers a fixed set of pixel positions, and the T2T module's position table needs a fixed "
                f"grid. Got input shape {tuple(input_shape)}; give the model a fixed input_shape "
                "(e.g. input_shape=(224, 224, 3))."
            )
        # === state === (from the build shape, so call() does no arithmetic on the traced
        # shape: under torch.export / TorchScript tracing the shape is symbolic)
        self.image_shape = (int(height), int(width), int(channels))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={1: self.image_shape[0], 2: self.image_shape[1],
                                                               3: self.image_shape[2]})
        k, s, p = self.kernel_size, self.strides, self.padding
        self.pixel_indices = _unfold_indices(self.image_shape[0] + 2 * p, self.image_shape[1] + 2 * p, k, s)

    def call(self, images):
        k, s, p = self.kernel_size, self.strides, self.padding
        height, width, channels = self.image_shape
        gh, gw = self.output_grid(height, width)
        if p:
            images = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        if keras.backend.backend() != "tensorflow":
            # JAX: XLA fuses k * k strided slices and their stack into one copy loop;
            # its CPU gather is slower. torch: the slices export to ONNX, Keras' torch
            # ``take`` does not (torch's TorchScript exporter has no ``aten::ravel``;
            # its dynamo exporter writes a Squeeze of the gathered axis, which ONNX
            # Runtime refuses); on one CPU thread the slices cost the T2T module of
            # T2T-ViT-14 (224, batch 8 and 32) 1-2% more time forward and 5-7% forward
            # and backward. Stacking after the channel axis gives the channel-major
            # feature order of torch's Unfold.
            windows = [
                images[:, i : i + s * (gh - 1) + 1 : s, j : j + s * (gw - 1) + 1 : s, :]
                for i in range(k)
                for j in range(k)
            ]
            patches = ops.stack(windows, axis=-1)
            return ops.reshape(patches, (-1, gh * gw, channels * k * k))
        # TensorFlow (graph/eager): one gather of all window pixels (a pure copy,
        # exact) runs 2-4x faster than k * k slices and a stack there:
        # (B, Hp * Wp, C) -> (B, gh * gw * k * k, C), then the window axis moves
        # after the channels for the channel-major order. The indices were made in build().
        flat = ops.reshape(images, (-1, (height + 2 * p) * (width + 2 * p), channels))
        patches = ops.take(flat, self.pixel_indices, axis=1)
        patches = ops.reshape(patches, (-1, gh * gw, k * k, channels))
        patches = ops.transpose(patches, (0, 1, 3, 2))
        return ops.reshape(patches, (-1, gh * gw, channels * k * k))

    CONFIG_FIELDS = ("kernel_size", "strides", "padding")



@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenPerformer(ConfigFields, keras.layers.Layer):
    """The "performer" T2T layer: single-head linear attention with random features.

    Quirks kept for checkpoint compatibility: the fused projection splits as
    k, q, v (not q, k, v); the residual adds ``v`` because the input and output
    widths differ; the random features ``w`` are fixed (non-trainable) but saved.
    """

    def __init__(self, token_dim=64, kernel_ratio=0.5, dropout=0.1, **kwargs):
        # The tokens reach norm1 unrounded (see ``first_stage_dtype``).
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        # === config ===
        self.token_dim = int(token_dim)
        self.kernel_ratio = float(kernel_ratio)
        self.dropout = float(dropout)

        self.num_features = int(self.token_dim * self.kernel_ratio)
        if self.num_features < 1:
            raise ValueError(
                f"TokenPerformer needs token_dim * kernel_ratio >= 1; got token_dim="
                f"{self.token_dim}, kernel_ratio={self.kernel_ratio}."
            )
        policy = self.dtype_policy
        self.norm1 = layer_norm("norm1", dtype=first_stage_dtype(policy))
        self.kqv = dense(3 * self.token_dim, "kqv", dtype=policy)
        self.proj = dense(self.token_dim, "proj", dtype=policy)
        self.proj_drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.norm2 = layer_norm("norm2", dtype=policy)
        self.mlp = Mlp(self.token_dim, self.token_dim, dropout=self.dropout, name="mlp", dtype=policy)

    def build(self, input_shape):
        self.norm1.build(input_shape)
        self.kqv.build(input_shape)
        token_shape = tuple(input_shape[:-1]) + (self.token_dim,)
        self.proj.build(token_shape)
        self.norm2.build(token_shape)
        self.mlp.build(token_shape)
        m = self.num_features
        self.w = self.add_weight(
            shape=(m, self.token_dim),
            initializer=keras.initializers.Orthogonal(gain=math.sqrt(m)),
            trainable=False,
            name="w",
            dtype="float32",
            # Read at full precision under mixed policies: rounding w to bfloat16 moves
            # x @ w^T by up to ~0.3 where |x|^2 / 2 is large, and exp() amplifies it.
            autocast=False,
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.token_dim,)

    def _random_features(self, x):
        # prm(x) = exp(x w^T - |x|^2 / 2) / sqrt(m)
        half_sq_norm = ops.sum(x * x, axis=-1, keepdims=True) / 2.0
        projected = ops.matmul(x, ops.transpose(ops.cast(self.w, "float32")))
        return ops.exp(projected - half_sq_norm) / math.sqrt(self.num_features)

    def call(self, x, training=None):
        kqv = self.kqv(self.norm1(x))
        k, q, v = ops.split(kqv, 3, axis=-1)
        # A float32 island: exp() overflows in float16 and loses the sum in
        # bfloat16; the reference does the same under AMP.
        k32, q32, v32 = (ops.cast(t, "float32") for t in (k, q, v))
        kp = self._random_features(k32)
        qp = self._random_features(q32)
        normaliser = ops.matmul(qp, ops.expand_dims(ops.sum(kp, axis=1), -1))
        kptv = ops.matmul(ops.transpose(v32, (0, 2, 1)), kp)
        y = ops.matmul(qp, ops.transpose(kptv, (0, 2, 1))) / (normaliser + PERFORMER_EPSILON)
        y = ops.cast(y, v.dtype)
        y = v + self.proj_drop(self.proj(y), training=training)
        return y + self.mlp(self.norm2(y), training=training)

    CONFIG_FIELDS = ("token_dim", "kernel_ratio", "dropout")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenTransformer(ConfigFields, AttentionTracing, keras.layers.Layer):
    """The "transformer" T2T layer (T2T-ViT_t): one-head softmax attention.

    Quirk kept for checkpoint compatibility: the attention scale is
    ``input_dim ** -0.5`` (147 or 576), not ``token_dim ** -0.5``. The attention
    traces in the layer's ``tracing`` form (``keras_t2t.layers.attention``).
    """

    def __init__(
        self,
        token_dim=64,
        mlp_ratio=1.0,
        dropout=0.0,
        attention_chunk_size=DEFAULT_ATTENTION_CHUNK_SIZE,
        attention_chunk_threshold=DEFAULT_ATTENTION_CHUNK_THRESHOLD,
        **kwargs,
    ):
        # The tokens reach norm1 unrounded (see ``first_stage_dtype``).
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        # === config ===
        self.token_dim = int(token_dim)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        # Above ``attention_chunk_threshold`` tokens the attention runs in chunks of
        # ``attention_chunk_size`` queries (same result; memory O(chunk x tokens)).
        self.attention_chunk_size = int(attention_chunk_size)
        self.attention_chunk_threshold = int(attention_chunk_threshold)
        if self.attention_chunk_size < 1:
            raise ValueError(f"attention_chunk_size must be >= 1; got {attention_chunk_size!r}.")

        policy = self.dtype_policy
        self.norm1 = layer_norm("norm1", dtype=first_stage_dtype(policy))
        self.qkv = dense(3 * self.token_dim, "qkv", use_bias=False, dtype=policy)
        self.proj = dense(self.token_dim, "proj", dtype=policy)
        self.proj_drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.norm2 = layer_norm("norm2", dtype=policy)
        self.mlp = Mlp(
            int(self.token_dim * self.mlp_ratio),
            self.token_dim,
            hidden_dropout=self.dropout,
            dropout=self.dropout,
            name="mlp",
            dtype=policy,
        )

    def build(self, input_shape):
        self.input_dim = int(input_shape[-1])
        self.norm1.build(input_shape)
        self.qkv.build(input_shape)
        token_shape = tuple(input_shape[:-1]) + (self.token_dim,)
        self.proj.build(token_shape)
        self.norm2.build(token_shape)
        self.mlp.build(token_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.token_dim,)

    def call(self, x, training=None):
        qkv = self.qkv(self.norm1(x))
        q, k, v = ops.split(qkv, 3, axis=-1)
        tokens = x.shape[1]
        chunk = self.attention_chunk_size if tokens is not None and tokens > self.attention_chunk_threshold else None
        # (B, heads=1, T, token_dim).
        attended = chunked_attention(
            ops.expand_dims(q, 1),
            ops.expand_dims(k, 1),
            ops.expand_dims(v, 1),
            scale=self.input_dim**-0.5,
            query_chunk_size=chunk,
            tracing=self.tracing,
        )
        attended = ops.squeeze(attended, 1)
        y = v + self.proj_drop(self.proj(attended), training=training)
        return y + self.mlp(self.norm2(y), training=training)

    CONFIG_FIELDS = ("token_dim", "mlp_ratio", "dropout", "attention_chunk_size", "attention_chunk_threshold")


def restructurization(tokens, grid):
    """The paper's re-structurization: tokens ``(B, rows * cols, C)`` back onto their
    ``grid = (rows, cols)`` as an image ``(B, rows, cols, C)``, row-major, as the
    reference reshapes them (its NCHW ``transpose(1, 2).reshape(B, C, rows, cols)``).
    """
    rows, cols = grid
    return ops.reshape(tokens, (-1, rows, cols, tokens.shape[-1]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Restructurize(ConfigFields, keras.layers.Layer):
    """The paper's re-structurization as a layer: tokens ``(B, rows * cols, C)`` ->
    image ``(B, rows, cols, C)`` on ``grid = (rows, cols)`` (``restructurization``).

    The T2T module puts one between each T2T layer and the next soft split.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.grid = tuple(int(v) for v in grid)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"Restructurize needs grid=(rows, cols) of positive sizes; got {grid!r}.")
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def compute_output_shape(self, input_shape):
        rows, cols = self.grid
        if input_shape[1] is not None and input_shape[1] != rows * cols:
            raise ValueError(f"Restructurize onto a {rows}x{cols} grid needs {rows * cols} tokens; "
                             f"got {input_shape[1]}.")
        return (input_shape[0], rows, cols, input_shape[2])

    def call(self, tokens):
        self.compute_output_shape(tokens.shape)
        return restructurization(tokens, self.grid)

    CONFIG_FIELDS = ("grid",)


def first_stage_dtype(policy):
    """The dtype of what reads unrounded values in the T2T module under ``policy``: the first
    soft split (the raw pixels) and every T2T layer's input LayerNorm (``norm1``). float32
    whenever the policy computes in lower precision, else the policy itself; the rest of
    each T2T layer computes in the policy, its ``norm1`` output rounded once.

    Measured on the validation digits (359 images, the logit error relative to the largest
    float32 logit). Rounding the images to bfloat16 before the first soft split flips 2 of
    359 top-1s of the digits-trained t2t_vit_mini and moves its logits by up to 7.6%: a
    LayerNorm over a near-uniform 7x7 window divides the rounding by a tiny deviation.
    Rounding every weight moves them by 0.3%. With the pixels and each ``norm1`` input
    unrounded, bfloat16 agrees on all 359 (mini: 1.1% on JAX, 2.2% on torch, 1.8% on
    TensorFlow; a digits-trained T2T-ViT-7 at 64x64: 1.4%, 3.4% and 3.6%). Running the
    whole first T2T layer in float32 instead changed these by at most 0.6 points and made
    T2T-ViT-14's T2T module ~15% slower on torch.
    """
    policy = keras.dtype_policies.get(policy)
    return "float32" if policy.compute_dtype != "float32" else policy


T2T_TYPES = ("performer", "transformer")
# The reference's T2T module: dropout 0.1 inside the performer, none in the transformer.
DEFAULT_T2T_DROPOUT = {"performer": 0.1, "transformer": 0.0}
DEFAULT_T2T_STAGES = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokensToToken(keras.layers.Layer):
    """The T2T module: soft split, then (T2T layer, ``restructurization``, soft split)
    for every further stage, then a projection to the backbone width.

    ``stages`` lists one ``(kernel, stride, padding)`` per soft split; a T2T
    layer (``attention1``, ``attention2``, ...) sits between consecutive splits.
    With ``return_stages`` the layer returns a list: each T2T layer's output
    tokens (on the grid of the soft split before it, finest first), then the
    projected tokens; ``keras_t2t.T2TViTBackbone`` reads its feature pyramid there.
    """

    def __init__(
        self,
        t2t_type="performer",
        token_dim=64,
        embed_dim=768,
        stages=DEFAULT_T2T_STAGES,
        dropout=None,
        return_stages=False,
        **kwargs,
    ):
        # The images reach the first soft split unrounded (see ``first_stage_dtype``).
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if t2t_type not in T2T_TYPES:
            raise ValueError(f"t2t_type must be one of {T2T_TYPES}; got {t2t_type!r}.")
        # === config ===
        self.t2t_type = t2t_type
        self.token_dim = int(token_dim)
        self.embed_dim = int(embed_dim)
        self.stages = tuple(tuple(int(v) for v in stage) for stage in stages)
        self.dropout = DEFAULT_T2T_DROPOUT[t2t_type] if dropout is None else float(dropout)
        self.return_stages = bool(return_stages)

        policy = self.dtype_policy
        first = first_stage_dtype(policy)
        self.soft_splits = [
            SoftSplit(*stage, name=f"soft_split{i}", dtype=first if i == 0 else policy)
            for i, stage in enumerate(self.stages)
        ]
        token_layer = TokenPerformer if t2t_type == "performer" else TokenTransformer
        self.attentions = [
            token_layer(token_dim=self.token_dim, dropout=self.dropout, name=f"attention{i}", dtype=policy)
            for i in range(1, len(self.stages))
        ]
        self.restructurizations = []
        self.project = dense(self.embed_dim, "project", dtype=policy)

    def stage_grids(self, height, width):
        """The (rows, cols) token grid after each soft split."""
        if height is None or width is None:
            raise ValueError(
                f"The T2T module needs a fixed image height and width (its position table has one token per "
                f"grid cell); got images of height {height} and width {width}. Give the model that calls it "
                "the backbone's image_shape (e.g. DeepLabV3Backbone(..., image_shape=(224, 224, 3)))."
            )
        grids = []
        for split in self.soft_splits:
            height, width = split.output_grid(height, width)
            grids.append((height, width))
        return grids

    def build(self, input_shape):
        batch, height, width, channels = input_shape
        # Names the expected (height, width, channels) when a model is called on other images.
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={1: height, 2: width, 3: channels})
        grids = self.stage_grids(height, width)
        features = channels
        image_grids = [(height, width)] + grids[:-1]  # what each soft split cuts
        for i, split in enumerate(self.soft_splits):
            split.build((batch, *image_grids[i], features))
            features = features * split.kernel_size**2
            if i < len(self.attentions):
                self.attentions[i].build((batch, grids[i][0] * grids[i][1], features))
                features = self.token_dim
        self.project.build((batch, grids[-1][0] * grids[-1][1], features))
        # Weightless: the checkpoints' keys and the saved files' variables stay as they were.
        self.restructurizations = [
            Restructurize(grids[i], name=f"restructurize{i + 1}", dtype=self.dtype_policy)
            for i in range(len(self.attentions))
        ]

    def compute_output_shape(self, input_shape):
        grids = self.stage_grids(input_shape[1], input_shape[2])
        gh, gw = grids[-1]
        tokens = (input_shape[0], gh * gw, self.embed_dim)
        if not self.return_stages:
            return tokens
        return [(input_shape[0], h * w, self.token_dim) for h, w in grids[: len(self.attentions)]] + [tokens]

    def call(self, images, training=None):
        # The paper's T2T process, T' = MLP(MSA(T)); I = Reshape(T'); T = SoftSplit(I):
        x = self.soft_splits[0](images)
        stages = []
        for attention, restructurize, soft_split in zip(
            self.attentions, self.restructurizations, self.soft_splits[1:], strict=True
        ):
            x = attention(x, training=training)
            stages.append(x)
            x = soft_split(restructurize(x))
        x = self.project(x)
        return stages + [x] if self.return_stages else x

    def get_config(self):
        config = super().get_config()
        config.update(
            t2t_type=self.t2t_type,
            token_dim=self.token_dim,
            embed_dim=self.embed_dim,
            stages=[list(s) for s in self.stages],
            dropout=self.dropout,
        )
        if self.return_stages:  # configs saved before the keyword existed stay as they were
            config["return_stages"] = True
        return config

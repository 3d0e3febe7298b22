"""The building blocks of T2T-ViT as Keras 3 layers (``keras.ops`` only).

Names follow the paper and the authors' checkpoint keys (``../shared/T2T-SPEC.md``):
``SoftSplit`` (the unfold), ``TokenPerformer`` / ``TokenTransformer`` (the two T2T
layer types), ``TokensToToken`` (the whole T2T module), ``TransformerBlock`` (the
backbone block), ``ClassToken`` and ``SinusoidPositionEmbedding``.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

# PyTorch's LayerNorm default; Keras's own default (1e-3) would change every output.
LAYER_NORM_EPSILON = 1e-5
# The reference's performer adds this to the normaliser D (spec section 3).
PERFORMER_EPSILON = 1e-8
# TokenTransformer: above this many tokens (3136 in T2T-ViT_t's first layer; 784 in
# its second is below) the attention runs over chunks of this many queries.
DEFAULT_ATTENTION_CHUNK_THRESHOLD = 1024
DEFAULT_ATTENTION_CHUNK_SIZE = 392

_PACKAGE = "keras_t2t"


def _dense_init():
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _dense(units, name, use_bias=True, dtype=None):
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=_dense_init(),
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def _layer_norm(name, dtype=None):
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def unfold_grid(size, kernel_size, strides, padding):
    """Output side of an unfold: floor((size + 2p - k) / s) + 1."""
    return (size + 2 * padding - kernel_size) // strides + 1


def sinusoid_table(num_positions, dim):
    """The fixed position table of spec section 6, shape (1, num_positions, dim)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angles = positions / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
    return table[None].astype("float32")


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


def _attention_core(q, k, v, scale):
    """softmax(q k^T * scale) v for (B, heads, T, d) tensors (heads first).

    torch: its fused ``scaled_dot_product_attention`` (via ``ops.dot_product_attention``,
    whose layout is (B, T, heads, d); the transposes are views there). TensorFlow and
    JAX: two batched matmuls in the heads-first layout, which XLA and oneDNN run about
    twice as fast as ``ops.dot_product_attention``'s einsums on CPU, with the softmax's
    division moved after the second matmul: ``(exp(l - max l) v) / sum exp(l - max l)``
    is the same softmax-weighted sum, and it divides the (T, d) output instead of the
    (T, T) weights (one pass over the weights fewer). The logits, the exponentials'
    sum and the division are float32 under mixed precision, as in
    ``ops.dot_product_attention``.
    """
    if keras.backend.backend() == "torch":
        out = ops.dot_product_attention(
            ops.transpose(q, (0, 2, 1, 3)),
            ops.transpose(k, (0, 2, 1, 3)),
            ops.transpose(v, (0, 2, 1, 3)),
            scale=scale,
        )
        return ops.transpose(out, (0, 2, 1, 3))
    logits = ops.cast(ops.matmul(q * ops.cast(scale, q.dtype), ops.transpose(k, (0, 1, 3, 2))), "float32")
    if _SOFTMAX_FORM["form"] == "softmax":
        return ops.matmul(ops.cast(ops.softmax(logits, axis=-1), v.dtype), v)
    # The shift only keeps exp() in range; it cancels in the division, so no gradient
    # needs to flow through it.
    weights = ops.exp(logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True)))
    total = ops.sum(weights, axis=-1, keepdims=True)
    out = ops.matmul(ops.cast(weights, v.dtype), v)
    return ops.cast(ops.cast(out, "float32") / total, v.dtype)


# How chunked_attention walks its query chunks: "map" (a loop op: lax.map /
# tf.map_fn, so XLA keeps one chunk's logits at a time) or "unrolled" (one slice
# per chunk in the graph: what converters without loop support need, e.g.
# TFLite's builtin ops). Set for a block of code with ``attention_chunk_loop``.
_CHUNK_LOOP = {"mode": "map"}
CHUNK_LOOP_MODES = ("map", "unrolled")


# How _attention_core writes the softmax on TensorFlow and JAX: "deferred" (exp,
# then the division after the value matmul: fewer passes over the weights under
# XLA on CPU) or "softmax" (one softmax op, which TFLite runs as its builtin
# SOFTMAX kernel). Set with ``attention_softmax_form``.
_SOFTMAX_FORM = {"form": "deferred"}
SOFTMAX_FORMS = ("deferred", "softmax")


@contextlib.contextmanager
def _setting(state, key, value, choices, what):
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}; got {value!r}.")
    previous = state[key]
    state[key] = value
    try:
        yield
    finally:
        state[key] = previous


def attention_chunk_loop(mode):
    """Within the block, chunked attention traces its chunks as ``mode`` ("map" or "unrolled").

    The exporter traces under ``"unrolled"``: the result is the same, and the
    graph has no TensorList ops, which TFLite's builtin ops cannot run.
    """
    return _setting(_CHUNK_LOOP, "mode", mode, CHUNK_LOOP_MODES, "attention_chunk_loop mode")


def attention_softmax_form(form):
    """Within the block, attention writes its softmax as ``form`` ("deferred" or "softmax")."""
    return _setting(_SOFTMAX_FORM, "form", form, SOFTMAX_FORMS, "attention_softmax_form form")


@contextlib.contextmanager
def tracing_for_export():
    """The forms converters run best: unrolled attention chunks and one softmax op each."""
    with attention_chunk_loop("unrolled"), attention_softmax_form("softmax"):
        yield


def chunked_attention(q, k, v, scale, query_chunk_size=None):
    """Softmax attention on (B, heads, T, d) tensors; exact, optionally query-chunked.

    With ``query_chunk_size`` and more than that many queries, the queries are
    split into static chunks of ``query_chunk_size`` rows and each chunk attends
    to all keys: every row's softmax is the same computation, but only a
    (B, heads, chunk, T) block of logits exists at a time instead of
    (B, heads, T, T) (1.26 GB at batch 32 for the 3136 tokens of T2T-ViT_t).
    """
    tokens = q.shape[2]
    if (
        not query_chunk_size
        or tokens is None
        or tokens <= query_chunk_size
        # torch's fused CPU kernel already works through the queries in blocks.
        or keras.backend.backend() == "torch"
    ):
        return _attention_core(q, k, v, scale)
    num_chunks = -(-tokens // query_chunk_size)
    padded = num_chunks * query_chunk_size
    if padded != tokens:
        # Zero query rows fill the last chunk; their outputs are dropped below.
        q = ops.pad(q, [[0, 0], [0, 0], [0, padded - tokens], [0, 0]])
    _, heads, _, depth = q.shape
    if _CHUNK_LOOP["mode"] == "unrolled":
        chunks = [
            _attention_core(q[:, :, start : start + query_chunk_size], k, v, scale)
            for start in range(0, padded, query_chunk_size)
        ]
        out = ops.concatenate(chunks, axis=2)
        return out[:, :, :tokens] if padded != tokens else out
    # (chunks, B, heads, chunk, d): ``ops.map`` is a loop (lax.map, tf.map_fn), so
    # XLA cannot schedule the chunks' logits side by side as it may unrolled slices.
    q = ops.transpose(ops.reshape(q, (-1, heads, num_chunks, query_chunk_size, depth)), (2, 0, 1, 3, 4))
    out = ops.map(lambda q_chunk: _attention_core(q_chunk, k, v, scale), q)
    out = ops.reshape(ops.transpose(out, (1, 2, 0, 3, 4)), (-1, heads, padded, v.shape[-1]))
    return out[:, :, :tokens] if padded != tokens else out


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftSplit(keras.layers.Layer):
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

    def call(self, images):
        k, s, p = self.kernel_size, self.strides, self.padding
        _, height, width, channels = images.shape
        gh, gw = self.output_grid(height, width)
        if p:
            images = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        if keras.backend.backend() == "jax":
            # XLA fuses k * k strided slices and their stack into one copy loop; its
            # CPU gather is slower. Stacking after the channel axis gives the
            # channel-major feature order of torch's Unfold.
            windows = [
                images[:, i : i + s * (gh - 1) + 1 : s, j : j + s * (gw - 1) + 1 : s, :]
                for i in range(k)
                for j in range(k)
            ]
            patches = ops.stack(windows, axis=-1)
            return ops.reshape(patches, (-1, gh * gw, channels * k * k))
        # TensorFlow (graph/eager) and torch: one gather of all window pixels (a pure
        # copy, exact) runs 2-4x faster than k * k slices and a stack there:
        # (B, Hp * Wp, C) -> (B, gh * gw * k * k, C), then the window axis moves
        # after the channels for the channel-major order.
        flat = ops.reshape(images, (-1, (height + 2 * p) * (width + 2 * p), channels))
        patches = ops.take(flat, _unfold_indices(height + 2 * p, width + 2 * p, k, s), axis=1)
        patches = ops.reshape(patches, (-1, gh * gw, k * k, channels))
        patches = ops.transpose(patches, (0, 1, 3, 2))
        return ops.reshape(patches, (-1, gh * gw, channels * k * k))

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, strides=self.strides, padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Mlp(keras.layers.Layer):
    """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, hidden_dim, output_dim, hidden_dropout=0.0, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.hidden_dropout = float(hidden_dropout)
        self.dropout = float(dropout)

        self.fc1 = _dense(self.hidden_dim, "fc1", dtype=self.dtype_policy)
        self.fc2 = _dense(self.output_dim, "fc2", dtype=self.dtype_policy)
        self.hidden_drop = keras.layers.Dropout(self.hidden_dropout, dtype=self.dtype_policy)
        self.output_drop = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def call(self, x, training=None):
        x = ops.gelu(self.fc1(x), approximate=False)
        x = self.hidden_drop(x, training=training)
        return self.output_drop(self.fc2(x), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            output_dim=self.output_dim,
            hidden_dropout=self.hidden_dropout,
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPerformer(keras.layers.Layer):
    """The "performer" T2T layer: single-head linear attention with random features.

    Quirks kept for checkpoint compatibility: the fused projection splits as
    k, q, v (not q, k, v); the residual adds ``v`` because the input and output
    widths differ; the random features ``w`` are fixed (non-trainable) but saved.
    """

    def __init__(self, token_dim=64, kernel_ratio=0.5, dropout=0.1, **kwargs):
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
        self.norm1 = _layer_norm("norm1", dtype=policy)
        self.kqv = _dense(3 * self.token_dim, "kqv", dtype=policy)
        self.proj = _dense(self.token_dim, "proj", dtype=policy)
        self.proj_drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.norm2 = _layer_norm("norm2", dtype=policy)
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

    def get_config(self):
        config = super().get_config()
        config.update(token_dim=self.token_dim, kernel_ratio=self.kernel_ratio, dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenTransformer(keras.layers.Layer):
    """The "transformer" T2T layer (T2T-ViT_t): one-head softmax attention.

    Quirk kept for checkpoint compatibility: the attention scale is
    ``input_dim ** -0.5`` (147 or 576), not ``token_dim ** -0.5``.
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
        self.norm1 = _layer_norm("norm1", dtype=policy)
        self.qkv = _dense(3 * self.token_dim, "qkv", use_bias=False, dtype=policy)
        self.proj = _dense(self.token_dim, "proj", dtype=policy)
        self.proj_drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.norm2 = _layer_norm("norm2", dtype=policy)
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
        )
        attended = ops.squeeze(attended, 1)
        y = v + self.proj_drop(self.proj(attended), training=training)
        return y + self.mlp(self.norm2(y), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            token_dim=self.token_dim,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            attention_chunk_size=self.attention_chunk_size,
            attention_chunk_threshold=self.attention_chunk_threshold,
        )
        return config


T2T_TYPES = ("performer", "transformer")
# The reference's T2T module: dropout 0.1 inside the performer, none in the transformer.
DEFAULT_T2T_DROPOUT = {"performer": 0.1, "transformer": 0.0}
DEFAULT_T2T_STAGES = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokensToToken(keras.layers.Layer):
    """The T2T module: soft split, then (T2T layer, re-structurize, soft split)
    for every further stage, then a projection to the backbone width.

    ``stages`` lists one ``(kernel, stride, padding)`` per soft split; a T2T
    layer (``attention1``, ``attention2``, ...) sits between consecutive splits.
    """

    def __init__(
        self,
        t2t_type="performer",
        token_dim=64,
        embed_dim=768,
        stages=DEFAULT_T2T_STAGES,
        dropout=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if t2t_type not in T2T_TYPES:
            raise ValueError(f"t2t_type must be one of {T2T_TYPES}; got {t2t_type!r}.")
        # === config ===
        self.t2t_type = t2t_type
        self.token_dim = int(token_dim)
        self.embed_dim = int(embed_dim)
        self.stages = tuple(tuple(int(v) for v in stage) for stage in stages)
        self.dropout = DEFAULT_T2T_DROPOUT[t2t_type] if dropout is None else float(dropout)

        policy = self.dtype_policy
        self.soft_splits = [
            SoftSplit(*stage, name=f"soft_split{i}", dtype=policy) for i, stage in enumerate(self.stages)
        ]
        token_layer = TokenPerformer if t2t_type == "performer" else TokenTransformer
        self.attentions = [
            token_layer(token_dim=self.token_dim, dropout=self.dropout, name=f"attention{i}", dtype=policy)
            for i in range(1, len(self.stages))
        ]
        self.project = _dense(self.embed_dim, "project", dtype=policy)

    def stage_grids(self, height, width):
        """The (rows, cols) token grid after each soft split."""
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
        for i, split in enumerate(self.soft_splits):
            split.build((batch, None, None, features))
            features = features * split.kernel_size**2
            if i < len(self.attentions):
                self.attentions[i].build((batch, grids[i][0] * grids[i][1], features))
                features = self.token_dim
        self.project.build((batch, grids[-1][0] * grids[-1][1], features))

    def compute_output_shape(self, input_shape):
        gh, gw = self.stage_grids(input_shape[1], input_shape[2])[-1]
        return (input_shape[0], gh * gw, self.embed_dim)

    def call(self, images, training=None):
        grids = self.stage_grids(images.shape[1], images.shape[2])
        x = self.soft_splits[0](images)
        for i, attention in enumerate(self.attentions):
            x = attention(x, training=training)
            # Tokens back onto their grid, row-major, as the reference reshapes.
            x = ops.reshape(x, (-1, grids[i][0], grids[i][1], self.token_dim))
            x = self.soft_splits[i + 1](x)
        return self.project(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            t2t_type=self.t2t_type,
            token_dim=self.token_dim,
            embed_dim=self.embed_dim,
            stages=[list(s) for s in self.stages],
            dropout=self.dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends the learned class token (stored as ``cls_token``, (1, 1, D))."""

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="cls_token",
        )

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[-1])

    def call(self, x):
        cls = ops.cast(self.cls_token, x.dtype)
        cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([cls, x], axis=1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops the whole residual branch per sample in training."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1); got {rate!r}.")
        # === config ===
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        return x / keep * ops.floor(keep + noise)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiHeadSelfAttention(keras.layers.Layer):
    """The backbone attention: fused qkv (order q, k, v), heads, softmax, proj."""

    def __init__(self, num_heads, qkv_bias=False, qk_scale=None, attn_dropout=0.0, proj_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.num_heads = int(num_heads)
        self.qkv_bias = bool(qkv_bias)
        self.qk_scale = None if qk_scale is None else float(qk_scale)
        self.attn_dropout = float(attn_dropout)
        self.proj_dropout = float(proj_dropout)

        self.attn_drop = keras.layers.Dropout(self.attn_dropout, dtype=self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(self.proj_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"The width {dim} must be divisible by num_heads={self.num_heads}.")
        self.head_dim = dim // self.num_heads
        self.scale = self.qk_scale if self.qk_scale is not None else self.head_dim**-0.5
        self.qkv = _dense(3 * dim, "qkv", use_bias=self.qkv_bias, dtype=self.dtype_policy)
        self.proj = _dense(dim, "proj", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        tokens, dim = x.shape[1], x.shape[2]
        qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.num_heads, self.head_dim))
        if training and self.attn_dropout > 0.0:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            logits = ops.einsum("bqhd,bkhd->bhqk", q, k) * ops.cast(self.scale, q.dtype)
            weights = self.attn_drop(ops.softmax(logits, axis=-1), training=training)
            out = ops.einsum("bhqk,bkhd->bqhd", weights, v)
        elif keras.backend.backend() == "torch":
            # torch's fused scaled_dot_product_attention takes the strided views as they are.
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            out = ops.dot_product_attention(q, k, v, scale=self.scale)
        else:
            # (3, B, heads, T, head_dim): one transpose for q, k and v together, then
            # batched matmuls (see _attention_core), back to (B, T, heads, head_dim).
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
            out = _attention_core(qkv[0], qkv[1], qkv[2], self.scale)
            out = ops.transpose(out, (0, 2, 1, 3))
        out = ops.reshape(out, (-1, tokens, dim))
        return self.proj_drop(self.proj(out), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            qkv_bias=self.qkv_bias,
            qk_scale=self.qk_scale,
            attn_dropout=self.attn_dropout,
            proj_dropout=self.proj_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(keras.layers.Layer):
    """Pre-norm ViT block: x + drop_path(attn(norm1(x))), x + drop_path(mlp(norm2(x)))."""

    def __init__(
        self,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=False,
        qk_scale=None,
        dropout=0.0,
        attn_dropout=0.0,
        drop_path=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === config ===
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.qk_scale = None if qk_scale is None else float(qk_scale)
        self.dropout = float(dropout)
        self.attn_dropout = float(attn_dropout)
        self.drop_path = float(drop_path)

        policy = self.dtype_policy
        self.norm1 = _layer_norm("norm1", dtype=policy)
        self.attn = self._make_attention()
        self.norm2 = _layer_norm("norm2", dtype=policy)
        self.drop_path_layer = DropPath(self.drop_path, dtype=policy)

    def _attention_kwargs(self):
        return dict(
            qkv_bias=self.qkv_bias,
            qk_scale=self.qk_scale,
            attn_dropout=self.attn_dropout,
            proj_dropout=self.dropout,
            name="attn",
            dtype=self.dtype_policy,
        )

    # The two parts other blocks (keras_t2t.study_layers) replace.
    def _make_attention(self):
        return MultiHeadSelfAttention(self.num_heads, **self._attention_kwargs())

    def _make_mlp(self, dim):
        return Mlp(
            int(dim * self.mlp_ratio),
            dim,
            hidden_dropout=self.dropout,
            dropout=self.dropout,
            name="mlp",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.norm1.build(input_shape)
        self.attn.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp = self._make_mlp(int(input_shape[-1]))
        self.mlp.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        x = x + self.drop_path_layer(self.attn(self.norm1(x), training=training), training=training)
        return x + self.drop_path_layer(self.mlp(self.norm2(x), training=training), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            qk_scale=self.qk_scale,
            dropout=self.dropout,
            attn_dropout=self.attn_dropout,
            drop_path=self.drop_path,
        )
        return config


POOLINGS = ("token", "avg")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPooling(keras.layers.Layer):
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

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode)
        return config

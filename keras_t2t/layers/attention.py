"""Softmax attention, written once, and the backbone's ``MultiHeadSelfAttention``.

Every softmax attention of the package runs ``attend`` (or ``chunked_attention``,
which runs ``attend`` over chunks of queries): the backbone's multi-head
attention and its SE and ghost variants (``keras_t2t.layers.study_blocks``), and
the one-head attention of the T2T transformer layer (``TokenTransformer``).
``attention_probabilities`` is the softmax itself, for the training-time
attention dropout and for anyone who wants to look at the weights
(``MultiHeadSelfAttention.attention_weights``, ``keras_t2t.visualize``).

Tracing forms. Each layer that runs softmax attention (an ``AttentionTracing``)
has a ``tracing`` attribute, which is not part of its config, so a ``.keras``
file is the same whichever form traced it:

- ``"fast"`` (the default): on TensorFlow and JAX the softmax's division comes
  after the value matmul (see ``attend``), and query chunks run in a loop op
  (``ops.map``: lax.map / tf.map_fn), so XLA keeps one chunk's logits at a time.
- ``"export"``: one softmax op per attention (TFLite's builtin SOFTMAX kernel) and
  one slice per query chunk in the graph (no TensorList ops, which TFLite's
  builtin ops cannot run).

Both give the same numbers. ``export_tracing(model)`` switches every such layer
of a model for a block of code. On torch the fused kernel (for bfloat16 on a CPU,
``attention_by_batch_chunks``) runs in both forms.
"""

import contextlib

import keras
from keras import ops

from keras_t2t.layers.common import PACKAGE, ConfigFields, dense

FAST = "fast"
EXPORT = "export"
TRACING_MODES = (FAST, EXPORT)


def validate_tracing(tracing):
    """``tracing`` if it is one of ``TRACING_MODES``; a ValueError naming them otherwise."""
    if tracing not in TRACING_MODES:
        raise ValueError(f"tracing must be one of {TRACING_MODES}; got {tracing!r}.")
    return tracing


class AttentionTracing:
    """Mixin of the layers that run softmax attention: their ``tracing`` form ("fast" or "export").

    An attribute, not config: the form changes how the graph is written, never
    the result or the weights.
    """

    _tracing = FAST

    @property
    def tracing(self):
        return self._tracing

    @tracing.setter
    def tracing(self, mode):
        self._tracing = validate_tracing(mode)


@contextlib.contextmanager
def export_tracing(model):
    """Within the block, every attention layer inside ``model`` (a model or a layer) traces as "export".

    The exporter traces its SavedModel and ONNX graphs under this; each layer's
    previous form comes back afterwards, also when the block raises.
    """
    # Keras 3 has no public recursive walk over sublayers (Model.layers stops at the
    # first level and Layer has none); _flatten_layers is what Keras itself walks.
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, AttentionTracing)]
    previous = [layer.tracing for layer in layers]
    try:
        for layer in layers:
            layer.tracing = EXPORT
        yield model
    finally:
        for layer, tracing in zip(layers, previous):
            layer.tracing = tracing


def split_heads(x, num_heads):
    """(B, T, heads * d) -> (B, heads, T, d)."""
    tokens, dim = x.shape[1], x.shape[2]
    return ops.transpose(ops.reshape(x, (-1, tokens, num_heads, dim // num_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, heads, T, d) -> (B, T, heads * d): the inverse of ``split_heads``."""
    _, heads, tokens, depth = x.shape
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, tokens, heads * depth))


def _scores(q, k, scale):
    """q k^T * scale in q's dtype: (B, heads, Tq, d), (B, heads, Tk, d) -> (B, heads, Tq, Tk)."""
    q, k = ops.convert_to_tensor(q), ops.convert_to_tensor(k)
    # q is scaled before the matmul: (T, d) multiplications instead of (T, T).
    return ops.matmul(q * ops.cast(scale, q.dtype), ops.transpose(k, (0, 1, 3, 2)))


def _logits(q, k, scale):
    return ops.cast(_scores(q, k, scale), "float32")


def attention_probabilities(q, k, scale):
    """softmax(q k^T * scale) over the keys: (B, heads, Tq, d), (B, heads, Tk, d) -> (B, heads, Tq, Tk).

    The logits and the softmax are float32 under mixed precision, as in
    ``ops.dot_product_attention``.
    """
    return ops.softmax(_logits(q, k, scale), axis=-1)


# torch, bfloat16 on a CPU: a softmax attention whose (heads, Tq, Tk) logits of one image fit in
# this many elements runs as matmul, softmax, matmul over chunks of images holding at most this
# many logits (4 MB in bfloat16, so a chunk's logits stay in the CPU's cache); others run torch's
# fused kernel. Measured on an AMD EPYC (Zen 5, avx512_bf16), torch 2.13, 2 threads, T2T-ViT-14's
# block attention (32 x 6 heads x 197 tokens, bfloat16): fused 14.4 ms, chunks of 2^21 logits
# 6.3 ms, one chunk of all 7.5M logits 16.7 ms; in float32 the fused kernel was the fastest.
TORCH_BFLOAT16_CHUNK_LOGITS = 2**21


def _batch_chunks_on_torch(q, k):
    """Whether torch's bfloat16 attention on a CPU runs by batch chunks (``attention_by_batch_chunks``)."""
    if keras.backend.standardize_dtype(q.dtype) != "bfloat16" or getattr(q.device, "type", None) != "cpu":
        return False
    heads, queries, keys = q.shape[1], q.shape[2], k.shape[2]
    return None not in (q.shape[0], heads, queries, keys) and heads * queries * keys <= TORCH_BFLOAT16_CHUNK_LOGITS


def attention_by_batch_chunks(q, k, v, scale, max_logits=TORCH_BFLOAT16_CHUNK_LOGITS):
    """softmax(q k^T * scale) v for (B, heads, T, d) tensors, over chunks of images whose logits
    number at most ``max_logits`` (at least one image per chunk); the softmax runs in q's dtype.

    torch's bfloat16 path on a CPU (see ``TORCH_BFLOAT16_CHUNK_LOGITS``): its CPU softmax of
    bfloat16 logits accumulates in float32 and rounds its result once, as the float32 island
    of ``attention_probabilities`` followed by the cast to v's dtype does.
    """
    def attention(q, k, v):
        return ops.matmul(ops.softmax(_scores(q, k, scale), axis=-1), v)

    batch, heads, queries, _ = q.shape
    if None in (batch, heads, queries, k.shape[2]):  # a symbolic shape: one chunk
        return attention(q, k, v)
    per_chunk = max(1, max_logits // (heads * queries * k.shape[2]))
    if per_chunk >= batch:
        return attention(q, k, v)
    chunks = [slice(start, start + per_chunk) for start in range(0, batch, per_chunk)]
    return ops.concatenate([attention(q[c], k[c], v[c]) for c in chunks], axis=0)


def attend(q, k, v, scale, tracing=FAST, dropout=None, training=None):
    """softmax(q k^T * scale) v for (B, heads, T, d) tensors (heads first).

    ``dropout`` (a ``keras.layers.Dropout``) drops attention weights when
    ``training``: the weights are then formed explicitly.

    torch: its fused ``scaled_dot_product_attention`` (via ``ops.dot_product_attention``,
    whose layout is (B, T, heads, d); the transposes are views there); bfloat16 on a CPU
    runs ``attention_by_batch_chunks`` instead where one image's logits are small enough
    (``TORCH_BFLOAT16_CHUNK_LOGITS``: 2.3x faster there). TensorFlow and
    JAX: two batched matmuls in the heads-first layout, which XLA and oneDNN run about
    twice as fast as ``ops.dot_product_attention``'s einsums on CPU. In the "fast"
    tracing form the softmax's division moves after the second matmul:
    ``(exp(l - max l) v) / sum exp(l - max l)`` is the same softmax-weighted sum, and
    it divides the (T, d) output instead of the (T, T) weights (one pass over the
    weights fewer). The logits, the exponentials' sum and the division are float32
    under mixed precision, as in ``ops.dot_product_attention``.
    """
    validate_tracing(tracing)
    if training and dropout is not None and dropout.rate > 0.0:
        weights = dropout(ops.cast(attention_probabilities(q, k, scale), v.dtype), training=training)
        return ops.matmul(weights, v)
    if keras.backend.backend() == "torch":
        if _batch_chunks_on_torch(q, k):
            return attention_by_batch_chunks(q, k, v, scale)
        out = ops.dot_product_attention(
            ops.transpose(q, (0, 2, 1, 3)),
            ops.transpose(k, (0, 2, 1, 3)),
            ops.transpose(v, (0, 2, 1, 3)),
            scale=scale,
        )
        return ops.transpose(out, (0, 2, 1, 3))
    if tracing == EXPORT:
        return ops.matmul(ops.cast(attention_probabilities(q, k, scale), v.dtype), v)
    logits = _logits(q, k, scale)
    # The shift only keeps exp() in range; it cancels in the division, so no gradient
    # needs to flow through it.
    weights = ops.exp(logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True)))
    total = ops.sum(weights, axis=-1, keepdims=True)
    out = ops.matmul(ops.cast(weights, v.dtype), v)
    return ops.cast(ops.cast(out, "float32") / total, v.dtype)


def chunked_attention(q, k, v, scale, query_chunk_size=None, tracing=FAST):
    """Softmax attention on (B, heads, T, d) tensors; exact, optionally query-chunked.

    With ``query_chunk_size`` and more than that many queries, the queries are
    split into static chunks of ``query_chunk_size`` rows and each chunk attends
    to all keys: every row's softmax is the same computation, but only a
    (B, heads, chunk, T) block of logits exists at a time instead of
    (B, heads, T, T) (1.26 GB at batch 32 for the 3136 tokens of T2T-ViT_t).
    ``tracing`` "fast" runs the chunks in a loop op, "export" as one slice each.
    """
    validate_tracing(tracing)
    tokens = q.shape[2]
    if (
        not query_chunk_size
        or tokens is None
        or tokens <= query_chunk_size
        # torch's fused CPU kernel already works through the queries in blocks.
        or keras.backend.backend() == "torch"
    ):
        return attend(q, k, v, scale, tracing)
    num_chunks = -(-tokens // query_chunk_size)
    padded = num_chunks * query_chunk_size
    if padded != tokens:
        # Zero query rows fill the last chunk; their outputs are dropped below.
        q = ops.pad(q, [[0, 0], [0, 0], [0, padded - tokens], [0, 0]])
    _, heads, _, depth = q.shape
    if tracing == EXPORT:
        chunks = [
            attend(q[:, :, start : start + query_chunk_size], k, v, scale, tracing)
            for start in range(0, padded, query_chunk_size)
        ]
        out = ops.concatenate(chunks, axis=2)
        return out[:, :, :tokens] if padded != tokens else out
    # (chunks, B, heads, chunk, d): ``ops.map`` is a loop (lax.map, tf.map_fn), so
    # XLA cannot schedule the chunks' logits side by side as it may unrolled slices.
    q = ops.transpose(ops.reshape(q, (-1, heads, num_chunks, query_chunk_size, depth)), (2, 0, 1, 3, 4))
    out = ops.map(lambda q_chunk: attend(q_chunk, k, v, scale, tracing), q)
    out = ops.reshape(ops.transpose(out, (1, 2, 0, 3, 4)), (-1, heads, padded, v.shape[-1]))
    return out[:, :, :tokens] if padded != tokens else out


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiHeadSelfAttention(ConfigFields, AttentionTracing, keras.layers.Layer):
    """The backbone attention: fused qkv (order q, k, v), heads, softmax, proj.

    Subclasses that project q, k and v another way override ``project_qkv``
    (``GhostAttention``); ``call`` and ``attention_weights`` follow.
    """

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

    def set_head_dim(self, dim):
        """Checks ``dim`` against the heads; sets ``head_dim`` and the attention ``scale``."""
        if dim % self.num_heads:
            raise ValueError(f"The width {dim} must be divisible by num_heads={self.num_heads}.")
        self.head_dim = dim // self.num_heads
        self.scale = self.qk_scale if self.qk_scale is not None else self.head_dim**-0.5

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.set_head_dim(dim)
        self.qkv = dense(3 * dim, "qkv", use_bias=self.qkv_bias, dtype=self.dtype_policy)
        self.proj = dense(dim, "proj", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def project_qkv(self, x):
        """q, k and v of the tokens ``x`` (B, T, D), each (B, heads, T, head_dim)."""
        qkv = ops.reshape(self.qkv(x), (-1, x.shape[1], 3, self.num_heads, self.head_dim))
        # One transpose for q, k and v together: (3, B, heads, T, head_dim). On torch these
        # are views, and attend hands torch's kernel the strided (B, T, heads, d) slices.
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        return qkv[0], qkv[1], qkv[2]

    def attention_weights(self, x, queries=None):
        """The attention probabilities of the tokens ``x`` (B, T, D): (B, heads, Tq, T), float32.

        ``queries``: the indices of the query tokens to keep (``[0]``: the class
        token's row); all T by default. The same softmax ``call`` applies
        (without dropout), computed in float32 from the layer's own weights.
        """
        q, k, _ = self.project_qkv(x)
        if queries is not None:
            q = ops.take(q, ops.convert_to_tensor(queries, "int32"), axis=2)
        return attention_probabilities(ops.cast(q, "float32"), ops.cast(k, "float32"), self.scale)

    def call(self, x, training=None):
        q, k, v = self.project_qkv(x)
        out = attend(q, k, v, self.scale, self.tracing, dropout=self.attn_drop, training=training)
        return self.proj_drop(self.proj(merge_heads(out)), training=training)

    CONFIG_FIELDS = ("num_heads", "qkv_bias", "qk_scale", "attn_dropout", "proj_dropout")

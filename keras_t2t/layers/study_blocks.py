"""Blocks of the paper's backbone studies (spec section 9), as Keras 3 layers (``keras.ops`` only).

The T2T-ViT paper asks which CNN design carries over to a vision transformer
backbone. Its three studies that change the block, named as in the authors'
code so their checkpoints load:

- SE (SENet): ``SEBlock``, whose ``SEAttention`` passes the attention output
  through ``SqueezeExcite`` (channel attention over the mean token).
- Ghost (GhostNet): ``GhostBlock``; ``GhostAttention`` and ``GhostMlp`` make
  half (or two thirds) of their features with ``CheapOperation``, a
  per-channel 1x1 depthwise product.
- Dense (DenseNet): ``DenseBlock`` appends ``growth_rate`` new channels to its
  input; ``DenseTransition`` halves the width between stages.

The ResNeXt and Wide-ResNet studies only change the table's numbers
(``keras_t2t.variants``), not the layers. Every attention here runs
the one softmax attention of ``keras_t2t.layers.attention``.
"""

import numbers

import keras
from keras import ops

from keras_t2t.layers.attention import MultiHeadSelfAttention, split_heads
from keras_t2t.layers.common import PACKAGE, ConfigFields, dense, gelu
from keras_t2t.layers.transformer import TransformerBlock

# The reference's SELayer default: the squeeze keeps width // 16 channels.
SE_REDUCTION = 16
# The ghost MLP concatenates fc1's output with two cheap copies of it: 3 x width.
GHOST_MLP_RATIO = 3.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(ConfigFields, keras.layers.Layer):
    """SENet channel attention on tokens: ``x * sigmoid(W2 relu(W1 mean_over_tokens(x)))``.

    ``W1`` (``reduce``, width -> width // reduction) and ``W2`` (``expand``) have
    no bias, as in the reference. The mean runs over every token, the class
    token included.
    """

    def __init__(self, reduction=SE_REDUCTION, **kwargs):
        super().__init__(**kwargs)
        if isinstance(reduction, bool) or not isinstance(reduction, numbers.Integral) or reduction < 1:
            raise ValueError(f"SqueezeExcite reduction must be a positive integer; got {reduction!r}.")
        # === config ===
        self.reduction = int(reduction)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        squeezed = dim // self.reduction
        if squeezed < 1:
            raise ValueError(
                f"SqueezeExcite needs a width of at least reduction={self.reduction} channels; got {dim}."
            )
        self.reduce = dense(squeezed, "reduce", use_bias=False, dtype=self.dtype_policy)
        self.expand = dense(dim, "expand", use_bias=False, dtype=self.dtype_policy)
        self.reduce.build((input_shape[0], dim))
        self.expand.build((input_shape[0], squeezed))

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        pooled = ops.mean(x, axis=1)
        gate = ops.sigmoid(self.expand(ops.relu(self.reduce(pooled))))
        return x * ops.expand_dims(gate, 1)

    CONFIG_FIELDS = ("reduction",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SEAttention(MultiHeadSelfAttention):
    """The backbone attention with ``SqueezeExcite`` (``se_layer``) between proj and its dropout."""

    def __init__(
        self, num_heads, qkv_bias=False, qk_scale=None, attn_dropout=0.0, proj_dropout=0.0,
        se_reduction=SE_REDUCTION, **kwargs
    ):
        # The parent's own proj dropout stays at 0: the reference drops after the SE gate,
        # so the dropout moves behind it (``se_drop``); ``proj_dropout`` keeps its meaning.
        super().__init__(
            num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_dropout=attn_dropout, proj_dropout=0.0, **kwargs
        )
        # === config ===
        self.proj_dropout = float(proj_dropout)
        self.se_reduction = int(se_reduction)

        self.se_layer = SqueezeExcite(self.se_reduction, name="se_layer", dtype=self.dtype_policy)
        self.se_drop = keras.layers.Dropout(self.proj_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        self.se_layer.build(input_shape)

    def call(self, x, training=None):
        x = super().call(x, training=training)
        return self.se_drop(self.se_layer(x), training=training)

    CONFIG_FIELDS = MultiHeadSelfAttention.CONFIG_FIELDS + ("se_reduction",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CheapOperation(keras.layers.Layer):
    """GhostNet's "cheap operation" on tokens: a per-channel 1x1 depthwise product, no bias.

    The reference's ``Conv1d(C, C, kernel_size=1, groups=C, bias=False)``; its
    (C, 1, 1) weight is this layer's (C,) ``depthwise_kernel``.
    """

    def build(self, input_shape):
        self.depthwise_kernel = self.add_weight(
            shape=(int(input_shape[-1]),),
            # PyTorch's Conv1d default for a fan-in of 1 (the reference re-initialises only Linear layers).
            initializer=keras.initializers.RandomUniform(-1.0, 1.0),
            name="depthwise_kernel",
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        return x * ops.cast(self.depthwise_kernel, x.dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GhostAttention(MultiHeadSelfAttention):
    """Ghost attention: q, k, v each project to half the width; a cheap op makes the other half.

    ``[q, cheap_operation_q(q)]`` (and so for k, v) is then split into heads as
    usual, so the first heads see the projected half, the last the cheap half.
    Same arguments (and config) as ``MultiHeadSelfAttention``; other weights.
    """

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % 2 or dim % self.num_heads:
            raise ValueError(
                f"GhostAttention needs an even width divisible by num_heads={self.num_heads}; got {dim}."
            )
        self.set_head_dim(dim)
        half = dim // 2
        policy = self.dtype_policy
        half_shape = tuple(input_shape[:-1]) + (half,)
        for name in ("q", "k", "v"):
            projection = dense(half, name, use_bias=self.qkv_bias, dtype=policy)
            projection.build(input_shape)
            cheap = CheapOperation(name=f"cheap_operation_{name}", dtype=policy)
            cheap.build(half_shape)
            setattr(self, name, projection)
            setattr(self, f"cheap_operation_{name}", cheap)
        self.proj = dense(dim, "proj", dtype=policy)
        self.proj.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def project_qkv(self, x):
        return tuple(
            split_heads(ops.concatenate([p, cheap(p)], axis=-1), self.num_heads)
            for p, cheap in (
                (self.q(x), self.cheap_operation_q),
                (self.k(x), self.cheap_operation_k),
                (self.v(x), self.cheap_operation_v),
            )
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class GhostMlp(ConfigFields, keras.layers.Layer):
    """Ghost MLP: ``h = GELU(fc1(x))`` (width -> width), two cheap copies ``GELU(cheap(h))``,
    ``[h, copy2, copy3]`` -> dropout -> fc2 (3 x width -> output) -> dropout."""

    def __init__(self, output_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.output_dim = int(output_dim)
        self.dropout = float(dropout)

        policy = self.dtype_policy
        self.fc2 = dense(self.output_dim, "fc2", dtype=policy)
        self.cheap_operation2 = CheapOperation(name="cheap_operation2", dtype=policy)
        self.cheap_operation3 = CheapOperation(name="cheap_operation3", dtype=policy)
        self.hidden_drop = keras.layers.Dropout(self.dropout, dtype=policy)
        self.output_drop = keras.layers.Dropout(self.dropout, dtype=policy)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.fc1 = dense(dim, "fc1", dtype=self.dtype_policy)
        self.fc1.build(input_shape)
        self.cheap_operation2.build(input_shape)
        self.cheap_operation3.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (3 * dim,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def call(self, x, training=None):
        hidden = gelu(self.fc1(x))
        ghosts = [gelu(cheap(hidden)) for cheap in (self.cheap_operation2, self.cheap_operation3)]
        x = self.hidden_drop(ops.concatenate([hidden] + ghosts, axis=-1), training=training)
        return self.output_drop(self.fc2(x), training=training)

    CONFIG_FIELDS = ("output_dim", "dropout")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SEBlock(TransformerBlock):
    """T2T-ViT-SE block: the ViT block with ``SEAttention``."""

    def __init__(self, num_heads, se_reduction=SE_REDUCTION, **kwargs):
        # === config === (set first: the base constructor makes the attention)
        self.se_reduction = int(se_reduction)
        super().__init__(num_heads, **kwargs)

    def make_attention(self):
        return SEAttention(self.num_heads, se_reduction=self.se_reduction, **self.attention_kwargs())

    CONFIG_FIELDS = TransformerBlock.CONFIG_FIELDS + ("se_reduction",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GhostBlock(TransformerBlock):
    """T2T-ViT-Ghost block: ``GhostAttention`` and ``GhostMlp``.

    The ghost MLP's hidden width is always 3 x the block width (fc1's output and
    two cheap copies), so ``mlp_ratio`` must be 3, as in the reference builder.
    """

    def __init__(self, num_heads, mlp_ratio=GHOST_MLP_RATIO, **kwargs):
        if float(mlp_ratio) != GHOST_MLP_RATIO:
            raise ValueError(
                f"GhostBlock needs mlp_ratio={GHOST_MLP_RATIO:g} (its MLP concatenates fc1's output and two "
                f"cheap copies: 3 x the width); got {mlp_ratio!r}."
            )
        super().__init__(num_heads, mlp_ratio=mlp_ratio, **kwargs)

    def make_attention(self):
        return GhostAttention(self.num_heads, **self.attention_kwargs())

    def make_mlp(self, dim):
        return GhostMlp(dim, dropout=self.dropout, name="mlp", dtype=self.dtype_policy)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseBlock(TransformerBlock):
    """T2T-ViT-Dense block: the ViT block, then ``dense_linear`` (width -> growth_rate);
    returns ``[x, new]`` concatenated on channels (width + growth_rate)."""

    def __init__(self, num_heads, growth_rate=64, **kwargs):
        super().__init__(num_heads, **kwargs)
        # === config ===
        self.growth_rate = int(growth_rate)

        self.dense_linear = dense(self.growth_rate, "dense_linear", dtype=self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        self.dense_linear.build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (int(input_shape[-1]) + self.growth_rate,)

    def call(self, x, training=None):
        new = self.dense_linear(super().call(x, training=training))
        return ops.concatenate([x, new], axis=-1)

    CONFIG_FIELDS = TransformerBlock.CONFIG_FIELDS + ("growth_rate",)


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseTransition(keras.layers.Layer):
    """Between two dense stages: ``linear`` (width -> width // 2) then exact GELU."""

    def build(self, input_shape):
        self.linear = dense(int(input_shape[-1]) // 2, "linear", dtype=self.dtype_policy)
        self.linear.build(input_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (int(input_shape[-1]) // 2,)

    def call(self, x):
        return gelu(self.linear(x))


# block_type -> the block class T2TViT stacks ("standard" is TransformerBlock).
STUDY_BLOCKS = {"se": SEBlock, "ghost": GhostBlock}

"""The backbone's parts: ``Mlp``, ``DropPath`` (stochastic depth) and the pre-norm ``TransformerBlock``.

The T2T layers (``keras_t2t.layers.tokens_to_token``) reuse ``Mlp``; the
backbone studies (``keras_t2t.layers.study_blocks``) subclass ``TransformerBlock``
and replace its attention or MLP.
"""

import keras
from keras import ops

from keras_t2t.layers.attention import MultiHeadSelfAttention
from keras_t2t.layers.common import PACKAGE, ConfigFields, dense, gelu, layer_norm


@keras.saving.register_keras_serializable(package=PACKAGE)
class Mlp(ConfigFields, keras.layers.Layer):
    """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, hidden_dim, output_dim, hidden_dropout=0.0, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.hidden_dim = int(hidden_dim)
        self.output_dim = int(output_dim)
        self.hidden_dropout = float(hidden_dropout)
        self.dropout = float(dropout)

        self.fc1 = dense(self.hidden_dim, "fc1", dtype=self.dtype_policy)
        self.fc2 = dense(self.output_dim, "fc2", dtype=self.dtype_policy)
        self.hidden_drop = keras.layers.Dropout(self.hidden_dropout, dtype=self.dtype_policy)
        self.output_drop = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def call(self, x, training=None):
        x = gelu(self.fc1(x))
        x = self.hidden_drop(x, training=training)
        return self.output_drop(self.fc2(x), training=training)

    CONFIG_FIELDS = ("hidden_dim", "output_dim", "hidden_dropout", "dropout")



@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(ConfigFields, keras.layers.Layer):
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

    CONFIG_FIELDS = ("rate", "seed")



@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(ConfigFields, keras.layers.Layer):
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
        self.norm1 = layer_norm("norm1", dtype=policy)
        self.attn = self.make_attention()
        self.norm2 = layer_norm("norm2", dtype=policy)
        self.drop_path_layer = DropPath(self.drop_path, dtype=policy)

    def attention_kwargs(self):
        """The block's arguments of its attention layer (named ``attn``)."""
        return dict(
            qkv_bias=self.qkv_bias,
            qk_scale=self.qk_scale,
            attn_dropout=self.attn_dropout,
            proj_dropout=self.dropout,
            name="attn",
            dtype=self.dtype_policy,
        )

    # The two parts the study blocks (keras_t2t.layers.study_blocks) replace.
    def make_attention(self):
        """The attention sublayer (``attn``), made in the constructor."""
        return MultiHeadSelfAttention(self.num_heads, **self.attention_kwargs())

    def make_mlp(self, dim):
        """The MLP sublayer (``mlp``) for the width ``dim``, made in ``build``."""
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
        self.mlp = self.make_mlp(int(input_shape[-1]))
        self.mlp.build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        x = x + self.stochastic_depth(self.attn(self.norm1(x), training=training), training)
        return x + self.stochastic_depth(self.mlp(self.norm2(x), training=training), training)

    def stochastic_depth(self, branch, training):
        """``branch`` through the ``DropPath`` layer in training with a rate; otherwise as it is.

        Outside training ``DropPath`` returns its input, and is not called at all: a first call of
        it in a never-called model made torch's tracer name the returned tensor differently from
        the second, so ``torch.jit.trace``'s check (Keras' OpenVINO export on torch) refused a
        freshly built model.
        """
        if training and self.drop_path:
            return self.drop_path_layer(branch, training=training)
        return branch

    CONFIG_FIELDS = ("num_heads", "mlp_ratio", "qkv_bias", "qk_scale", "dropout", "attn_dropout", "drop_path")

"""The T2T-ViT model: a functional ``keras.Model`` assembled in ``__init__``."""

import math

import keras
import numpy as np

from keras_t2t import layers as t2t_layers
from keras_t2t.layers import DEFAULT_T2T_STAGES, POOLINGS, T2T_TYPES


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def validate_input_shape(input_shape):
    """(H, W, C) of positive ints, or a clear ValueError."""
    if input_shape is None:
        return (224, 224, 3)
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) for channels-last images; got {input_shape!r}."
        )
    for axis, value in zip(("height", "width", "channels"), shape):
        if value is None:
            raise ValueError(
                f"input_shape {shape} leaves the {axis} unknown; T2T-ViT needs a fixed image size "
                "(its position table has one row per token). Give e.g. (224, 224, 3)."
            )
        _positive_int(f"input_shape {axis}", value)
    return tuple(int(v) for v in shape)


def validate_stages(stages):
    try:
        stages = tuple(tuple(int(v) for v in stage) for stage in stages)
    except (TypeError, ValueError):
        stages = ()
    if not stages or any(len(s) != 3 or s[0] < 1 or s[1] < 1 or s[2] < 0 for s in stages):
        raise ValueError(
            "t2t_stages must be a non-empty list of (kernel_size >= 1, stride >= 1, padding >= 0) "
            f"triples, one per soft split; got {stages!r}."
        )
    return stages


def t2t_grid(image_hw, stages):
    """The token grid after the T2T module, or a ValueError naming the stage that cannot split."""
    height, width = image_hw
    for index, (k, s, p) in enumerate(stages):
        new_h = t2t_layers.unfold_grid(height, k, s, p)
        new_w = t2t_layers.unfold_grid(width, k, s, p)
        if new_h < 1 or new_w < 1:
            raise ValueError(
                f"Image size {image_hw[0]}x{image_hw[1]} is too small for the T2T stages {list(stages)}: "
                f"soft split {index} (kernel {k}, stride {s}, padding {p}) gets a {height}x{width} grid "
                f"and needs each side >= {k - 2 * p}. Use a larger image or smaller T2T stages."
            )
        height, width = new_h, new_w
    return height, width


def square_size_for_grid(side, stages):
    """The square image side whose T2T grid is ``side`` x ``side``, or None.

    ``side * (product of the strides)`` when that size gives the grid (14 -> 224,
    24 -> 384 for the paper's stages); otherwise the smallest size that does.
    """
    exact = side * math.prod(s for _, s, _ in stages)
    for size in [exact] + list(range(1, exact + 64)):
        try:
            if t2t_grid((size, size), stages) == (side, side):
                return size
        except ValueError:
            continue
    return None


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViT(keras.Model):
    """Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021).

    Takes channels-last images ``(B, H, W, C)`` normalised as by
    ``keras_t2t.preprocess_input``. With ``include_top`` it returns class
    scores ``(B, classes)`` (float32 even under mixed precision); without it,
    the pooled feature ``(B, embed_dim)``, or with ``pooling=None`` the whole
    token sequence ``(B, 1 + tokens, embed_dim)`` after the final norm.

    Args:
        input_shape: ``(height, width, channels)``; any size the T2T stages can
            split (224 and 384 for the released weights; non-square works).
        t2t_type: ``"performer"`` (T2T-ViT-7 ... 24) or ``"transformer"`` (T2T-ViT_t).
        token_dim: width of the tokens inside the T2T module (64 in the paper).
        t2t_stages: one ``(kernel, stride, padding)`` per soft split.
        embed_dim, depth, num_heads, mlp_ratio: the backbone.
        qkv_bias: bias in the backbone's qkv projection (False in the paper).
        qk_scale: attention scale override; None means ``(embed_dim / num_heads) ** -0.5``,
            which is what the released checkpoints were evaluated with.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the position
            table / in the blocks, attention dropout, and the maximum stochastic
            depth rate (block i gets ``linspace(0, rate, depth)[i]``).
        t2t_dropout: dropout inside the T2T layers; None means the reference's
            (0.1 for performer, 0 for transformer).
        include_top, classes, pooling, classifier_activation, name: as in
            ``keras.applications``; pooling is ``"token"`` (the class token,
            default), ``"avg"`` (mean of the patch tokens), or None (the
            sequence, only without the top).
    """

    def __init__(
        self,
        input_shape=(224, 224, 3),
        t2t_type="performer",
        token_dim=64,
        t2t_stages=DEFAULT_T2T_STAGES,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=False,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        t2t_dropout=None,
        include_top=True,
        classes=1000,
        pooling="token",
        classifier_activation="softmax",
        name="t2t_vit",
        dtype=None,
        **kwargs,
    ):
        # === validation (before any layer is made) ===
        input_shape = validate_input_shape(input_shape)
        if t2t_type not in T2T_TYPES:
            raise ValueError(f"t2t_type must be one of {T2T_TYPES}; got {t2t_type!r}.")
        token_dim = _positive_int("token_dim", token_dim)
        t2t_stages = validate_stages(t2t_stages)
        embed_dim = _positive_int("embed_dim", embed_dim)
        depth = _positive_int("depth", depth)
        num_heads = _positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} "
                f"(each head gets embed_dim / num_heads channels)."
            )
        if not float(mlp_ratio) > 0:
            raise ValueError(f"mlp_ratio must be > 0; got {mlp_ratio!r}.")
        for rate_name, rate in (
            ("drop_rate", drop_rate),
            ("attn_drop_rate", attn_drop_rate),
            ("drop_path_rate", drop_path_rate),
        ):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"{rate_name} must be in [0, 1); got {rate!r}.")
        if pooling not in POOLINGS and not (pooling is None and not include_top):
            accepted = f"{POOLINGS}" + ("" if include_top else " or None")
            raise ValueError(f"pooling must be one of {accepted}; got {pooling!r}.")
        if include_top:
            classes = _positive_int("classes", classes)
            try:
                keras.activations.get(classifier_activation)
            except ValueError as error:
                raise ValueError(
                    f"classifier_activation {classifier_activation!r} is not a Keras activation "
                    "(use e.g. 'softmax', None for logits)."
                ) from error
        grid = t2t_grid(input_shape[:2], t2t_stages)

        # === functional model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = t2t_layers.TokensToToken(
            t2t_type=t2t_type,
            token_dim=token_dim,
            embed_dim=embed_dim,
            stages=t2t_stages,
            dropout=t2t_dropout,
            name="tokens_to_token",
            dtype=dtype,
        )(inputs)
        x = t2t_layers.ClassToken(name="cls_token", dtype=dtype)(x)
        x = t2t_layers.SinusoidPositionEmbedding(name="pos_embed", dtype=dtype)(x)
        x = keras.layers.Dropout(drop_rate, name="pos_drop", dtype=dtype)(x)
        drop_path_rates = np.linspace(0.0, float(drop_path_rate), depth)
        for i in range(depth):
            x = t2t_layers.TransformerBlock(
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                dropout=drop_rate,
                attn_dropout=attn_drop_rate,
                drop_path=float(drop_path_rates[i]),
                name=f"blocks_{i}",
                dtype=dtype,
            )(x)
        x = keras.layers.LayerNormalization(
            epsilon=t2t_layers.LAYER_NORM_EPSILON, name="norm", dtype=dtype
        )(x)
        if pooling is not None:
            x = t2t_layers.TokenPooling(pooling, name="pool", dtype=dtype)(x)
        if include_top:
            x = keras.layers.Dense(
                classes,
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                name="head",
                dtype=dtype,
            )(x)
            # Scores in float32 whatever the policy: softmax in bfloat16 loses the tail.
            x = keras.layers.Activation(classifier_activation, name="predictions", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **kwargs)

        # === config ===
        self.image_shape = input_shape
        self.t2t_type = t2t_type
        self.token_dim = token_dim
        self.t2t_stages = t2t_stages
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.qk_scale = None if qk_scale is None else float(qk_scale)
        self.drop_rate = float(drop_rate)
        self.attn_drop_rate = float(attn_drop_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.t2t_dropout = None if t2t_dropout is None else float(t2t_dropout)
        self.include_top = bool(include_top)
        self.classes = int(classes) if include_top else classes
        self.pooling = pooling
        self.classifier_activation = (
            classifier_activation
            if classifier_activation is None or isinstance(classifier_activation, str)
            else keras.activations.serialize(classifier_activation)
        )
        self.grid_size = grid

    @property
    def num_tokens(self):
        """Patch tokens after the T2T module (the class token not counted)."""
        return self.grid_size[0] * self.grid_size[1]

    def get_config(self):
        return {
            "input_shape": list(self.image_shape),
            "t2t_type": self.t2t_type,
            "token_dim": self.token_dim,
            "t2t_stages": [list(s) for s in self.t2t_stages],
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qk_scale": self.qk_scale,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
            "t2t_dropout": self.t2t_dropout,
            "include_top": self.include_top,
            "classes": self.classes,
            "pooling": self.pooling,
            "classifier_activation": self.classifier_activation,
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    def feature_extractor(self, block_indices=(), include_t2t=False, name=None):
        """A ``keras.Model`` sharing this model's weights, returning a dict of features.

        Keys: ``"tokens"`` (the sequence after the final norm, (B, 1 + N, D)),
        ``"block_{i}"`` for each requested backbone block (its output before the
        final norm, (B, 1 + N, D)), and ``"t2t"`` (the T2T module's projected
        patch tokens, (B, N, D)) with ``include_t2t``. Negative indices count
        from the last block.
        """
        outputs = {"tokens": self.get_layer("norm").output}
        for index in block_indices:
            if not -self.depth <= int(index) < self.depth:
                raise ValueError(f"block index {index} is out of range for a depth-{self.depth} model.")
            i = int(index) % self.depth
            outputs[f"block_{i}"] = self.get_layer(f"blocks_{i}").output
        if include_t2t:
            outputs["t2t"] = self.get_layer("tokens_to_token").output
        return keras.Model(self.input, outputs, name=name or f"{self.name}_features")

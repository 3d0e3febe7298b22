"""The T2T-ViT models: functional ``keras.Model``s assembled in ``__init__``.

``T2TViT`` stacks one kind of block (the main family, the SE and ghost studies);
``T2TViTDense`` is the dense study, whose width changes from block to block.
"""

import math

import keras
import numpy as np

from keras_t2t import layers as t2t_layers
from keras_t2t.layers import DEFAULT_T2T_STAGES, POOLINGS, T2T_TYPES
from keras_t2t.study_layers import GHOST_MLP_RATIO, SE_REDUCTION, STUDY_BLOCKS, DenseBlock, DenseTransition

# "standard": the main family's ViT block; the others: the paper's backbone studies (spec section 9).
BLOCK_TYPES = ("standard",) + tuple(STUDY_BLOCKS)


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


def _validate_common(
    input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, rates, pooling,
    include_top, classes, classifier_activation,
):
    """The checks every T2T-ViT makes before any layer exists; returns the normalised values."""
    input_shape = validate_input_shape(input_shape)
    if t2t_type not in T2T_TYPES:
        raise ValueError(f"t2t_type must be one of {T2T_TYPES}; got {t2t_type!r}.")
    token_dim = _positive_int("token_dim", token_dim)
    t2t_stages = validate_stages(t2t_stages)
    embed_dim = _positive_int("embed_dim", embed_dim)
    num_heads = _positive_int("num_heads", num_heads)
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} "
            f"(each head gets embed_dim / num_heads channels)."
        )
    if not float(mlp_ratio) > 0:
        raise ValueError(f"mlp_ratio must be > 0; got {mlp_ratio!r}.")
    classes = validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation)
    grid = t2t_grid(input_shape[:2], t2t_stages)
    return input_shape, token_dim, t2t_stages, embed_dim, num_heads, classes, grid


def validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation):
    """Checks shared by every model here (T2T-ViT and ViT): dropout rates ({name: rate}),
    pooling, and the head's class count and activation. Returns the class count."""
    for rate_name, rate in rates.items():
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
    return classes


def _t2t_stem(input_shape, t2t_type, token_dim, t2t_stages, embed_dim, t2t_dropout, drop_rate, dtype):
    """Images -> T2T module -> class token -> position table -> dropout: (inputs, tokens)."""
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
    return inputs, x


def _top(x, include_top, classes, pooling, classifier_activation, dtype):
    """Final norm, pooling and head."""
    x = keras.layers.LayerNormalization(epsilon=t2t_layers.LAYER_NORM_EPSILON, name="norm", dtype=dtype)(x)
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
    return x


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
        block_type: the backbone block: ``"standard"`` (the ViT block of the
            main family), or one of the paper's backbone studies, ``"se"``
            (SENet channel attention after the attention's proj) or ``"ghost"``
            (GhostNet cheap operations in the attention and MLP; needs
            ``mlp_ratio=3`` and an even ``embed_dim``). The dense study changes
            the topology: see ``T2TViTDense``.
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
        block_type="standard",
        **kwargs,
    ):
        # === validation (before any layer is made) ===
        input_shape, token_dim, t2t_stages, embed_dim, num_heads, classes, grid = _validate_common(
            input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio,
            {"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate, "drop_path_rate": drop_path_rate},
            pooling, include_top, classes, classifier_activation,
        )
        depth = _positive_int("depth", depth)
        _validate_block_type(block_type, embed_dim, mlp_ratio)

        # === functional model ===
        inputs, x = _t2t_stem(input_shape, t2t_type, token_dim, t2t_stages, embed_dim, t2t_dropout, drop_rate, dtype)
        block_class = t2t_layers.TransformerBlock if block_type == "standard" else STUDY_BLOCKS[block_type]
        drop_path_rates = np.linspace(0.0, float(drop_path_rate), depth)
        for i in range(depth):
            x = block_class(
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
        x = _top(x, include_top, classes, pooling, classifier_activation, dtype)
        super().__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **kwargs)

        # === config ===
        self._store_config(
            input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale,
            drop_rate, attn_drop_rate, drop_path_rate, t2t_dropout, include_top, classes, pooling,
            classifier_activation, grid,
        )
        self.depth = depth
        self.block_type = block_type

    def _store_config(
        self, input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale,
        drop_rate, attn_drop_rate, drop_path_rate, t2t_dropout, include_top, classes, pooling,
        classifier_activation, grid,
    ):
        self.image_shape = input_shape
        self.t2t_type = t2t_type
        self.token_dim = token_dim
        self.t2t_stages = t2t_stages
        self.embed_dim = embed_dim
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

    @property
    def num_features(self):
        """Width of the final norm's output (what the head reads)."""
        return self.embed_dim

    @property
    def block_names(self):
        """The backbone blocks' layer names, in order (``feature_extractor``'s ``block_{i}`` is the i-th)."""
        return [f"blocks_{i}" for i in range(self.depth)]

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
            "block_type": self.block_type,
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

        Keys: ``"tokens"`` (the sequence after the final norm, (B, 1 + N, num_features)),
        ``"block_{i}"`` for each requested backbone block (its output before the
        final norm, (B, 1 + N, D); a dense block's output is its input width plus
        the growth rate), and ``"t2t"`` (the T2T module's projected patch tokens,
        (B, N, embed_dim)) with ``include_t2t``. Negative indices count from the
        last block.
        """
        outputs = {"tokens": self.get_layer("norm").output}
        names = self.block_names
        for index in block_indices:
            if not -len(names) <= int(index) < len(names):
                raise ValueError(f"block index {index} is out of range for a depth-{len(names)} model.")
            i = int(index) % len(names)
            outputs[f"block_{i}"] = self.get_layer(names[i]).output
        if include_t2t:
            outputs["t2t"] = self.get_layer("tokens_to_token").output
        return keras.Model(self.input, outputs, name=name or f"{self.name}_features")


def _validate_block_type(block_type, embed_dim, mlp_ratio):
    if block_type == "dense":
        raise ValueError(
            "block_type 'dense' changes the topology (widths grow, transitions halve them); build it with "
            "keras_t2t.T2TViTDense (or keras_t2t.t2t_vit_dense)."
        )
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"block_type must be one of {BLOCK_TYPES}; got {block_type!r}.")
    if block_type == "se" and embed_dim < SE_REDUCTION:
        raise ValueError(
            f"block_type 'se' squeezes embed_dim to embed_dim // {SE_REDUCTION} channels, so embed_dim must be "
            f">= {SE_REDUCTION}; got {embed_dim}."
        )
    if block_type == "ghost":
        if float(mlp_ratio) != GHOST_MLP_RATIO:
            raise ValueError(
                f"block_type 'ghost' needs mlp_ratio={GHOST_MLP_RATIO:g} (its MLP concatenates fc1's output and "
                f"two cheap copies: 3 x embed_dim); got {mlp_ratio!r}."
            )
        if embed_dim % 2:
            raise ValueError(
                f"block_type 'ghost' projects q, k and v to embed_dim / 2 channels, so embed_dim must be even; "
                f"got {embed_dim}."
            )


# The reference's T2T_ViT_Dense indexes linspace(0, drop_path_rate, depth) by the stage,
# not the block, with ``depth`` left at its default of 12 (the builder never sets it).
DENSE_DROP_PATH_STEPS = 12


def validate_dense_stages(dense_stages):
    try:
        stages = tuple(dense_stages)
    except TypeError:
        stages = ()
    if not stages or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in stages):
        raise ValueError(
            "dense_stages must be a non-empty list of positive integers (blocks per dense stage, e.g. "
            f"(3, 6, 6, 4)); got {dense_stages!r}."
        )
    return tuple(int(n) for n in stages)


def dense_widths(embed_dim, dense_stages, growth_rate):
    """Input width of every dense block, stage by stage, and the final width.

    ``(128, (3, 6, 6, 4), 64)`` -> ``[[128, 192, 256], [160, ...], ...], 584``.
    """
    widths, start = [], embed_dim
    for stage, blocks in enumerate(dense_stages):
        widths.append([start + j * growth_rate for j in range(blocks)])
        end = start + blocks * growth_rate
        start = end // 2 if stage < len(dense_stages) - 1 else end
    return widths, start


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViTDense(T2TViT):
    """T2T-ViT with DenseNet connections, the paper's dense backbone study (spec section 9).

    Each ``DenseBlock`` (a ViT block, then ``dense_linear`` to ``growth_rate``
    channels) appends its output to its input, so the width grows by
    ``growth_rate`` per block; between stages a ``DenseTransition`` halves it.
    The final norm and head read the last width (``num_features``). Layers are
    named ``blocks_{k}`` with ``k`` counting blocks and transitions together,
    as the authors' checkpoint keys do; ``depth`` is the number of dense blocks.

    Args:
        embed_dim: width of the T2T module's output (the first block's input).
        dense_stages: blocks per stage, e.g. ``(3, 6, 6, 4)``.
        growth_rate: channels each block adds.
        drop_path_rate: as the reference, every block of stage s gets
            ``linspace(0, drop_path_rate, 12)[s]``.
        Everything else as ``T2TViT`` (``num_heads`` must divide every block's width).
    """

    block_type = "dense"

    def __init__(
        self,
        input_shape=(224, 224, 3),
        t2t_type="performer",
        token_dim=64,
        t2t_stages=DEFAULT_T2T_STAGES,
        embed_dim=128,
        dense_stages=(3, 6, 6, 4),
        growth_rate=64,
        num_heads=8,
        mlp_ratio=2.0,
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
        name="t2t_vit_dense",
        dtype=None,
        **kwargs,
    ):
        # === validation (before any layer is made) ===
        input_shape, token_dim, t2t_stages, embed_dim, num_heads, classes, grid = _validate_common(
            input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio,
            {"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate, "drop_path_rate": drop_path_rate},
            pooling, include_top, classes, classifier_activation,
        )
        dense_stages = validate_dense_stages(dense_stages)
        growth_rate = _positive_int("growth_rate", growth_rate)
        widths, final_width = dense_widths(embed_dim, dense_stages, growth_rate)
        for stage, stage_widths in enumerate(widths):
            for width in stage_widths:
                if width % num_heads or width < 1:
                    raise ValueError(
                        f"A dense block of stage {stage} has width {width}, which num_heads={num_heads} does not "
                        f"divide (embed_dim {embed_dim}, growth_rate {growth_rate}, dense_stages "
                        f"{list(dense_stages)}); pick widths that are multiples of num_heads."
                    )

        # === functional model ===
        inputs, x = _t2t_stem(input_shape, t2t_type, token_dim, t2t_stages, embed_dim, t2t_dropout, drop_rate, dtype)
        stage_rates = np.linspace(0.0, float(drop_path_rate), max(DENSE_DROP_PATH_STEPS, len(dense_stages)))
        index = 0
        for stage, blocks in enumerate(dense_stages):
            for _ in range(blocks):
                x = DenseBlock(
                    num_heads,
                    growth_rate=growth_rate,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    dropout=drop_rate,
                    attn_dropout=attn_drop_rate,
                    drop_path=float(stage_rates[stage]),
                    name=f"blocks_{index}",
                    dtype=dtype,
                )(x)
                index += 1
            if stage < len(dense_stages) - 1:
                x = DenseTransition(name=f"blocks_{index}", dtype=dtype)(x)
                index += 1
        x = _top(x, include_top, classes, pooling, classifier_activation, dtype)
        # The functional constructor after T2TViT's in the MRO (T2TViT.__init__ builds another graph).
        super(T2TViT, self).__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **kwargs)

        # === config ===
        self._store_config(
            input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale,
            drop_rate, attn_drop_rate, drop_path_rate, t2t_dropout, include_top, classes, pooling,
            classifier_activation, grid,
        )
        self.dense_stages = dense_stages
        self.growth_rate = growth_rate
        self.depth = sum(dense_stages)
        self._final_width = final_width

    @property
    def num_features(self):
        return self._final_width

    @property
    def block_names(self):
        names, index = [], 0
        for stage, blocks in enumerate(self.dense_stages):
            names.extend(f"blocks_{index + j}" for j in range(blocks))
            index += blocks + 1  # the transition after the stage
        return names

    def get_config(self):
        config = super().get_config()
        del config["depth"], config["block_type"]
        config.update(dense_stages=list(self.dense_stages), growth_rate=self.growth_rate)
        return config

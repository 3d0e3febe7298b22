"""The T2T-ViT models: functional ``keras.Model``s assembled in ``__init__``.

``T2TViT`` stacks one kind of block (the main family, the SE and ghost studies);
``T2TViTDense`` is the dense study, whose width changes from block to block.
The named configurations of the paper are rows of ``keras_t2t.models.presets``.
"""

import inspect

import keras
import numpy as np

from keras_t2t import layers as t2t_layers
from keras_t2t.layers import (
    DEFAULT_T2T_STAGES,
    GHOST_MLP_RATIO,
    SE_REDUCTION,
    STUDY_BLOCKS,
    T2T_TYPES,
    DenseBlock,
    DenseTransition,
)
from keras_t2t.models.base import (
    ClassifierModel,
    block_arguments,
    check_keywords,
    classifier_top,
    positive_int,
    t2t_grid,
    transformer_blocks,
    validate_backbone,
    validate_input_shape,
    validate_rates_and_top,
    validate_stages,
)

# "standard": the main family's ViT block; the others: the paper's backbone studies (spec section 9).
BLOCK_TYPES = ("standard",) + tuple(STUDY_BLOCKS)

_T2T_CONFIG_KEYS = (
    "input_shape", "t2t_type", "token_dim", "t2t_stages", "embed_dim", "depth", "num_heads", "mlp_ratio",
    "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout", "block_type",
    "include_top", "classes", "pooling", "classifier_activation", "token_labeling_head",
)
# The weight of the token-labeling head's scores in the class scores (Token Labeling's evaluation:
# ``x_cls + 0.5 * x_aux.max(1)``), with which the authors report 84.2% for T2T-ViT-24.
TOKEN_LABELING_AUX_WEIGHT = 0.5


def validate_t2t_arguments(
    input_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, rates, pooling,
    include_top, classes, classifier_activation,
):
    """The checks every T2T-ViT makes before any layer exists; returns the normalised values."""
    input_shape = validate_input_shape(input_shape)
    if t2t_type not in T2T_TYPES:
        raise ValueError(f"t2t_type must be one of {T2T_TYPES}; got {t2t_type!r}.")
    token_dim = positive_int("token_dim", token_dim)
    t2t_stages = validate_stages(t2t_stages)
    embed_dim, _, num_heads = validate_backbone(embed_dim, 1, num_heads, mlp_ratio)
    classes = validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation)
    grid = t2t_grid(input_shape[:2], t2t_stages)
    return input_shape, token_dim, t2t_stages, embed_dim, num_heads, classes, grid


def t2t_stem(input_shape, t2t_type, token_dim, t2t_stages, embed_dim, t2t_dropout, drop_rate, dtype,
             return_stages=False):
    """Images -> T2T module -> class token -> position table -> dropout: (inputs, tokens).

    With ``return_stages``: (inputs, tokens, the T2T layers' output tokens), for a feature pyramid.
    """
    inputs = keras.Input(shape=input_shape, name="images")
    x = t2t_layers.TokensToToken(
        t2t_type=t2t_type,
        token_dim=token_dim,
        embed_dim=embed_dim,
        stages=t2t_stages,
        dropout=t2t_dropout,
        return_stages=return_stages,
        name="tokens_to_token",
        dtype=dtype,
    )(inputs)
    stages = []
    if return_stages:
        *stages, x = x
    x = t2t_layers.ClassToken(name="cls_token", dtype=dtype)(x)
    x = t2t_layers.SinusoidPositionEmbedding(name="pos_embed", dtype=dtype)(x)
    x = keras.layers.Dropout(drop_rate, name="pos_drop", dtype=dtype)(x)
    return (inputs, x, stages) if return_stages else (inputs, x)


def token_labeling_scores(classes, dtype):
    """The token-labeling head as ``classifier_top``'s ``aux_scores``: normed tokens -> scores to add.

    Token Labeling (Jiang et al., "All Tokens Matter", 2021) trains a second head,
    ``aux_head`` (Dense to ``classes``), on every patch token; its evaluation adds the
    per-class maximum over the tokens, times ``TOKEN_LABELING_AUX_WEIGHT``, to the
    class token's scores.
    """

    def scores(tokens):
        per_token = keras.layers.Dense(
            classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="aux_head",
            dtype=dtype,
        )(tokens[:, 1:])
        return keras.ops.max(per_token, axis=1) * TOKEN_LABELING_AUX_WEIGHT

    return scores


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViT(ClassifierModel):
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
        token_labeling_head: add Token Labeling's second head (``aux_head``, a
            Dense on every patch token): the class scores become
            ``head(pooled) + 0.5 * max over the patch tokens of aux_head(token)``,
            as the authors evaluate their Token Labeling checkpoint
            (``84.2_T2T_ViT_24.pth.tar``). Needs ``include_top``.
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
        token_labeling_head=False,
        **kwargs,
    ):
        check_keywords(T2TViT, kwargs)
        depth = positive_int("depth", depth)

        def check(embed_dim, num_heads):
            validate_block_type(block_type, embed_dim, mlp_ratio)

        def backbone(x, embed_dim, num_heads):
            block_class = t2t_layers.TransformerBlock if block_type == "standard" else STUDY_BLOCKS[block_type]
            return transformer_blocks(
                x, block_class, depth, drop_path_rate=drop_path_rate,
                **block_arguments(num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dtype),
            )

        self._assemble(
            dict(input_shape=input_shape, t2t_type=t2t_type, token_dim=token_dim, t2t_stages=t2t_stages,
                 embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                 drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                 t2t_dropout=t2t_dropout, include_top=include_top, classes=classes, pooling=pooling,
                 classifier_activation=classifier_activation, token_labeling_head=token_labeling_head),
            check, backbone, name, dtype, kwargs,
        )
        self.depth = depth
        self.block_type = block_type

    CONFIG_KEYS = _T2T_CONFIG_KEYS
    TOKENIZER = ("tokens_to_token", "t2t")

    def _assemble(self, args, check_backbone, build_backbone, name, dtype, model_kwargs):
        """Validates ``args`` (T2TViT's keywords), then builds stem -> backbone -> top and stores the config.

        ``check_backbone(embed_dim, num_heads)`` raises for a backbone that cannot be built, before any
        layer exists; ``build_backbone(x, embed_dim, num_heads)`` returns the backbone's output.
        """
        rates = {key: args[key] for key in ("drop_rate", "attn_drop_rate", "drop_path_rate")}
        input_shape, token_dim, t2t_stages, embed_dim, num_heads, classes, grid = validate_t2t_arguments(
            args["input_shape"], args["t2t_type"], args["token_dim"], args["t2t_stages"], args["embed_dim"],
            args["num_heads"], args["mlp_ratio"], rates, args["pooling"], args["include_top"], args["classes"],
            args["classifier_activation"],
        )
        check_backbone(embed_dim, num_heads)
        token_labeling = args["token_labeling_head"]
        if token_labeling not in (True, False):
            raise ValueError(f"token_labeling_head must be True or False; got {token_labeling!r}.")
        if token_labeling and not args["include_top"]:
            raise ValueError(
                "token_labeling_head=True adds its scores to the head's, so it needs include_top=True; "
                "without the top, leave it False."
            )
        inputs, x = t2t_stem(input_shape, args["t2t_type"], token_dim, t2t_stages, embed_dim, args["t2t_dropout"],
                             args["drop_rate"], dtype)
        x = build_backbone(x, embed_dim, num_heads)
        aux_scores = token_labeling_scores(classes, dtype) if token_labeling else None
        x = classifier_top(
            x, args["include_top"], classes, args["pooling"], args["classifier_activation"], dtype, aux_scores
        )
        # keras.Model's functional constructor (T2TViTDense reaches it through here too).
        super(T2TViT, self).__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **model_kwargs)
        self._store_top(dict(args, input_shape=input_shape, token_dim=token_dim, t2t_stages=t2t_stages,
                             embed_dim=embed_dim, num_heads=num_heads, classes=classes,
                             token_labeling_head=bool(token_labeling)), grid)

    def feature_extractor(self, block_indices=(), include_t2t=False, name=None):
        """A ``keras.Model`` sharing this model's weights, returning a dict of features.

        Keys: ``"tokens"`` (the sequence after the final norm, (B, 1 + N, num_features)),
        ``"block_{i}"`` for each requested backbone block (its output before the
        final norm, (B, 1 + N, D); a dense block's output is its input width plus
        the growth rate), and ``"t2t"`` (the T2T module's projected patch tokens,
        (B, N, embed_dim)) with ``include_t2t``. Negative indices count from the
        last block.
        """
        return self._features(block_indices, include_t2t, name)


def validate_block_type(block_type, embed_dim, mlp_ratio):
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


def check_dense_layout(embed_dim, num_heads, dense_stages, growth_rate):
    """(stages, growth_rate, final width) of a dense backbone, or a ValueError naming a block width
    that ``num_heads`` does not divide."""
    stages = validate_dense_stages(dense_stages)
    growth = positive_int("growth_rate", growth_rate)
    widths, final_width = dense_widths(embed_dim, stages, growth)
    for stage, stage_widths in enumerate(widths):
        for width in stage_widths:
            if width % num_heads or width < 1:
                raise ValueError(
                    f"A dense block of stage {stage} has width {width}, which num_heads={num_heads} does "
                    f"not divide (embed_dim {embed_dim}, growth_rate {growth_rate}, dense_stages "
                    f"{list(dense_stages)}); pick widths that are multiples of num_heads."
                )
    return stages, growth, final_width


def dense_blocks(x, dense_stages, growth_rate, drop_path_rate, block_kwargs):
    """The dense study's backbone: ``DenseBlock``s and, between stages, ``DenseTransition``s, named
    ``blocks_{k}`` with ``k`` counting both (the authors' keys); the reference's stage-wise drop path."""
    stage_rates = np.linspace(0.0, float(drop_path_rate), max(DENSE_DROP_PATH_STEPS, len(dense_stages)))
    index = 0
    for stage, blocks in enumerate(dense_stages):
        for _ in range(blocks):
            x = DenseBlock(growth_rate=growth_rate, drop_path=float(stage_rates[stage]), name=f"blocks_{index}",
                           **block_kwargs)(x)
            index += 1
        if stage < len(dense_stages) - 1:
            x = DenseTransition(name=f"blocks_{index}", dtype=block_kwargs.get("dtype"))(x)
            index += 1
    return x


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
    CONFIG_KEYS = tuple(k for k in _T2T_CONFIG_KEYS if k not in ("depth", "block_type")) + ("dense_stages", "growth_rate")

    def __init__(
        self,
        embed_dim=128,
        dense_stages=(3, 6, 6, 4),
        growth_rate=64,
        num_heads=8,
        mlp_ratio=2.0,
        name="t2t_vit_dense",
        **kwargs,
    ):
        # T2TViT's other keywords (input_shape, t2t_type, ..., dtype) with T2TViT's defaults.
        args = {key: kwargs.pop(key, default) for key, default in _SHARED_DEFAULTS.items()}
        check_keywords(T2TViTDense, kwargs, accepted=_SHARED_DEFAULTS)
        args.update(embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
        dtype = args.pop("dtype")
        layout = {}

        def check(embed_dim, num_heads):
            layout["stages"], layout["growth"], layout["final_width"] = check_dense_layout(
                embed_dim, num_heads, dense_stages, growth_rate)

        def backbone(x, embed_dim, num_heads):
            shared = block_arguments(num_heads, mlp_ratio, args["qkv_bias"], args["qk_scale"], args["drop_rate"],
                                     args["attn_drop_rate"], dtype)
            return dense_blocks(x, layout["stages"], layout["growth"], args["drop_path_rate"], shared)

        self._assemble(args, check, backbone, name, dtype, kwargs)
        self.dense_stages = layout["stages"]
        self.growth_rate = layout["growth"]
        self.depth = sum(self.dense_stages)
        self._final_width = layout["final_width"]

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


# T2TViT's keywords that T2TViTDense takes through ``**kwargs``, with T2TViT's defaults.
_SHARED_DEFAULTS = {
    key: parameter.default
    for key, parameter in inspect.signature(T2TViT.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
    and key not in ("embed_dim", "depth", "num_heads", "mlp_ratio", "name", "block_type")
}

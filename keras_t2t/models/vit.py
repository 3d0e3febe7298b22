"""A plain ViT baseline built from the same blocks as T2T-ViT.

The T2T-ViT paper measures its tokens-to-token module against a ViT that cuts
the image into non-overlapping patches. This file is that baseline: the same
``TransformerBlock``, ``ClassToken``, ``TokenPooling`` and (optionally)
``SinusoidPositionEmbedding`` as ``keras_t2t.T2TViT``; only the tokenizer
differs (``PatchEmbedding`` instead of ``TokensToToken``).

The named configurations (``vit_small_patch16``, ``vit_base_patch16``,
``vit_mini``) are rows of ``keras_t2t.models.presets``. Weights: this package's
own ``.weights.h5`` / ``.keras`` files only (``keras_t2t.weights``).
"""


import keras

from keras_t2t import layers as t2t_layers
from keras_t2t.models.base import (
    ClassifierModel,
    block_arguments,
    check_keywords,
    classifier_top,
    positive_int,
    transformer_blocks,
    validate_backbone,
    validate_input_shape,
    validate_rates_and_top,
)

POSITION_EMBEDDINGS = ("learned", "sinusoid")


def validate_vit_arguments(input_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, position_embedding):
    """The checked ``(input_shape, patch_size, embed_dim, depth, num_heads, grid)`` of a ViT; a ValueError
    naming the value otherwise (before any layer is made)."""
    input_shape = validate_input_shape(input_shape)
    patch_size = positive_int("patch_size", patch_size)
    height, width = input_shape[:2]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"Image size {height}x{width} is not divisible by patch_size={patch_size}: ViT cuts the image "
            f"into non-overlapping {patch_size}x{patch_size} patches. Use a size that is a multiple of "
            f"{patch_size} (e.g. {max(1, height // patch_size) * patch_size}x"
            f"{max(1, width // patch_size) * patch_size}) or another patch_size."
        )
    embed_dim, depth, num_heads = validate_backbone(embed_dim, depth, num_heads, mlp_ratio)
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}; got {position_embedding!r}.")
    return input_shape, patch_size, embed_dim, depth, num_heads, (height // patch_size, width // patch_size)


def vit_tokens(input_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
               position_embedding, drop_rate, attn_drop_rate, drop_path_rate, dtype):
    """``(inputs, tokens)``: a ViT up to its last block (patches, class token, position table, blocks), the
    layers named as in ``keras_t2t.ViT`` (its backbone in KerasHub, ``ViTBackbone``, is built here too)."""
    inputs = keras.Input(shape=input_shape, name="images")
    x = t2t_layers.PatchEmbedding(patch_size, embed_dim, name="patch_embed", dtype=dtype)(inputs)
    x = t2t_layers.ClassToken(name="cls_token", dtype=dtype)(x)
    if position_embedding == "learned":
        x = t2t_layers.LearnedPositionEmbedding(name="pos_embed", dtype=dtype)(x)
    else:
        x = t2t_layers.SinusoidPositionEmbedding(name="pos_embed", dtype=dtype)(x)
    x = keras.layers.Dropout(drop_rate, name="pos_drop", dtype=dtype)(x)
    return inputs, transformer_blocks(
        x, t2t_layers.TransformerBlock, depth, drop_path_rate=drop_path_rate,
        **block_arguments(num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dtype),
    )

@keras.saving.register_keras_serializable(package="keras_t2t")
class ViT(ClassifierModel):
    """Vision Transformer (Dosovitskiy et al., 2021) with T2T-ViT's backbone blocks.

    Takes channels-last images ``(B, H, W, C)`` normalised as by
    ``keras_t2t.preprocess_input``. Outputs as ``keras_t2t.T2TViT``: class scores
    with ``include_top``, else the pooled feature or (``pooling=None``) the token
    sequence after the final norm. Layer names match T2TViT's (``cls_token``,
    ``pos_embed``, ``blocks_{i}``, ``norm``, ``head``) with ``patch_embed`` in
    place of ``tokens_to_token``.

    Args:
        input_shape: ``(height, width, channels)``; both sides divisible by ``patch_size``.
        patch_size: side of the square, non-overlapping patches.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale: the backbone,
            as in ``T2TViT``.
        position_embedding: ``"learned"`` (ViT's trained table, default) or
            ``"sinusoid"`` (T2T-ViT's fixed table).
        drop_rate, attn_drop_rate, drop_path_rate: as in ``T2TViT``.
        include_top, classes, pooling, classifier_activation, name: as in
            ``keras.applications``; pooling ``"token"`` (class token), ``"avg"``
            (mean of the patch tokens) or None (the sequence, only without the top).

    Note: the blocks' LayerNorms use epsilon 1e-5 (T2T-ViT's); timm's ViT-B uses
    1e-6. Nothing here loads timm's checkpoints, so only the name differs.
    """

    CONFIG_KEYS = (
        "input_shape", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_scale",
        "position_embedding", "drop_rate", "attn_drop_rate", "drop_path_rate", "include_top", "classes", "pooling",
        "classifier_activation",
    )
    TOKENIZER = ("patch_embed", "patch_embed")

    def __init__(
        self,
        input_shape=(224, 224, 3),
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=False,
        qk_scale=None,
        position_embedding="learned",
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        include_top=True,
        classes=1000,
        pooling="token",
        classifier_activation="softmax",
        name="vit",
        dtype=None,
        **kwargs,
    ):
        # === validation (before any layer is made) ===
        if "t2t_dropout" in kwargs:
            raise ValueError(
                "t2t_dropout applies to T2T-ViT's tokens-to-token module; a ViT has none (leave it unset)."
            )
        check_keywords(ViT, kwargs)
        rates = dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        input_shape, patch_size, embed_dim, depth, num_heads, grid = validate_vit_arguments(
            input_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, position_embedding)
        classes = validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation)

        # === functional model ===
        inputs, x = vit_tokens(input_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                               position_embedding, drop_rate, attn_drop_rate, drop_path_rate, dtype)
        # The same final norm, pooling and head as T2TViT (layer names included).
        x = classifier_top(x, include_top, classes, pooling, classifier_activation, dtype)
        super().__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **kwargs)

        # === config ===
        self._store_top(
            dict(input_shape=input_shape, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                 num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                 position_embedding=position_embedding, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                 drop_path_rate=drop_path_rate, include_top=include_top, classes=classes, pooling=pooling,
                 classifier_activation=classifier_activation),
            grid,
        )

    def feature_extractor(self, block_indices=(), include_patch_embed=False, name=None):
        """A ``keras.Model`` sharing this model's weights, returning a dict of features.

        Keys: ``"tokens"`` (after the final norm, (B, 1 + N, D)), ``"block_{i}"``
        per requested block (its output, (B, 1 + N, D)) and, with
        ``include_patch_embed``, ``"patch_embed"`` ((B, N, D)). Negative indices
        count from the last block.
        """
        return self._features(block_indices, include_patch_embed, name)

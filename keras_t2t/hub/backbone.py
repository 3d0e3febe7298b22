"""``T2TViTBackbone``: every T2T-ViT of the registry as a KerasHub ``FeaturePyramidBackbone``.

It is the classic ``keras_t2t.T2TViT`` without its top: images -> T2T module ->
class token -> position table -> blocks -> final norm, built from the same
pieces (``models/t2t_vit``), so its variables have the same paths and map to the
authors' checkpoint keys through ``keras_t2t.weights.mapping`` unchanged. Its
output is the token sequence ``(batch, 1 + tokens, width)``; ``pyramid_outputs``
are the T2T layers' tokens and the final patch tokens as ``(batch, H, W, C)``
maps, keyed ``P{n}`` for a map ``2**n`` times smaller than the image (a T2T stage
of stride 1 leaves the stride as it was: the later map of that stride is kept).
The input size is fixed (the position table has a row per token): a model that
calls the backbone, a KerasHub segmenter say, must be given its ``image_shape``.
"""

import inspect
import json
import math

import keras
from keras_hub.models import FeaturePyramidBackbone

from keras_t2t import layers as t2t_layers
from keras_t2t.layers import STUDY_BLOCKS
from keras_t2t.models.base import (
    block_arguments,
    check_keywords,
    positive_int,
    ready_for_export,
    transformer_blocks,
)
from keras_t2t.models.t2t_vit import (
    BLOCK_TYPES,
    T2TViT,
    check_dense_layout,
    dense_blocks,
    t2t_stem,
    validate_block_type,
    validate_t2t_arguments,
)

# The backbone's block types: the main family's, the SE and ghost studies', and the dense study.
BACKBONE_BLOCK_TYPES = BLOCK_TYPES + ("dense",)
# The architecture keywords of T2TViTBackbone, in order, with T2TViT's defaults (the dense
# study's two have none there: they come with block_type="dense").
ARCHITECTURE_DEFAULTS = {
    key: inspect.signature(T2TViT.__init__).parameters[key].default
    for key in ("t2t_type", "token_dim", "t2t_stages", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "t2t_dropout")
}
ARCHITECTURE_DEFAULTS.update(dense_stages=None, growth_rate=None)


def pyramid_key(stride):
    """``P{n}`` for a map ``2**n`` = ``stride`` times smaller than the image (KerasHub's naming);
    ``S{stride}`` for a stride that is not a power of two."""
    level = math.log2(stride)
    return f"P{int(level)}" if level.is_integer() else f"S{stride}"


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViTBackbone(FeaturePyramidBackbone):
    """T2T-ViT (Yuan et al., ICCV 2021) as a KerasHub backbone, for every model of the registry.

    Takes channels-last images normalised as ``keras_t2t.preprocess_input`` does
    (a ``T2TViTImageClassifierPreprocessor`` does it from raw pixels) and returns
    the normed token sequence ``(batch, 1 + tokens, width)``, the class token first.
    ``pyramid_outputs``: at 224x224 with the paper's T2T stages,
    ``{"P2": (B, 56, 56, 64), "P3": (B, 28, 28, 64), "P4": (B, 14, 14, width)}``: the
    first and second T2T layers' tokens, and the final patch tokens.

    Args:
        image_shape: ``(height, width, channels)``, any size the T2T stages split.
        t2t_type, token_dim, t2t_stages, embed_dim, depth, num_heads, mlp_ratio,
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, t2t_dropout:
            as ``keras_t2t.T2TViT``, with its defaults (``ARCHITECTURE_DEFAULTS``).
        block_type: ``"standard"``, the studies' ``"se"``, ``"ghost"`` or ``"dense"``
            (with ``dense_stages`` and ``growth_rate``; ``depth`` is then ignored).
    """

    def __init__(self, image_shape=(224, 224, 3), block_type="standard", dtype=None, **kwargs):
        # The architecture's keywords and defaults are keras_t2t.T2TViT's (ARCHITECTURE_DEFAULTS).
        arch = dict(ARCHITECTURE_DEFAULTS)
        arch.update({key: kwargs.pop(key) for key in list(kwargs) if key in ARCHITECTURE_DEFAULTS})
        (t2t_type, token_dim, t2t_stages, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate,
         attn_drop_rate, drop_path_rate, t2t_dropout, dense_stages, growth_rate) = (
            arch[key] for key in ARCHITECTURE_DEFAULTS)
        check_keywords(T2TViTBackbone, {k: v for k, v in kwargs.items() if k != "name"},
                       accepted=ARCHITECTURE_DEFAULTS)
        kwargs.setdefault("name", "t2t_vit_backbone")
        if block_type not in BACKBONE_BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BACKBONE_BLOCK_TYPES}; got {block_type!r}.")
        rates = dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        image_shape, token_dim, t2t_stages, embed_dim, num_heads, _, grid = validate_t2t_arguments(
            image_shape, t2t_type, token_dim, t2t_stages, embed_dim, num_heads, mlp_ratio, rates, "token", False,
            None, None,
        )
        blocks = block_arguments(num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dtype)
        if block_type == "dense":
            if dense_stages is None or growth_rate is None:
                raise ValueError("block_type 'dense' needs dense_stages (e.g. (3, 6, 6, 4)) and growth_rate (e.g. 64).")
            dense_stages, growth_rate, width = check_dense_layout(embed_dim, num_heads, dense_stages, growth_rate)
            depth = sum(dense_stages)
        else:
            validate_block_type(block_type, embed_dim, mlp_ratio)
            depth = positive_int("depth", depth)
            width = embed_dim

        # === layers ===
        inputs, x, stage_tokens = t2t_stem(image_shape, t2t_type, token_dim, t2t_stages, embed_dim, t2t_dropout,
                                           drop_rate, dtype, return_stages=True)
        if block_type == "dense":
            x = dense_blocks(x, dense_stages, growth_rate, drop_path_rate, blocks)
        else:
            block_class = t2t_layers.TransformerBlock if block_type == "standard" else STUDY_BLOCKS[block_type]
            x = transformer_blocks(x, block_class, depth, drop_path_rate=drop_path_rate, **blocks)
        tokens = keras.layers.LayerNormalization(epsilon=t2t_layers.LAYER_NORM_EPSILON, name="norm", dtype=dtype)(x)

        # === feature pyramid: each T2T layer's tokens on its grid, then the final patch tokens ===
        pyramid, stride = {}, 1
        height, width_px = image_shape[:2]
        maps = stage_tokens + [tokens[:, 1:]]
        for i, (kernel, step, padding) in enumerate(t2t_stages):
            stride *= step
            height = (height + 2 * padding - kernel) // step + 1
            width_px = (width_px + 2 * padding - kernel) // step + 1
            pyramid[pyramid_key(stride)] = t2t_layers.Restructurize(
                (height, width_px), name=f"pyramid_{pyramid_key(stride).lower()}", dtype=dtype
            )(maps[i])
        super().__init__(inputs=inputs, outputs=tokens, dtype=dtype, **kwargs)
        ready_for_export(self)

        # === config ===
        config = dict(
            image_shape=list(image_shape), t2t_type=t2t_type, token_dim=token_dim,
            t2t_stages=[list(s) for s in t2t_stages], embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias), qk_scale=None if qk_scale is None else float(qk_scale),
            drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate), drop_path_rate=float(drop_path_rate),
            t2t_dropout=None if t2t_dropout is None else float(t2t_dropout), block_type=block_type,
            dense_stages=None if dense_stages is None else list(dense_stages), growth_rate=growth_rate)
        self._architecture = config
        for key, value in config.items():
            setattr(self, key, value)
        self.image_shape = tuple(image_shape)
        self.t2t_stages = tuple(tuple(s) for s in t2t_stages)
        # What the weight mapping and the classifier read.
        self.grid_size = grid
        self.num_features = width
        self.pyramid_outputs = pyramid

    @property
    def num_tokens(self):
        """Patch tokens after the T2T module (the class token not counted)."""
        return self.grid_size[0] * self.grid_size[1]

    @classmethod
    def from_preset(cls, preset, load_weights=True, image_shape=None, **kwargs):
        """A backbone from a release preset name (``keras_t2t.list_presets()``), a preset folder or any
        KerasHub handle; ``image_shape`` builds it at another size (position table resized)."""
        # The presets room builds these classes to convert a release, so it sits above this module.
        from keras_t2t.hub import presets

        return presets.load_backbone(preset, image_shape=image_shape, load_weights=load_weights, **kwargs)

    @classmethod
    def load_preset_folder(cls, preset, **kwargs):
        """KerasHub's own ``from_preset`` (no release names, no resizing)."""
        return super().from_preset(preset, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(json.loads(json.dumps(self._architecture)))  # plain lists, as saved in config.json
        return config

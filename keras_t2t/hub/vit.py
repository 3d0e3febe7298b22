"""The ViT baseline in KerasHub: ``ViTBackbone``, ``ViTImageClassifier`` and its preprocessing.

The paper's baseline (``keras_t2t.ViT``: non-overlapping patches, then T2T-ViT's
own blocks) gets the same KerasHub face as T2T-ViT, so ``save_preset`` takes any
model of the package and a preset folder of either loads through KerasHub's own
``ImageClassifier.from_preset``. These are this package's classes, registered as
``keras_t2t>ViTBackbone`` and so on; KerasHub's ``keras_hub.models.ViTBackbone``
(Google's ViT, another layout) is another model.

The backbone is ``keras_t2t.ViT`` without its top, built by the same function
(``models.vit.vit_tokens``), so its layers and variables have the classic model's
names. It outputs the normed token sequence ``(batch, 1 + tokens, width)``; its one
``pyramid_outputs`` map is the final patch tokens on the patch grid, keyed ``P{n}``
for a stride of ``2**n`` (``P4`` for 16x16 patches). No release of the authors is a
ViT, so there are no ViT release presets: a ViT preset is one this package wrote.
"""

import json

import keras
from keras_hub.models import FeaturePyramidBackbone, ImageClassifierPreprocessor

from keras_t2t import layers as t2t_layers
from keras_t2t.hub.backbone import pyramid_key
from keras_t2t.hub.classifier import T2TViTImageConverter, TokenImageClassifier
from keras_t2t.models.base import check_keywords, ready_for_export
from keras_t2t.models.vit import validate_vit_arguments, vit_tokens


@keras.saving.register_keras_serializable(package="keras_t2t")
class ViTBackbone(FeaturePyramidBackbone):
    """The ViT baseline of the T2T-ViT paper as a KerasHub backbone (``keras_t2t.ViT`` without its top).

    Takes channels-last images normalised as ``keras_t2t.preprocess_input`` does and
    returns the normed token sequence ``(batch, 1 + tokens, width)``, the class token
    first. ``pyramid_outputs``: ``{"P4": (B, 14, 14, width)}`` at 224x224 with 16x16
    patches (the final patch tokens; a ViT has one scale).

    Args:
        image_shape: ``(height, width, channels)``, both sides divisible by ``patch_size``.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
        position_embedding, drop_rate, attn_drop_rate, drop_path_rate: as ``keras_t2t.ViT``.
    """

    def __init__(self, image_shape=(224, 224, 3), patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, position_embedding="learned", drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, dtype=None, **kwargs):
        check_keywords(ViTBackbone, {k: v for k, v in kwargs.items() if k not in ("name", "trainable")})
        kwargs.setdefault("name", "vit_backbone")
        image_shape, patch_size, embed_dim, depth, num_heads, grid = validate_vit_arguments(
            image_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, position_embedding)
        # === layers ===
        inputs, x = vit_tokens(image_shape, patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                               position_embedding, drop_rate, attn_drop_rate, drop_path_rate, dtype)
        tokens = keras.layers.LayerNormalization(epsilon=t2t_layers.LAYER_NORM_EPSILON, name="norm", dtype=dtype)(x)
        key = pyramid_key(patch_size)
        pyramid = {key: t2t_layers.Restructurize(grid, name=f"pyramid_{key.lower()}", dtype=dtype)(tokens[:, 1:])}
        super().__init__(inputs=inputs, outputs=tokens, dtype=dtype, **kwargs)
        ready_for_export(self)
        # === config ===
        self._architecture = dict(
            image_shape=list(image_shape), patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
            qk_scale=None if qk_scale is None else float(qk_scale), position_embedding=position_embedding,
            drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate), drop_path_rate=float(drop_path_rate))
        for name, value in self._architecture.items():
            setattr(self, name, value)
        self.image_shape = tuple(image_shape)
        self.grid_size = grid
        self.num_features = embed_dim
        self.pyramid_outputs = pyramid

    @classmethod
    def from_preset(cls, preset, load_weights=True, image_shape=None, **kwargs):
        """KerasHub's ``from_preset`` of a preset folder (or ``hf://``, ``kaggle://`` handle) this package
        wrote; ``image_shape``, when given, must be the preset's own (see ``ViTImageClassifier.from_preset``)."""
        return _at_saved_shape(super().from_preset(preset, load_weights=load_weights, **kwargs), image_shape)

    def get_config(self):
        config = super().get_config()
        config.update(json.loads(json.dumps(self._architecture)))  # plain lists, as saved in config.json
        return config


@keras.saving.register_keras_serializable(package="keras_t2t")
class ViTImageConverter(T2TViTImageConverter):
    """``T2TViTImageConverter`` (resize, centre crop by ``crop_pct``, mean/std) for a ``ViTBackbone``."""

    backbone_cls = ViTBackbone


@keras.saving.register_keras_serializable(package="keras_t2t")
class ViTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """KerasHub's image-classifier preprocessor over a ``ViTImageConverter``."""

    backbone_cls = ViTBackbone
    image_converter_cls = ViTImageConverter


@keras.saving.register_keras_serializable(package="keras_t2t")
class ViTImageClassifier(TokenImageClassifier):
    """The ViT baseline's image classification as a KerasHub task: the class token (``pooling="token"``)
    or the mean patch token (``"avg"``) of a ``ViTBackbone``'s sequence through ``head``; logits unless
    ``activation`` says otherwise. Arguments as ``T2TViTImageClassifier``'s (a ViT has no Token Labeling
    head)."""

    backbone_cls = ViTBackbone
    preprocessor_cls = ViTImageClassifierPreprocessor
    default_name = "vit_image_classifier"

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="token", activation=None, dropout=0.0,
                 token_labeling_head=False, **kwargs):
        if token_labeling_head is not False:
            raise ValueError(f"token_labeling_head is T2T-ViT's Token Labeling head; a ViTImageClassifier has none "
                             f"(leave it False); got {token_labeling_head!r}.")
        super().__init__(backbone, num_classes, preprocessor=preprocessor, pooling=pooling, activation=activation,
                         dropout=dropout, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, image_shape=None, **kwargs):
        """KerasHub's ``from_preset`` of a preset folder (or ``hf://``, ``kaggle://`` handle) this package wrote.

        ``image_shape``, when given, must be the preset's own: a ViT preset loads at the size it was saved
        at. At another size, build the classic model and load the folder into it (its position table is
        resized): ``keras_t2t.vit_small_patch16(input_shape=(384, 384, 3), weights=FOLDER)``.
        """
        return _at_saved_shape(super().from_preset(preset, load_weights=load_weights, **kwargs), image_shape)


def _at_saved_shape(model, image_shape):
    if image_shape is not None and tuple(image_shape) != tuple(model.image_shape):
        raise ValueError(
            f"A ViT preset loads at the size it was saved at, {tuple(model.image_shape)}; got image_shape="
            f"{tuple(image_shape)}. Build the classic model at that size and load the folder into it (its position "
            "table is resized), e.g. keras_t2t.create_model(NAME, input_shape=..., weights=FOLDER)."
        )
    return model

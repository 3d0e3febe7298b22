"""A plain ViT baseline built from the same blocks as T2T-ViT.

The T2T-ViT paper measures its tokens-to-token module against a ViT that cuts
the image into non-overlapping patches. This file is that baseline: the same
``TransformerBlock``, ``ClassToken``, ``TokenPooling`` and (optionally)
``SinusoidPositionEmbedding`` as ``keras_t2t.T2TViT``; only the tokenizer
differs (``PatchEmbedding`` instead of ``TokensToToken``).

``VIT_CONFIGS`` is the one table of named configurations; ``vit_small_patch16``,
``vit_base_patch16``, ``vit_mini`` and ``create_vit`` are built from it.
Weights: this package's own ``.weights.h5`` / ``.keras`` files only.
"""

import os

import keras
import numpy as np
from keras import ops

from keras_t2t import layers as t2t_layers
from keras_t2t.model import _positive_int, _top, validate_input_shape, validate_rates_and_top

_PACKAGE = "keras_t2t"
POSITION_EMBEDDINGS = ("learned", "sinusoid")

# name -> architecture. vit_small_patch16 is ViT-S as the T2T-ViT authors define it
# (their models/vit.py: D 768, depth 8, 8 heads, mlp 3, no qkv bias), not DeiT-S;
# vit_base_patch16 is ViT-B/16 (with the qkv bias of the original ViT).
# vit_mini is the digits baseline: the backbone of the T2T mini model
# (keras_t2t.training.recipe.MINI_MODEL: D 128, depth 4, 4 heads) on 4x4 patches
# of a 32x32 image (the same 8x8 = 64 tokens), with the MLP widened from 2 to
# 2.25 so the parameter count matches the T2T mini model's (~37k weights of its
# T2T module go to the MLPs instead): 577,546 vs 581,856 weights, -0.7%.
VIT_CONFIGS = {
    "vit_small_patch16": dict(patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True),
    # The digits T2T mini's backbone and position table: the two differ only in the tokenizer.
    "vit_mini": dict(
        patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.25, qkv_bias=False,
        position_embedding="sinusoid",
    ),
}
# The image side each configuration is built for when input_shape is not given.
DEFAULT_IMAGE_SIZE = {"vit_small_patch16": 224, "vit_base_patch16": 224, "vit_mini": 32}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """Non-overlapping ``p x p`` patches -> tokens ``(B, (H/p) * (W/p), D)``, row-major.

    A ``Conv2D`` with kernel = stride = ``patch_size`` (``proj``, as timm names it):
    the same as flattening each patch in (row, column, channel) order and
    applying one Dense whose kernel is ``proj.kernel.reshape(p * p * C, D)``.
    Its kernel starts as PyTorch's ``Conv2d`` default (uniform in
    ``+-1/sqrt(p * p * C)``): the authors' ViT re-initialises only its Linear
    and LayerNorm layers.
    """

    def __init__(self, patch_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        # === config ===
        self.patch_size = int(patch_size)
        self.embed_dim = int(embed_dim)

        self.proj = keras.layers.Conv2D(
            self.embed_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_initializer="zeros",
            name="proj",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.proj.build(input_shape)

    def compute_output_shape(self, input_shape):
        _, height, width, _ = input_shape
        return (input_shape[0], (height // self.patch_size) * (width // self.patch_size), self.embed_dim)

    def call(self, images):
        x = self.proj(images)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.embed_dim))

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, embed_dim=self.embed_dim)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LearnedPositionEmbedding(keras.layers.Layer):
    """Adds a trained position table ``pos_embed`` (1, tokens, D), truncated normal std 0.02 as in timm.

    Named ``pos_embed`` like the sinusoid table so the optimizer's no-decay rule covers it.
    """

    def build(self, input_shape):
        self.pos_embed = self.add_weight(
            shape=(1, int(input_shape[1]), int(input_shape[2])),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="pos_embed",
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x):
        return x + ops.cast(self.pos_embed, x.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ViT(keras.Model):
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
        input_shape = validate_input_shape(input_shape)
        patch_size = _positive_int("patch_size", patch_size)
        height, width = input_shape[:2]
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not divisible by patch_size={patch_size}: ViT cuts the image "
                f"into non-overlapping {patch_size}x{patch_size} patches. Use a size that is a multiple of "
                f"{patch_size} (e.g. {max(1, height // patch_size) * patch_size}x"
                f"{max(1, width // patch_size) * patch_size}) or another patch_size."
            )
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
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}; got {position_embedding!r}.")
        rates = dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        classes = validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation)
        grid = (height // patch_size, width // patch_size)

        # === functional model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = PatchEmbedding(patch_size, embed_dim, name="patch_embed", dtype=dtype)(inputs)
        x = t2t_layers.ClassToken(name="cls_token", dtype=dtype)(x)
        if position_embedding == "learned":
            x = LearnedPositionEmbedding(name="pos_embed", dtype=dtype)(x)
        else:
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
        # The same final norm, pooling and head as T2TViT (layer names included).
        x = _top(x, include_top, classes, pooling, classifier_activation, dtype)
        super().__init__(inputs=inputs, outputs=x, name=name, dtype=dtype, **kwargs)

        # === config ===
        self.image_shape = input_shape
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.qk_scale = None if qk_scale is None else float(qk_scale)
        self.position_embedding = position_embedding
        self.drop_rate = float(drop_rate)
        self.attn_drop_rate = float(attn_drop_rate)
        self.drop_path_rate = float(drop_path_rate)
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
        """Patch tokens (the class token not counted)."""
        return self.grid_size[0] * self.grid_size[1]

    def get_config(self):
        return {
            "input_shape": list(self.image_shape),
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "qk_scale": self.qk_scale,
            "position_embedding": self.position_embedding,
            "drop_rate": self.drop_rate,
            "attn_drop_rate": self.attn_drop_rate,
            "drop_path_rate": self.drop_path_rate,
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

    def feature_extractor(self, block_indices=(), include_patch_embed=False, name=None):
        """A ``keras.Model`` sharing this model's weights, returning a dict of features.

        Keys: ``"tokens"`` (after the final norm, (B, 1 + N, D)), ``"block_{i}"``
        per requested block (its output, (B, 1 + N, D)) and, with
        ``include_patch_embed``, ``"patch_embed"`` ((B, N, D)). Negative indices
        count from the last block.
        """
        outputs = {"tokens": self.get_layer("norm").output}
        for index in block_indices:
            if not -self.depth <= int(index) < self.depth:
                raise ValueError(
                    f"block index {index} is out of range for a depth-{self.depth} model "
                    f"(accepted: 0..{self.depth - 1} or -{self.depth}..-1)."
                )
            i = int(index) % self.depth
            outputs[f"block_{i}"] = self.get_layer(f"blocks_{i}").output
        if include_patch_embed:
            outputs["patch_embed"] = self.get_layer("patch_embed").output
        return keras.Model(self.input, outputs, name=name or f"{self.name}_features")


def _unknown_config(name):
    return ValueError(f"Unknown ViT configuration {name!r}; accepted: {', '.join(VIT_CONFIGS)}.")


def load_vit_weights(model, path):
    """Loads this package's own ViT weights (``.weights.h5`` or ``.keras``) into ``model``.

    A ``.keras`` file of another class count fills everything but the head (for
    fine-tuning). Returns a one-line report. The authors' (timm's) ViT
    checkpoints are not supported.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except ValueError as error:
            raise ValueError(
                f"{path!r} does not fit this ViT ({model.name}: patch {model.patch_size}, embed_dim "
                f"{model.embed_dim}, depth {model.depth}, {model.image_shape[0]}x{model.image_shape[1]}): "
                f"{error}"
            ) from error
        return "loaded as saved (same configuration)"
    if path.endswith(".keras"):
        saved = keras.saving.load_model(path, compile=False)
        if not isinstance(saved, ViT):
            raise ValueError(f"{path!r} holds a {type(saved).__name__}, not a keras_t2t ViT.")
        skipped = []
        pairs = []
        for layer in model.layers:
            if not layer.weights:
                continue
            try:
                other = saved.get_layer(layer.name)
            except ValueError:
                other = None
            shapes = [tuple(v.shape) for v in layer.weights]
            other_shapes = None if other is None else [tuple(v.shape) for v in other.weights]
            if shapes == other_shapes:
                pairs.append((layer, other))
            elif layer.name == "head":
                skipped.append(f"head not loaded (the file has {other_shapes}, the model {shapes})"
                               if other is not None else "head not loaded (the file has none)")
            else:
                raise ValueError(
                    f"{path!r} does not fit this ViT: layer {layer.name!r} has weights {other_shapes} in the "
                    f"file and {shapes} in the model (build the ViT with the saved configuration)."
                )
        for layer, other in pairs:
            layer.set_weights(other.get_weights())
        return "; ".join(["loaded from a saved ViT"] + skipped)
    raise ValueError(
        f"ViT weights load from this package's own '.weights.h5' or '.keras' files only; got {path!r}. "
        "The authors' (timm's) ViT checkpoints are not supported."
    )


def build_vit(
    config_name,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling="token",
    classes=1000,
    classifier_activation="softmax",
    name=None,
    **kwargs,
):
    """Builds the ``VIT_CONFIGS`` row ``config_name``; ``kwargs`` override the row."""
    if config_name not in VIT_CONFIGS:
        raise _unknown_config(config_name)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None or a path to a '.keras' or '.weights.h5' file; got {weights!r}.")
    config = dict(VIT_CONFIGS[config_name])
    config.update(kwargs)
    if input_shape is None:
        size = DEFAULT_IMAGE_SIZE[config_name]
        input_shape = (size, size, 3)
    model = ViT(
        input_shape=input_shape,
        include_top=include_top,
        classes=classes,
        pooling=pooling,
        classifier_activation=classifier_activation,
        name=name or config_name,
        **config,
    )
    if weights is not None:
        model.weights_report = load_vit_weights(model, weights)
    return model


def _make_builder(config_name):
    spec = VIT_CONFIGS[config_name]

    def builder(
        include_top=True,
        weights=None,
        input_shape=None,
        pooling="token",
        classes=1000,
        classifier_activation="softmax",
        name=None,
        **kwargs,
    ):
        return build_vit(
            config_name,
            include_top=include_top,
            weights=weights,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            **kwargs,
        )

    builder.__name__ = builder.__qualname__ = config_name
    builder.__doc__ = (
        f"ViT configuration ``{config_name}``: {spec['patch_size']}x{spec['patch_size']} patches, embed_dim "
        f"{spec['embed_dim']}, depth {spec['depth']}, {spec['num_heads']} heads, mlp_ratio {spec['mlp_ratio']:g}, "
        f"qkv_bias {spec['qkv_bias']}, {spec.get('position_embedding', 'learned')} positions; built at {DEFAULT_IMAGE_SIZE[config_name]}x"
        f"{DEFAULT_IMAGE_SIZE[config_name]} unless input_shape says otherwise.\n\n"
        "Args: the keras.applications keywords (include_top, weights, input_shape, pooling, classes,\n"
        "classifier_activation, name); ``weights`` is None or a path to a '.keras' / '.weights.h5' file\n"
        "of this package. Other keywords (drop_path_rate, position_embedding, dtype, ...) go to ``ViT``."
    )
    return builder


VIT_BUILDERS = {config_name: _make_builder(config_name) for config_name in VIT_CONFIGS}
vit_small_patch16 = VIT_BUILDERS["vit_small_patch16"]
vit_base_patch16 = VIT_BUILDERS["vit_base_patch16"]
vit_mini = VIT_BUILDERS["vit_mini"]


def create_vit(name, **kwargs):
    """Builds a ViT configuration by name, e.g. ``create_vit("vit_mini", classes=10)``."""
    if name not in VIT_BUILDERS:
        raise _unknown_config(name)
    return VIT_BUILDERS[name](**kwargs)


def list_vit_configs():
    return list(VIT_CONFIGS)

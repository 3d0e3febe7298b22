"""The KerasHub task and preprocessing of T2T-ViT: ``T2TViTImageClassifier`` and its preprocessor.

``T2TViTImageConverter`` is the authors' evaluation transform as a layer (bicubic
resize of the shorter side to ``image_size / crop_pct``, centre crop, mean/std),
which KerasHub's ``ImageConverter`` cannot express (it has no ``crop_pct``). It is
saved in a preset, so a model loaded from one is fed as it was evaluated.
"""

import math
import typing
import warnings

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.models import ImageClassifier, ImageClassifierPreprocessor

from keras_t2t import layers as t2t_layers
from keras_t2t.data.images import (
    DEFAULT_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    as_hw,
    check_crop_pct,
    resize_size,
)
from keras_t2t.hub.backbone import T2TViTBackbone
from keras_t2t.models.base import check_keywords, ready_for_export
from keras_t2t.models.t2t_vit import TOKEN_LABELING_AUX_WEIGHT


# What KerasHub's Task and keras.Model take through **kwargs.
TASK_KEYWORDS = ("name", "dtype", "trainable", "compile")
# The interpolations keras.ops.image.resize offers.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos3", "lanczos5", "area")


class _Ops(typing.NamedTuple):
    convert_to_tensor: typing.Callable
    cast: typing.Callable
    resize: typing.Callable
    clip: typing.Callable


_KERAS_OPS = _Ops(ops.convert_to_tensor, ops.cast,
                  lambda x, size, method, antialias: ops.image.resize(x, size, interpolation=method,
                                                                       antialias=antialias),
                  ops.clip)


def _tensorflow_ops():
    """The same operations in TensorFlow: KerasHub maps a preprocessor over a tf.data pipeline on every
    backend, where the images are TensorFlow tensors."""
    import tensorflow as tf

    return _Ops(tf.convert_to_tensor, tf.cast,
                lambda x, size, method, antialias: tf.image.resize(x, size, method=method, antialias=antialias),
                tf.clip_by_value)


def _triple(name, value):
    values = tuple(float(v) for v in np.ravel(value))
    if len(values) != 3 or (name == "std" and min(values) <= 0):
        raise ValueError(f"{name} must be three numbers (one per RGB channel{', > 0' if name == 'std' else ''}); "
                         f"got {value!r}.")
    return values


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViTImageConverter(ImageConverter):
    """Raw RGB pixels (0..255, ``(H, W, 3)`` or ``(B, H, W, 3)``) -> what a T2T-ViT takes.

    The authors' evaluation transform: the shorter side resized (bicubic, antialiased
    like PIL) to ``floor(image_size / crop_pct)``, the centre ``image_size`` cropped,
    then ``(pixels / 255 - mean) / std``. ``crop_pct=1.0`` resizes the shorter side to
    the size itself (what this package's trainer evaluates with). The images of one
    call must share a known height and width.
    """

    backbone_cls = T2TViTBackbone

    def __init__(self, image_size=(224, 224), crop_pct=DEFAULT_CROP_PCT, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation="bicubic", antialias=True, **kwargs):
        for derived in ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio"):
            kwargs.pop(derived, None)  # what ImageConverter's config holds; here they follow from the above
        image_size = as_hw(tuple(image_size) if isinstance(image_size, list) else image_size)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")
        mean, std = _triple("mean", mean), _triple("std", std)
        super().__init__(
            image_size=image_size,
            scale=[1.0 / (255.0 * s) for s in std],
            offset=[-m / s for m, s in zip(mean, std)],
            interpolation=interpolation,
            antialias=antialias,
            **kwargs,
        )
        # === config ===
        self.crop_pct = check_crop_pct(crop_pct)
        self.mean = mean
        self.std = std

    def _call_python(self, inputs):
        ops_ = _tensorflow_ops() if type(inputs).__module__.startswith("tensorflow") else _KERAS_OPS
        x = ops_.convert_to_tensor(np.asarray(inputs) if isinstance(inputs, (list, tuple)) else inputs)
        if len(x.shape) not in (3, 4) or x.shape[-1] not in (1, 3, None):
            raise ValueError(
                f"T2TViTImageConverter takes RGB pixels, (height, width, 3) or (batch, height, width, 3) (one "
                f"grey channel is repeated); got shape {tuple(x.shape)}."
            )
        unbatched = len(x.shape) == 3
        if unbatched:
            x = x[None]
        height, width = x.shape[1], x.shape[2]
        if height == 0 or width == 0:
            raise ValueError(f"T2TViTImageConverter takes (height, width, 3) pixels with a height and a width; got "
                             f"empty images of shape {tuple(x.shape)}.")
        if height is None or width is None:
            raise ValueError(
                "T2TViTImageConverter needs images of known height and width (got a batch of shape "
                f"{tuple(x.shape)}); give it one image, or a batch of images of one size."
            )
        new_w, new_h = resize_size(int(width), int(height), self.image_size, self.crop_pct)
        x = ops_.cast(x, "float32")
        if (new_h, new_w) != (height, width):
            x = ops_.resize(x, (new_h, new_w), self.interpolation, self.antialias)
            x = ops_.clip(x, 0.0, 255.0)  # bicubic overshoots; PIL's uint8 result cannot
        crop_h, crop_w = self.image_size
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        x = x[:, top:top + crop_h, left:left + crop_w, :]
        x = x * ops_.convert_to_tensor(np.asarray(self.scale, "float32")) + ops_.convert_to_tensor(
            np.asarray(self.offset, "float32"))
        x = ops_.cast(x, self.compute_dtype)
        return x[0] if unbatched else x

    def get_config(self):
        config = super().get_config()
        for derived in ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio"):
            config.pop(derived, None)
        config.update(image_size=list(self.image_size), crop_pct=self.crop_pct, mean=list(self.mean),
                      std=list(self.std))
        return config


def scale_size(image_size, crop_pct):
    """The shorter side an image is resized to before the centre crop (square sizes)."""
    return int(math.floor(as_hw(image_size)[0] / crop_pct))


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """KerasHub's image-classifier preprocessor over a ``T2TViTImageConverter``."""

    backbone_cls = T2TViTBackbone
    image_converter_cls = T2TViTImageConverter


class TokenImageClassifier(ImageClassifier):
    """What the package's KerasHub classifiers share: a head on the class token of a backbone's sequence.

    The class token of the backbone's normed sequence (``pooling="token"``, the
    authors'; ``"avg"``: the mean patch token) goes through ``head``; with
    ``token_labeling_head``, Token Labeling's ``aux_head`` scores every patch token
    and ``0.5 *`` their per-class maximum is added. Returns logits unless
    ``activation`` says otherwise (KerasHub's default). A subclass names its
    ``backbone_cls`` and ``preprocessor_cls``.
    """

    default_name = "image_classifier"

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="token", activation=None, dropout=0.0,
                 token_labeling_head=False, head_dtype=None, **kwargs):
        cls = type(self)
        check_keywords(cls, {k: v for k, v in kwargs.items() if k not in TASK_KEYWORDS})
        if not isinstance(backbone, cls.backbone_cls):
            raise TypeError(f"{cls.__name__} needs a keras_t2t.{cls.backbone_cls.__name__}; got "
                            f"{type(backbone).__name__}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
        if token_labeling_head not in (True, False):
            raise ValueError(f"token_labeling_head must be True or False; got {token_labeling_head!r}.")
        head_dtype = head_dtype or backbone.dtype_policy
        kwargs.setdefault("name", cls.default_name)
        # === layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        tokens = backbone(inputs)
        x = t2t_layers.TokenPooling(pooling, name="pool", dtype=head_dtype)(tokens)
        x = keras.layers.Dropout(dropout, name="output_dropout", dtype=head_dtype)(x)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        x = keras.layers.Dense(int(num_classes), kernel_initializer=init, name="head", dtype=head_dtype)(x)
        if token_labeling_head:
            per_token = keras.layers.Dense(int(num_classes), kernel_initializer=init, name="aux_head",
                                           dtype=head_dtype)(tokens[:, 1:])
            x = keras.layers.Add(name="scores", dtype=head_dtype)(
                [x, ops.max(per_token, axis=1) * TOKEN_LABELING_AUX_WEIGHT])
        # Scores in float32 whatever the policy, as the classic model.
        outputs = keras.layers.Activation(activation, name="predictions", dtype="float32")(x)
        # Task's constructor, not ImageClassifier's: that one builds a 2D pooler and its own head.
        super(ImageClassifier, self).__init__(inputs=inputs, outputs=outputs, **kwargs)
        ready_for_export(self)
        # === config ===
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.activation = activation
        self.dropout = float(dropout)
        self.token_labeling_head = bool(token_labeling_head)

    @property
    def classes(self):
        return self.num_classes

    image_shape = property(lambda self: self.backbone.image_shape)
    grid_size = property(lambda self: self.backbone.grid_size)

    def get_config(self):
        config = super().get_config()
        config.update(token_labeling_head=self.token_labeling_head)
        return config

    def load_task_weights(self, filepath):
        # A preset written from a classic keras_t2t model holds no optimizer state; KerasHub's
        # compiled task has some, which Keras would warn about on every load.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            super().load_task_weights(filepath)


@keras.saving.register_keras_serializable(package="keras_t2t")
class T2TViTImageClassifier(TokenImageClassifier):
    """T2T-ViT image classification as a KerasHub task.

    The class token of the backbone's normed sequence (``pooling="token"``, the
    authors'; ``"avg"``: the mean patch token) goes through ``head``; with
    ``token_labeling_head``, Token Labeling's ``aux_head`` scores every patch token
    and ``0.5 *`` their per-class maximum is added, as the authors evaluate their
    84.2% T2T-ViT-24. Returns logits unless ``activation`` says otherwise (KerasHub's default).

    Args:
        backbone: a ``keras_t2t.T2TViTBackbone``.
        num_classes: the class count.
        preprocessor: a ``T2TViTImageClassifierPreprocessor``, or None to feed normalised images.
        pooling: ``"token"`` or ``"avg"``.
        activation: None (logits), ``"softmax"``, ...
        dropout: dropout before the head.
        token_labeling_head: add Token Labeling's per-token head.
    """

    backbone_cls = T2TViTBackbone
    preprocessor_cls = T2TViTImageClassifierPreprocessor
    default_name = "t2t_vit_image_classifier"

    # What the weight mapping (keras_t2t.weights.mapping) reads of a model.
    include_top = True

    # The backbone's architecture, read by the mapping as it reads a classic T2TViT's.
    t2t_type = property(lambda self: self.backbone.t2t_type)
    t2t_stages = property(lambda self: self.backbone.t2t_stages)
    embed_dim = property(lambda self: self.backbone.embed_dim)
    depth = property(lambda self: self.backbone.depth)
    block_type = property(lambda self: self.backbone.block_type)
    num_tokens = property(lambda self: self.backbone.num_tokens)

    @classmethod
    def from_preset(cls, preset, load_weights=True, image_shape=None, **kwargs):
        """A classifier from a release preset name (``keras_t2t.list_presets()``), a preset folder or any
        KerasHub handle.

        A release is fetched and converted once into a preset folder in the cache
        (``keras_t2t.hub.presets``); later calls read only that folder. ``image_shape``
        builds it at another size, the position table resized as the authors resize it.
        ``num_classes=N`` gives a fresh head (KerasHub's rule).
        """
        # The presets room builds these classes to convert a release, so it sits above this module.
        from keras_t2t.hub import presets

        return presets.load_classifier(preset, image_shape=image_shape, load_weights=load_weights, **kwargs)

    @classmethod
    def load_preset_folder(cls, preset, **kwargs):
        """KerasHub's own ``from_preset`` (no release names, no resizing)."""
        return super().from_preset(preset, **kwargs)

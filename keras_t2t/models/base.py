"""What every classifier of the package shares: argument checks, grid arithmetic, the top, the config.

``ClassifierModel`` is the base of ``T2TViT`` and ``ViT``: both are functional
``keras.Model``s built in ``__init__`` from a tokenizer, a class token, a
position table and blocks, with the same final norm, pooling and head
(``classifier_top``) and the same config mechanics (``CONFIG_KEYS``).
"""

import difflib
import inspect
import math
import os

import keras
import numpy as np

from keras_t2t import layers as t2t_layers
from keras_t2t.keras_files import describe_differences, differences, tensor_tree, written_tree


def positive_int(name, value):
    """``value`` as an int >= 1, or a ValueError naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


# What keras.Model itself takes through **kwargs (from_config passes it).
KERAS_MODEL_KEYWORDS = ("trainable",)
# Names users bring from timm / the authors' code, and what they are called here.
KEYWORD_ALIASES = {
    "num_classes": "classes",
    "num_class": "classes",
    "drop_path": "drop_path_rate",
    "img_size": "input_shape",
    "image_size": "input_shape",
    "in_chans": "input_shape",
    "global_pool": "pooling",
    "pretrained": "weights",
}


def check_keywords(model_class, kwargs, accepted=()):
    """TypeError for keywords ``model_class`` does not take, suggesting the closest valid name.

    ``accepted``: further valid names (a subclass's pass-through keywords).
    """
    unknown = [key for key in kwargs if key not in KERAS_MODEL_KEYWORDS]
    if not unknown:
        return
    valid = [name for name in inspect.signature(model_class.__init__).parameters if name not in ("self", "kwargs")]
    valid += list(accepted) + list(KERAS_MODEL_KEYWORDS)
    hints = []
    for key in unknown:
        close = KEYWORD_ALIASES.get(key) or next(iter(difflib.get_close_matches(key, valid + ["weights"], n=1)), None)
        hints.append(f"{key!r}" + (f" (did you mean {close!r}?)" if close else ""))
    raise TypeError(
        f"{model_class.__name__} got unexpected keyword argument{'s' if len(hints) > 1 else ''} {', '.join(hints)}. "
        f"Accepted: {', '.join(sorted(set(valid)))}."
    )


def validate_input_shape(input_shape):
    """(H, W, C) of positive ints, or a clear ValueError; None means (224, 224, 3)."""
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
                f"input_shape {shape} leaves the {axis} unknown; the model needs a fixed image size "
                "(its position table has one row per token). Give e.g. (224, 224, 3)."
            )
        positive_int(f"input_shape {axis}", value)
    return tuple(int(v) for v in shape)


def validate_stages(stages):
    """The T2T module's soft splits as a tuple of (kernel, stride, padding) int triples."""
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


def validate_backbone(embed_dim, depth, num_heads, mlp_ratio):
    """The blocks' widths: positive ints, heads dividing the width, a positive MLP ratio."""
    embed_dim = positive_int("embed_dim", embed_dim)
    depth = positive_int("depth", depth)
    num_heads = positive_int("num_heads", num_heads)
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim={embed_dim} must be divisible by num_heads={num_heads} "
            f"(each head gets embed_dim / num_heads channels)."
        )
    if not float(mlp_ratio) > 0:
        raise ValueError(f"mlp_ratio must be > 0; got {mlp_ratio!r}.")
    return embed_dim, depth, num_heads


def validate_rates_and_top(rates, pooling, include_top, classes, classifier_activation):
    """Checks shared by every model here (T2T-ViT and ViT): dropout rates ({name: rate}),
    pooling, and the head's class count and activation. Returns the class count."""
    for rate_name, rate in rates.items():
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"{rate_name} must be in [0, 1); got {rate!r}.")
    if pooling not in t2t_layers.POOLINGS and not (pooling is None and not include_top):
        accepted = f"{t2t_layers.POOLINGS}" + ("" if include_top else " or None")
        raise ValueError(f"pooling must be one of {accepted}; got {pooling!r}.")
    if include_top:
        classes = positive_int("classes", classes)
        try:
            keras.activations.get(classifier_activation)
        except ValueError as error:
            raise ValueError(
                f"classifier_activation {classifier_activation!r} is not a Keras activation "
                "(use e.g. 'softmax', None for logits)."
            ) from error
    return classes


def block_arguments(num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dtype):
    """The keywords every backbone block takes (a model's names -> the block's names)."""
    return dict(num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, dropout=drop_rate,
                attn_dropout=attn_drop_rate, dtype=dtype)


def transformer_blocks(x, block_class, depth, drop_path_rate=0.0, **block_kwargs):
    """``depth`` blocks ``blocks_{i}`` with stochastic depth ``linspace(0, drop_path_rate, depth)[i]``."""
    for i, rate in enumerate(np.linspace(0.0, float(drop_path_rate), depth)):
        x = block_class(drop_path=float(rate), name=f"blocks_{i}", **block_kwargs)(x)
    return x


def classifier_top(x, include_top, classes, pooling, classifier_activation, dtype, aux_scores=None):
    """Final norm (``norm``), pooling (``pool``) and head (``head`` + ``predictions``).

    ``aux_scores(tokens)``, when given, makes scores from the normed sequence that are
    added to the head's before the activation (T2T-ViT's token-labeling head).
    """
    x = tokens = keras.layers.LayerNormalization(
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
        if aux_scores is not None:
            x = keras.layers.Add(name="scores", dtype=dtype)([x, aux_scores(tokens)])
        # Scores in float32 whatever the policy: softmax in bfloat16 loses the tail.
        x = keras.layers.Activation(classifier_activation, name="predictions", dtype="float32")(x)
    return x


def _empty_rows(x):
    """Whether ``x`` is an array-like batch of zero images (a dataset or generator is not looked into)."""
    shape = getattr(x, "shape", None)
    return shape is not None and len(shape) > 0 and shape[0] == 0


class EmptyBatchPredict:
    """``predict`` of zero images gives zero rows of each output, as calling the model does.

    Keras' ``predict`` loops over batches and has no outputs to concatenate when there is
    none (``UnboundLocalError`` on TensorFlow and PyTorch, ``StopIteration`` on JAX).
    """

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        if _empty_rows(x):
            return keras.tree.map_structure(
                lambda out: np.zeros((0,) + tuple(out.shape[1:]), keras.backend.standardize_dtype(out.dtype)),
                self.output)
        return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)


@keras.saving.register_keras_serializable(package="keras_t2t")
class FeatureModel(EmptyBatchPredict, keras.Model):
    """What ``feature_extractor`` returns: a functional model of the features, sharing the weights."""


def ready_for_export(model):
    """Lets Keras' own ``model.export`` take a functional ``model`` that was never called.

    A functional model's input signature is its ``Input``, but Keras' ONNX export on
    TensorFlow (``keras/src/export/onnx.py``, Keras 3.15) refuses a model whose call flag is
    unset ("The model provided has never called"), and only a call sets it. Every model of
    the package (classic and KerasHub) calls this after its functional constructor, so a
    freshly built or freshly loaded model exports as it is.
    """
    model._called = True


class ClassifierModel(EmptyBatchPredict, keras.Model):
    """The config mechanics and feature access that T2TViT and ViT share.

    A subclass lists its constructor arguments in ``CONFIG_KEYS`` (each stored
    as an attribute of the same name, ``input_shape`` as ``image_shape``) and
    calls ``_store_top(arguments, grid)`` after the functional constructor.
    """

    CONFIG_KEYS = ()
    # The tokenizer's layer name and its feature_extractor flag (T2TViT: "tokens_to_token", "t2t").
    TOKENIZER = ("tokens_to_token", "t2t")

    def _store_top(self, args, grid):
        """Stores the validated constructor arguments ``args`` as attributes (what ``get_config`` reads)."""
        for key, value in args.items():
            setattr(self, "image_shape" if key == "input_shape" else key, value)
        self.mlp_ratio = float(self.mlp_ratio)
        self.qkv_bias = bool(self.qkv_bias)
        self.qk_scale = None if self.qk_scale is None else float(self.qk_scale)
        for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            setattr(self, key, float(getattr(self, key)))
        if getattr(self, "t2t_dropout", None) is not None:
            self.t2t_dropout = float(self.t2t_dropout)
        self.include_top = bool(self.include_top)
        self.classes = int(self.classes) if self.include_top else self.classes
        if not (self.classifier_activation is None or isinstance(self.classifier_activation, str)):
            self.classifier_activation = keras.activations.serialize(self.classifier_activation)
        self.grid_size = grid
        ready_for_export(self)

    def call(self, inputs, training=None, mask=None):
        # An empty batch gives an empty batch of outputs on every backend (TensorFlow's
        # eager kernels refuse some reductions and convolutions over zero rows).
        batch = getattr(inputs, "shape", (None,))[0]
        if batch == 0 and not isinstance(inputs, keras.KerasTensor):
            output = self.outputs[0]
            return keras.ops.zeros((0,) + tuple(output.shape[1:]), dtype=output.dtype)
        return super().call(inputs, training=training, mask=mask)

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Keras' ``load_weights``, as strict as the package's loader for a ``.weights.h5`` file.

        Keras alone loads a deeper model's file into this one without a word (the extra
        blocks ignored); here a file whose weights do not cover the model exactly is refused
        naming the layers, before anything is assigned, unless ``skip_mismatch=True``.
        """
        path = os.fspath(filepath)
        if path.endswith(".weights.h5") and os.path.isfile(path) and not skip_mismatch:
            found = differences(written_tree(self), tensor_tree(path))
            if found:
                raise ValueError(describe_differences(path, found, self.name))
        return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)

    @property
    def num_tokens(self):
        """Patch tokens after the tokenizer (the class token not counted)."""
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
        config = {}
        for key in self.CONFIG_KEYS:
            value = getattr(self, "image_shape" if key == "input_shape" else key)
            if key == "input_shape":
                value = list(value)
            elif key in ("t2t_stages", "dense_stages"):
                value = [list(v) for v in value] if key == "t2t_stages" else list(value)
            config[key] = value
        config.update(
            name=self.name, dtype=keras.dtype_policies.serialize(self.dtype_policy), trainable=self.trainable
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    def _features(self, block_indices, include_tokenizer, name):
        outputs = {"tokens": self.get_layer("norm").output}
        names = self.block_names
        for index in block_indices:
            if not -len(names) <= int(index) < len(names):
                raise ValueError(
                    f"block index {index} is out of range for a depth-{len(names)} model "
                    f"(accepted: 0..{len(names) - 1} or -{len(names)}..-1)."
                )
            i = int(index) % len(names)
            outputs[f"block_{i}"] = self.get_layer(names[i]).output
        layer_name, key = self.TOKENIZER
        if include_tokenizer:
            outputs[key] = self.get_layer(layer_name).output
        return FeatureModel(self.input, outputs, name=name or f"{self.name}_features")

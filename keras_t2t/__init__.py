"""keras-t2t: the Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021) for Keras 3.

Runs unchanged on TensorFlow, JAX and PyTorch (``KERAS_BACKEND``). Every model
is a row of one registry (``keras_t2t.models.presets``): ``list_models()``
names them, ``create_model(name, ...)`` builds any of them, and each has a
builder of its own name (``keras_t2t.t2t_vit_14(...)``), generated below.
``docs/ARCHITECTURE.md`` describes the package's rooms.

``import keras_t2t`` registers every layer, model and KerasHub class with Keras
(``keras.saving.load_model`` and KerasHub's ``from_preset`` find them). In a
keras-t2t command the names that import Keras load on first use instead, so
that the command answers ``--help`` before Keras is imported
(``keras_t2t.backends.load_public_api``).
"""

# First, before Keras is imported: a backend Keras does not know is one line, not Keras' traceback.
from keras_t2t.backends import load_public_api, refuse_unknown_backend

refuse_unknown_backend()

# The registry: data, no Keras.
from keras_t2t.models.presets import (  # noqa: E402
    ALL_VARIANTS,
    MODELS,
    RELEASED_WEIGHTS,
    STUDY_VARIANTS,
    VARIANTS,
    VIT_CONFIGS,
    list_weights,
)


# The public names that import Keras, by the module that defines them (importing them registers every
# layer, model and KerasHub class with Keras).
_PUBLIC_MODULES = {
    "keras_t2t.applications": ("create_model", "from_checkpoint"),
    "keras_t2t.builders": ("list_models", "list_variants"),
    "keras_t2t.data.imagenet": ("decode_predictions",),
    "keras_t2t.data.images": ("preprocess_input",),
    "keras_t2t.hub": (
        "T2TViTBackbone",
        "T2TViTImageClassifier",
        "T2TViTImageClassifierPreprocessor",
        "T2TViTImageConverter",
        "ViTBackbone",
        "ViTImageClassifier",
        "ViTImageClassifierPreprocessor",
        "ViTImageConverter",
    ),
    "keras_t2t.hub.preset_files": ("save_preset",),
    "keras_t2t.hub.presets": ("list_presets",),
    "keras_t2t.layers": (
        "CheapOperation",
        "ClassToken",
        "DenseBlock",
        "DenseTransition",
        "DropPath",
        "GhostAttention",
        "GhostBlock",
        "GhostMlp",
        "Mlp",
        "MultiHeadSelfAttention",
        "Restructurize",
        "SEAttention",
        "SEBlock",
        "SinusoidPositionEmbedding",
        "SoftSplit",
        "SqueezeExcite",
        "TokenPerformer",
        "TokenPooling",
        "TokensToToken",
        "TokenTransformer",
        "TransformerBlock",
    ),
    "keras_t2t.models.t2t_vit": ("T2TViT", "T2TViTDense"),
    "keras_t2t.models.vit": ("ViT",),
    "keras_t2t.precision": ("recommended_dtype",),
    "keras_t2t.weights": ("detect_variant", "load_weights", "model_state_dict", "resize_pos_embed"),
}


def _builders():
    """One public builder per registered model: keras_t2t.t2t_vit_14, keras_t2t.vit_mini, ..."""
    from keras_t2t.applications import BUILDERS

    return BUILDERS


def create_vit(name, **kwargs):
    """Builds a ViT of the registry by name, e.g. ``create_vit("vit_mini", classes=10)``."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"Unknown ViT configuration {name!r}; accepted: {', '.join(VIT_CONFIGS)}.")
    from keras_t2t.applications import create_model

    return create_model(name, **kwargs)


__all__ = sorted(
    [
        "ALL_VARIANTS",
        "MODELS",
        "RELEASED_WEIGHTS",
        "STUDY_VARIANTS",
        "VARIANTS",
        "VIT_CONFIGS",
        "create_vit",
        "list_weights",
        *(name for names in _PUBLIC_MODULES.values() for name in names),
    ]
) + sorted(MODELS)

__version__ = "0.1.0"

# Now, or in a keras-t2t command when a name is first used (backends.load_public_api).
load_public_api(globals(), _PUBLIC_MODULES, _builders)

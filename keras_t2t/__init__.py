"""keras-t2t: the Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021) for Keras 3.

Runs unchanged on TensorFlow, JAX and PyTorch (``KERAS_BACKEND``). Every model
is a row of one registry (``keras_t2t.models.presets``): ``list_models()``
names them, ``create_model(name, ...)`` builds any of them, and each has a
builder of its own name (``keras_t2t.t2t_vit_14(...)``), generated below.
``docs/ARCHITECTURE.md`` describes the package's rooms.
"""

# First, before Keras is imported: a backend Keras does not know is one line, not Keras' traceback.
from keras_t2t.backends import refuse_unknown_backend

refuse_unknown_backend()

from keras_t2t.applications import BUILDERS, create_model, from_checkpoint
from keras_t2t.builders import list_models, list_variants
from keras_t2t.data.imagenet import decode_predictions
from keras_t2t.data.images import preprocess_input
from keras_t2t.hub import (
    T2TViTBackbone,
    T2TViTImageClassifier,
    T2TViTImageClassifierPreprocessor,
    T2TViTImageConverter,
)
from keras_t2t.hub.preset_files import save_preset
from keras_t2t.hub.presets import list_presets
from keras_t2t.layers import (
    CheapOperation,
    ClassToken,
    DenseBlock,
    DenseTransition,
    DropPath,
    GhostAttention,
    GhostBlock,
    GhostMlp,
    Mlp,
    MultiHeadSelfAttention,
    Restructurize,
    SEAttention,
    SEBlock,
    SinusoidPositionEmbedding,
    SoftSplit,
    SqueezeExcite,
    TokenPerformer,
    TokenPooling,
    TokensToToken,
    TokenTransformer,
    TransformerBlock,
)
from keras_t2t.models.presets import (
    ALL_VARIANTS,
    MODELS,
    RELEASED_WEIGHTS,
    STUDY_VARIANTS,
    VARIANTS,
    VIT_CONFIGS,
    list_weights,
)
from keras_t2t.models.t2t_vit import T2TViT, T2TViTDense
from keras_t2t.models.vit import ViT
from keras_t2t.precision import recommended_dtype
from keras_t2t.weights import detect_variant, load_weights, model_state_dict, resize_pos_embed


def create_vit(name, **kwargs):
    """Builds a ViT of the registry by name, e.g. ``create_vit("vit_mini", classes=10)``."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"Unknown ViT configuration {name!r}; accepted: {', '.join(VIT_CONFIGS)}.")
    return create_model(name, **kwargs)


# One public builder per registered model: keras_t2t.t2t_vit_14, keras_t2t.vit_mini, ...
globals().update(BUILDERS)

__all__ = [
    "ALL_VARIANTS",
    "CheapOperation",
    "ClassToken",
    "DenseBlock",
    "DenseTransition",
    "DropPath",
    "GhostAttention",
    "GhostBlock",
    "GhostMlp",
    "MODELS",
    "Mlp",
    "MultiHeadSelfAttention",
    "RELEASED_WEIGHTS",
    "Restructurize",
    "SEAttention",
    "SEBlock",
    "STUDY_VARIANTS",
    "SinusoidPositionEmbedding",
    "SoftSplit",
    "SqueezeExcite",
    "T2TViT",
    "T2TViTBackbone",
    "T2TViTDense",
    "T2TViTImageClassifier",
    "T2TViTImageClassifierPreprocessor",
    "T2TViTImageConverter",
    "TokenPerformer",
    "TokenPooling",
    "TokenTransformer",
    "TokensToToken",
    "TransformerBlock",
    "VARIANTS",
    "VIT_CONFIGS",
    "ViT",
    "create_model",
    "create_vit",
    "decode_predictions",
    "detect_variant",
    "from_checkpoint",
    "list_models",
    "list_presets",
    "list_variants",
    "list_weights",
    "load_weights",
    "model_state_dict",
    "preprocess_input",
    "recommended_dtype",
    "resize_pos_embed",
    "save_preset",
] + sorted(BUILDERS)

__version__ = "0.1.0"

"""keras-t2t: the Tokens-to-Token Vision Transformer (Yuan et al., ICCV 2021) for Keras 3.

Runs unchanged on TensorFlow, JAX and PyTorch (``KERAS_BACKEND``).
"""

from keras_t2t.layers import (
    ClassToken,
    DropPath,
    Mlp,
    MultiHeadSelfAttention,
    SinusoidPositionEmbedding,
    SoftSplit,
    TokenPerformer,
    TokenPooling,
    TokensToToken,
    TokenTransformer,
    TransformerBlock,
)
from keras_t2t.model import T2TViT, T2TViTDense
from keras_t2t.preprocessing import preprocess_input
from keras_t2t.study_layers import (
    CheapOperation,
    DenseBlock,
    DenseTransition,
    GhostAttention,
    GhostBlock,
    GhostMlp,
    SEAttention,
    SEBlock,
    SqueezeExcite,
)
from keras_t2t.variants import (
    ALL_VARIANTS,
    RELEASED_WEIGHTS,
    STUDY_VARIANTS,
    VARIANTS,
    create_model,
    detect_variant,
    from_checkpoint,
    list_variants,
)
from keras_t2t.variants import BUILDERS as _BUILDERS
from keras_t2t.vit import VIT_CONFIGS, ViT, create_vit, vit_base_patch16, vit_mini, vit_small_patch16
from keras_t2t.weights import load_weights, model_state_dict, resize_pos_embed

t2t_vit_7 = _BUILDERS["t2t_vit_7"]
t2t_vit_10 = _BUILDERS["t2t_vit_10"]
t2t_vit_12 = _BUILDERS["t2t_vit_12"]
t2t_vit_14 = _BUILDERS["t2t_vit_14"]
t2t_vit_19 = _BUILDERS["t2t_vit_19"]
t2t_vit_24 = _BUILDERS["t2t_vit_24"]
t2t_vit_t_14 = _BUILDERS["t2t_vit_t_14"]
t2t_vit_t_19 = _BUILDERS["t2t_vit_t_19"]
t2t_vit_t_24 = _BUILDERS["t2t_vit_t_24"]
t2t_vit_14_resnext = _BUILDERS["t2t_vit_14_resnext"]
t2t_vit_14_wide = _BUILDERS["t2t_vit_14_wide"]
# The paper's backbone studies (STUDY_VARIANTS).
t2t_vit_14_se = _BUILDERS["t2t_vit_14_se"]
t2t_vit_16_ghost = _BUILDERS["t2t_vit_16_ghost"]
t2t_vit_dense = _BUILDERS["t2t_vit_dense"]


def decode_predictions(preds, top=5):
    """ImageNet-1k class ids, names and scores of the top predictions (see ``keras_t2t.imagenet``)."""
    from keras_t2t.imagenet import decode_predictions as _decode

    return _decode(preds, top=top)


__version__ = "0.1.0"

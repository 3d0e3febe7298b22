"""The building blocks of T2T-ViT as Keras 3 layers (``keras.ops`` only), one file per idea.

Names follow the paper and the authors' checkpoint keys (``../shared/T2T-SPEC.md``):

- ``tokens_to_token``: ``SoftSplit`` (the unfold), ``TokenPerformer`` /
  ``TokenTransformer`` (the two T2T layer types), ``restructurization`` and
  ``TokensToToken`` (the whole T2T module);
- ``attention``: the one softmax attention (``attend``, ``chunked_attention``,
  ``attention_by_batch_chunks``, ``attention_probabilities``), ``MultiHeadSelfAttention`` and the tracing forms
  (``export_tracing``);
- ``transformer``: ``Mlp``, ``DropPath`` and the backbone's ``TransformerBlock``;
- ``embeddings``: ``ClassToken``, ``SinusoidPositionEmbedding``, ``TokenPooling``;
- ``study_blocks``: the backbone studies' SE, ghost and dense blocks;
- ``common``: the package's ``dense`` and ``layer_norm`` factories.

Every layer registers as ``keras_t2t>ClassName``, whichever file holds it.
"""

from keras_t2t.layers.attention import (
    TRACING_MODES,
    AttentionTracing,
    MultiHeadSelfAttention,
    attend,
    attention_by_batch_chunks,
    attention_probabilities,
    chunked_attention,
    export_tracing,
    merge_heads,
    split_heads,
)
from keras_t2t.layers.common import LAYER_NORM_EPSILON, PACKAGE, dense, layer_norm, truncated_normal
from keras_t2t.layers.embeddings import (
    POOLINGS,
    ClassToken,
    LearnedPositionEmbedding,
    PatchEmbedding,
    SinusoidPositionEmbedding,
    TokenPooling,
    sinusoid_table,
)
from keras_t2t.layers.study_blocks import (
    GHOST_MLP_RATIO,
    SE_REDUCTION,
    STUDY_BLOCKS,
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
from keras_t2t.layers.tokens_to_token import (
    DEFAULT_ATTENTION_CHUNK_SIZE,
    DEFAULT_ATTENTION_CHUNK_THRESHOLD,
    DEFAULT_T2T_DROPOUT,
    DEFAULT_T2T_STAGES,
    PERFORMER_EPSILON,
    T2T_TYPES,
    Restructurize,
    SoftSplit,
    first_stage_dtype,
    TokenPerformer,
    TokensToToken,
    TokenTransformer,
    restructurization,
    unfold_grid,
)
from keras_t2t.layers.transformer import DropPath, Mlp, TransformerBlock

__all__ = [
    "LearnedPositionEmbedding",
    "PatchEmbedding",
    "AttentionTracing",
    "CheapOperation",
    "ClassToken",
    "DEFAULT_ATTENTION_CHUNK_SIZE",
    "DEFAULT_ATTENTION_CHUNK_THRESHOLD",
    "DEFAULT_T2T_DROPOUT",
    "DEFAULT_T2T_STAGES",
    "DenseBlock",
    "DenseTransition",
    "DropPath",
    "GHOST_MLP_RATIO",
    "GhostAttention",
    "GhostBlock",
    "GhostMlp",
    "LAYER_NORM_EPSILON",
    "Mlp",
    "MultiHeadSelfAttention",
    "PACKAGE",
    "PERFORMER_EPSILON",
    "POOLINGS",
    "SEAttention",
    "SEBlock",
    "SE_REDUCTION",
    "STUDY_BLOCKS",
    "SinusoidPositionEmbedding",
    "SoftSplit",
    "SqueezeExcite",
    "T2T_TYPES",
    "TRACING_MODES",
    "TokenPerformer",
    "TokenPooling",
    "TokenTransformer",
    "TokensToToken",
    "TransformerBlock",
    "attend",
    "attention_by_batch_chunks",
    "attention_probabilities",
    "chunked_attention",
    "dense",
    "export_tracing",
    "layer_norm",
    "merge_heads",
    "restructurization",
    "Restructurize",
    "first_stage_dtype",
    "sinusoid_table",
    "split_heads",
    "truncated_normal",
    "unfold_grid",
]

"""Weights in and out: the authors' PyTorch checkpoints, this package's own files, detection.

A checkpoint becomes a model in one order, each step in its own module:
``torch_pickle`` reads a ``.pth``/``.pth.tar`` safely (no pickle code ever runs)
and normalises its state dict (``normalize_state_dict``: DataParallel's
``module.`` prefix off); ``detect`` tells which registry row the shapes are;
``keras_t2t.builders`` builds that row; ``loading`` assigns the weights through
``mapping``, the one table between this package's variables and the authors'
keys and layouts (position-table resize and head handling included). This
package's own ``.weights.h5`` files load through Keras (``keras_weights``).
"""

from keras_t2t.weights.detect import (
    checkpoint_head,
    checkpoint_image_size,
    describe_variant,
    detect_variant,
    weight_overrides,
)
from keras_t2t.keras_files import tensor_tree
from keras_t2t.weights.keras_weights import h5_mismatches, saved_classes
from keras_t2t.weights.loading import (
    CHECKPOINT_SUFFIXES,
    NonFiniteWeightsWarning,
    describe_nonfinite,
    is_checkpoint_path,
    load_any_weights,
    load_state_dict,
    load_vit_weights,
    load_weights,
    nonfinite_counts,
    read_keras_file,
    read_state_dict,
    saved_head,
)
from keras_t2t.weights.mapping import (
    HEADS,
    LAYOUTS,
    SKIPPED_KINDS,
    WeightLoadReport,
    checkpoint_filter_fn,
    from_torch_layout,
    model_state_dict,
    resize_pos_embed,
    to_torch_layout,
    torch_key,
    torch_shape,
    variable_map,
)
from keras_t2t.weights.torch_pickle import CheckpointError, normalize_state_dict

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "HEADS",
    "LAYOUTS",
    "SKIPPED_KINDS",
    "CheckpointError",
    "NonFiniteWeightsWarning",
    "WeightLoadReport",
    "checkpoint_filter_fn",
    "checkpoint_head",
    "checkpoint_image_size",
    "describe_variant",
    "describe_nonfinite",
    "detect_variant",
    "from_torch_layout",
    "h5_mismatches",
    "is_checkpoint_path",
    "load_any_weights",
    "load_state_dict",
    "load_vit_weights",
    "load_weights",
    "model_state_dict",
    "nonfinite_counts",
    "normalize_state_dict",
    "read_keras_file",
    "read_state_dict",
    "resize_pos_embed",
    "saved_classes",
    "saved_head",
    "tensor_tree",
    "to_torch_layout",
    "torch_key",
    "torch_shape",
    "variable_map",
    "weight_overrides",
]

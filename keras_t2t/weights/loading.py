"""Loading weights into a model: any supported file in, the model's variables assigned.

``read_state_dict`` turns any weights file into the authors' state dict (the
layout of ``keras_t2t.weights.mapping``): the authors' ``.pth``/``.pth.tar``
checkpoints through the safe reader (``keras_t2t.weights.torch_pickle``), a
``.keras`` file through its model. ``load_state_dict`` assigns such a dict;
``load_weights`` does both, and loads a ``.weights.h5`` file through a twin of
the model built at the file's own size. ViTs load this package's own files only
(``load_vit_weights``); ``load_any_weights`` picks the right one.
"""

import os
import re

import h5py
import keras

from keras_t2t.models.base import square_size_for_grid
from keras_t2t.weights.detect import checkpoint_head
from keras_t2t.weights.mapping import (
    checkpoint_filter_fn,
    model_state_dict,
    square_grid,
)
from keras_t2t.weights.torch_pickle import load_state_dict_file

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")


def load_state_dict(model, state_dict):
    """Assigns the authors' state dict to ``model`` (all checks first, then every assignment)."""
    values, report = checkpoint_filter_fn(state_dict, model)
    for variable in model.weights:
        if variable.path in values:
            variable.assign(values[variable.path].astype(variable.dtype))
    return report


def is_checkpoint_path(path):
    """Whether ``path``'s name is one of the authors' checkpoint suffixes (``CHECKPOINT_SUFFIXES``)."""
    name = os.fspath(path).lower()
    return name.endswith(CHECKPOINT_SUFFIXES)


def read_state_dict(path, prefer_ema=True, which=None):
    """Any supported weights file -> (authors' state dict, info dict).

    The one reading step of every load: the state dict comes back normalised
    (DataParallel's ``module.`` prefix taken off).
    ``*.pth`` / ``*.pth.tar``: the authors' checkpoints (read safely, no code runs);
    ``*.keras``: a saved T2T-ViT model; ``*.weights.h5``: needs a model, see ``load_weights``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    if path.endswith(".keras"):
        source = keras.saving.load_model(path, compile=False)
        if getattr(source, "t2t_type", None) is None:
            raise ValueError(f"{path!r} holds a {type(source).__name__}, not a keras_t2t.T2TViT model.")
        return model_state_dict(source), {"source_key": "keras", "config": source.get_config()}
    if is_checkpoint_path(path):
        return load_state_dict_file(path, prefer_ema=prefer_ema, which=which)
    raise ValueError(
        f"Cannot read weights from {path!r}: accepted are the authors' checkpoints "
        f"({', '.join(CHECKPOINT_SUFFIXES)}), a '.keras' model file, or a '.weights.h5' file."
    )


def _h5_dataset_shapes(path):
    shapes = {}
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, obj: shapes.__setitem__(name, obj.shape) if hasattr(obj, "shape") else None)
    except OSError as error:
        raise ValueError(f"{path!r} is not a readable Keras '.weights.h5' file: {error}") from error
    return shapes


def _h5_heads(shapes):
    """The (features, classes) kernel shapes of the top-level Dense layers of a '.weights.h5' file.

    Keras names the file's groups after the layer classes, so these are the model's
    head and, with ``token_labeling_head``, its ``aux_head`` (same shape).
    """
    return [s for name, s in shapes.items() if re.fullmatch(r"layers/dense(_\d+)?/vars/0", name) and len(s) == 2]


def saved_head(path, state_dict=None):
    """(classes, token_labeling) of the head a weights file holds; (None, False) without one.

    ``classes`` is the class count, ``token_labeling`` whether Token Labeling's
    ``aux_head`` is there too. ``state_dict``: what ``read_state_dict`` gave for
    ``path`` (saves reading it again).
    """
    path = os.fspath(path)
    if state_dict is None and path.endswith(".h5"):
        heads = _h5_heads(_h5_dataset_shapes(path))
        return (int(heads[0][1]) if heads else None), len(heads) > 1
    if state_dict is None:
        state_dict, _ = read_state_dict(path)
    return checkpoint_head(state_dict)


def _twin_for_h5(model, path):
    """A model of ``model``'s config at the image size and class count the h5 file was saved with."""
    shapes = _h5_dataset_shapes(path)
    # Keras names the file's groups after the layer classes: the position table is the
    # one variable of the SinusoidPositionEmbedding, the head the model's only top-level Dense.
    pos = [s for name, s in shapes.items() if re.search(r"position_embedding/vars/0$", name) and len(s) == 3]
    if not pos:
        raise ValueError(f"{path!r} holds no T2T-ViT position table; is it a keras_t2t weights file?")
    config = model.get_config()
    num_tokens = pos[0][1] - 1
    if num_tokens != model.num_tokens:
        old = square_grid(num_tokens, model)
        size = square_size_for_grid(old[0], model.t2t_stages)
        if size is None:
            raise ValueError(f"No image size gives the {old[0]}x{old[1]} grid of {path!r}.")
        config["input_shape"] = [size, size, model.image_shape[2]]
    heads = _h5_heads(shapes)
    config["include_top"] = bool(heads)
    config["token_labeling_head"] = len(heads) > 1
    if heads:
        config["classes"] = int(heads[0][1])
    config.pop("name", None)
    return type(model).from_config(config)


def load_weights(model, path, prefer_ema=True, which=None):
    """Loads any supported weights file into ``model``, adapting the position table and head.

    Returns a ``WeightLoadReport``. Nothing is assigned unless every check passes.
    """
    path = os.fspath(path)
    if path.endswith(".h5"):  # .weights.h5 included
        if not os.path.exists(path):
            raise FileNotFoundError(f"Weights file {path!r} does not exist.")
        twin = _twin_for_h5(model, path)
        twin.load_weights(path)
        return load_state_dict(model, model_state_dict(twin))
    state, _ = read_state_dict(path, prefer_ema=prefer_ema, which=which)
    return load_state_dict(model, state)


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
        if getattr(saved, "patch_size", None) is None:
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


def load_any_weights(model, path):
    """Loads ``path`` into any model of the package: ViTs from this package's files, T2T-ViTs from any format."""
    if getattr(model, "patch_size", None) is not None:
        return load_vit_weights(model, path)
    return load_weights(model, path)

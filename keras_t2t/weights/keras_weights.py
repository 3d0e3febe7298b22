"""A ``.weights.h5`` file (what ``model.save_weights`` writes) loaded through Keras.

Such a file holds the weights without the model's configuration, so it loads through
``keras.saving.load_weights`` into a model built by the caller. Keras alone loads a
deeper model's file into a shallower model without a word, so the file is checked
first, without assuming anything about how Keras names what it writes: Keras writes
this very model's weights into a temporary file, and the two trees of tensors
(``tensor_tree``) must be the same. Where they differ, the groups that differ are
named (``layers/transformer_block_4 (11 tensors)``).

Two differences are adapted, as for the authors' checkpoints: another class head (a
head of other classes, or none, keeps the model's fresh one, and the head's shape in
the file gives the class count to ``saved_classes``), and another image size (the
file's position table is resized to the model's grid). The tensors of one layer are
found the same way: Keras writes that layer alone. Nothing is assigned unless every
check passes; a load that fails half-way leaves the model as it was.
"""

import os
import warnings

import h5py
import keras
import numpy as np

from keras_t2t.layers.embeddings import LearnedPositionEmbedding, SinusoidPositionEmbedding
from keras_t2t.keras_files import describe_differences, differences, tensor_group, tensor_tree, written_tree
from keras_t2t.weights.mapping import HEADS, WeightLoadReport, resize_pos_embed, square_grid

def h5_mismatches(model, path):
    """``differences`` between what Keras writes for ``model`` and the file at ``path``; {} when it fits."""
    return differences(written_tree(model), tensor_tree(os.fspath(path)))


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _adaptable(model):
    """{role: (layer, its tensor tree)}: the heads and the position table, which may differ from the file."""
    layers = {entry: _layer(model, prefix[:-1]) for entry, prefix in HEADS.items()}
    layers["pos_embed"] = next((layer for layer in model.layers
                                if isinstance(layer, (SinusoidPositionEmbedding, LearnedPositionEmbedding))), None)
    return {role: (layer, written_tree(model, [layer])) for role, layer in layers.items()
            if layer is not None and layer.weights}


def saved_classes(model, path, found=None):
    """The class count of the head the file holds at the place of ``model``'s head, or None."""
    head = _layer(model, "head")
    if head is None or not head.weights:
        return None
    found = tensor_tree(path) if found is None else found
    bias = [name for name, shape in written_tree(model, [head]).items() if len(shape) == 1]
    return found[bias[0]][0] if bias and bias[0] in found else None


def _read(path, name):
    with h5py.File(path, "r") as handle:
        return np.asarray(handle[name])


def load_keras_weights(model, path, skip_mismatch=False, about=None):
    """Loads a ``.weights.h5`` file into ``model`` through Keras; returns a ``WeightLoadReport``.

    The file must hold what Keras writes for ``model`` but for the heads and the
    position table (see the module); anything else that differs is an error naming the
    layers, unless ``skip_mismatch``: then what fits loads and the report names the rest.
    ``about`` describes the model in errors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    found = tensor_tree(path)
    expected = written_tree(model)
    diff = differences(expected, found)
    report = WeightLoadReport(loaded=len(model.weights), pos_embed_resized=None, **dict.fromkeys(HEADS), skipped=None)
    skip, table = [], None
    for role, (layer, tree) in _adaptable(model).items() if diff else ():
        own = {tensor_group(name) for name in tree}
        if not any(name.split(" ")[0] in own for names in diff.values() for name in names):
            continue
        if role == "pos_embed":
            table = _fitted_table(model, layer, tree, found, path)
            if table is None:
                continue  # not a table of another grid: a difference like any other
        diff = {kind: [n for n in names if n.split(" ")[0] not in own] for kind, names in diff.items()}
        diff = {kind: names for kind, names in diff.items() if names}
        skip.append(layer)
        report["loaded"] -= len(layer.weights)
        if role == "pos_embed":
            continue
        classes = saved_classes(model, path, found) if role == "head_dropped" else None
        report[role] = (f"the weights have {classes} classes, the model {model.classes}; the new "
                        f"{layer.name} keeps its fresh initialisation" if classes is not None else
                        f"the weights have no {layer.name}; the model's {layer.name} keeps its fresh initialisation")
    if diff and not skip_mismatch:
        raise ValueError(describe_differences(path, diff, about or model.name))
    before = [keras.ops.convert_to_numpy(variable) for variable in model.weights]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' own words on what it skipped: the report says it
            keras.saving.load_weights(model, path, skip_mismatch=bool(diff), objects_to_skip=skip)
        if table is not None:
            table[0].assign(table[1])
    except Exception as error:  # noqa: BLE001 - any failure of Keras' reader is a bad file here
        for variable, value in zip(model.weights, before):
            variable.assign(value)
        raise ValueError(f"{path!r} cannot be read into {model.name} ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}); the model is left as it was.") from None
    if table is not None:
        report["loaded"] += 1
        report["pos_embed_resized"] = table[2]
    if diff:
        report["skipped"] = diff
        left = {name.split(" ")[0] for name in diff.get("missing", []) + diff.get("mismatched", [])}
        report["loaded"] -= sum(1 for name in expected if tensor_group(name) in left)
    return report


def _fitted_table(model, layer, tree, found, path):
    """(variable, the file's position table resized to the model's grid, (old grid, new grid)), or None
    when the file's table is not one of another grid of the same width."""
    (name, shape), = tree.items()
    table = found.get(name)
    if getattr(model, "grid_size", None) is None or table is None or len(table) != 3 or table[-1] != shape[-1]:
        return None
    old = square_grid(table[1] - 1, model)
    value = resize_pos_embed(_read(path, name), tuple(model.grid_size), old)
    return layer.weights[0], value.astype("float32"), (old, tuple(model.grid_size))

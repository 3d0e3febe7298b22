"""Keras' own weights files compared without reading Keras' names: the tree of tensors a file holds.

``tensor_tree(path)`` lists a ``.weights.h5`` file's tensors and shapes; ``written_tree(model)``
is the tree Keras writes for ``model`` (its own ``save_weights`` into a temporary file);
``differences`` names the groups where two trees differ. A file fits a model exactly when Keras
would write the same tree for it: nothing here assumes how Keras names what it writes.
Used by ``keras_t2t.weights.keras_weights`` (loading, with adaptations) and by the models'
own ``load_weights`` (which Keras alone lets load a deeper model's file without a word).
"""

import os
import tempfile

import h5py
import keras

# How a refusal names each kind of difference.
DIFFERENCES = {
    "missing": "the model's layers the file lacks",
    "unexpected": "the file's layers the model lacks",
    "mismatched": "layers whose weights differ",
}
SKIP_HINT = ("Build the model the file was saved from, or pass skip_mismatch=True to load the weights that fit "
             "and keep the model's own for the rest")


def tensor_tree(path):
    """{name: shape} of every tensor a weights file holds; a ValueError naming ``path`` when it is not one."""
    tree = {}
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, obj: tree.__setitem__(name, tuple(int(n) for n in obj.shape))
                              if isinstance(obj, h5py.Dataset) else None)
    except OSError as error:
        raise ValueError(f"{os.fspath(path)!r} is not a readable Keras '.weights.h5' file ({error}).") from error
    return tree


def written_tree(model, layers=None):
    """The ``tensor_tree`` Keras writes for ``model`` (only ``layers`` of its top-level layers, when given)."""
    skip = [] if layers is None else [layer for layer in model.layers if layer not in layers and layer.weights]
    with tempfile.TemporaryDirectory(prefix="keras_t2t-tree-") as folder:
        path = os.path.join(folder, "model.weights.h5")
        keras.saving.save_weights(model, path, objects_to_skip=skip)
        return tensor_tree(path)


def tensor_group(name):
    """The group a tensor belongs to: the top-level layer Keras wrote it under (``layers/<layer>``),
    else its path up to Keras' ``vars``."""
    parts = name.split("/")
    if parts[0] == "layers" and len(parts) > 2:
        return "/".join(parts[:2])
    return name.rsplit("/vars/", 1)[0] if "/vars/" in name else os.path.dirname(name)


def _groups(tree):
    groups = {}
    for name, shape in tree.items():
        groups.setdefault(tensor_group(name), {})[name] = shape
    return groups


def differences(expected, found):
    """{kind: group names} where the file's tree ``found`` differs from the model's ``expected``; {} if equal.

    Only the model's own weights are compared: an optimizer's state (in either tree) and the
    file's other top-level parts are ignored.
    """
    expected = {name: shape for name, shape in expected.items() if name.split("/")[0] != "optimizer"}
    roots = {name.split("/")[0] for name in expected}
    found = {name: shape for name, shape in found.items() if name.split("/")[0] in roots}
    want, have = _groups(expected), _groups(found)
    result = {
        "missing": sorted(group for group in want if group not in have),
        "unexpected": [f"{group} ({len(have[group])} tensors)" for group in sorted(have) if group not in want],
        "mismatched": [f"{group} (the file: {len(have[group])} tensors)" for group in sorted(want)
                       if group in have and have[group] != want[group]],
    }
    return {kind: names for kind, names in result.items() if names}


def describe_differences(path, diff, about):
    """The refusal of a file that does not fit: what differs, and the two ways on."""
    parts = [f"{DIFFERENCES[kind]}: {few_names(names)}" for kind, names in diff.items()]
    return (f"{os.fspath(path)!r} does not fit this model ({about}): its weights do not cover the model exactly "
            f"({'; '.join(parts)}). {SKIP_HINT}.")


def few_names(keys, limit=6):
    """``a, b, c and 4 more (in blocks.4, blocks.5)``: at most ``limit`` names, then where all of them are
    (the block, or the first part of the name); "none" for no names."""
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    if len(keys) <= limit:
        return shown
    more = f"{shown} and {len(keys) - limit} more"
    where = list(dict.fromkeys(".".join(key.split(".")[:2 if key.startswith("blocks.") else 1]) for key in keys))
    if len(where) == len(keys) or any(" " in key for key in keys):  # nothing to add, or not checkpoint keys
        return more
    return f"{more} (in {', '.join(where[:12])}{', ...' if len(where) > 12 else ''})"

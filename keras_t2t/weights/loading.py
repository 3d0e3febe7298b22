"""Loading weights into a model: any supported file in, the model's variables assigned.

``read_state_dict`` turns any weights file into the authors' state dict (the
layout of ``keras_t2t.weights.mapping``): the authors' ``.pth``/``.pth.tar``
checkpoints through the safe reader (``keras_t2t.weights.torch_pickle``), a
``.keras`` file through its model. ``load_state_dict`` assigns such a dict;
``load_weights`` does both, and loads a ``.weights.h5`` file through a twin of
the model built at the file's own size. ViTs load this package's own files only
(``load_vit_weights``); ``load_any_weights`` picks the right one.

Every load is exact: weights the model has and the file lacks, or the file has
and the model lacks, are an error naming them, unless ``skip_mismatch=True``
(Keras' name), which loads what fits and warns naming the rest. Weights holding
NaN or Inf load with a ``NonFiniteWeightsWarning`` naming the tensors.
"""

import os
import re
import warnings
import zipfile

import h5py
import keras
import numpy as np

from keras_t2t.models.base import square_size_for_grid
from keras_t2t.weights.detect import checkpoint_head
from keras_t2t.weights.mapping import (
    checkpoint_filter_fn,
    describe_model,
    describe_skipped,
    few_names,
    model_state_dict,
    square_grid,
    variable_map,
)
from keras_t2t.weights.torch_pickle import load_state_dict_file

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")
ACCEPTED_FILES = (
    f"accepted are the authors' checkpoints ({', '.join(CHECKPOINT_SUFFIXES)}), a '.keras' model file (the zip "
    "archive model.save writes) or a '.weights.h5' file (model.save_weights)"
)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class NonFiniteWeightsWarning(UserWarning):
    """Weights holding NaN or Inf were loaded (the model's outputs will not be finite)."""


def nonfinite_counts(tensors):
    """{name: (NaN count, Inf count)} of the floating-point arrays of ``tensors`` that hold any."""
    counts = {}
    for name, value in tensors.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fc" and "float" not in value.dtype.name:  # ml_dtypes' bfloat16 is kind "V"
            continue
        finite = np.isfinite(value)
        if not finite.all():
            nan = int(np.isnan(value).sum())
            counts[name] = (nan, int(value.size - finite.sum() - nan))
    return counts


def describe_nonfinite(counts, total):
    """One line: "head.weight (3 NaN), pos_embed (1 Inf): 4 non-finite values in 2 of 111 tensors"."""
    names = [f"{name} ({', '.join(f'{n} {kind}' for n, kind in zip(pair, ('NaN', 'Inf')) if n)})"
             for name, pair in sorted(counts.items())]
    values = sum(sum(pair) for pair in counts.values())
    return f"{few_names(names)}: {values} non-finite values in {len(counts)} of {total} tensors"


def warn_nonfinite(tensors, what="the weights loaded"):
    """A ``NonFiniteWeightsWarning`` naming the tensors of ``tensors`` ({name: array}) that hold NaN or Inf."""
    counts = nonfinite_counts(tensors)
    if counts:
        warnings.warn(
            NonFiniteWeightsWarning(
                f"keras_t2t: {what} hold NaN or Inf: {describe_nonfinite(counts, len(tensors))}; "
                "the model's outputs will not be finite."
            ),
            stacklevel=3,
        )
    return counts


def load_state_dict(model, state_dict, skip_mismatch=False):
    """Assigns the authors' state dict to ``model`` (all checks first, then every assignment).

    Weights that do not fit are an error naming them, unless ``skip_mismatch``: then
    what fits is assigned and a warning names the rest (the report's ``skipped``).
    """
    return _assign(model, state_dict, skip_mismatch)


def _assign(model, state_dict, skip_mismatch, file_skipped=None):
    """``load_state_dict``; ``file_skipped`` ({kind: names}) adds what a file held beyond ``state_dict``."""
    values, report = checkpoint_filter_fn(state_dict, model, skip_mismatch=skip_mismatch)
    if file_skipped:
        report["skipped"] = _merged(report["skipped"], file_skipped)
    keys = {variable.path: key for key, (variable, _) in variable_map(model).items()}
    warn_nonfinite({keys[path]: value for path, value in values.items()})
    if report["skipped"]:
        warnings.warn(f"keras_t2t: {describe_skipped(report['skipped'])}.", stacklevel=3)
    for variable in model.weights:
        if variable.path in values:
            variable.assign(values[variable.path].astype(variable.dtype))
    return report


def _merged(skipped, from_file):
    """``skipped`` ({kind: keys}) and what a file held beyond its state dict; keys of another shape
    in the file are reported as such, not as missing."""
    skipped = dict(skipped or {})
    mismatched = set(from_file.get("mismatched", []))
    skipped["missing"] = [key for key in skipped.get("missing", []) if key not in mismatched]
    for kind, names in from_file.items():
        skipped[kind] = sorted(set(skipped.get(kind, [])) | set(names))
    return {kind: names for kind, names in skipped.items() if names} or None


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
        source = read_keras_file(path)
        if getattr(source, "t2t_type", None) is None:
            raise ValueError(f"{path!r} holds a {type(source).__name__}, not a keras_t2t.T2TViT model.")
        return model_state_dict(source), {"source_key": "keras", "config": source.get_config()}
    if is_checkpoint_path(path):
        return load_state_dict_file(path, prefer_ema=prefer_ema, which=which)
    raise ValueError(f"Cannot read weights from {path!r}: {ACCEPTED_FILES}.")


def read_keras_file(path):
    """The model a ``.keras`` file holds (``keras.saving.load_model``, uncompiled).

    A file that is not one (truncated, random bytes, an HDF5 or a PyTorch file renamed)
    is a ValueError naming the path, what is wrong and the accepted files, never
    Keras' "File not found".
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist.")
    problem = _keras_file_problem(path)
    if problem is None:
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - any failure of Keras' reader is a bad file here
            problem = f"Keras cannot load it ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
    raise ValueError(f"{path!r} is not a readable '.keras' model file: {problem}; {ACCEPTED_FILES}.")


def _keras_file_problem(path):
    """Why ``path`` cannot be a '.keras' file, or None when it looks like one (a zip with its config and weights)."""
    if os.path.isdir(path):
        return "it is a folder"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return "the file is empty"
    if head.startswith(_HDF5_SIGNATURE):
        return "it is an HDF5 file (a '.weights.h5' file renamed? its name must end in '.weights.h5')"
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            return "it is a truncated or damaged zip archive (its directory at the end is missing)"
        if head.startswith(b"\x80"):
            return "it is a pickle (an authors' PyTorch checkpoint renamed? its name must end in '.pth')"
        return f"it is not a zip archive (it starts with {head!r})"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        return f"it is a damaged zip archive ({error})"
    if any(name.endswith("data.pkl") for name in names):
        return "it is a PyTorch checkpoint (a zip archive holding data.pkl) renamed? its name must end in '.pth'"
    lacking = [name for name in ("config.json", "model.weights.h5") if name not in names]
    if lacking:
        return f"the zip archive lacks {' and '.join(lacking)}"
    return None


def _h5_dataset_shapes(path):
    shapes = {}
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, obj: shapes.__setitem__(name, obj.shape) if hasattr(obj, "shape") else None)
    except OSError as error:
        raise ValueError(f"{path!r} is not a readable Keras '.weights.h5' file ({error}); {ACCEPTED_FILES}.") from error
    return shapes


def _snake_case(name):
    """A class name as Keras names its group in a weights file (``keras.src.utils.naming.to_snake_case``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_groups(model):
    """{group of a Keras weights file: (layer, sorted shapes)} for ``model``'s top-level layers with weights.

    Keras names each group after the layer's class, numbered in ``model.layers`` order
    (``transformer_block``, ``transformer_block_1``, ...), layers without weights included.
    """
    groups, seen = {}, {}
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        seen[base] = seen.get(base, -1) + 1
        if layer.weights:
            name = base if seen[base] == 0 else f"{base}_{seen[base]}"
            groups[name] = (layer, sorted(tuple(int(n) for n in v.shape) for v in layer.weights))
    return groups


def h5_mismatches(model, path, shapes=None):
    """{kind: names} of what a Keras weights file and ``model`` do not share, by top-level layer; {} if they fit.

    Kinds as ``WeightLoadReport["skipped"]``: "missing" (``model``'s layers the file lacks),
    "unexpected" (the file's groups ``model`` lacks), "mismatched" (layers whose weights
    differ in number or shape). Groups other than the model's layers (an optimizer's) are ignored.
    """
    shapes = _h5_dataset_shapes(path) if shapes is None else shapes
    in_file = {}
    for name, shape in shapes.items():
        parts = name.split("/")
        if parts[0] == "layers" and len(parts) > 2:
            in_file.setdefault(parts[1], []).append(tuple(int(n) for n in shape))
    groups = _layer_groups(model)
    found = {
        "missing": [layer.name for group, (layer, _) in groups.items() if group not in in_file],
        "unexpected": [f"layers/{group} ({len(in_file[group])} tensors)" for group in sorted(in_file)
                       if group not in groups],
        "mismatched": [f"{layer.name} (the file's {group}: {len(in_file[group])} tensors)"
                       for group, (layer, model_shapes) in groups.items()
                       if group in in_file and sorted(in_file[group]) != model_shapes],
    }
    return {kind: names for kind, names in found.items() if names}


# How a refusal names each kind of ``h5_mismatches``.
_H5_KINDS = {
    "missing": "the model's layers the file lacks",
    "unexpected": "the file's layers the model lacks",
    "mismatched": "layers whose weights differ",
}


def _refuse_h5_mismatches(path, mismatches, about, what="model"):
    parts = [f"{_H5_KINDS[kind]}: {few_names(names)}" for kind, names in mismatches.items()]
    raise ValueError(
        f"{path!r} does not fit this {what} ({about}): its weights do not cover the model exactly "
        f"({'; '.join(parts)}). Build the model the file was saved from, or pass skip_mismatch=True to load "
        "the weights that fit and keep the model's own for the rest."
    )


def _load_h5_leniently(model, path):
    """Keras' ``load_weights(skip_mismatch=True)``, its own warnings replaced by ours (the callers')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(path, skip_mismatch=True)


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


def load_weights(model, path, prefer_ema=True, which=None, skip_mismatch=False):
    """Loads any supported weights file into ``model``, adapting the position table and head.

    Returns a ``WeightLoadReport``. Nothing is assigned unless every check passes:
    the file's weights must cover the model exactly (but for the head and the
    position table), unless ``skip_mismatch`` (see ``load_state_dict``).
    """
    path = os.fspath(path)
    if path.endswith(".h5"):  # .weights.h5 included
        if not os.path.exists(path):
            raise FileNotFoundError(f"Weights file {path!r} does not exist.")
        twin = _twin_for_h5(model, path)
        mismatches = h5_mismatches(twin, path)
        if not mismatches:
            twin.load_weights(path)
            return load_state_dict(model, model_state_dict(twin))
        if not skip_mismatch:
            _refuse_h5_mismatches(path, mismatches, describe_model(model))
        _load_h5_leniently(twin, path)
        # Only the layers the file really held: the twin's others are as fresh as the model's own.
        layer_of = {key: variable.path.split("/")[0] for key, (variable, _) in variable_map(twin).items()}
        mismatched = {name.split(" ")[0] for name in mismatches.get("mismatched", [])}
        left_out = mismatched | set(mismatches.get("missing", []))
        state = {key: value for key, value in model_state_dict(twin).items() if layer_of[key] not in left_out}
        file_skipped = {
            "unexpected": mismatches.get("unexpected", []),
            "mismatched": sorted(key for key, layer in layer_of.items() if layer in mismatched),
        }
        return _assign(model, state, True, file_skipped)
    state, _ = read_state_dict(path, prefer_ema=prefer_ema, which=which)
    return load_state_dict(model, state, skip_mismatch=skip_mismatch)


def load_vit_weights(model, path, skip_mismatch=False):
    """Loads this package's own ViT weights (``.weights.h5`` or ``.keras``) into ``model``.

    A ``.keras`` file of another class count fills everything but the head (for
    fine-tuning). Any other difference (a layer the file lacks or has beyond the
    model, other shapes) is an error naming the layers, unless ``skip_mismatch``:
    then what fits loads and a warning names the rest. Returns a one-line report.
    The authors' (timm's) ViT checkpoints are not supported.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    about = (f"{model.name}: patch {model.patch_size}, embed_dim {model.embed_dim}, depth {model.depth}, "
             f"{model.image_shape[0]}x{model.image_shape[1]}")
    if path.endswith(".weights.h5"):
        mismatches = h5_mismatches(model, path)
        if mismatches and not skip_mismatch:
            _refuse_h5_mismatches(path, mismatches, about, "ViT")
        try:
            if mismatches:
                _load_h5_leniently(model, path)
            else:
                model.load_weights(path)
        except ValueError as error:
            raise ValueError(f"{path!r} does not fit this ViT ({about}): {error}") from error
        warn_nonfinite({v.path: keras.ops.convert_to_numpy(v) for v in model.weights})
        return _skipped_report("loaded as saved (same configuration)", mismatches)
    if path.endswith(".keras"):
        saved = read_keras_file(path)
        if getattr(saved, "patch_size", None) is None:
            raise ValueError(f"{path!r} holds a {type(saved).__name__}, not a keras_t2t ViT.")
        pairs, notes, mismatches = _pair_vit_layers(model, saved)
        if mismatches and not skip_mismatch:
            raise ValueError(
                f"{path!r} does not fit this ViT ({about}): "
                + "; ".join(f"{_H5_KINDS[kind]}: {few_names(names)}" for kind, names in mismatches.items())
                + ". Build the ViT with the saved configuration, or pass skip_mismatch=True to load the "
                "layers that fit."
            )
        warn_nonfinite({v.path: keras.ops.convert_to_numpy(v) for _, other in pairs for v in other.weights})
        for layer, other in pairs:
            layer.set_weights(other.get_weights())
        return _skipped_report("; ".join(["loaded from a saved ViT"] + notes), mismatches)
    raise ValueError(
        f"ViT weights load from this package's own '.weights.h5' or '.keras' files only; got {path!r}. "
        "The authors' (timm's) ViT checkpoints are not supported."
    )


def _pair_vit_layers(model, saved):
    """([(layer, saved layer)] of equal weights, notes on the head left out, {kind: layer names} of the rest)."""
    pairs, notes = [], []
    mismatches = {"missing": [], "mismatched": []}
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            other = saved.get_layer(layer.name)
        except ValueError:
            other = None
        shapes = [tuple(v.shape) for v in layer.weights]
        other_shapes = None if other is None or not other.weights else [tuple(v.shape) for v in other.weights]
        if shapes == other_shapes:
            pairs.append((layer, other))
        elif layer.name == "head":  # another class count: fine-tuning keeps the fresh head
            notes.append(f"head not loaded (the file has {other_shapes}, the model {shapes})"
                         if other_shapes else "head not loaded (the file has none)")
        elif other_shapes is None:
            mismatches["missing"].append(layer.name)
        else:
            mismatches["mismatched"].append(
                f"layer {layer.name!r} has weights {other_shapes} in the file and {shapes} in the model")
    names = {layer.name for layer in model.layers}
    mismatches["unexpected"] = [layer.name for layer in saved.layers if layer.weights and layer.name not in names]
    return pairs, notes, {kind: found for kind, found in mismatches.items() if found}


def _skipped_report(report, skipped):
    """``report`` plus the line naming what ``skip_mismatch`` left out, which is warned too."""
    if not skipped:
        return report
    line = describe_skipped(skipped)
    warnings.warn(f"keras_t2t: {line}.", stacklevel=3)
    return f"{report}; {line}"


def load_any_weights(model, path, skip_mismatch=False):
    """Loads ``path`` into any model of the package: ViTs from this package's files, T2T-ViTs from any format.

    ``skip_mismatch``: load what fits and warn naming the rest, instead of refusing.
    """
    if getattr(model, "patch_size", None) is not None:
        return load_vit_weights(model, path, skip_mismatch=skip_mismatch)
    return load_weights(model, path, skip_mismatch=skip_mismatch)

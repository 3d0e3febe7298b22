"""Loading weights into a model: any supported file in, the model's variables assigned.

``read_state_dict`` turns any weights file into the authors' state dict (the
layout of ``keras_t2t.weights.mapping``): the authors' ``.pth``/``.pth.tar``
checkpoints through the safe reader (``keras_t2t.weights.torch_pickle``), a
``.keras`` file through its model. ``load_state_dict`` assigns such a dict;
``load_weights`` does both, and loads a ``.weights.h5`` file through Keras
(``keras_t2t.weights.keras_weights``: checked against what Keras writes for the model). ViTs load this package's own files only
(``load_vit_weights``); ``load_any_weights`` picks the right one.

Every load is exact: weights the model has and the file lacks, or the file has
and the model lacks, are an error naming them, unless ``skip_mismatch=True``
(Keras' name), which loads what fits and warns naming the rest. Weights holding
NaN or Inf load with a ``NonFiniteWeightsWarning`` naming the tensors.
"""

import os
import warnings
import zipfile

import keras
import numpy as np

from keras_t2t.weights.detect import checkpoint_head
from keras_t2t.weights.mapping import (
    checkpoint_filter_fn,
    describe_model,
    describe_skipped,
    few_names,
    model_state_dict,
    variable_map,
)
from keras_t2t.keras_files import DIFFERENCES
from keras_t2t.weights.keras_weights import load_keras_weights, saved_classes
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


def saved_head(path, state_dict=None, model=None):
    """(classes, token_labeling) of the head a weights file holds; (None, False) without one.

    ``classes`` is the class count, ``token_labeling`` whether Token Labeling's
    ``aux_head`` is there too. ``state_dict``: what ``read_state_dict`` gave for
    ``path`` (saves reading it again). A ``.weights.h5`` file holds no names of its
    own: its head is the one at the place of ``model``'s head (``saved_classes``).
    """
    path = os.fspath(path)
    if state_dict is None and path.endswith(".h5"):
        if model is None:
            raise ValueError(f"{path!r} is a '.weights.h5' file: its head is read at the place of a model's head; "
                             "pass model=.")
        return saved_classes(model, path), False
    if state_dict is None:
        state_dict, _ = read_state_dict(path)
    return checkpoint_head(state_dict)


def load_weights(model, path, prefer_ema=True, which=None, skip_mismatch=False):
    """Loads any supported weights file into ``model``, adapting the position table and head.

    Returns a ``WeightLoadReport``. Nothing is assigned unless every check passes:
    the file's weights must cover the model exactly (but for the head and the
    position table), unless ``skip_mismatch`` (see ``load_state_dict``).
    """
    path = os.fspath(path)
    if path.endswith(".h5"):  # .weights.h5 included: through Keras (keras_t2t.weights.keras_weights)
        return _load_h5(model, path, skip_mismatch, describe_model(model))
    state, _ = read_state_dict(path, prefer_ema=prefer_ema, which=which)
    return load_state_dict(model, state, skip_mismatch=skip_mismatch)


def _load_h5(model, path, skip_mismatch, about):
    """``load_keras_weights``, then the warnings every load gives: what was skipped, NaN or Inf loaded."""
    report = load_keras_weights(model, path, skip_mismatch=skip_mismatch, about=about)
    # A T2T-ViT's tensors are named by the authors' keys, as every other load of one names them.
    keys = ({variable.path: key for key, (variable, _) in variable_map(model).items()}
            if getattr(model, "t2t_type", None) is not None else {})
    warn_nonfinite({keys.get(v.path, v.path): keras.ops.convert_to_numpy(v) for v in model.weights})
    if report["skipped"]:
        warnings.warn(f"keras_t2t: {describe_skipped(report['skipped'])}.", stacklevel=4)
    return report


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
        report = _load_h5(model, path, skip_mismatch, about)
        return str(report) if report["skipped"] or report["head_dropped"] else "loaded as saved (same configuration)"
    if path.endswith(".keras"):
        saved = read_keras_file(path)
        if getattr(saved, "patch_size", None) is None:
            raise ValueError(f"{path!r} holds a {type(saved).__name__}, not a keras_t2t ViT.")
        pairs, notes, mismatches = _pair_vit_layers(model, saved)
        if mismatches and not skip_mismatch:
            raise ValueError(
                f"{path!r} does not fit this ViT ({about}): "
                + "; ".join(f"{DIFFERENCES[kind]}: {few_names(names)}" for kind, names in mismatches.items())
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

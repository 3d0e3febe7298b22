"""The model to export and its preprocessing, through ``keras_t2t.resolve``; then made a classifier.

``resolve_for_export`` takes what ``keras_t2t.resolve.resolve_model`` takes (a
release preset name, a preset folder, a ``.keras`` file, an authors'
checkpoint, or a registry name with ``weights``: a tag, a checkpoint or a
``.weights.h5`` file), or a ``keras.Model`` in memory, and gives the model with
the preprocessing it was evaluated with. ``classifier_for_export`` gives every
format the same float32 model ``images -> {"logits", "probabilities"}``.
"""

import dataclasses
import os

import keras

from keras_t2t.builders import list_models
from keras_t2t.export.errors import ExportError
from keras_t2t.export.serving import INPUT_NAME
from keras_t2t.hub.presets import is_preset_name, list_presets
from keras_t2t.models.presets import unknown_model_error
from keras_t2t.precision import cast_model, compute_dtype
from keras_t2t.resolve import Preprocessing, Resolved, is_preset_folder, resolve_model
from keras_t2t.weights.loading import is_checkpoint_path
from keras_t2t.weights.pretrained import is_weights_tag, release_for, unknown_weights_error

#: What ``model`` may name, for the error messages.
ACCEPTED_MODELS = (
    "a '.keras' file (a training run's model.keras included), a preset name (t2t_vit_7_imagenet, ...; "
    "keras_t2t.list_presets()), a preset folder, or an authors' checkpoint ('.pth', '.pth.tar')"
)
IN_MEMORY = "in-memory keras.Model"


def _is_path_like(text):
    return os.sep in text or (os.altsep and os.altsep in text) or text.endswith((".keras", ".h5")) or (
        is_checkpoint_path(text))


def _check_model_handle(path):
    """The checks on a ``model`` given as a string or path; ExportError naming the problem."""
    if is_preset_name(path):
        return
    if os.path.isdir(path):
        if not is_preset_folder(path):
            raise ExportError(f"{path!r} is a folder without a preset's config.json; give {ACCEPTED_MODELS}.")
        return
    if path.endswith(".weights.h5"):
        raise ExportError(
            f"{path!r} is a '.weights.h5' file, which holds no architecture: give the variant too "
            "(--variant NAME --weights PATH)."
        )
    if os.path.isfile(path):
        if not (path.endswith(".keras") or is_checkpoint_path(path)):
            raise ExportError(f"{path!r} is not a model file the export reads; give {ACCEPTED_MODELS}.")
        return
    if path in list_models():
        raise ExportError(
            f"{path!r} is a model name, which needs weights: give --variant {path} --weights TAG|FILE "
            f"(variant={path!r}, weights=...), or a preset name such as {path}_imagenet."
            if f"{path}_imagenet" in list_presets() else
            f"{path!r} is a model name, which needs weights: give --variant {path} --weights FILE "
            f"(variant={path!r}, weights=...)."
        )
    if _is_path_like(path):
        raise ExportError(f"Model file {path!r} does not exist.")
    raise ExportError(f"{unknown_model_error(path, list_presets())} Or give {ACCEPTED_MODELS}.")


def check_model_argument(model, variant, weights, image_size=None, classes=None):
    """The checks on what to export that need no loading; ExportError naming the problem."""
    if model is not None and variant is not None:
        raise ExportError(
            "Give either a model (a keras.Model, a '.keras' file, a preset) or variant + weights, not both."
        )
    if model is not None and (weights is not None or image_size is not None or classes is not None):
        given = ", ".join(name for name, value in (("weights", weights), ("image_size", image_size),
                                                    ("classes", classes)) if value is not None)
        raise ExportError(f"Give {given} with a variant, not with a model: a model has its own.")
    if isinstance(model, keras.Model):
        return
    if model is not None:
        _check_model_handle(os.fspath(model))
        return
    if variant is None:
        raise ExportError(f"Nothing to export: give a model ({ACCEPTED_MODELS}) or a variant name with weights.")
    if variant not in list_models():
        raise ExportError(str(unknown_model_error(variant)))
    if weights is None:
        raise ExportError(
            f"--variant {variant} needs --weights: a tag ('imagenet', ...), a '.weights.h5' file or an authors' "
            "'.pth.tar'; an untrained model is not worth deploying."
        )
    path = os.fspath(weights)
    if os.path.isfile(path):
        return
    if is_weights_tag(path):
        try:
            release_for(variant, path)
        except ValueError as error:
            raise ExportError(str(error)) from None
        return
    if _is_path_like(path) or "." in os.path.basename(path):
        raise ExportError(f"Weights file {path!r} does not exist.")
    raise ExportError(str(unknown_weights_error(variant, path)))


def _input_hw(model):
    shape = tuple(model.inputs[0].shape[1:3]) if getattr(model, "inputs", None) else ()
    if len(shape) == 2 and all(shape):
        return int(shape[0]), int(shape[1])
    return None


def in_memory_preprocessing(model):
    """The preprocessing of a model given in memory: its input size, crop_pct 0.9, ImageNet mean/std."""
    return Preprocessing(_input_hw(model) or (224, 224),
                         source=f"the defaults for an {IN_MEMORY}: its input size, crop_pct 0.9")


def _one_line(error):
    return " ".join(str(error).split())


def resolve_for_export(model=None, variant=None, weights=None, image_size=None, classes=None):
    """``keras_t2t.resolve.Resolved(model, preprocessing, description)`` of what to export.

    ``model`` is a ``keras.Model`` (its preprocessing: its input size, crop_pct
    0.9) or any handle ``resolve_model`` reads: a release preset name, a preset
    folder, a ``.keras`` file (the preprocessing of its training run when it
    has one: ``recipe.json`` or ``preset/`` beside it), an authors' checkpoint.
    Or ``variant`` (any name of ``keras_t2t.list_models()``) with ``weights``:
    a tag (``"imagenet"``), a ``.weights.h5`` file or an authors' checkpoint;
    then the class count comes from the weights' head unless ``classes`` is
    given, the image size from the weights (or the model's default) unless
    ``image_size`` (``N`` or ``(height, width)``) is given, and the preprocessing
    follows ``image_size``. Raises ``ExportError`` naming the file when it
    cannot be read.
    """
    check_model_argument(model, variant, weights, image_size, classes)
    if isinstance(model, keras.Model):
        return Resolved(model, in_memory_preprocessing(model), IN_MEMORY)
    if model is not None:
        handle = os.fspath(model)
        try:
            return resolve_model(handle, verbose=False)
        except Exception as error:  # noqa: BLE001 - a corrupt file can fail in many ways
            message = _one_line(error)
            named = message if repr(handle) in message or handle in message else f"{handle!r}: {message}"
            raise ExportError(f"Cannot load the model: {named}") from error
    kwargs = {}
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        kwargs["input_shape"] = (int(height), int(width), 3)
    if classes is not None:
        kwargs["classes"] = int(classes)  # otherwise the builder takes the weights' head's count
    try:
        resolved = resolve_model(variant, weights=os.fspath(weights), verbose=False, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure to build is bad input
        raise ExportError(
            f"Cannot build {variant} with the weights {os.fspath(weights)!r}: {type(error).__name__}: "
            f"{_one_line(error)}"
        ) from error
    report = getattr(resolved.model, "weights_report", None) or {}
    if report.get("head_dropped"):
        raise ExportError(
            f"The weights {os.fspath(weights)!r} did not load a classifier head into {variant} "
            f"({report['head_dropped']}); pass the right --classes."
        )
    if image_size is not None:
        resolved.preprocessing = resolved.preprocessing.with_overrides(image_size=image_size)
    return resolved


def fit_to_input(preprocessing, model):
    """``preprocessing`` at ``model``'s input size (the only size an export can feed), saying so when it changed."""
    hw = _input_hw(model)
    if hw is None or tuple(preprocessing.image_size) == hw:
        return preprocessing
    return dataclasses.replace(
        preprocessing, image_size=hw,
        source=f"the model's input size {hw[0]}x{hw[1]}, the rest from {preprocessing.source}",
    )


def load_model_for_export(model=None, variant=None, weights=None, image_size=None, classes=None):
    """The Keras model to export (``resolve_for_export(...).model``; see there)."""
    return resolve_for_export(model, variant, weights, image_size, classes).model


def _float32(model):
    """``model`` in float32: a bfloat16 or mixed-precision keras_t2t model is rebuilt in float32 and its weights
    cast (TFLite and ONNX have no bfloat16 for several of its ops); any other model as it is, or one
    ``ExportError`` when its layers do not compute in float32."""
    dtype = compute_dtype(model)
    if dtype == "float32" and model.dtype_policy.name == "float32":
        return model
    if getattr(model, "t2t_type", None) is None and getattr(model, "patch_size", None) is None:
        if dtype == "float32":
            return model
        raise ExportError(f"{model.name} computes in {dtype}; export needs float32 (rebuild it in float32).")
    return cast_model(model, "float32")


def classifier_for_export(model):
    """A float32 functional model ``images -> {"logits", "probabilities"}`` sharing ``model``'s weights.

    The logits are the input of the model's final ``predictions`` activation
    (the T2T-ViT head); ``probabilities`` applies that activation, or softmax
    when the model outputs logits. A bfloat16 or mixed-precision model of the
    package is rebuilt in float32 first (its weights cast).
    """
    if getattr(model, "include_top", True) is False:
        raise ExportError(
            f"{model.name} has no classifier head (include_top=False); export needs a model that outputs class "
            "scores."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(
            f"Export needs a model with one image input and one score output; {model.name} has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    model = _float32(model)
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(v is None for v in shape):
        raise ExportError(f"Export needs a fixed (height, width, channels) image input; {model.name} takes {shape}.")
    if shape[-1] != 3:
        raise ExportError(f"Export verifies on RGB images; {model.name} takes {shape[-1]} channels.")

    activation = None
    logits = model.outputs[0]
    try:
        final = model.get_layer("predictions")
    except ValueError:
        final = None
    if isinstance(final, keras.layers.Activation) and final.output is model.outputs[0]:
        logits = final.input
        activation = final.activation
    if activation is None or activation is keras.activations.linear:
        activation = keras.activations.softmax
    if len(logits.shape) != 2:
        raise ExportError(f"Export needs class scores of shape (batch, classes); {model.name} gives {logits.shape}.")

    inputs = keras.Input(shape=shape, name=INPUT_NAME)
    scores = keras.Model(model.inputs[0], logits, name=f"{model.name}_logits")(inputs)
    outputs = {
        "logits": keras.layers.Identity(name="logits")(scores),
        "probabilities": keras.layers.Activation(activation, name="probabilities")(scores),
    }
    return keras.Model(inputs, outputs, name=model.name)

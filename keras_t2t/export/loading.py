"""The model to export: loaded from a ``.keras`` file or built by name with weights, then made a classifier.

``classifier_for_export`` gives every format the same float32 model
``images -> {"logits", "probabilities"}``.
"""

import os

import keras

from keras_t2t.builders import create_model, list_models
from keras_t2t.export.errors import ExportError
from keras_t2t.export.serving import INPUT_NAME
from keras_t2t.models.presets import unknown_model_error


def check_model_argument(model, variant, weights):
    """The checks on what to export that need no loading; ExportError naming the problem."""
    if model is not None and variant is not None:
        raise ExportError("Give either a model (a keras.Model or a '.keras' path) or variant + weights, not both.")
    if isinstance(model, keras.Model):
        return
    if model is not None:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ExportError(f"Model file {path!r} does not exist.")
        if not path.endswith(".keras"):
            raise ExportError(
                f"{path!r} is not a '.keras' model file. For a '.weights.h5' file or an authors' checkpoint, "
                "give the variant too (--variant NAME --weights PATH)."
            )
        return
    if variant is None:
        raise ExportError("Nothing to export: give a model (a '.keras' file) or a variant name with weights.")
    if variant not in list_models():
        raise ExportError(str(unknown_model_error(variant)))
    if weights is None:
        raise ExportError(
            f"--variant {variant} needs --weights PATH ('.weights.h5' or an authors' '.pth.tar'): an "
            "untrained model is not worth deploying."
        )
    if not os.path.isfile(weights):
        raise ExportError(f"Weights file {os.fspath(weights)!r} does not exist.")


def describe_source(model, variant, weights):
    """Where the exported model came from, as ``report.json`` records it."""
    if variant is not None:
        return f"{variant} + {os.path.abspath(os.fspath(weights))}"
    if isinstance(model, (str, os.PathLike)):
        return os.path.abspath(os.fspath(model))
    return "in-memory keras.Model"


def load_model_for_export(model=None, variant=None, weights=None, image_size=None, classes=None):
    """The Keras model to export: a ``keras.Model``, a ``.keras`` path, or ``variant`` + ``weights``.

    ``variant`` is any name of ``keras_t2t.list_models()``; ``weights`` a
    ``.weights.h5`` file or an authors' checkpoint (``.pth.tar``). The class
    count comes from its head unless ``classes`` is given, the image size from
    the checkpoint (or the model's default) unless ``image_size`` (``N`` or
    ``(height, width)``) is given. Raises ``ExportError`` naming the file when
    it cannot be read.
    """
    check_model_argument(model, variant, weights)
    if isinstance(model, keras.Model):
        return model
    if model is not None:
        path = os.fspath(model)
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - a corrupt file can fail in many ways
            raise ExportError(
                f"Cannot load the model {path!r} ({type(error).__name__}: {error}). Is it a complete '.keras' file?"
            ) from error
    kwargs = {}
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        kwargs["input_shape"] = (int(height), int(width), 3)
    if classes is not None:
        kwargs["classes"] = int(classes)  # otherwise the builder takes the weights' head's count
    try:
        built = create_model(variant, weights=weights, verbose=False, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure to build is bad input
        raise ExportError(
            f"Cannot build {variant} with the weights {os.fspath(weights)!r}: {type(error).__name__}: {error}"
        ) from error
    report = getattr(built, "weights_report", None) or {}
    if report.get("head_dropped"):
        raise ExportError(
            f"The weights {os.fspath(weights)!r} did not load a classifier head into {variant} "
            f"({report['head_dropped']}); pass the right --classes."
        )
    return built


def _float32(model):
    """A mixed-precision model rebuilt in float32 (its variables are float32 already)."""
    if model.dtype_policy.name == "float32" or not hasattr(type(model), "from_config"):
        return model
    config = model.get_config()
    config["dtype"] = "float32"
    rebuilt = type(model).from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def classifier_for_export(model):
    """A float32 functional model ``images -> {"logits", "probabilities"}`` sharing ``model``'s weights.

    The logits are the input of the model's final ``predictions`` activation
    (the T2T-ViT head); ``probabilities`` applies that activation, or softmax
    when the model outputs logits. A mixed-precision T2T-ViT is rebuilt in
    float32 first (its variables are float32 already).
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

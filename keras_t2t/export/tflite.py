"""TFLite: the four conversions of the SavedModel, each with float or uint8-pixel input, and LiteRT's interpreter.

The models use builtin ops only (no Select-TF/Flex ops), so they run in the
standard LiteRT interpreter. Every model outputs ``probabilities`` first, then
``logits`` (``serving.OUTPUT_ORDER``; the output tensors carry these names), so
an app or MediaPipe reading the first head gets the probabilities. ``int8`` is the recipe of
``keras_t2t.export.quantize``: the fully connected layers in int8, the rest in
float32. Every file carries TFLite metadata (``keras_t2t.export.metadata``):
image size, input normalisation and the labels, which MediaPipe's
``ImageClassifier`` and the TFLite Task Library read. A ``pixels`` model is
converted from the SavedModel's ``serving_uint8`` signature: it takes uint8
RGB pixels and normalises inside, as MediaPipe needs (it cannot apply the
per-channel ImageNet normalisation itself).
"""

import os
import tempfile
import warnings

import numpy as np

from keras_t2t.backends import native_output_quieted
from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.export.metadata import add_metadata, classifier_metadata, describe_metadata
from keras_t2t.export.quantize import INT8_RECIPE, quantize_int8
from keras_t2t.export.report import LABELS_FILE
from keras_t2t.export.samples import to_uint8
from keras_t2t.export.saved_model import write_saved_model
from keras_t2t.export.serving import INPUT_NAME, OUTPUT_ORDER, SIGNATURE, UINT8_SIGNATURE, runtime_threads

#: The conversions: ``tflite_<quantization>`` is the format name, ``model_<quantization>.tflite`` its file.
QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")


def convert_tflite(saved_model_dir, quantization="float32", representative=None, pixels=False, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD):
    """The ``.tflite`` flatbuffer (bytes) of one signature of the SavedModel, without metadata.

    ``quantization`` is one of ``QUANTIZATIONS``: ``float32``; ``float16``
    weights; ``dynamic_int8`` (int8 weights, float activations quantized at
    run time); ``int8`` (``keras_t2t.export.quantize``: int8 fully connected
    layers calibrated on ``representative``, normalised images one per row).
    ``pixels`` converts the ``serving_uint8`` signature (uint8 pixel input)
    instead of ``serving_default`` (normalised float input); ``mean`` and ``std``
    are the normalisation of ``representative`` (to calibrate a ``pixels`` model on its pixels).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown TFLite quantization {quantization!r}; accepted: {', '.join(QUANTIZATIONS)}.")
    import tensorflow as tf

    signature = UINT8_SIGNATURE if pixels else SIGNATURE
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[signature])
    # Builtin ops only: the LiteRT interpreter has no Select-TF (Flex) kernels.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "int8":
        if representative is None:
            raise ValueError("The int8 conversion is calibrated on representative images; none were given.")
        # The calibrator prints its settings to stderr ("fully_quantize: 0, inference_type: 6, ...").
        with native_output_quieted():
            return quantize_int8(converter, to_uint8(representative, mean, std) if pixels else representative)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with warnings.catch_warnings(), native_output_quieted():
        warnings.simplefilter("ignore")  # TF's own deprecation notices about tf.lite
        return converter.convert()


def with_metadata(content, name, image_hw, labels=None, pixels=False, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``content`` (a ``.tflite``) with the classifier's metadata and, when given, ``labels.txt`` inside, its
    outputs in ``OUTPUT_ORDER`` (probabilities first) and named so.

    A float-input model's metadata states its normalisation on 0..255 pixels: 255 x ``mean`` and ``std``
    (the model's preprocessing, of 0..1 pixels).
    """
    height, width = image_hw
    normalization = None if pixels else (tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std))
    files = {}
    if labels is not None:
        files[LABELS_FILE] = "".join(f"{label}\n" for label in labels).encode("utf-8")
    metadata = classifier_metadata(
        name,
        f"{name}: image classifier ({height}x{width} RGB"
        + (", uint8 pixels" if pixels else ", float input normalised as stated")
        + f"), outputs {' and '.join(OUTPUT_ORDER)}. Exported by keras-t2t.",
        image_hw,
        OUTPUT_ORDER,
        labels_file=LABELS_FILE if labels is not None else None,
        normalization=normalization,
        author="keras-t2t",
    )
    return add_metadata(content, metadata, files, output_order=OUTPUT_ORDER)


def write_tflite(path, sources, quantization, pixels=False):
    """The format writer: converts ``sources.saved_model_dir``, adds the metadata, writes the file at ``path``."""
    if pixels and not sources.uint8_signature:
        # The exported SavedModel leaves out serving_uint8: convert from one of our own that has it.
        with tempfile.TemporaryDirectory(prefix="keras_t2t_uint8_") as scratch:
            saved_model = os.path.join(scratch, "saved_model")
            write_saved_model(sources.classifier, saved_model, uint8_signature=True, mean=sources.mean,
                              std=sources.std)
            content = convert_tflite(saved_model, quantization, sources.representative, pixels, sources.mean,
                                     sources.std)
    else:
        content = convert_tflite(sources.saved_model_dir, quantization, sources.representative, pixels,
                                 sources.mean, sources.std)
    image_hw = tuple(int(v) for v in sources.classifier.inputs[0].shape[1:3])
    content = with_metadata(content, sources.classifier.name, image_hw, sources.labels, pixels, sources.mean,
                            sources.std)
    with open(path, "wb") as handle:
        handle.write(content)


# --------------------------------------------------------------------------
# Reading the flatbuffer
# --------------------------------------------------------------------------
def _operators(path_or_bytes):
    """Yields ``(op name, graph, op)`` for every operator of a ``.tflite`` model."""
    from ai_edge_litert import schema_py_generated as schema

    buffer = path_or_bytes
    if not isinstance(buffer, (bytes, bytearray)):
        with open(buffer, "rb") as handle:
            buffer = handle.read()
    model = schema.Model.GetRootAsModel(buffer, 0)
    builtin_names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = builtin_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.CustomCode() or b"").decode()
        names.append(name)
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            yield names[op.OpcodeIndex()], graph, op


def _count(names):
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tflite_operators(path_or_bytes):
    """``{op name: count}`` of a ``.tflite`` model; custom ops (Flex ops among them) as ``"CUSTOM:<code>"``."""
    return _count(name for name, _, _ in _operators(path_or_bytes))


def _ops_computing_in(path_or_bytes, tensor_type):
    """``{op name: count}`` of the ops whose first input is of ``tensor_type`` (quantize/shape ops aside)."""
    from ai_edge_litert import schema_py_generated as schema

    wanted = getattr(schema.TensorType, tensor_type)

    def computes_in(graph, op):
        return op.InputsLength() > 0 and op.Inputs(0) >= 0 and graph.Tensors(op.Inputs(0)).Type() == wanted

    return _count(
        name
        for name, graph, op in _operators(path_or_bytes)
        if name not in ("QUANTIZE", "DEQUANTIZE", "SHAPE") and computes_in(graph, op)
    )


def tflite_float_ops(path_or_bytes):
    """``{op name: count}`` of the ops computing in float32 (quantize/dequantize and SHAPE aside)."""
    return _ops_computing_in(path_or_bytes, "FLOAT32")


def tflite_int8_ops(path_or_bytes):
    """``{op name: count}`` of the ops computing in int8 (quantize/dequantize aside)."""
    return _ops_computing_in(path_or_bytes, "INT8")


def inspect_tflite(path, quantization):
    """The format's extra report fields (``ops``, ``metadata``; the int8 model's recipe) and its error, if any."""
    fields = {"ops": tflite_operators(path), "metadata": describe_metadata(path)}
    custom = [op for op in fields["ops"] if op.startswith("CUSTOM")]
    error = f"non-builtin ops {custom}: the LiteRT interpreter runs builtin ops only" if custom else None
    if quantization == "int8":
        fields["recipe"] = INT8_RECIPE
        fields["int8_ops"] = tflite_int8_ops(path)
        fields["float_ops"] = tflite_float_ops(path)
    return fields, error


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------
def tflite_runner(path):
    """``run(images) -> float32 logits`` through LiteRT's interpreter, on normalised float images.

    The model's one signature is run. A model taking uint8 pixels is given
    uint8 images as they are (the export verifies it on the pixels its samples
    came from), and float images as the pixels they came from with ImageNet's
    normalisation (``keras_t2t.export.samples.to_uint8``: exact for images made
    by ``eval_transform`` from 8-bit pictures); a quantized int8 input or output
    is (de)quantized with its scale and zero point.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=runtime_threads())
    signatures = list(interpreter.get_signature_list())
    runner = interpreter.get_signature_runner(SIGNATURE if SIGNATURE in signatures else signatures[0])
    input_detail = runner.get_input_details()[INPUT_NAME]
    output_detail = runner.get_output_details()["logits"]
    takes_pixels = input_detail["dtype"] == np.uint8 and not input_detail["quantization"][0]

    # LiteRT applies its XNNPACK delegate at the first run and says so on stderr: that run happens here.
    with native_output_quieted():
        runner(**{INPUT_NAME: np.zeros(input_detail["shape"], input_detail["dtype"])})

    def run(images):
        x = images
        if takes_pixels:
            x = images if images.dtype == np.uint8 else to_uint8(images)
        elif input_detail["dtype"] != np.float32:
            scale, zero = input_detail["quantization"]
            info = np.iinfo(input_detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(input_detail["dtype"])
        logits = runner(**{INPUT_NAME: x})["logits"]
        if output_detail["dtype"] != np.float32:
            scale, zero = output_detail["quantization"]
            logits = (logits.astype(np.float32) - zero) * scale
        return np.asarray(logits, np.float32)

    return run

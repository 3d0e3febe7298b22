"""TFLite: the four conversions of the SavedModel, the flatbuffer's op listing, and LiteRT's interpreter.

The models use builtin ops only (no Select-TF/Flex ops), so they run in the
standard LiteRT interpreter. In the full-integer model every op runs in int8
except ``INT8_FLOAT_OPS``: the performer's normalising division (``DIV``) has a
divisor spanning orders of magnitude across tokens that rounds to zero in int8,
which the int8 kernel rejects. It stays a float32 island, as it does under
mixed precision.
"""

import warnings

import numpy as np

from keras_t2t.export.serving import INPUT_NAME, SIGNATURE, runtime_threads

#: The conversions: ``tflite_<quantization>`` is the format name, ``model_<quantization>.tflite`` its file.
QUANTIZATIONS = ("float32", "float16", "dynamic_int8", "int8")
#: Ops the full-integer model keeps in float32 (see the module docstring).
INT8_FLOAT_OPS = ("DIV",)


def convert_tflite(saved_model_dir, quantization="float32", representative=None):
    """The ``.tflite`` flatbuffer (bytes) of the SavedModel's ``serving_default`` signature.

    ``quantization`` is one of ``QUANTIZATIONS``: ``float32``; ``float16``
    weights; ``dynamic_int8`` (int8 weights, float activations); ``int8`` (full
    integer, int8 input and output, calibrated on ``representative``: normalised
    images, one per row).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown TFLite quantization {quantization!r}; accepted: {', '.join(QUANTIZATIONS)}.")
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE])
    # Builtin ops only: the LiteRT interpreter has no Select-TF (Flex) kernels.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization != "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TF's own deprecation notices about tf.lite
            return converter.convert()
    converter.representative_dataset = lambda: ({INPUT_NAME: image[None]} for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # Selective quantization: everything int8 (inputs and outputs too) but INT8_FLOAT_OPS.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: iter(()),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=list(INT8_FLOAT_OPS), fully_quantize=True
            ),
        )
        return debugger.get_nondebug_quantized_model()


def write_tflite(path, sources, quantization):
    """The format writer: converts ``sources.saved_model_dir`` and writes the flatbuffer to ``path``."""
    content = convert_tflite(sources.saved_model_dir, quantization, sources.representative)
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


def tflite_float_ops(path_or_bytes):
    """``{op name: count}`` of the ops computing in float32 (DEQUANTIZE aside) in a quantized model."""
    from ai_edge_litert import schema_py_generated as schema

    def float_output(graph, op):
        return any(graph.Tensors(op.Outputs(i)).Type() == schema.TensorType.FLOAT32 for i in range(op.OutputsLength()))

    return _count(
        name
        for name, graph, op in _operators(path_or_bytes)
        if name not in ("DEQUANTIZE", "SHAPE") and float_output(graph, op)
    )


def inspect_tflite(path, quantization):
    """The format's extra report fields (``ops``; ``float_ops`` of the full-integer model) and its error, if any."""
    fields = {"ops": tflite_operators(path)}
    custom = [op for op in fields["ops"] if op.startswith("CUSTOM")]
    error = f"non-builtin ops {custom}: the LiteRT interpreter runs builtin ops only" if custom else None
    if quantization == "int8":
        fields["float_ops"] = tflite_float_ops(path)
    return fields, error


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------
def tflite_runner(path):
    """``run(images) -> float32 logits`` through LiteRT's interpreter (int8 input/output (de)quantized here)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=runtime_threads())
    runner = interpreter.get_signature_runner(SIGNATURE)
    input_detail = runner.get_input_details()[INPUT_NAME]
    output_detail = runner.get_output_details()["logits"]

    def run(images):
        x = images
        if input_detail["dtype"] != np.float32:
            scale, zero = input_detail["quantization"]
            info = np.iinfo(input_detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(input_detail["dtype"])
        logits = runner(**{INPUT_NAME: x})["logits"]
        if output_detail["dtype"] != np.float32:
            scale, zero = output_detail["quantization"]
            logits = (logits.astype(np.float32) - zero) * scale
        return np.asarray(logits, np.float32)

    return run

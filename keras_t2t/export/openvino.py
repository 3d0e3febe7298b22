"""OpenVINO: the float32 IR and the int8 IR (NNCF post-training quantization), run by OpenVINO's CPU plugin.

Each format is a folder holding the IR: ``model.xml`` (the graph) and
``model.bin`` (the weights). Both are converted from the SavedModel's
``serving_default`` signature (``openvino.convert_model``): input ``images``
(normalised float images, as the model expects), outputs ``probabilities`` then
``logits`` (``serving.OUTPUT_ORDER``). ``openvino`` keeps its weights in float32
(``compress_to_fp16=False``) and takes any batch. ``openvino_int8`` is the same
graph at the fixed batch ``INT8_BATCH`` (1: NNCF cannot quantize the free-batch
graph, whose first attention reshapes by the batch), quantized by
``nncf.quantize`` (``ModelType.TRANSFORMER``: the matmuls and fully connected
layers in int8, softmax, LayerNorm and GELU left in floating point; preset
``MIXED``: symmetric int8 weights, asymmetric activations, as GELU's and the
softmax's outputs are one-sided; no SmoothQuant, activation ranges from the
smallest and largest values seen: see ``quantize_openvino``), calibrated on the
export's representative images.

The runners compile for the CPU with ``INFERENCE_PRECISION_HINT="f32"``
(``FLOAT32_CONFIG``): without it OpenVINO computes in bfloat16 on a CPU that has
it (AVX512_BF16, AMX) and in float32 on one that has not (AVX2), so the same
file would pass the float32 tolerance on one machine and miss it on another. For
the int8 IR the hint sets the arithmetic of what NNCF leaves in floating point,
so its verified agreement measures the quantization alone, the same on every
CPU; compiled with the default hint on a bfloat16 CPU, those parts round to
bfloat16 as well. Compile with the same configuration to get what was verified.
"""

import contextlib
import importlib
import io
import logging
import os

import numpy as np

from keras_t2t.export.serving import INPUT_NAME, OUTPUT_ORDER, runtime_threads

#: The IR's graph inside a format's folder; the weights are ``model.bin`` beside it.
IR_FILE = "model.xml"
#: The fixed batch of the int8 IR: its runner feeds the images one at a time.
INT8_BATCH = 1
#: What the runners compile with: float32 arithmetic on every CPU (not bfloat16 where the CPU has it).
FLOAT32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
INSTALL_HINT = "pip install 'keras-t2t[export]'"


def import_openvino(package="openvino"):
    """The module ``openvino`` (or ``nncf``); RuntimeError in one line naming the install when it is missing."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise RuntimeError(f"The OpenVINO formats need {package} ({error}): {INSTALL_HINT}") from None


@contextlib.contextmanager
def nncf_quieted(nncf):
    """NNCF's progress bars (written to stdout) and INFO lines, silenced for the duration."""
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)


def convert_openvino(saved_model_dir, name, batch=None):
    """The ``openvino.Model`` of the SavedModel's ``serving_default``: outputs in ``OUTPUT_ORDER``, named
    ``name``; ``batch`` fixes the batch size (``None``: any)."""
    ov = import_openvino()
    converted = ov.convert_model(saved_model_dir)  # the SavedModel's default signature
    results = {next(iter(result.output(0).get_names())): result for result in converted.get_results()}
    model = ov.Model([results[output] for output in OUTPUT_ORDER], converted.get_parameters(), name)
    if batch is not None:
        model.reshape({INPUT_NAME: [batch, *image_shape(model)]})
    return model


def image_shape(model):
    """``[height, width, channels]`` of an IR's ``images`` input."""
    return [int(dim.get_length()) for dim in list(model.input(INPUT_NAME).get_partial_shape())[1:]]


def save_ir(model, path):
    """Writes ``model`` as the IR folder ``path`` (``model.xml``, ``model.bin``), its weights as they are."""
    ov = import_openvino()
    os.makedirs(path)
    ov.save_model(model, os.path.join(path, IR_FILE), compress_to_fp16=False)


def write_openvino(path, sources):
    """The format writer of ``openvino``: the float32 IR of ``sources.saved_model_dir`` (any batch) at ``path``."""
    save_ir(convert_openvino(sources.saved_model_dir, sources.classifier.name), path)


def quantize_openvino(model, representative):
    """``model`` (fixed batch ``INT8_BATCH``) quantized by NNCF, calibrated on ``representative`` (normalised
    images, one per row)."""
    nncf = import_openvino("nncf")
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    images = np.asarray(representative, np.float32)
    if len(images) < INT8_BATCH:
        raise ValueError(f"The int8 IR is calibrated on batches of {INT8_BATCH} images; {len(images)} were given.")
    batches = [images[i : i + INT8_BATCH] for i in range(0, len(images) - INT8_BATCH + 1, INT8_BATCH)]
    with nncf_quieted(nncf):
        return nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),
            # No SmoothQuant, and activation ranges spanning every calibration image (not their mean): SmoothQuant
            # fits the calibration images' channels so closely that images unlike them flip (the trained digits
            # model calibrated on 16 digits agreed with Keras on 87.5% of 16 photographs; 100% without it).
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            ),
        )


def write_openvino_int8(path, sources):
    """The format writer of ``openvino_int8``: the IR at batch ``INT8_BATCH``, quantized on
    ``sources.representative``, at ``path``."""
    if sources.representative is None:
        raise ValueError("The int8 IR is calibrated on representative images; none were given.")
    import_openvino("nncf")  # before the conversion
    model = convert_openvino(sources.saved_model_dir, sources.classifier.name, batch=INT8_BATCH)
    save_ir(quantize_openvino(model, sources.representative), path)


# --------------------------------------------------------------------------
# Reading and running it
# --------------------------------------------------------------------------
def inspect_openvino(path, quantized):
    """The format's extra report fields and its error, if any: the input shape (batch ``null``: any), the
    precision hint verified with, the number of ``FakeQuantize`` ops (the int8 points NNCF inserted)."""
    ov = import_openvino()
    model = ov.Core().read_model(os.path.join(path, IR_FILE))
    batch = model.input(INPUT_NAME).get_partial_shape()[0]
    ops = model.get_ops()
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in ops)
    half = any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16 for op in ops)
    fields = {
        "input_shape": [int(batch.get_length()) if batch.is_static else None, *image_shape(model)],
        "inference_precision_hint": FLOAT32_CONFIG["INFERENCE_PRECISION_HINT"],
        "fake_quantize_ops": int(fake_quantize),
    }
    error = None
    if quantized and not fake_quantize:
        error = "NNCF quantized nothing: the IR holds no FakeQuantize op"
    elif not quantized and (fake_quantize or half):
        error = "the float32 IR holds " + ("FakeQuantize ops" if fake_quantize else "float16 weights")
    return fields, error


def openvino_runner(path):
    """``run(images) -> float32 logits`` through OpenVINO's CPU plugin, in float32 (``FLOAT32_CONFIG``) on
    ``runtime_threads()`` threads.

    An IR of any batch (``openvino``) is compiled for the batch it is fed (``model.reshape``, once per batch
    size): the CPU plugin runs a static shape about twice as fast as a free one, and a deployment at a fixed
    batch does the same. An IR of a fixed batch (``openvino_int8``: ``INT8_BATCH``) is fed that many images at
    a time, the last batch padded with zeros.
    """
    ov = import_openvino()
    core = ov.Core()
    model = core.read_model(os.path.join(path, IR_FILE))
    config = {**FLOAT32_CONFIG, "INFERENCE_NUM_THREADS": runtime_threads()}
    batch_dim = model.input(INPUT_NAME).get_partial_shape()[0]
    fixed_batch = int(batch_dim.get_length()) if batch_dim.is_static else None
    requests = {}

    def infer(x):
        if len(x) not in requests:
            if fixed_batch is None:
                model.reshape({INPUT_NAME: [len(x), *image_shape(model)]})
            compiled = core.compile_model(model, "CPU", config)
            requests[len(x)] = (compiled.create_infer_request(), compiled.output("logits"))
        request, logits = requests[len(x)]
        # A copy: the request's output buffer is overwritten by its next run.
        return np.array(request.infer({INPUT_NAME: np.ascontiguousarray(x, np.float32)})[logits], np.float32)

    def run(images):
        if fixed_batch is None:
            return infer(images)
        chunks = []
        for start in range(0, len(images), fixed_batch):
            chunk = images[start : start + fixed_batch]
            padding = np.zeros((fixed_batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
            chunks.append(infer(np.concatenate([chunk, padding]))[: len(chunk)])
        return np.concatenate(chunks)

    return run

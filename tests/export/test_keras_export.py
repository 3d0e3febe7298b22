"""Keras' own exporters on a package model (issue 24): ``model.export(path, format="onnx")`` and
``format="openvino"`` on the backend of the session, each artifact run in its runtime and compared
with the Keras logits (to 1e-4 of the largest |logit|).

Two things in the layers stood in the way and are what these tests hold: the soft split computed its
gather indices with NumPy from the traced image shape (a TypeError under torch's tracing), and
TensorFlow's exact GELU lowered to ``Erfc``, an op ONNX does not have (ONNX Runtime refused the file).

What Keras itself does not offer, or cannot do for this model, is skipped with the reason:

- ONNX on JAX needs ``jax2onnx``; ONNX on torch needs ``onnxscript`` and a fixed input signature
  (Keras' documented requirement on torch: a fixed shape takes torch's dynamo exporter, which needs
  onnxscript; with a free batch, or without onnxscript, Keras uses the TorchScript exporter, which
  cannot export Keras' own ``LayerNormalization`` on torch, see the free-batch test below);
- OpenVINO on JAX: Keras converts a jax2tf graph whose body is one ``XlaCallModule`` op, which
  OpenVINO has no conversion rule for.
"""

import functools

import keras
import numpy as np
import pytest

import keras_t2t
from keras_t2t import layers

BACKEND = keras.backend.backend()
IMAGE_SIZE = 32
# The exported logits may differ from Keras' by float32 rounding only.
RELATIVE_TOLERANCE = 1e-4
# torch: Keras exports a fixed input signature only (its torch ONNX export has no free batch).
TORCH_BATCH = 1


@functools.cache
def mini():
    """``(model, images, logits)``: the registry's tiny model (32x32, 3 classes), called once; built
    on first use, after a test's skips (JAX compiles it for seconds)."""
    keras.utils.set_random_seed(0)
    model = keras_t2t.t2t_vit_mini(classes=3)
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    batch = TORCH_BATCH if BACKEND == "torch" else 2
    images = np.random.default_rng(0).standard_normal((batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    return model, images, logits


def assert_close_to_keras(outputs, logits):
    assert outputs.shape == logits.shape
    error = float(np.max(np.abs(outputs - logits)))
    assert error <= RELATIVE_TOLERANCE * float(np.max(np.abs(logits))), (error, np.max(np.abs(logits)))


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def onnx_op_types(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_onnx_export_runs_in_onnxruntime_with_the_keras_logits(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    kwargs = {}
    if BACKEND == "tensorflow":
        pytest.importorskip("tf2onnx", reason="Keras' ONNX export on TensorFlow needs tf2onnx")
    elif BACKEND == "jax":
        pytest.importorskip("jax2onnx", reason="Keras' ONNX export on JAX needs jax2onnx")
    elif BACKEND == "torch":
        pytest.importorskip(
            "onnxscript",
            reason="Keras' ONNX export on torch needs torch's dynamo exporter, which needs onnxscript (without it "
            "Keras falls back to the TorchScript exporter, which cannot export Keras' LayerNormalization on torch)",
        )
        kwargs["input_signature"] = [keras.InputSpec(shape=(TORCH_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32")]
    model, images, logits = mini()
    path = tmp_path / "model.onnx"
    model.export(str(path), format="onnx", verbose=False, **kwargs)
    ops = onnx_op_types(path)
    # The exact GELU is Erf everywhere (TensorFlow's own GELU wrote Erfc, which ONNX lacks).
    assert "Erf" in ops and "Erfc" not in ops, sorted(ops)
    assert_close_to_keras(run_onnx(path, images), logits)


@pytest.mark.skipif(BACKEND != "torch", reason="the TorchScript ONNX exporter is torch's")
def test_torch_onnx_export_with_a_free_batch_gets_past_the_soft_split(tmp_path):
    # Issue 24's call, as it is: a free batch takes Keras to torch's TorchScript exporter. The soft
    # split traces there now (it raised a TypeError on the traced shape); what stops the export is
    # Keras' LayerNormalization on torch, which hands F.layer_norm a normalized_shape read from the
    # traced tensor, which the exporter needs constant (keras/src/ops/nn.py, layer_norm). If a Keras
    # release fixes that, this test passes and checks the file.
    pytest.importorskip("onnxruntime")
    import torch

    model, images, logits = mini()
    path = tmp_path / "model.onnx"
    try:
        model.export(str(path), format="onnx", verbose=False)
    except torch.onnx.errors.SymbolicValueError as error:
        if "is not constant" in str(error) and "ops/nn.py" in str(error):
            pytest.xfail("Keras' LayerNormalization on torch does not export through TorchScript (free batch)")
        raise
    assert_close_to_keras(run_onnx(path, images), logits)


def test_openvino_export_runs_in_openvino_with_the_keras_logits(tmp_path):
    openvino = pytest.importorskip("openvino")
    if BACKEND == "jax":
        pytest.skip(
            "Keras' OpenVINO export on JAX does not work: it converts a jax2tf graph whose body is one "
            "XlaCallModule op, and OpenVINO has no conversion rule for XlaCallModule"
        )
    model, images, logits = mini()
    path = tmp_path / "model.xml"
    model.export(str(path), format="openvino", verbose=False)
    # float32 inference: the CPU plugin computes in bfloat16 by default on CPUs that have it (then the
    # logits move by ~1e-3 of the largest, not float32 rounding).
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = np.asarray(compiled(images)[compiled.output(0)])
    assert_close_to_keras(outputs, logits)


def test_a_soft_split_needs_a_fixed_image_size():
    # The unfold's gather indices are made once, from the shape the layer is built with.
    split = layers.SoftSplit(3, 2, 1, name="split_under_test")
    with pytest.raises(ValueError, match=r"SoftSplit 'split_under_test' needs a fixed image height, width"):
        split.build((None, None, 32, 3))
    with pytest.raises(ValueError, match=r"SoftSplit '\w+' needs a fixed image height, width"):
        layers.SoftSplit(3, 2, 1)(keras.Input((None, None, 3)))
    built = layers.SoftSplit(3, 2, 1)
    built.build((None, 9, 7, 2))
    assert built.image_shape == (9, 7, 2)
    assert built.compute_output_shape((None, 9, 7, 2)) == (None, 5 * 4, 2 * 9)

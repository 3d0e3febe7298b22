"""``model.onnx`` in the ops ONNX Runtime and OpenVINO fuse, and its dynamic int8 twin (issue 24, item 2).

tf2onnx writes each LayerNormalization as a dozen arithmetic nodes, GELU as ``Erf`` arithmetic and every
Dense on tokens as reshape -> matmul -> reshape around int64 -> int32 -> int64 casts; ``keras_t2t.export.onnx``
rewrites them into one opset-17 ``LayerNormalization`` per Keras layer, the opset-20 ``Gelu`` and a 3-D
``MatMul``. The rewrite must be exact: every family the exporter takes keeps the Keras logits within 1e-4.
The weights are moved off their initial values first (gamma 1, beta and biases 0), which TensorFlow would
otherwise fold away, so the graphs are those of trained models.

Export runs on TensorFlow (from JAX and PyTorch through a TensorFlow child, checked in
test_export_preprocessing.py): these run once, in the TensorFlow session.
"""

import collections
import os

import keras
import numpy as np
import pytest

import keras_t2t
from keras_t2t.data.digits import write_digits_folder
from keras_t2t.export import export_model

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "digits_t2t_vit_mini")
ONE_BACKEND = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="export runs on TensorFlow; these check what the writer writes, once, in its session (CI budget)")
pytestmark = ONE_BACKEND
CHEAP = dict(num_samples=4, latency_runs=1, verbose=False)


def tiny_t2t(t2t_type):
    return keras_t2t.T2TViT(input_shape=(32, 32, 3), t2t_type=t2t_type, token_dim=16, t2t_stages=[(3, 2, 1), (3, 2, 1)],
                            embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True, classes=10,
                            name=f"tiny_{t2t_type}")


FAMILIES = {
    "t2t_performer": lambda: tiny_t2t("performer"),
    "t2t_transformer": lambda: tiny_t2t("transformer"),
    "t2t_dense": lambda: keras_t2t.T2TViTDense(input_shape=(32, 32, 3), token_dim=16, t2t_stages=[(3, 2, 1), (3, 2, 1)],
                                               embed_dim=32, dense_stages=(1, 1), growth_rate=16, num_heads=2,
                                               classes=10),
    "vit": lambda: keras_t2t.ViT(input_shape=(32, 32, 3), patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 mlp_ratio=2.0, qkv_bias=True, classes=10),
}


def moved_off_initial_values(model, seed=0):
    """Every weight plus seeded noise: gammas away from 1, betas and biases away from 0."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign((value + 0.1 * rng.standard_normal(value.shape)).astype(value.dtype))
    return model


def keras_layer_norms(model):
    # Keras 3 has no public recursive walk over sublayers; _flatten_layers is what Keras itself walks.
    return sum(isinstance(layer, keras.layers.LayerNormalization) for layer in model._flatten_layers())


def onnx_graph_facts(path):
    """(default-domain opset, op counts, the Casts whose input already has the target type)."""
    import onnx

    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dtypes = {value.name: value.type.tensor_type.elem_type
              for value in (*inferred.input, *inferred.value_info, *inferred.output)}
    dtypes.update({init.name: init.data_type for init in inferred.initializer})
    needless = [node.name for node in inferred.node if node.op_type == "Cast"
                and dtypes.get(node.input[0]) == next(a.i for a in node.attribute if a.name == "to")]
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    return opset, collections.Counter(node.op_type for node in model.graph.node), needless


def onnx_logits(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {session.get_inputs()[0].name: images})[0]


def keras_logits(model, images):
    return keras.ops.convert_to_numpy(keras.Model(model.inputs[0], model.get_layer("predictions").input)(images))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_onnx_holds_one_layer_normalization_per_keras_layer_gelu_and_no_needless_cast(family, tmp_path):
    keras.utils.set_random_seed(0)
    model = moved_off_initial_values(FAMILIES[family]())
    report = export_model(model, tmp_path / "out", formats="onnx", **CHEAP)
    assert report.passed and report.row("onnx")["max_abs_diff"] <= 1e-4, report.table()
    path = str(tmp_path / "out" / "model.onnx")
    opset, ops, needless = onnx_graph_facts(path)
    assert opset >= 17, opset
    assert ops["LayerNormalization"] == keras_layer_norms(model) > 0, ops
    assert ops["Gelu"] > 0 and not {"Erf", "Sqrt", "Reciprocal", "GlobalAveragePool"} & set(ops), ops
    assert needless == []
    # And by hand, outside the exporter's check, on other images.
    images = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(onnx_logits(path, images), keras_logits(model, images), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The trained digits model (fixtures/digits_t2t_vit_mini) as model.onnx and model_dynamic_int8.onnx, verified
    on 120 validation digits."""
    root = tmp_path_factory.mktemp("digits_onnx")
    digits = write_digits_folder(str(root / "digits"))
    report = export_model(os.path.join(FIXTURE, "model.keras"), str(root / "export"),
                          formats="onnx,onnx_dynamic_int8", sample_dir=os.path.join(digits, "val"), num_samples=120,
                          crop_pct=1.0, latency_runs=1, verbose=False)
    return str(root / "export"), report


def test_the_trained_digits_model_onnx_is_fused_and_matches_keras(digits_onnx):
    out, report = digits_onnx
    model = keras.saving.load_model(os.path.join(FIXTURE, "model.keras"))
    assert report.row("onnx")["passed"] and report.row("onnx")["max_abs_diff"] <= 1e-4, report.table()
    opset, ops, needless = onnx_graph_facts(os.path.join(out, "model.onnx"))
    assert opset >= 17 and ops["LayerNormalization"] == keras_layer_norms(model) and needless == [], ops


def test_the_dynamic_int8_onnx_multiplies_its_weights_in_int8_and_keeps_the_top1_of_the_trained_model(digits_onnx):
    import onnx

    out, report = digits_onnx
    row = report.row("onnx_dynamic_int8")
    assert report.passed and row["passed"], report.table()
    assert row["top1_agreement"] >= 0.95  # the int8 tolerance (INT8_TOP1 at the default --int8-agreement)
    ops, float_ops = (collections.Counter(node.op_type for node in onnx.load(os.path.join(out, name)).graph.node)
                      for name in ("model_dynamic_int8.onnx", "model.onnx"))
    # Every MatMul with a weight became MatMulInteger; attention's activation products stay float32.
    assert ops["MatMulInteger"] > 0 and ops["MatMulInteger"] + ops["MatMul"] == float_ops["MatMul"], ops
    assert row["size_mb"] < 0.5 * report.row("onnx")["size_mb"]

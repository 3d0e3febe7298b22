"""Deployment export (keras_t2t.export, tflite/convert.py): every artifact is written, runs in its own
runtime, and is checked against the Keras model.

Costs are kept to the CI budget: the real-size T2T-ViT-7 export runs only in the TensorFlow session,
the JAX-trained model only in the JAX session, the in-memory hand-off to a TensorFlow process only in
the PyTorch session; the bad-input tests use tiny models and stop before any conversion.
"""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import REPO
from PIL import Image

import keras_t2t
from keras_t2t import export
from keras_t2t.export import (
    ARTIFACT_FILES,
    FORMATS,
    ExportError,
    export_model,
    formats,
    samples,
    tflite,
    tflite_operators,
)

BACKEND = keras.backend.backend()
CONVERT = os.path.join(REPO, "tflite", "convert.py")
only_on = {
    backend: pytest.mark.skipif(BACKEND != backend, reason=f"runs once, in the {backend} session (CI budget)")
    for backend in ("tensorflow", "jax", "torch")
}


def tiny_t2t(classes=10, **kwargs):
    """A 32x32 T2T-ViT small enough to export in seconds (both T2T stages, performer)."""
    return keras_t2t.T2TViT(
        input_shape=(32, 32, 3),
        token_dim=16,
        t2t_stages=[(3, 2, 1), (3, 2, 1)],
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        classes=classes,
        name="tiny",
        **kwargs,
    )


def write_photo_crops(folder, count, seed):
    """Square crops of the two photographs bundled with scikit-learn, as PNG files."""
    from sklearn.datasets import load_sample_images

    os.makedirs(folder, exist_ok=True)
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % 2]
        side = int(rng.integers(100, 420))
        top, left = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side])).save(
            os.path.join(folder, f"{i:03d}.png")
        )
    return str(folder)


def logits_model(model):
    return keras.Model(model.inputs[0], model.get_layer("predictions").input)


def litert_logits(path, images):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    return np.concatenate([runner(images=image[None])["logits"] for image in images])


# --------------------------------------------------------------------------
# T2T-ViT-7 at 224, every format (TensorFlow session)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t2t_vit_7_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras_t2t.t2t_vit_7()
    root = tmp_path_factory.mktemp("t2t_vit_7")
    representative = write_photo_crops(root / "representative", 8, seed=1)
    out = str(root / "export")
    report = export_model(
        model, out, representative_dir=representative, num_calibration=8, num_samples=8, latency_runs=2,
        labels="imagenet",  # asked for: a 1000-class model with no names gets class_<i> otherwise
    )
    return model, out, report


@only_on["tensorflow"]
def test_t2t_vit_7_at_224_exports_to_every_format_and_each_artifact_passes_verification(t2t_vit_7_export):
    _, out, report = t2t_vit_7_export
    assert report.passed, report.table()
    assert [row["artifact"] for row in report["artifacts"]] == [
        "saved_model",
        "saved_model:uint8",
        "tflite_float32",
        "tflite_float16",
        "tflite_dynamic_int8",
        "tflite_int8",
        "tflite_float32_pixels",
        "tflite_float16_pixels",
        "tflite_dynamic_int8_pixels",
        "tflite_int8_pixels",
        "onnx",
        "onnx_dynamic_int8",
        "openvino",
        "openvino_int8",
    ]
    for row in report["artifacts"]:
        assert row["passed"] and row["error"] is None, row
        assert row["latency_ms"] > 0 and row["size_mb"] > 0
    assert report.row("tflite_float16")["top1_agreement"] == 1.0
    assert report.row("tflite_int8")["top1_agreement"] >= 0.95
    assert report.row("tflite_dynamic_int8")["top1_agreement"] >= 0.95
    for fmt in FORMATS:
        assert os.path.exists(os.path.join(out, ARTIFACT_FILES[fmt]))
    with open(os.path.join(out, "report.json")) as handle:
        assert json.load(handle) == json.loads(json.dumps(report))
    assert not [name for name in os.listdir(out) if name.startswith(".")], "temporary files left behind"


@only_on["tensorflow"]
def test_float32_tflite_and_saved_model_match_keras_within_1e_4(t2t_vit_7_export):
    import tensorflow as tf

    model, out, report = t2t_vit_7_export
    assert report.row("tflite_float32")["max_abs_diff"] <= 1e-4
    assert report.row("saved_model")["max_abs_diff"] <= 1e-4
    assert report.row("saved_model:uint8")["max_abs_diff"] <= 1e-4
    assert report.row("onnx")["max_abs_diff"] <= 1e-4
    # And by hand, outside the converter's own check.
    images = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(logits_model(model)(images))
    tflite = litert_logits(os.path.join(out, "model_float32.tflite"), images)
    saved = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    outputs = saved(images=tf.constant(images))
    np.testing.assert_allclose(tflite, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), model(images), rtol=0, atol=1e-6)


@only_on["tensorflow"]
def test_tflite_files_contain_no_flex_ops_and_load_in_the_litert_interpreter(t2t_vit_7_export):
    from ai_edge_litert.interpreter import Interpreter

    _, out, _ = t2t_vit_7_export
    for fmt in [f for f in FORMATS if f.startswith("tflite_")]:
        path = os.path.join(out, ARTIFACT_FILES[fmt])
        ops = tflite_operators(path)
        assert "FULLY_CONNECTED" in ops and "BATCH_MATMUL" in ops
        assert not [op for op in ops if op.startswith("CUSTOM") or "Flex" in op], (fmt, ops)
        Interpreter(model_path=path).allocate_tensors()


@only_on["tensorflow"]
def test_the_int8_tflite_computes_its_fully_connected_layers_in_int8_and_takes_float_images(t2t_vit_7_export):
    from ai_edge_litert.interpreter import Interpreter

    _, out, report = t2t_vit_7_export
    runner = Interpreter(model_path=os.path.join(out, "model_int8.tflite")).get_signature_runner()
    assert runner.get_input_details()["images"]["dtype"] == np.float32
    assert runner.get_output_details()["logits"]["dtype"] == np.float32
    # keras_t2t.export.quantize: the matmuls in int8, the performer's two normalising divisions in float32.
    row = report.row("tflite_int8")
    assert row["int8_ops"] == {"FULLY_CONNECTED": row["ops"]["FULLY_CONNECTED"]}
    assert row["float_ops"].get("DIV") == 2


@only_on["tensorflow"]
def test_labels_travel_with_the_models(t2t_vit_7_export):
    _, out, report = t2t_vit_7_export
    with open(os.path.join(out, "labels.txt"), encoding="utf-8") as handle:
        labels = handle.read().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"
    assert report["labels"] == {"file": "labels.txt", "source": "imagenet (--labels imagenet)"}


# --------------------------------------------------------------------------
# Other backends
# --------------------------------------------------------------------------
@only_on["jax"]
def test_a_model_trained_on_jax_and_saved_as_keras_exports_and_verifies(tmp_path):
    from keras_t2t.data.digits import load_digits_images

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, _) = load_digits_images(image_size=32)
    model = tiny_t2t(classifier_activation=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(keras_t2t.preprocess_input(x_train[:128]), y_train[:128], batch_size=32, epochs=1, verbose=0)  # 4 steps
    path = str(tmp_path / "digits.keras")
    model.save(path)
    for name, images in (("calibration", x_train[256:288]), ("samples", x_val[:16])):
        os.makedirs(tmp_path / name)
        for i, image in enumerate(images.astype("uint8")):
            Image.fromarray(image).save(tmp_path / name / f"{i:03d}.png")

    out = str(tmp_path / "export")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # KERAS_BACKEND stays "jax": the command sets its own
    result = subprocess.run(
        [
            sys.executable, CONVERT, "--model", path, "--output-dir", out,
            "--representative-dir", str(tmp_path / "calibration"), "--num-calibration", "16",
            "--sample-dir", str(tmp_path / "samples"), "--latency-runs", "2",
        ],
        env=env, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "| tflite_int8" in result.stdout
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    assert report["passed"] and {row["artifact"] for row in report["artifacts"]} >= set(FORMATS)
    # The TFLite model gives the JAX model's logits, read in this (JAX) process.
    images = keras_t2t.preprocess_input(x_val[:4])
    expected = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(litert_logits(os.path.join(out, "model_float32.tflite"), images), expected, atol=1e-4)


@only_on["torch"]
def test_export_from_a_torch_process_runs_in_a_tensorflow_subprocess(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_t2t()
    labels = [f"digit {i}" for i in range(10)]
    report = export_model(
        model, tmp_path / "out", formats=["tflite_float32"], num_samples=4, latency_runs=2, labels=labels,
        verbose=False,
    )
    assert report.passed and report.row("tflite_float32")["max_abs_diff"] <= 1e-4
    assert sorted(os.listdir(tmp_path / "out")) == ["labels.txt", "model_float32.tflite", "report.json"]
    with open(tmp_path / "out" / "labels.txt", encoding="utf-8") as handle:
        assert handle.read().splitlines() == labels
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(logits_model(model)(images))
    tflite = litert_logits(str(tmp_path / "out" / "model_float32.tflite"), images)
    np.testing.assert_allclose(tflite, expected, atol=1e-4)


# --------------------------------------------------------------------------
# Output names and order (every backend: on JAX and PyTorch the export runs in a TensorFlow child)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def named_outputs_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = tiny_t2t()  # a softmax head
    out = str(tmp_path_factory.mktemp("names") / "out")
    report = export_model(model, out, formats="saved_model,tflite_float32,tflite_float32_pixels", num_samples=2,
                          latency_runs=1, verbose=False)
    assert report.passed, report.table()
    return model, out


def test_the_tflite_models_give_probabilities_first_and_name_both_outputs(named_outputs_export):
    from ai_edge_litert.interpreter import Interpreter

    from keras_t2t.export.metadata import read_metadata

    model, out = named_outputs_export
    pixels = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)
    images = keras_t2t.preprocess_input(pixels.astype("float32"))
    expected = keras.ops.convert_to_numpy(model(images))
    for name, given in (("model_float32.tflite", images), ("model_float32_pixels.tflite", pixels)):
        interpreter = Interpreter(model_path=os.path.join(out, name))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], given)
        interpreter.invoke()
        first, second = interpreter.get_output_details()
        assert (first["name"], second["name"]) == ("probabilities", "logits"), name
        probabilities, logits = (interpreter.get_tensor(detail["index"]) for detail in (first, second))
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5) and probabilities.min() >= 0.0
        np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(keras.ops.softmax(logits)), atol=1e-6)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        # The metadata describes them in the same order: MediaPipe's first head is the probabilities.
        assert [output["name"] for output in read_metadata(os.path.join(out, name))["outputs"]] == [
            "probabilities", "logits"]


def test_the_saved_model_signatures_output_probabilities_and_logits(named_outputs_export):
    import tensorflow as tf

    model, out = named_outputs_export
    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    images = keras_t2t.preprocess_input(pixels.astype("float32"))
    expected = keras.ops.convert_to_numpy(model(images))
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    for signature, given in (("serving_default", images), ("serving_uint8", pixels)):
        outputs = loaded.signatures[signature](images=tf.constant(given))
        assert set(outputs) == {"probabilities", "logits"}, signature
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=-1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------
# Failures: clear errors, nothing left behind (cheap, every backend)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_keras_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.keras")
    tiny_t2t().save(path)
    return path


def test_a_corrupted_model_file_is_a_clear_error_and_writes_nothing(tmp_path, tiny_keras_file):
    broken = tmp_path / "broken.keras"
    with open(tiny_keras_file, "rb") as handle:
        broken.write_bytes(handle.read()[:5000])  # a truncated zip
    not_readable = r"Cannot load the model: '.*broken\.keras' is not a readable '\.keras' model file"
    with pytest.raises(ExportError, match=not_readable) as caught:
        export_model(str(broken), tmp_path / "out", formats="tflite_float32")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_non_keras_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_model(str(tmp_path / "nope.keras"), tmp_path / "out")
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    with pytest.raises(ExportError, match=r"--variant NAME --weights PATH"):
        export_model(str(weights), tmp_path / "out", formats="onnx")
    assert not (tmp_path / "out").exists()


def test_an_unknown_format_name_is_a_clear_error_naming_the_accepted_ones(tmp_path, tiny_keras_file):
    with pytest.raises(ExportError, match=r"'coreml'.*accepted: saved_model, tflite_float32"):
        export_model(tiny_keras_file, tmp_path / "out", formats="tflite_float32,coreml")
    assert not (tmp_path / "out").exists()


def test_a_representative_folder_with_no_images_is_a_clear_error(tmp_path, tiny_keras_file):
    empty = tmp_path / "calibration" / "cats"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no pictures here")
    with pytest.raises(ExportError, match=r"representative folder .*calibration.* holds no image files"):
        export_model(tiny_keras_file, tmp_path / "out", representative_dir=str(tmp_path / "calibration"))
    with pytest.raises(ExportError, match=r"tflite_int8 is calibrated on a representative set"):
        export_model(tiny_keras_file, tmp_path / "out", formats="tflite_int8")
    assert not (tmp_path / "out").exists()


def test_the_command_exits_2_with_the_message_on_bad_input(tmp_path, tiny_keras_file, capsys):
    code = export.main(["--model", tiny_keras_file, "--output-dir", str(tmp_path / "out"), "--formats", "tflite_int4"])
    assert code == 2
    assert "error: Unknown export format 'tflite_int4'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_artifacts_are_not_replaced_without_overwrite(tmp_path, tiny_keras_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match=r"already holds model\.onnx.*--overwrite"):
        export_model(tiny_keras_file, tmp_path / "out", formats="onnx")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"an earlier export"


def test_a_model_without_a_head_is_refused(tmp_path):
    with pytest.raises(ExportError, match="include_top=False"):
        export_model(tiny_t2t(include_top=False), tmp_path / "out", formats="onnx")


@only_on["torch"]
def test_a_variant_with_weights_gets_the_class_count_of_the_weights_head(tmp_path):
    keras.utils.set_random_seed(0)
    trained = keras_t2t.t2t_vit_7(classes=5)
    trained.save_weights(str(tmp_path / "five.weights.h5"))
    model = export.load_model_for_export(variant="t2t_vit_7", weights=str(tmp_path / "five.weights.h5"))
    assert model.classes == 5
    for a, b in zip(model.weights, trained.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_tfds_representative_set_is_read_through_tfds(monkeypatch):
    import types

    pictures = [{"image": np.full((40, 50, 3), 10 * i, np.uint8), "label": i} for i in range(5)]
    calls = {}

    class FakeDataset:
        def shuffle(self, *args, **kwargs):
            return self

        def take(self, count):
            calls["take"] = count
            return self

    def load(name, split, **kwargs):
        calls.update(name=name, split=split, download=kwargs.get("download"))
        return FakeDataset()

    fake = types.SimpleNamespace(load=load, as_numpy=lambda dataset: iter(pictures[: calls["take"]]))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    images = samples.tfds_images("imagenette/320px-v2:validation[:10%]", 3, (32, 32), 0.9)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.float32
    assert calls == {"name": "imagenette/320px-v2", "split": "validation[:10%]", "download": False, "take": 3}


# --------------------------------------------------------------------------
# Atomic writes and tolerances (TensorFlow session: these convert)
# --------------------------------------------------------------------------
@only_on["tensorflow"]
def test_an_interrupted_conversion_leaves_no_file_under_a_final_name(tmp_path, tiny_keras_file, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tflite, "convert_tflite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_keras_file, tmp_path / "out", formats="saved_model,tflite_float32", num_samples=2)
    assert not (tmp_path / "out").exists()


@only_on["tensorflow"]
def test_an_artifact_outside_its_tolerance_is_not_kept_and_the_command_exits_1(tmp_path, tiny_keras_file, monkeypatch):
    impossible = formats.Tolerance("max_abs_diff", -1.0)  # no artifact can be this close
    spec = formats.FORMAT_BY_NAME["tflite_float32"]
    monkeypatch.setitem(formats.FORMAT_BY_NAME, "tflite_float32", dataclasses.replace(spec, tolerance=impossible))
    code = export.main(
        ["--model", tiny_keras_file, "--output-dir", str(tmp_path / "out"), "--formats", "tflite_float32",
         "--num-samples", "2", "--latency-runs", "1", "--quiet"]
    )
    assert code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["labels.txt", "report.json"]
    with open(tmp_path / "out" / "report.json") as handle:
        row = json.load(handle)["artifacts"][0]
    assert row["artifact"] == "tflite_float32" and not row["passed"] and row["max_abs_diff"] < 1e-4


@only_on["tensorflow"]
def test_a_bfloat16_model_exports_as_float32(tmp_path):
    # Issue 23, item 16: a cast_model(..., "bfloat16") model failed deep in conversion (tf.Erfc in bf16).
    keras.utils.set_random_seed(0)
    bf16 = keras_t2t.precision.cast_model(tiny_t2t(), "bfloat16")
    assert keras_t2t.precision.compute_dtype(bf16) == "bfloat16"
    report = export_model(bf16, tmp_path / "out", formats=["tflite_float32"], num_samples=4, latency_runs=1,
                          labels=[f"digit {i}" for i in range(10)], verbose=False)
    assert report.passed, report.table()
    images = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype("float32")
    # The file computes in float32 from the bfloat16 weights; the bfloat16 model rounds its activations too.
    # Worst case: about 20 roundings of 2**-8 (bfloat16's 8 significant bits) through the two blocks.
    expected = keras.ops.convert_to_numpy(logits_model(bf16)(images)).astype("float32")
    got = litert_logits(os.path.join(tmp_path / "out", "model_float32.tflite"), images)
    assert np.abs(got - expected).max() <= 20 * 2.0**-8 * np.abs(expected).max() + 1e-3

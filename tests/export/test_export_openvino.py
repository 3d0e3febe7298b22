"""The OpenVINO formats (issue 24, item 2): ``openvino`` (the float32 IR, any batch) and ``openvino_int8`` (NNCF's
post-training quantization at batch 1) are written, run in OpenVINO and checked against the Keras model.

The IRs are run here with OpenVINO itself, compiled in float32 (``INFERENCE_PRECISION_HINT="f32"``: the
default is bfloat16 on a CPU that has it), against the logits of the Keras model in this session's backend:
float32 within 1e-4 (the export's own tolerance, ``formats.FLOAT_LOGIT_ATOL``), int8 at the export's default
top-1 agreement on every validation digit of the trained digits model. Costs: the float32 IR of a tiny model on
every backend (on JAX and PyTorch it checks the hand-off to the TensorFlow child); the trained model's int8 IR
and the failures in the TensorFlow session only (what they check is written by the TensorFlow process on every
backend).
"""

import dataclasses
import json
import os
import sys

import keras
import numpy as np
import pytest
from helpers import REPO
from PIL import Image
from test_export import logits_model, tiny_t2t

import keras_t2t
from keras_t2t import export
from keras_t2t.data.digits import load_digits_images
from keras_t2t.export import ExportError, export_model, formats
from keras_t2t.export.openvino import FLOAT32_CONFIG, INT8_BATCH, IR_FILE, openvino_runner
from keras_t2t.export.pipeline import DEFAULT_INT8_AGREEMENT

ov = pytest.importorskip("openvino", reason="the OpenVINO formats need openvino: pip install 'keras-t2t[export]'")

FIXTURE = os.path.join(REPO, "tests", "export", "fixtures", "digits_t2t_vit_mini")
CHEAP = ["--num-samples", "2", "--latency-runs", "1", "--quiet"]
ONE_BACKEND = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="CI budget: what it checks is written by the TensorFlow child on every backend (the hand-off is "
    "checked by the float32 test on every backend)")


def compiled_ir(folder):
    return ov.Core().compile_model(os.path.join(folder, IR_FILE), "CPU", FLOAT32_CONFIG)


def ir_logits(compiled, images):
    return np.array(compiled(images)[compiled.output("logits")])


def read_report(out):
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_both_formats_are_named_by_the_format_list_and_the_int8_one_needs_calibration(tmp_path):
    assert formats.parse_formats("openvino_int8, openvino") == ["openvino", "openvino_int8"]
    assert [formats.ARTIFACT_FILES[name] for name in ("openvino", "openvino_int8")] == ["openvino", "openvino_int8"]
    assert formats.FORMAT_BY_NAME["openvino"].tolerance is formats.FLOAT_EXACT
    assert formats.FORMAT_BY_NAME["openvino_int8"].tolerance is formats.INT8_TOP1
    with pytest.raises(ExportError, match=r"^openvino_int8 is calibrated on a representative set: give "
                                          r"representative_dir \(--representative-dir DIR\)"):
        export_model(tiny_t2t(), tmp_path / "out", formats="openvino,openvino_int8")
    assert not (tmp_path / "out").exists()


def test_the_float32_ir_gives_the_keras_logits_within_1e_4_at_any_batch(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_t2t()
    out = str(tmp_path / "out")
    report = export_model(model, out, formats="openvino", num_samples=4, latency_runs=2, verbose=False)
    assert report.passed, report.table()
    row = report.row("openvino")
    assert row["max_abs_diff"] <= formats.FLOAT_LOGIT_ATOL and row["latency_ms"] > 0 and row["size_mb"] > 0
    assert row["input_shape"] == [None, 32, 32, 3] and row["inference_precision_hint"] == "f32"
    assert row["fake_quantize_ops"] == 0
    assert sorted(os.listdir(out)) == ["labels.txt", "openvino", "report.json"]
    assert sorted(os.listdir(os.path.join(out, "openvino"))) == ["model.bin", "model.xml"]
    assert read_report(out)["artifacts"] == json.loads(json.dumps(report["artifacts"]))
    # By hand, outside the export's own check: OpenVINO against this backend's Keras model.
    compiled = compiled_ir(os.path.join(out, "openvino"))
    assert [sorted(output.get_names()) for output in compiled.outputs] == [["probabilities"], ["logits"]]
    for batch in (1, 3):
        images = np.random.default_rng(batch).standard_normal((batch, 32, 32, 3)).astype("float32")
        expected = keras.ops.convert_to_numpy(logits_model(model)(images))
        np.testing.assert_allclose(ir_logits(compiled, images), expected, rtol=0, atol=formats.FLOAT_LOGIT_ATOL)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """The trained digits model exported by the command to both formats, calibrated on 64 training digits."""
    root = tmp_path_factory.mktemp("digits")
    (x_train, _), (x_val, _) = load_digits_images(image_size=32)
    for name, images in (("calibration", x_train[:64]), ("samples", x_val[:32])):
        os.makedirs(root / name)
        for i, image in enumerate(images.astype("uint8")):
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    out = str(root / "export")
    code = export.main(["--model", os.path.join(FIXTURE, "model.keras"), "--output-dir", out,
                        "--formats", "openvino,openvino_int8", "--representative-dir", str(root / "calibration"),
                        "--num-calibration", "64", "--sample-dir", str(root / "samples"), "--num-samples", "32",
                        "--latency-runs", "3"])
    return code, out, keras_t2t.preprocess_input(x_val).astype("float32")


@ONE_BACKEND
def test_the_command_writes_both_irs_and_the_report_and_table_carry_them(digits_export):
    code, out, _ = digits_export
    assert code == 0
    report = read_report(out)
    assert report["passed"] and [row["artifact"] for row in report["artifacts"]] == ["openvino", "openvino_int8"]
    for row in report["artifacts"]:
        assert row["passed"] and row["error"] is None and row["latency_ms"] > 0 and row["size_mb"] > 0, row
    assert report["representative"]["count"] == 64
    groups = {group.split(" ")[0]: group for group in report["tolerances"]}
    assert groups["float"].endswith(", openvino)") and "openvino_int8" in groups["int8"]
    assert sorted(os.listdir(out)) == ["labels.txt", "openvino", "openvino_int8", "report.json"]
    printed = export.ExportReport(report).table()
    assert "| openvino " in printed and "| openvino_int8 " in printed


@ONE_BACKEND
def test_the_int8_ir_is_quantized_at_batch_1_and_agrees_with_keras_on_the_validation_digits(digits_export):
    code, out, images = digits_export
    assert code == 0
    row = next(row for row in read_report(out)["artifacts"] if row["artifact"] == "openvino_int8")
    assert row["input_shape"] == [INT8_BATCH, 32, 32, 3] and row["fake_quantize_ops"] > 0
    assert row["top1_agreement"] >= DEFAULT_INT8_AGREEMENT
    # Every validation digit (359), one at a time, in OpenVINO itself.
    compiled = compiled_ir(os.path.join(out, "openvino_int8"))
    got = np.concatenate([ir_logits(compiled, image[None]) for image in images])
    model = keras.models.load_model(os.path.join(FIXTURE, "model.keras"))
    expected = keras.ops.convert_to_numpy(logits_model(model).predict(images, batch_size=64, verbose=0))
    assert np.mean(got.argmax(axis=1) == expected.argmax(axis=1)) >= DEFAULT_INT8_AGREEMENT
    # The format's runner feeds a fixed-batch IR image by image: a batch of 5 gives the five single runs.
    np.testing.assert_array_equal(openvino_runner(os.path.join(out, "openvino_int8"))(images[:5]), got[:5])


@ONE_BACKEND
@pytest.mark.parametrize("missing, requested", [("openvino", "openvino,openvino_int8"), ("nncf", "openvino_int8")])
def test_a_missing_package_fails_its_formats_in_one_line_naming_the_install_and_keeps_no_file(
        tmp_path, monkeypatch, missing, requested):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(calibration / f"{i}.png")
    model = str(tmp_path / "tiny.keras")
    tiny_t2t().save(model)
    monkeypatch.setitem(sys.modules, missing, None)  # what `import openvino` meets where it is not installed
    out = str(tmp_path / "out")
    code = export.main(["--model", model, "--output-dir", out, "--formats", requested,
                        "--representative-dir", str(calibration), *CHEAP])
    assert code == 1
    rows = read_report(out)["artifacts"]
    assert [row["artifact"] for row in rows] == requested.split(",")
    for row in rows:
        assert not row["passed"]
        assert row["error"].startswith(f"conversion failed: RuntimeError: The OpenVINO formats need {missing} (")
        assert row["error"].endswith("): pip install 'keras-t2t[export]'") and "\n" not in row["error"]
    assert sorted(os.listdir(out)) == ["labels.txt", "report.json"]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")], "staging left behind"


@ONE_BACKEND
def test_an_ir_outside_its_tolerance_is_not_kept_and_the_command_exits_1(tmp_path, monkeypatch):
    model = str(tmp_path / "tiny.keras")
    tiny_t2t().save(model)
    impossible = formats.Tolerance("max_abs_diff", -1.0)  # no artifact can be this close
    spec = formats.FORMAT_BY_NAME["openvino"]
    monkeypatch.setitem(formats.FORMAT_BY_NAME, "openvino", dataclasses.replace(spec, tolerance=impossible))
    out = str(tmp_path / "out")
    assert export.main(["--model", model, "--output-dir", out, "--formats", "openvino", *CHEAP]) == 1
    assert sorted(os.listdir(out)) == ["labels.txt", "report.json"]
    row = read_report(out)["artifacts"][0]
    assert row["artifact"] == "openvino" and not row["passed"] and row["max_abs_diff"] < formats.FLOAT_LOGIT_ATOL
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")], "staging left behind"

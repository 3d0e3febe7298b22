"""The export's records and hand-offs as data: one record per format, the child's request and result, the
atomic installer. Cheap (no conversion), every backend."""

import json
import os
import stat

import pytest

import keras_t2t
from keras_t2t.export import ARTIFACT_FILES, FORMATS, child, convert_tflite, formats
from keras_t2t.io_utils import atomic_temp_path, install_atomic, write_text_atomic


def test_the_format_table_is_derived_from_one_record_per_format():
    tflite = ["tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_int8"]
    assert FORMATS[:FORMATS.index("onnx") + 2] == (
        "saved_model", *tflite, *(f"{name}_pixels" for name in tflite), "onnx", "onnx_dynamic_int8")
    assert ARTIFACT_FILES == {spec.name: spec.file for spec in formats.FORMAT_SPECS}
    assert ARTIFACT_FILES["tflite_int8_pixels"] == "model_int8_pixels.tflite"
    assert FORMATS[-2:] == ("openvino", "openvino_int8")
    assert [spec.name for spec in formats.FORMAT_SPECS if spec.needs_calibration] == [
        "tflite_int8", "tflite_int8_pixels", "openvino_int8"]
    assert [spec.name for spec in formats.FORMAT_SPECS if spec.is_directory] == [
        "saved_model", "openvino", "openvino_int8"]


def test_report_json_describes_each_tolerance_once_naming_its_formats():
    assert formats.tolerance_descriptions(0.95) == {
        "float (saved_model, tflite_float32, tflite_float32_pixels, onnx, openvino)": "max |logit diff| <= 0.0001",
        "float16 (tflite_float16, tflite_float16_pixels)": "top-1 agreement 100%",
        "int8 (tflite_dynamic_int8, tflite_int8, tflite_dynamic_int8_pixels, tflite_int8_pixels, "
        "onnx_dynamic_int8, openvino_int8)":
            "top-1 agreement >= 95%",
    }
    assert formats.FORMAT_BY_NAME["tflite_float16"].tolerance.text(0.95) == "top-1 = 100%"
    assert formats.FORMAT_BY_NAME["tflite_int8"].tolerance.text(0.9) == "top-1 >= 90%"


def test_the_tensorflow_child_returns_bad_input_as_data(tmp_path):
    path = str(tmp_path / "tiny.keras")
    keras_t2t.T2TViT(input_shape=(32, 32, 3), token_dim=8, embed_dim=16, depth=1, num_heads=2, classes=3).save(path)
    request = {"model": path, "output_dir": str(tmp_path / "out"), "options": {"formats": "coreml"}, "verbose": False}
    result = child.run_request(request)
    assert set(result) == {"error"} and "'coreml'" in result["error"]
    assert json.loads(json.dumps(result)) == result
    assert not (tmp_path / "out").exists()


def test_installing_a_folder_replaces_the_old_one_whole_with_the_umask_permissions(tmp_path):
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "old.pb").write_bytes(b"old")
    temp = atomic_temp_path(str(tmp_path), "saved_model", is_directory=True)
    with open(os.path.join(temp, "new.pb"), "wb") as handle:
        handle.write(b"new")
    install_atomic(temp, str(tmp_path / "saved_model"))
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]
    assert os.listdir(tmp_path / "saved_model") == ["new.pb"]
    umask = os.umask(0o022)
    try:
        write_text_atomic(str(tmp_path / "labels.txt"), "a\nb\n")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "labels.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "saved_model").st_mode) == 0o777 & ~umask


def test_an_unknown_tflite_quantization_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"'int4'; accepted: float32, float16, dynamic_int8, int8"):
        convert_tflite(str(tmp_path), "int4")

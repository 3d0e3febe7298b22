"""A ``.tflite`` a phone app can use as it is (issue 15 items 16 and 17).

Item 16: the int8 model of a trained model is good enough to ship. The trained
model is ``fixtures/digits_t2t_vit_mini`` (the digits default of
``training/train.py``, see its README). Its earlier full-integer int8 model
agreed with Keras on 93% of the validation digits; the recipe of
``keras_t2t.export.quantize`` (int8 fully connected layers, float32
elsewhere) must reach 99%.

Item 17: metadata, labels inside, uint8 pixel input. MediaPipe's
``ImageClassifier`` (the ``mediapipe`` package) runs the exported files and
must name the same class as Keras, with the class names of the training
folder. The metadata is read back with MediaPipe's own generated reader of
the TFLite metadata schema, not with ours.

Export runs on TensorFlow: these run once, in the TensorFlow session.
"""

import dataclasses
import json
import os
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image, ImageDraw

from keras_t2t.data.digits import write_digits_folder
from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD, list_image_folder, load_image, preprocess_input
from keras_t2t.export import export_model
from keras_t2t.export.metadata import read_metadata
from keras_t2t.export.quantize import INT8_OPS

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "digits_t2t_vit_mini")
on_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export runs on TensorFlow; once, in its session (CI budget)"
)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """``(folder, report, digits folder)``: the trained model's float32 and int8 models, float and uint8-pixel input."""
    root = tmp_path_factory.mktemp("mobile")
    digits = write_digits_folder(str(root / "digits"))
    report = export_model(
        os.path.join(FIXTURE, "model.keras"), str(root / "export"),
        formats="tflite_float32,tflite_int8,tflite_float32_pixels,tflite_int8_pixels",
        representative_dir=os.path.join(digits, "train"), num_calibration=100,
        sample_dir=os.path.join(digits, "val"), num_samples=120, crop_pct=1.0, int8_agreement=0.99, latency_runs=1,
        verbose=False,
    )
    return str(root / "export"), report, digits


# --------------------------------------------------------------------------
# Item 16: int8
# --------------------------------------------------------------------------
@on_tensorflow
def test_the_int8_models_of_the_trained_digits_model_pass_a_99_percent_agreement_check(digits_export):
    _, report, _ = digits_export
    assert report.passed, report.table()
    for artifact in ("tflite_int8", "tflite_int8_pixels"):
        row = report.row(artifact)
        assert row["passed"] and row["top1_agreement"] >= 0.99, row


@on_tensorflow
def test_the_int8_model_agrees_with_keras_on_99_percent_of_all_validation_digits(digits_export):
    from ai_edge_litert.interpreter import Interpreter

    out, _, digits = digits_export
    paths, _, _ = list_image_folder(os.path.join(digits, "val"))
    images = np.stack([load_image(path, image_size=32, crop_pct=1.0) for path in paths])
    model = keras.saving.load_model(os.path.join(FIXTURE, "model.keras"), compile=False)
    keras_top1 = np.argmax(model.predict(images, batch_size=64, verbose=0), axis=-1)
    runner = Interpreter(model_path=os.path.join(out, "model_int8.tflite")).get_signature_runner()
    scale, zero = runner.get_input_details()["images"]["quantization"]
    if scale:  # an integer input (the full-integer recipe this one replaced): quantize the images for it
        images = np.clip(np.round(images / scale) + zero, -128, 127).astype(np.int8)
    int8_top1 = np.array([np.argmax(runner(images=image[None])["logits"]) for image in images])
    assert len(images) == 359
    assert np.mean(int8_top1 == keras_top1) >= 0.99


@on_tensorflow
def test_only_the_fully_connected_layers_compute_in_int8_and_the_model_takes_and_returns_float(digits_export):
    from ai_edge_litert.interpreter import Interpreter

    out, report, _ = digits_export
    row = report.row("tflite_int8")
    assert set(row["int8_ops"]) == set(INT8_OPS) == {"FULLY_CONNECTED"}
    assert row["int8_ops"]["FULLY_CONNECTED"] == row["ops"]["FULLY_CONNECTED"]
    # LayerNorm (mean, variance, rsqrt), softmax, the performer's exp and normalising division stay float32.
    for op in ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "EXP", "DIV", "GELU", "BATCH_MATMUL"):
        assert row["float_ops"].get(op, 0) == row["ops"][op], op
    assert "FULLY_CONNECTED" in row["recipe"]
    runner = Interpreter(model_path=os.path.join(out, "model_int8.tflite")).get_signature_runner()
    assert runner.get_input_details()["images"]["dtype"] == np.float32
    assert {detail["dtype"] for detail in runner.get_output_details().values()} == {np.float32}
    pixels = Interpreter(model_path=os.path.join(out, "model_int8_pixels.tflite")).get_signature_runner()
    assert pixels.get_input_details()["images"]["dtype"] == np.uint8


# --------------------------------------------------------------------------
# Item 17: metadata and uint8 pixels, as MediaPipe reads them
# --------------------------------------------------------------------------
def classify_with_mediapipe(model_path, pixels):
    """The categories of MediaPipe's ImageClassifier for each uint8 picture, per head in MediaPipe's order:
    ``[{head: [(name, score)]}]``."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model_path), max_results=3)
    results = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for picture in pixels:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(picture))
            heads = classifier.classify(image).classifications
            results.append({head.head_name: [(c.category_name, c.score) for c in head.categories] for head in heads})
    return results


def read_pixels(paths):
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def schema_metadata(path):
    """The model's metadata through MediaPipe's generated reader of metadata_schema.fbs."""
    from ai_edge_litert import schema_py_generated as tflite_schema
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    with open(path, "rb") as handle:
        content = handle.read()
    model = tflite_schema.Model.GetRootAsModel(content, 0)
    entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    data = model.Buffers(entries[b"TFLITE_METADATA"]).DataAsNumpy().tobytes()
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)
    return schema, schema.ModelMetadata.GetRootAsModelMetadata(data, 0), content


@on_tensorflow
def test_mediapipe_classifies_digits_with_the_pixel_models_as_keras_does_naming_the_training_classes(
    digits_export,
):
    out, report, digits = digits_export
    paths, _, class_names = list_image_folder(os.path.join(digits, "val"))
    pixels = read_pixels(paths)
    model = keras.saving.load_model(os.path.join(FIXTURE, "model.keras"), compile=False)
    logits = model.predict(preprocess_input(pixels), batch_size=64, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    expected = [class_names[i] for i in np.argmax(logits, axis=-1)]
    some = slice(None, None, 40)
    found = classify_with_mediapipe(os.path.join(out, "model_float32_pixels.tflite"), pixels[some])
    for result, name, scores in zip(found, expected[some], probabilities[some]):
        assert list(result) == ["probabilities", "logits"]  # classifications[0], what an app reads, is the first
        assert result["probabilities"][0] == (name, pytest.approx(float(np.max(scores)), abs=1e-4))
    found = classify_with_mediapipe(os.path.join(out, "model_int8_pixels.tflite"), pixels)
    assert len(found) == 359
    assert np.mean([result["probabilities"][0][0] == name for result, name in zip(found, expected)]) >= 0.99
    with open(os.path.join(FIXTURE, "summary.json")) as handle:
        assert json.load(handle)["class_names"] == class_names
    assert report["labels"]["source"] == f"training run: {os.path.join(FIXTURE, 'summary.json')}"


@on_tensorflow
def test_the_metadata_states_image_size_normalisation_and_labels_as_the_schema_defines_them(digits_export):
    out, _, _ = digits_export
    with open(os.path.join(out, "labels.txt"), "rb") as handle:
        labels = handle.read()
    for name, normalised_inside in (("model_float32.tflite", False), ("model_float32_pixels.tflite", True)):
        schema, metadata, content = schema_metadata(os.path.join(out, name))
        assert metadata.Name() == b"t2t_vit_mini" and metadata.MinParserVersion() == b"1.0.0"
        subgraph = metadata.SubgraphMetadata(0)
        image = subgraph.InputTensorMetadata(0)
        content_properties = image.Content()
        assert content_properties.ContentPropertiesType() == schema.ContentProperties.ImageProperties
        properties = schema.ImageProperties()
        properties.Init(content_properties.ContentProperties().Bytes, content_properties.ContentProperties().Pos)
        assert properties.ColorSpace() == schema.ColorSpaceType.RGB
        assert (properties.DefaultSize().Height(), properties.DefaultSize().Width()) == (32, 32)
        if normalised_inside:
            assert image.ProcessUnitsLength() == 0
        else:
            unit = image.ProcessUnits(0)
            assert unit.OptionsType() == schema.ProcessUnitOptions.NormalizationOptions
            options = schema.NormalizationOptions()
            options.Init(unit.Options().Bytes, unit.Options().Pos)
            np.testing.assert_allclose(options.MeanAsNumpy(), 255 * np.array(IMAGENET_MEAN), rtol=1e-6)
            np.testing.assert_allclose(options.StdAsNumpy(), 255 * np.array(IMAGENET_STD), rtol=1e-6)
        outputs = [subgraph.OutputTensorMetadata(i) for i in range(subgraph.OutputTensorMetadataLength())]
        assert [output.Name() for output in outputs] == [b"probabilities", b"logits"]  # the model's output order
        for output in outputs:
            assert output.AssociatedFiles(0).Name() == b"labels.txt"
            assert output.AssociatedFiles(0).Type() == schema.AssociatedFileType.TENSOR_AXIS_LABELS
        with zipfile.ZipFile(os.path.join(out, name)) as archive:
            assert archive.read("labels.txt") == labels
        ours = read_metadata(content)
        assert ours["inputs"][0]["image_size"] == [32, 32] and ours["files"] == {"labels.txt": labels}
    assert labels.decode().splitlines() == [str(digit) for digit in range(10)]


def write_shapes_folder(root):
    """``root/{train,val}/{circle,square}/*.png``: 32x32 white shapes on black, 4 + 2 per class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for shape in ("circle", "square"):
            os.makedirs(os.path.join(root, split, shape))
            for i in range(count):
                picture = Image.new("RGB", (32, 32))
                x, y = (int(v) for v in rng.integers(2, 10, size=2))
                box = (x, y, x + 20, y + 20)
                draw = ImageDraw.Draw(picture)
                (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(255, 255, 255))
                picture.save(os.path.join(root, split, shape, f"{i}.png"))
    return root


@on_tensorflow
def test_a_model_trained_by_the_package_exports_with_its_training_folder_class_names(tmp_path):
    from keras_t2t.training import DIGITS, train

    data = write_shapes_folder(str(tmp_path / "shapes"))
    recipe = dataclasses.replace(DIGITS, dataset="folder", data_dir=data, epochs=1, cooldown_epochs=0,
                                 warmup_epochs=0, batch_size=4, lr_base_batch=4)
    run = str(tmp_path / "run")
    train(recipe, run, verbose=0)
    with open(os.path.join(run, "summary.json")) as handle:
        assert json.load(handle)["class_names"] == ["circle", "square"]

    out = str(tmp_path / "export")
    report = export_model(os.path.join(run, "model.keras"), out, formats="tflite_float32_pixels", num_samples=2,
                          latency_runs=1, verbose=False)
    assert report.passed, report.table()
    assert report["labels"]["source"] == f"training run: {os.path.join(run, 'summary.json')}"
    with open(os.path.join(out, "labels.txt")) as handle:
        assert handle.read() == "circle\nsquare\n"
    path = os.path.join(out, "model_float32_pixels.tflite")
    assert read_metadata(path)["files"] == {"labels.txt": b"circle\nsquare\n"}
    paths, _, names = list_image_folder(os.path.join(data, "val"))
    pixels = read_pixels(paths)
    model = keras.saving.load_model(os.path.join(run, "model.keras"), compile=False)
    expected = np.argmax(model.predict(preprocess_input(pixels), verbose=0), axis=-1)
    found = classify_with_mediapipe(path, pixels)
    assert [result["probabilities"][0][0] for result in found] == [names[i] for i in expected]


def test_the_class_names_of_a_training_run_are_the_labels_only_when_they_fit_the_model(tmp_path):
    from keras_t2t.export.labels import training_class_names
    from keras_t2t.export.pipeline import resolve_labels

    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    assert training_class_names(str(model)) is None  # no summary.json beside it
    (tmp_path / "summary.json").write_text(json.dumps({"class_names": ["cat", "dog", "emu"]}))
    found = training_class_names(str(model))
    assert found == (["cat", "dog", "emu"], f"training run: {tmp_path / 'summary.json'}")
    assert resolve_labels(None, 3, found) == found
    names, source = resolve_labels(None, 4, found)
    assert names == ["class_0", "class_1", "class_2", "class_3"]
    assert source.startswith("generic class_<i>") and "records 3 class names, the model has 4 classes" in source
    assert resolve_labels(["a", "b", "c"], 3, found) == (["a", "b", "c"], "list")

"""The export goes through ``keras_t2t.resolve`` and the preprocessing travels with the model (issue 21).

A training run's ``model.keras`` is exported with the run's crop (``recipe.json`` beside it), ``--crop-pct``
overrides it, a preset folder exports as it is, and ``report.json`` says what was used and where it came from.
On JAX and PyTorch each export runs in the TensorFlow child: the handle, ``crop_pct=None`` and, for a model
in memory, its origin survive the hand-off. Small models and one or two formats: seconds each; the hand-off on every backend.
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_t2t
from keras_t2t import export
from keras_t2t.data.images import IMAGENET_MEAN, IMAGENET_STD
from keras_t2t.export import ExportError, export_model
from keras_t2t.export.loading import check_model_argument, resolve_for_export

CHEAP = ["--num-samples", "2", "--latency-runs", "1"]
RUN_RECIPE = {"image_size": 32, "eval_crop_pct": 1.0}
ONE_BACKEND = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="CI budget: what it checks is written by the TensorFlow child on every backend (the hand-off is "
    "checked by the other tests of this file on every backend)")


@pytest.fixture(scope="module")
def run_model(tmp_path_factory):
    """A training run's folder as the trainer leaves it, in small: ``model.keras`` and ``recipe.json``."""
    run = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    keras_t2t.t2t_vit_mini(classes=10).save(str(run / "model.keras"))
    (run / "recipe.json").write_text(json.dumps(RUN_RECIPE))
    return str(run / "model.keras")


@pytest.fixture(scope="module")
def preset_folder(tmp_path_factory):
    keras.utils.set_random_seed(1)
    folder = tmp_path_factory.mktemp("preset") / "mini_preset"
    return keras_t2t.save_preset(keras_t2t.t2t_vit_mini(classes=10), str(folder), preprocessing=((32, 32), 1.0))


def read_report(out):
    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def test_a_training_runs_model_is_exported_with_the_runs_crop_and_the_report_says_so(tmp_path, run_model, capsys):
    out = str(tmp_path / "export")
    assert export.main(["--model", run_model, "--output-dir", out, "--formats", "saved_model", *CHEAP]) == 0
    printed = capsys.readouterr().out
    recipe = os.path.join(os.path.dirname(run_model), "recipe.json")
    assert f"preprocessing: 32x32, crop_pct 1, ImageNet mean/std (from the training run's recipe ({recipe}))" in (
        printed), printed
    report = read_report(out)
    assert report["passed"]
    assert report["preprocessing"] == {
        "image_size": [32, 32], "crop_pct": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "source": f"the training run's recipe ({recipe})",
    }
    assert report["samples"]["crop_pct"] == 1.0
    assert report["samples"]["preprocessing_source"] == f"the training run's recipe ({recipe})"
    assert report["model"]["source"] == run_model


def test_crop_pct_given_overrides_the_runs_and_the_report_says_where_the_rest_came_from(tmp_path, run_model):
    out = str(tmp_path / "export")
    code = export.main(["--model", run_model, "--output-dir", out, "--formats", "saved_model", "--crop-pct", "0.9",
                        "--quiet", *CHEAP])
    assert code == 0
    preprocessing = read_report(out)["preprocessing"]
    assert preprocessing["crop_pct"] == 0.9 and preprocessing["image_size"] == [32, 32]
    assert preprocessing["source"].startswith("--crop-pct 0.9, the rest from the training run's recipe")
    assert read_report(out)["samples"]["crop_pct"] == 0.9


def test_a_preset_folder_exports_and_verifies_with_its_preprocessing(tmp_path, preset_folder):
    out = str(tmp_path / "export")
    report = export_model(preset_folder, out, formats="saved_model", num_samples=2, latency_runs=1, verbose=False)
    assert report.passed, report.table()
    assert [row["artifact"] for row in report["artifacts"]] == ["saved_model", "saved_model:uint8"]
    assert report["model"]["source"] == preset_folder and report["model"]["classes"] == 10
    assert report["preprocessing"]["crop_pct"] == 1.0
    assert report["preprocessing"]["source"] == f"the preset {preset_folder}"
    assert read_report(out) == json.loads(json.dumps(report))


@ONE_BACKEND
def test_a_presets_own_mean_and_std_reach_the_pixel_inputs_and_the_tflite_metadata(tmp_path):
    """Normalisation (0.5, 0.5): the uint8 signature and the _pixels model normalise with it (or fail their
    check against Keras fed the same pixels normalised so), and the float model's metadata states 255 x it."""
    keras.utils.set_random_seed(2)
    folder = keras_t2t.save_preset(keras_t2t.t2t_vit_mini(classes=10), str(tmp_path / "half"),
                                   preprocessing=((32, 32), 0.875, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    report = export_model(folder, str(tmp_path / "export"), formats="saved_model,tflite_float32,tflite_float32_pixels",
                          num_samples=4, latency_runs=1, verbose=False)
    assert report.passed, report.table()
    assert report["preprocessing"]["mean"] == [0.5] * 3 and report["preprocessing"]["crop_pct"] == 0.875
    for row in ("saved_model:uint8", "tflite_float32_pixels"):
        assert report.row(row)["max_abs_diff"] <= 1e-4, report.row(row)
    assert report.row("tflite_float32")["metadata"]["normalization"] == {"mean": [127.5] * 3, "std": [127.5] * 3}
    assert report.row("tflite_float32_pixels")["metadata"]["normalization"] == "inside the model (uint8 pixels)"


def test_a_model_in_memory_gets_the_default_preprocessing_and_keeps_its_name_through_another_backend(tmp_path):
    keras.utils.set_random_seed(3)
    report = export_model(keras_t2t.t2t_vit_mini(classes=10), str(tmp_path / "export"), formats="saved_model",
                          num_samples=2, latency_runs=1, verbose=False)
    assert report.passed
    assert report["model"]["source"] == "in-memory keras.Model"  # not the temporary file the TF child read
    assert report["preprocessing"]["crop_pct"] == 0.9 and report["preprocessing"]["image_size"] == [32, 32]
    assert report["preprocessing"]["source"].startswith("the defaults for an in-memory keras.Model")


# --------------------------------------------------------------------------
# What the model argument accepts: checked before anything is loaded or written
# --------------------------------------------------------------------------
def test_model_handles_are_checked_with_one_line_naming_what_is_accepted(tmp_path):
    with pytest.raises(ExportError, match=r"'t2t_vit_7' is a model name, which needs weights: give --variant "
                                          r"t2t_vit_7 --weights TAG\|FILE .*t2t_vit_7_imagenet"):
        check_model_argument("t2t_vit_7", None, None)
    with pytest.raises(ExportError, match=r"Unknown model 't2t_vit_7_imagenett'.*did you mean 't2t_vit_7_imagenet'"):
        check_model_argument("t2t_vit_7_imagenett", None, None)
    with pytest.raises(ExportError, match=r"folder without a preset's config\.json"):
        check_model_argument(str(tmp_path), None, None)
    with pytest.raises(ExportError, match=r"Model file .*missing\.pth\.tar' does not exist"):
        check_model_argument(str(tmp_path / "missing.pth.tar"), None, None)
    with pytest.raises(ExportError, match=r"Give weights with a variant, not with a model"):
        check_model_argument(str(tmp_path / "m.keras"), None, "imagenet")
    with pytest.raises(ExportError, match=r"weights='imagenett' is neither a weights tag of t2t_vit_7"):
        check_model_argument(None, "t2t_vit_7", "imagenett")
    check_model_argument("t2t_vit_7_imagenet", None, None)  # a preset name: nothing to check before loading
    check_model_argument(None, "t2t_vit_7", "imagenet")  # a tag: no file needed


def test_a_corrupt_model_keras_of_a_run_is_one_line_naming_the_file(tmp_path, run_model):
    broken = tmp_path / "model.keras"
    with open(run_model, "rb") as handle:
        broken.write_bytes(handle.read()[:4000])
    with pytest.raises(ExportError) as caught:
        resolve_for_export(str(broken))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Cannot load the model: ") and str(broken) in message


@ONE_BACKEND
def test_the_readme_litert_example_feeds_the_model_as_report_json_says(tmp_path, run_model):
    """tflite/README.md's LiteRT example: ``load_image`` with report.json's preprocessing (the run's crop 1.0,
    not load_image's default 0.9), then the float32 model gives the Keras model's probabilities."""
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from keras_t2t.data.images import load_image

    out = str(tmp_path / "export")
    assert export.main(["--model", run_model, "--output-dir", out, "--formats", "tflite_float32", "--quiet",
                        *CHEAP]) == 0
    photo = str(tmp_path / "photo.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photo)

    with open(os.path.join(out, "report.json"), encoding="utf-8") as handle:
        pre = json.load(handle)["preprocessing"]
    runner = Interpreter(model_path=os.path.join(out, "model_float32.tflite")).get_signature_runner()
    labels = open(os.path.join(out, "labels.txt"), encoding="utf-8").read().splitlines()
    image = load_image(photo, image_size=pre["image_size"], crop_pct=pre["crop_pct"], mean=pre["mean"],
                       std=pre["std"])
    scores = runner(images=image[None])["probabilities"][0]

    assert pre["crop_pct"] == 1.0 and len(labels) == 10
    assert not np.array_equal(image, load_image(photo, image_size=32))  # the default crop 0.9 differs
    expected = keras.ops.convert_to_numpy(keras.saving.load_model(run_model, compile=False)(image[None]))[0]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@ONE_BACKEND
def test_a_preset_folder_brings_the_class_names_its_metadata_records(tmp_path):
    """The trainer's preset/ records class_names in metadata.json (as summary.json beside model.keras)."""
    keras.utils.set_random_seed(4)
    names = [f"digit {i}" for i in range(10)]
    folder = keras_t2t.save_preset(keras_t2t.t2t_vit_mini(classes=10), str(tmp_path / "preset"),
                                   preprocessing=((32, 32), 1.0), metadata={"class_names": names})
    report = export_model(folder, str(tmp_path / "export"), formats="saved_model", num_samples=2, latency_runs=1,
                          verbose=False)
    assert report.passed
    assert report["labels"]["source"] == f"preset: {os.path.join(folder, 'metadata.json')}"
    with open(tmp_path / "export" / "labels.txt", encoding="utf-8") as handle:
        assert handle.read().splitlines() == names

"""A TensorFlow Datasets name, end to end and offline (issue 22, item 1).

The dataset is a user's own TFDS builder, ``sklearn_digits`` (``tests/sklearn_digits``,
laid out as ``tfds new`` lays one out): scikit-learn's digits as 32x32 RGB images,
split as the trainer's built-in digits are, prepared from memory into a temporary
``data_dir``. The training command prepares it itself (``download_and_prepare``,
the call that failed without ``importlib_resources`` in a fresh install) and trains
on it; the export command calibrates ``tflite_int8`` on it with
``--representative-tfds``. On PyTorch (and JAX) the export runs in a TensorFlow child
process that has not imported the builder: it reads the prepared files alone.
"""

import importlib.util
import json
import math
import os
import zipfile

import keras
import pytest
import sklearn_digits.sklearn_digits_dataset_builder  # noqa: F401 - registers "sklearn_digits" with TFDS
import tensorflow_datasets as tfds
from helpers import REPO

from keras_t2t.export import cli as export_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "training", "train.py"))
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)

NAME = "sklearn_digits"
# tests/training/test_train_cli.py's smallest run: 128 training images, 4 steps of 32, 64 validation images.
TINY = ["--train-limit", "128", "--val-limit", "64", "--batch-size", "32", "--lr-base-batch", "32",
        "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]
# The digits model of training/train.py's default recipe, 95.0% top-1 on the digits' validation folder.
TRAINED = os.path.join(REPO, "tests", "export", "fixtures", "digits_t2t_vit_mini")


@pytest.fixture(scope="module")
def tfds_run(tmp_path_factory):
    """``(data_dir, output folder, summary)`` of a tiny training run on ``sklearn_digits``, not prepared before."""
    root = tmp_path_factory.mktemp("tfds")
    data_dir, out = str(root / "tensorflow_datasets"), str(root / "run")
    args = ["--output-dir", out, "--recipe", "digits", "--dataset", NAME, "--data-dir", data_dir] + TINY
    assert train_cli.main(args) == 0
    with open(os.path.join(out, "summary.json")) as handle:
        return data_dir, out, json.load(handle)


def test_the_training_command_prepares_a_tfds_dataset_and_trains_one_epoch_on_it(tfds_run):
    data_dir, out, summary = tfds_run
    assert tfds.builder(NAME, data_dir=data_dir).is_prepared()
    assert (summary["dataset"], summary["num_train"], summary["num_val"]) == (NAME, 1438, 64)
    assert summary["class_names"] == [str(digit) for digit in range(10)]
    assert (summary["epochs"], summary["optimizer_steps"]) == (1, 4)
    assert math.isfinite(summary["val_top1"]) and 0.0 <= summary["val_top1"] <= summary["val_top5"] <= 1.0
    # That it loads and predicts is tests/training/test_train_cli.py's (the same trainer writes it).
    assert zipfile.is_zipfile(os.path.join(out, "model.keras"))


def test_the_trained_digits_model_scores_on_the_tfds_validation_split_what_it_scored_on_the_folder(tfds_run, tmp_path):
    # The same 359 validation digits, read from TFDS records instead of PNG files: the same images and
    # labels give the same top-1 (one image of slack for another backend's arithmetic).
    data_dir, _, _ = tfds_run
    with open(os.path.join(TRAINED, "summary.json")) as handle:
        folder_top1 = json.load(handle)["val_top1"]
    args = ["--output-dir", str(tmp_path), "--recipe", "digits", "--dataset", NAME, "--data-dir", data_dir,
            "--eval-only", "--weights", os.path.join(TRAINED, "model.keras"), "--quiet"]
    assert train_cli.main(args) == 0
    with open(tmp_path / "summary.json") as handle:
        evaluated = json.load(handle)
    assert evaluated["num_val"] == 359
    assert evaluated["val_top1"] == pytest.approx(folder_top1, abs=1.01 / 359)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="time budget: on JAX as on PyTorch the export runs in a "
                    "TensorFlow child process; the PyTorch session runs that case")
def test_the_export_command_calibrates_tflite_int8_on_a_tfds_dataset(tfds_run, tmp_path):
    data_dir, _, _ = tfds_run
    out = tmp_path / "export"
    args = ["--model", os.path.join(TRAINED, "model.keras"), "--output-dir", str(out), "--formats", "tflite_int8",
            "--representative-tfds", f"{NAME}:train", "--tfds-data-dir", data_dir, "--num-calibration", "16",
            "--num-samples", "8", "--latency-runs", "1", "--quiet"]
    assert export_cli.main(args) == 0
    with open(out / "report.json") as handle:
        report = json.load(handle)
    assert report["representative"] == {"source": f"tfds:{NAME}:train", "count": 16}
    assert [row["artifact"] for row in report["artifacts"]] == ["tflite_int8"]
    assert report["artifacts"][0]["passed"] and os.path.isfile(out / "model_int8.tflite")


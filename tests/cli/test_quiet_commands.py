"""Quiet, quick commands (issue 22, item 4): no TensorFlow, absl or CUDA log lines unless ``--verbose``, and
``--help`` before anything heavy is imported.

Every command is run as a user runs it (the installed console script, ``python -m ...``, the checkout's
scripts), in a fresh process with no ``TF_CPP_MIN_LOG_LEVEL`` of ours. ``--help`` is checked structurally,
not against a clock: ``python -X importtime`` lists every module the process imported, and none of
TensorFlow, Keras, KerasHub, JAX or PyTorch may be among them.
"""

import functools
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib

import keras
import pytest
from helpers import REPO

import keras_t2t
from keras_t2t.cli import args as cli_args
from keras_t2t.data.digits import write_digits_folder
from keras_t2t.export import cli as export_cli

# What TensorFlow, absl, CUDA and LiteRT print on their own: absl's native lines (I0000 00:00:... port.cc:153]),
# its pre-initialisation notice, the CUDA probes, Python's absl and TensorFlow loggers, LiteRT's delegate notice.
NOISE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d\d|^WARNING: All log messages before absl|cuInit|cuda_|cudart|oneDNN"
    r"|^(?:WARNING|INFO|ERROR):(?:absl|tensorflow):|XNNPACK|cpu_feature_guard|^To enable the following instructions",
    re.MULTILINE,
)
HEAVY = ("tensorflow", "keras", "keras_hub", "jax", "torch")
SCRIPTS = sysconfig.get_path("scripts")

# Every way to start a command: (how it is written, the argv after the interpreter).
COMMANDS = {
    "keras-t2t-convert": [os.path.join(SCRIPTS, "keras-t2t-convert")],
    "keras-t2t-evaluate": [os.path.join(SCRIPTS, "keras-t2t-evaluate")],
    "keras-t2t-export": [os.path.join(SCRIPTS, "keras-t2t-export")],
    "keras-t2t-visualize": [os.path.join(SCRIPTS, "keras-t2t-visualize")],
    "keras-t2t-weights": [os.path.join(SCRIPTS, "keras-t2t-weights")],
    "python -m keras_t2t.export": ["-m", "keras_t2t.export"],
    "python -m keras_t2t.convert_cli": ["-m", "keras_t2t.convert_cli"],
    "python -m keras_t2t.cli.convert": ["-m", "keras_t2t.cli.convert"],
    "python -m keras_t2t.cli.evaluate": ["-m", "keras_t2t.cli.evaluate"],
    "python -m keras_t2t.cli.visualize": ["-m", "keras_t2t.cli.visualize"],
    "python -m keras_t2t.cli.weights": ["-m", "keras_t2t.cli.weights"],
    "python -m keras_t2t.evaluation": ["-m", "keras_t2t.evaluation"],
    "python -m keras_t2t.visualize": ["-m", "keras_t2t.visualize"],
    "python training/train.py": [os.path.join(REPO, "training", "train.py")],
    "python tflite/convert.py": [os.path.join(REPO, "tflite", "convert.py")],
}


def command_env(**extra):
    """This process's environment without the log level CI sets: the commands must set their own."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


def run(argv, **env):
    # The timeout only catches a hang, never load (as every test's subprocess).
    return subprocess.run([sys.executable, *argv], env=command_env(**env), capture_output=True, text=True,
                          timeout=3600, cwd=REPO, check=False)


def noise(text):
    return [line for line in text.splitlines() if NOISE.search(line)]


def imported_top_level(importtime_stderr):
    """The top-level packages a ``python -X importtime`` run imported, from its stderr."""
    found = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            found.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return found


def test_every_console_script_is_among_the_commands_checked():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    assert set(scripts) <= set(COMMANDS), sorted(set(scripts) - set(COMMANDS))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_answers_without_importing_keras_or_a_backend_and_prints_no_log_lines(command):
    argv = COMMANDS[command]
    if not argv[0].startswith("-") and not os.path.exists(argv[0]):
        pytest.skip(f"{argv[0]} is not installed (pip install -e .)")
    result = run(["-X", "importtime", *argv, "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: ") and "--verbose" in result.stdout
    heavy = imported_top_level(result.stderr) & set(HEAVY)
    assert heavy == set(), f"{command} --help imported {sorted(heavy)}"
    rest = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert rest == [] and noise(result.stdout) == []


def test_the_parsers_copies_of_keras_side_constants_equal_their_sources():
    # The parsers repeat what modules that import Keras define, so that --help needs no Keras.
    from keras_t2t.data.images import DEFAULT_CROP_PCT
    from keras_t2t.export import formats, pipeline, verify
    from keras_t2t.precision import DTYPE_CHOICES

    assert cli_args.DTYPE_CHOICES == DTYPE_CHOICES
    assert cli_args.DEFAULT_CROP_PCT == DEFAULT_CROP_PCT
    assert export_cli.FORMATS == formats.FORMATS
    for name in ("DEFAULT_INT8_AGREEMENT", "DEFAULT_NUM_SAMPLES", "DEFAULT_NUM_CALIBRATION", "DEFAULT_LATENCY_RUNS"):
        assert getattr(export_cli, name) == getattr(pipeline, name), name
    assert export_cli.DEFAULT_DECISIVE_MARGIN == verify.DEFAULT_DECISIVE_MARGIN


PROBE = """
import json, sys
import keras_t2t
from keras_t2t import export, training
before = sorted(set({heavy!r}) & set(sys.modules))
from keras_t2t import T2TViT, t2t_vit_7  # a class and a builder, on first use
missing = [f"{{package.__name__}}.{{name}}" for package in (keras_t2t, export, training)
           for name in package.__all__ if getattr(package, name, None) is None]
import keras
print(json.dumps({{"before": before, "missing": missing, "builder": t2t_vit_7.__name__,
                  "registered": keras.saving.get_registered_object("keras_t2t>T2TViTImageClassifier") is not None}}))
"""


def test_in_a_command_the_public_names_load_on_first_use_and_all_resolve(tmp_path):
    # A script whose name starts with keras-t2t- is a command (keras_t2t.backends.running_a_command).
    probe = tmp_path / "keras-t2t-probe"
    probe.write_text(PROBE.format(heavy=HEAVY))
    result = run([str(probe)])
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found == {"before": [], "missing": [], "builder": "t2t_vit_7", "registered": True}


def test_outside_a_command_import_keras_t2t_registers_the_kerashub_classes_at_once():
    # keras_hub's loaders find the classes by their registered names after a bare `import keras_t2t`.
    code = ("import keras, keras_t2t; print(keras.saving.get_registered_object('keras_t2t>T2TViTImageClassifier') "
            "is not None, keras.saving.get_registered_object('keras_t2t>T2TViTBackbone') is not None)")
    result = run(["-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True"]


# --------------------------------------------------------------------------
# Real runs
# --------------------------------------------------------------------------
@functools.cache
def tensorflow_prints_on_import():
    """Whether a bare ``import tensorflow`` prints log lines on this machine (it does wherever oneDNN or the
    CUDA probe speak): only then can ``--verbose`` be seen to keep them."""
    return bool(noise(run(["-c", "import tensorflow"]).stderr))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A 2-class t2t_vit_mini saved as .keras, and a folder of 8 digits of those two classes."""
    root = tmp_path_factory.mktemp("quiet")
    digits = write_digits_folder(str(root / "digits"))
    folder = root / "val"
    for digit in ("0", "1"):
        os.makedirs(folder / digit)
        for name in sorted(os.listdir(os.path.join(digits, "val", digit)))[:4]:
            os.link(os.path.join(digits, "val", digit, name), folder / digit / name)
    keras.utils.set_random_seed(0)
    path = str(root / "mini.keras")
    keras_t2t.t2t_vit_mini(classes=2).save(path)
    return path, str(folder)


def test_evaluate_prints_its_result_and_no_log_lines_and_verbose_keeps_them(tiny_classifier):
    model, folder = tiny_classifier
    argv = [os.path.join(SCRIPTS, "keras-t2t-evaluate"), "--model", model, "--data-dir", folder, "--no-progress"]
    if not os.path.exists(argv[0]):
        pytest.skip("keras-t2t-evaluate is not installed (pip install -e .)")
    quiet = run(argv)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert re.search(r"^top1 \d+\.\d+%  top5 100\.000%  on 8 images, 2 classes", quiet.stdout, re.MULTILINE)
    assert noise(quiet.stdout + quiet.stderr) == [], quiet.stderr
    if tensorflow_prints_on_import():
        verbose = run(argv + ["--verbose"])
        assert verbose.returncode == 0 and noise(verbose.stderr), verbose.stderr[-3000:]


def test_train_py_prints_no_log_lines(tmp_path):
    digits = write_digits_folder(str(tmp_path / "digits"))
    out = str(tmp_path / "run")
    result = run([os.path.join(REPO, "training", "train.py"), "--output-dir", out, "--data-dir", digits,
                  "--train-limit", "64", "--val-limit", "32", "--batch-size", "32", "--lr-base-batch", "32",
                  "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise(result.stdout + result.stderr) == [] and result.stderr == "", result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("recipe digits: t2t_vit_mini on digits at 32x32, 1 epoch, batch 32")
    assert lines[-3] == "next:" and lines[-2].startswith("  keras-t2t-evaluate --model ")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="CI budget: LiteRT runs on TensorFlow whatever the Keras backend (its session checks it)")
def test_the_first_litert_run_says_nothing_under_a_quiet_log_level(tmp_path):
    # LiteRT announces its XNNPACK delegate at a model's first run whatever TF_CPP_MIN_LOG_LEVEL says;
    # keras_t2t.export.tflite makes that run quietly (the export verifies every .tflite in its process).
    saved, path = str(tmp_path / "saved_model"), str(tmp_path / "m.tflite")
    code = f"""
import numpy as np, tensorflow as tf
from keras_t2t.export.tflite import tflite_runner

class Product(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32, name="images")])
    def serve(self, images):
        return {{"logits": tf.matmul(images, tf.constant(np.arange(8, dtype=np.float32).reshape(4, 2)))}}

product = Product()
tf.saved_model.save(product, {saved!r}, signatures={{"serving_default": product.serve}})
open({path!r}, "wb").write(tf.lite.TFLiteConverter.from_saved_model({saved!r}).convert())
print(tflite_runner({path!r})(np.ones((1, 4), np.float32)).tolist())
"""
    quiet = run(["-c", code], TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout.splitlines()[-1] == "[[12.0, 16.0]]"
    assert "XNNPACK" not in quiet.stderr, quiet.stderr[-2000:]
    chatty = run(["-c", code], TF_CPP_MIN_LOG_LEVEL="0", KERAS_BACKEND="tensorflow")
    assert chatty.returncode == 0 and "XNNPACK" in chatty.stderr, chatty.stderr[-2000:]


def test_quiet_logs_sets_level_3_unless_the_user_set_one_or_verbose_asks(tmp_path):
    # As a command calls it: before Keras is imported (JAX's import sets level 1 where none is set).
    probe = tmp_path / "keras-t2t-level"
    probe.write_text("import os, sys\nfrom keras_t2t.backends import quiet_logs\n"
                     "quiet_logs(verbose=sys.argv[1] == 'v')\nprint(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
                     "import keras_t2t.applications\n")
    quiet = run([str(probe), "q"])
    assert quiet.stdout.split() == ["3"] and noise(quiet.stderr) == [], quiet.stderr[-2000:]
    assert run([str(probe), "q"], TF_CPP_MIN_LOG_LEVEL="2").stdout.split() == ["2"]
    verbose = run([str(probe), "v"])
    assert verbose.stdout.split() == ["None"]
    if tensorflow_prints_on_import():
        assert noise(verbose.stderr), verbose.stderr[-2000:]

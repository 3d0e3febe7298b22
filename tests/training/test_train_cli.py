"""training/train.py: the command line over keras_t2t.training, on the current backend (in process)."""

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import REPO

from keras_t2t.data.digits import write_digits_folder
from keras_t2t.training import DIGITS, train
from keras_t2t.training.distribute import Distribution

_spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "training", "train.py"))
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)

# 128 training digits, 4 steps of 32 a epoch, 64 validation digits.
TINY = ["--train-limit", "128", "--val-limit", "64", "--batch-size", "32", "--lr-base-batch", "32",
        "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return write_digits_folder(str(tmp_path_factory.mktemp("cli") / "digits"))


@pytest.fixture(scope="module")
def tiny_run_printed(digits_dir, tmp_path_factory):
    """``(output folder, summary.json, what the run printed)``."""
    out = str(tmp_path_factory.mktemp("cli") / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir] + TINY) == 0
    with open(os.path.join(out, "summary.json")) as handle:
        return out, json.load(handle), printed.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tiny_run_printed):
    return tiny_run_printed[:2]


def test_print_recipe_shows_the_digits_default_and_the_paper_recipe_elsewhere(capsys, tmp_path):
    assert train_cli.main(["--output-dir", str(tmp_path), "--print-recipe"]) == 0
    digits = json.loads(capsys.readouterr().out)
    assert digits["model"] == "t2t_vit_mini" and digits["dataset"] == "digits" and digits["mixup_alpha"] == 0
    assert train_cli.main(["--output-dir", str(tmp_path), "--dataset", "cifar10", "--model", "t2t_vit_7",
                           "--mixup", "0.5", "--print-recipe"]) == 0
    paper = json.loads(capsys.readouterr().out)
    assert (paper["mixup_alpha"], paper["cutmix_alpha"], paper["ema_decay"]) == (0.5, 1.0, 0.99996)
    assert paper["weight_decay"] == 0.03  # the reference's for T2T-ViT-7
    assert not os.listdir(tmp_path)


def test_a_run_opens_with_the_recipe_in_one_line_and_closes_with_top1_files_and_next_commands(tiny_run_printed,
                                                                                           digits_dir):
    out, summary, printed = tiny_run_printed
    lines = printed.splitlines()
    assert lines[0] == ("recipe digits: t2t_vit_mini on digits at 32x32, 1 epoch, batch 32, peak lr 0.002, float32 "
                        "(--print-recipe shows every field)")
    assert not any(line.strip().startswith("lr_base_batch") for line in lines)  # no recipe dump
    assert not any(line.strip().startswith(("{", "}", '"val_top1"')) for line in lines)  # no JSON dump
    logs = "logs/, " if importlib.util.find_spec("tensorboard") else ""
    model, val = os.path.join(out, "model.keras"), os.path.join(digits_dir, "val")
    assert lines[-5:] == [
        f"validation top-1 {100 * summary['val_top1']:.2f}% (top-5 {100 * summary['val_top5']:.2f}%) on 64 images "
        "after 1 epoch",
        f"wrote {out}/: model.keras, preset/, summary.json, recipe.json, history.csv, best.weights.h5, "
        f"last.weights.h5, {logs}resume/",
        "next:",
        f"  keras-t2t-evaluate --model {model} --data-dir {val}",
        f"  keras-t2t-export --model {model} --output-dir {os.path.join(out, 'export')} --sample-dir {val}",
    ]


def test_the_next_commands_a_run_prints_work_as_printed(tiny_run_printed, capsys):
    from keras_t2t.cli import evaluate as evaluate_cli
    from keras_t2t.export import cli as export_cli

    out, _, printed = tiny_run_printed
    evaluate, export = (shlex.split(line) for line in printed.splitlines()[-2:])
    assert evaluate[0] == "keras-t2t-evaluate" and export[0] == "keras-t2t-export"
    capsys.readouterr()
    assert evaluate_cli.main(evaluate[1:] + ["--no-progress"]) == 0
    assert re.search(r"^top1 \d+\.\d+%  top5 \d+\.\d+%  on 359 images, 10 classes", capsys.readouterr().out, re.M)
    args = export_cli.build_parser().parse_args(export[1:])
    assert (args.model, args.output_dir) == (os.path.join(out, "model.keras"), os.path.join(out, "export"))
    if keras.backend.backend() == "tensorflow":  # time budget: one format, in the TensorFlow session
        assert export_cli.main(export[1:] + ["--formats", "tflite_float32", "--num-samples", "4", "--latency-runs",
                                             "1", "--quiet"]) == 0
        assert os.path.isfile(os.path.join(out, "export", "model_float32.tflite"))


def test_a_tiny_run_writes_summary_checkpoints_and_logs(tiny_run):
    out, summary = tiny_run
    for key in ("val_top1", "val_top5", "epochs", "replicas", "global_batch_size", "train_images_per_second",
                "backend"):
        assert key in summary
    assert 0.0 <= summary["val_top1"] <= summary["val_top5"] <= 1.0
    assert (summary["epochs"], summary["replicas"], summary["global_batch_size"]) == (1, 1, 32)
    assert summary["optimizer_steps"] == 4 and summary["backend"] == keras.backend.backend()
    assert summary["train_images_per_second"] > 0
    for name in ("recipe.json", "history.csv", "best.weights.h5", "last.weights.h5", "model.keras",
                 "resume/train_state.json"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "resume", "train_state.json")) as handle:
        state = json.load(handle)
    assert (state["epoch"], state["optimizer_steps"]) == (1, 4)
    assert sorted(os.listdir(os.path.join(out, "resume"))) == sorted(["train_state.json", state["weights_file"]])
    with open(os.path.join(out, "recipe.json")) as handle:
        assert json.load(handle)["train_limit"] == 128
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 10)


def test_eval_only_reproduces_the_runs_accuracy(tiny_run, digits_dir, tmp_path):
    out, summary = tiny_run
    args = ["--output-dir", str(tmp_path), "--data-dir", digits_dir, "--eval-only",
            "--weights", os.path.join(out, "last.weights.h5")] + TINY
    assert train_cli.main(args) == 0
    with open(tmp_path / "summary.json") as handle:
        evaluated = json.load(handle)
    assert evaluated["eval_only"] and evaluated["epochs"] == 0
    assert evaluated["val_top1"] == pytest.approx(summary["val_top1"], abs=1e-6)


@pytest.fixture
def glibc_thresholds_restored():
    # The flag changes the allocator of this (pytest) process: afterwards, glibc's static
    # defaults (128 KiB for both) again, so later tests do not keep freed memory.
    yield
    from keras_t2t import allocator

    allocator.keep_freed_memory(128 * 1024, 128 * 1024)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_applied_before_the_run(tiny_run, digits_dir, tmp_path, capsys, glibc_thresholds_restored):
    # --eval-only keeps it short; the allocator setting (tests/test_allocator.py checks its effect)
    # is made and reported before any work.
    out, _ = tiny_run
    args = ["--output-dir", str(tmp_path), "--data-dir", digits_dir, "--eval-only", "--keep-freed-memory",
            "--weights", os.path.join(out, "last.weights.h5")] + TINY
    assert train_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "allocator: freed memory stays in the process (mmap threshold 33554432 bytes" in printed
    assert printed.index("allocator:") < printed.index("backend ")  # the trainer's first line


def _files(folder):
    """{relative path: (mtime_ns, bytes)} of every file under ``folder``."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, handle.read())
    return found


def test_rerunning_a_finished_run_says_so_and_changes_nothing(tiny_run, digits_dir, capsys):
    out, summary = tiny_run
    before = _files(out)
    assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir] + TINY) == 0
    assert f"The run in {out} is finished (1 epochs, val_top1" in capsys.readouterr().out
    assert _files(out) == before  # no file rewritten: same contents, same modification times
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["train_images_per_second"] == summary["train_images_per_second"] > 0


def test_a_later_run_removes_what_a_killed_run_left(tiny_run, digits_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [f".tmp-{dead.pid}-best.weights.h5", f"resume/.tmp-{dead.pid}-train_state.weights.h5",
                 "resume/.train_state.json.x1y2z3.tmp", ".summary.json.a1b2c3.tmp",
                 "resume/train_state-e0002-deadbeef.weights.h5"]
    for name in leftovers:
        with open(os.path.join(out, name), "wb") as handle:
            handle.write(b"partial")
    kept = _files(out)
    assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir] + TINY) == 0
    assert f"removed {len(leftovers)} leftover(s) of an interrupted run" in capsys.readouterr().out
    for name in leftovers:
        kept.pop(name)
    assert _files(out) == kept


class _Interrupt(Exception):
    pass


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="time budget: the TensorFlow session kills a real "
                    "run (test_distributed); test_resume resumes after a kill at each point of the save on every "
                    "backend")
def test_an_interrupted_run_resumes_with_the_uninterrupted_step_count(digits_dir, tmp_path):
    # 2 epochs of 4 steps = 8 optimizer steps uninterrupted; stop inside epoch 2, run again.
    recipe = dataclasses.replace(DIGITS, data_dir=digits_dir, train_limit=128, val_limit=32, batch_size=32,
                                 lr_base_batch=32, epochs=2, cooldown_epochs=0, warmup_epochs=0)

    class StopInEpoch2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) >= 6:
                raise _Interrupt()

    with pytest.raises(_Interrupt):
        train(recipe, str(tmp_path), verbose=0, callbacks=[StopInEpoch2()])
    assert not (tmp_path / "summary.json").exists()
    _, summary = train(recipe, str(tmp_path), verbose=0)
    assert summary["resumed_from_epoch"] == 1
    assert summary["optimizer_steps"] == 8


def test_fine_tuning_from_an_authors_checkpoint_with_other_classes_and_size(tiny_run, digits_dir, tmp_path, capsys):
    # The tiny run's weights as an authors' .pth.tar (timm's container), then 5 classes at 48 pixels.
    torch = pytest.importorskip("torch")
    from keras_t2t import model_state_dict

    out, _ = tiny_run
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model_state_dict(model).items()}
    checkpoint = tmp_path / "mini.pth.tar"
    torch.save({"state_dict": state, "state_dict_ema": state, "epoch": 1, "arch": "t2t_vit_mini"}, checkpoint)
    five = tmp_path / "five"
    for split in ("train", "val"):
        for digit in range(5):
            os.makedirs(five / split / str(digit))
            source = os.path.join(digits_dir, split, str(digit))
            for name in sorted(os.listdir(source))[:8]:
                os.link(os.path.join(source, name), five / split / str(digit) / name)
    args = ["--output-dir", str(tmp_path / "ft"), "--dataset", "folder", "--data-dir", str(five), "--recipe", "digits",
            "--image-size", "48", "--weights", str(checkpoint), "--batch-size", "8", "--lr-base-batch", "8",
            "--epochs", "1", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]
    assert train_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "head not loaded" in printed and "10 classes, the model 5" in printed
    assert "position table resized from a 8x8 to a 12x12 grid" in printed
    with open(tmp_path / "ft" / "summary.json") as handle:
        assert json.load(handle)["num_classes"] == 5


@pytest.mark.parametrize("extra, message", [
    (["--dataset", "imagenet_2012"], "Unknown dataset 'imagenet_2012'"),
    (["--dataset", "folder", "--data-dir", ""], "--dataset folder needs --data-dir"),
    (["--model", "t2t_vit_99"], "Unknown model 't2t_vit_99'"),
    (["--batch-size", "4096"], "larger than the 128 training images"),
])
def test_bad_input_fails_before_any_work(extra, message, digits_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_cli.main(["--output-dir", str(out), "--data-dir", digits_dir] + TINY + extra) == 2
    assert message in capsys.readouterr().err
    assert not (out / "recipe.json").exists()


def test_an_empty_data_folder_fails_before_any_work(tmp_path, capsys):
    os.makedirs(tmp_path / "empty" / "train")
    os.makedirs(tmp_path / "empty" / "val")
    args = ["--output-dir", str(tmp_path / "out"), "--dataset", "folder", "--data-dir", str(tmp_path / "empty")]
    assert train_cli.main(args + TINY) == 2
    assert "has no class sub-folders" in capsys.readouterr().err


def test_a_corrupt_jpeg_is_refused_before_any_work_or_skipped_and_counted(digits_dir, tmp_path, capsys):
    # 4 classes of 8 training and 4 validation digits, plus a JPEG with valid headers and a corrupt body in each
    # split (TensorFlow stopped training on such a file mid-epoch; in val/ after the epoch was trained).
    from PIL import Image

    root = tmp_path / "data"
    for split, count in (("train", 8), ("val", 4)):
        for digit in range(4):
            os.makedirs(root / split / str(digit))
            source = os.path.join(digits_dir, split, str(digit))
            for name in sorted(os.listdir(source))[:count]:
                os.link(os.path.join(source, name), root / split / str(digit) / name)
    bad = [root / "train" / "2" / "bad.jpg", root / "val" / "3" / "bad.jpg"]
    zeros = os.path.join(digits_dir, "train", "0")
    for path in bad:
        Image.open(os.path.join(zeros, min(os.listdir(zeros)))).convert("RGB").save(path, "JPEG", quality=95)
        with open(path, "r+b") as handle:
            data = bytearray(handle.read())
            sos = data.index(b"\xff\xda")
            start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
            data[start:-2] = np.random.default_rng(0).integers(0, 256, len(data) - 2 - start, np.uint8).tobytes()
            handle.seek(0)
            handle.write(bytes(data))
    args = ["--output-dir", str(tmp_path / "out"), "--dataset", "folder", "--data-dir", str(root), "--recipe", "digits",
            "--batch-size", "8", "--lr-base-batch", "8", "--epochs", "1", "--cooldown-epochs", "0",
            "--warmup-epochs", "0", "--quiet"]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "2 of 50 image files cannot be used:" in err and "--skip-bad-images" in err
    assert f"{bad[0]}: does not decode (jpeg::Uncompress failed" in err and f"{bad[1]}: does not decode" in err
    assert not (tmp_path / "out" / "recipe.json").exists()
    assert train_cli.main(args + ["--skip-bad-images"]) == 0
    assert "32 training and 16 validation images; 2 bad images left out" in capsys.readouterr().out
    with open(tmp_path / "out" / "summary.json") as handle:
        summary = json.load(handle)
    assert (summary["skipped_images"], summary["num_train"], summary["num_val"]) == (2, 32, 16)


@pytest.mark.parametrize("where, message", [
    ("file", "cannot be created: '{parent}' is a file, not a folder."),
    ("file_itself", "exists and is a file, not a folder."),
    ("/sys/keras_t2t_run", "cannot be written: nothing can be created in '/sys'"),
    ("/proc/keras_t2t_run/out", "cannot be written: nothing can be created in '/proc'"),
])
def test_an_unwritable_output_dir_fails_first_in_one_line(where, message, digits_dir, tmp_path, capsys):
    # Root writes through permission bits, so the unwritable places are a path under a regular file and
    # the kernel's file systems.
    if where.startswith("/") and not os.path.isdir("/" + where.split("/")[1]):
        pytest.skip(f"no /{where.split('/')[1]} here")
    parent = tmp_path / "a_file"
    parent.write_text("not a folder")
    out = {"file": str(parent / "run"), "file_itself": str(parent)}.get(where, where)
    assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir] + TINY) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --output-dir ") and "Traceback" not in err
    assert message.format(parent=parent) in err
    assert parent.read_text() == "not a folder"


def test_an_unknown_keras_backend_is_one_line_naming_the_valid_ones(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="bogus", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, os.path.join(REPO, "training", "train.py"), "--output-dir",
                             str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert result.returncode == 2
    assert result.stderr == ("error: unknown Keras backend 'bogus' (KERAS_BACKEND or keras.json); training runs on "
                             "tensorflow, jax, torch.\n")
    assert not (tmp_path / "out").exists()


def test_eval_only_needs_weights(tmp_path):
    with pytest.raises(SystemExit):
        train_cli.main(["--output-dir", str(tmp_path), "--eval-only"])


def test_a_batch_that_does_not_split_over_the_replicas_is_refused(digits_dir, tmp_path):
    three = Distribution(keras.backend.backend(), "mirrored", 3, ["a", "b", "c"])
    recipe = dataclasses.replace(DIGITS, data_dir=digits_dir, batch_size=64)
    with pytest.raises(ValueError, match=r"global batch size 64 does not split over 3 replicas.*multiple of 3"):
        train(recipe, str(tmp_path / "out"), distribution=three)
    assert not (tmp_path / "out").exists()


def test_a_resume_folder_of_another_model_or_recipe_is_refused(tiny_run, digits_dir, capsys):
    out, _ = tiny_run
    assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir, "--model", "t2t_vit_7"] + TINY) == 2
    assert "holds a run of another model (t2t_vit_mini, 32px, 10 classes)" in capsys.readouterr().err
    assert train_cli.main(["--output-dir", out, "--data-dir", digits_dir, "--lr", "0.5"] + TINY) == 2
    assert "holds a run with another recipe (lr: 0.002 -> 0.5)" in capsys.readouterr().err


def test_torch_states_its_single_device():
    if keras.backend.backend() != "torch":
        pytest.skip("the PyTorch backend's device statement")
    from keras_t2t.training import setup_distribution

    assert "single device" in setup_distribution().describe()
    with pytest.raises(ValueError, match="needs the TensorFlow or JAX backend"):
        setup_distribution(cpu_replicas=2)


def test_mixed_bfloat16_training_has_no_nan(digits_dir, tmp_path):
    recipe = dataclasses.replace(DIGITS, data_dir=digits_dir, precision="mixed_bfloat16", train_limit=128,
                                 val_limit=32, batch_size=32, lr_base_batch=32, epochs=2, cooldown_epochs=0,
                                 warmup_epochs=0)
    losses = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(logs["loss"]))

    model, summary = train(recipe, str(tmp_path), verbose=0, callbacks=[Record()])
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert math.isfinite(summary["val_loss"]) and summary["precision"] == "mixed_bfloat16"
    assert model.get_layer("blocks_0").compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_the_evaluator_scores_a_trained_model_as_the_trainer_did_with_no_flags(digits_dir, tmp_path, capsys):
    """The journey of issue 21: train, then ``keras-t2t-evaluate --model model.keras`` with no flags.

    The digits recipe evaluates at crop_pct 1.0; the evaluator used to crop 0.9 and scored
    45% a model the trainer scored 95%. Now the run's preset carries the preprocessing.
    """
    from keras_t2t.cli import evaluate as evaluate_cli

    out = str(tmp_path / "run")
    args = ["--output-dir", out, "--data-dir", digits_dir, "--train-limit", "640", "--batch-size", "32",
            "--lr-base-batch", "32", "--epochs", "4", "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]
    assert train_cli.main(args) == 0
    with open(os.path.join(out, "summary.json")) as handle:
        trained = json.load(handle)["val_top1"]
    assert os.path.isfile(os.path.join(out, "preset", "preprocessor.json"))
    capsys.readouterr()
    report = str(tmp_path / "eval.json")
    assert evaluate_cli.main(["--model", os.path.join(out, "model.keras"), "--data-dir",
                              os.path.join(digits_dir, "val"), "--no-progress", "--output", report]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing: 32x32, crop_pct 1" in printed and "the training run's preset" in printed
    with open(report) as handle:
        evaluated = json.load(handle)
    assert evaluated["crop_pct"] == 1.0 and evaluated["image_size"] == [32, 32]
    assert abs(evaluated["top1"] - trained) <= 0.01, (evaluated["top1"], trained)
    # A flag still wins, and the output says so.
    assert evaluate_cli.main(["--model", os.path.join(out, "model.keras"), "--data-dir",
                              os.path.join(digits_dir, "val"), "--no-progress", "--crop-pct", "0.9"]) == 0
    assert "crop_pct 0.9, ImageNet mean/std (from --crop-pct 0.9, the rest from the training run's preset" in (
        capsys.readouterr().out)


def test_a_release_preset_name_as_model_is_that_model_starting_from_those_weights(capsys, tmp_path):
    assert train_cli.main(["--output-dir", str(tmp_path), "--dataset", "cifar10", "--model", "t2t_vit_7_imagenet",
                           "--print-recipe"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "t2t_vit_7"
    args = train_cli.build_parser().parse_args(["--output-dir", str(tmp_path), "--model", "t2t_vit_14_cifar10"])
    train_cli._model_from_handle(args)
    assert (args.model, args.weights) == ("t2t_vit_14", "t2t_vit_14_cifar10")
    args = train_cli.build_parser().parse_args(["--output-dir", str(tmp_path), "--model", "t2t_vit_14_cifar10",
                                                "--weights", "mine.pth"])
    train_cli._model_from_handle(args)
    assert (args.model, args.weights) == ("t2t_vit_14", "mine.pth")


def test_a_preset_folder_or_keras_file_as_model_is_that_model_starting_from_those_weights(tiny_run, tmp_path,
                                                                                          capsys):
    out, _ = tiny_run
    for handle in (os.path.join(out, "preset"), os.path.join(out, "model.keras")):
        args = train_cli.build_parser().parse_args(["--output-dir", str(tmp_path), "--model", handle])
        train_cli._model_from_handle(args)
        assert (args.model, args.weights) == ("t2t_vit_mini", handle)
    assert train_cli.main(["--output-dir", str(tmp_path), "--model", str(tmp_path / "nothing.keras")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model: ") and err.count("\n") == 1 and "nothing.keras" in err


def test_image_size_takes_n_or_nxn_and_refuses_two_sides_in_one_line(capsys, tmp_path):
    # Issue 23, item 14: "--image-size 32x48" was "invalid int value" although every command takes N or HxW.
    args = train_cli.build_parser().parse_args(["--output-dir", str(tmp_path), "--image-size", "48x48"])
    assert args.image_size == 48
    for bad, words in (("32x48", "training crops square images: give N (got '32x48')"), ("0", "must be N or NxN")):
        with pytest.raises(SystemExit) as stop:
            train_cli.main(["--output-dir", str(tmp_path / "run"), "--image-size", bad])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert words in err and err.strip().splitlines()[-1].startswith("train.py: error:")
    assert not (tmp_path / "run").exists()


def test_a_bad_weights_file_leaves_no_output_folder_behind(digits_dir, tmp_path, capsys):
    # Issue 23, item 17: the run failed after creating the folder, leaving .lock and recipe.json.
    bad = tmp_path / "broken.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature, then nothing
    out = tmp_path / "run"
    code = train_cli.main(["--output-dir", str(out), "--data-dir", digits_dir, "--weights", str(bad)] + TINY)
    assert code != 0
    assert "broken.weights.h5" in capsys.readouterr().err
    assert not out.exists()
    # A folder that held the user's files before keeps them, and only them.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_cli.main(["--output-dir", str(out), "--data-dir", digits_dir, "--weights", str(bad)] + TINY) != 0
    assert (out / "notes.txt").read_text() == "mine"

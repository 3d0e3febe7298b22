"""The export's promises under failure (issue 15, items 2, 7, 10, 13 and 15): a failed or killed export leaves
the previous one exactly as it was and a successful one replaces it whole; leftovers of dead exports are removed;
the plain command exports every calibration-free format; verification does not flip on near-ties; bad output
folders and backends are one line with exit status 2.

Conversions run in the TensorFlow session only (the pipeline is TensorFlow's on every backend; the JAX session
checks the hand-off to the TensorFlow process once); the bad-input tests stop before any conversion and run on
every backend.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import REPO
from test_export import tiny_t2t

from keras_t2t import export
from keras_t2t.export import export_model, formats, staging, tflite, verify

BACKEND = keras.backend.backend()
CONVERT = os.path.join(REPO, "tflite", "convert.py")
on_tensorflow = pytest.mark.skipif(BACKEND != "tensorflow", reason="converts: runs in the TensorFlow session")
CHEAP = ["--num-samples", "2", "--latency-runs", "1", "--quiet"]


def snapshot(folder):
    """Every entry under ``folder``: relative path -> the file's bytes (``None`` for a folder)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                out[os.path.relpath(os.path.join(root, name), folder)] = handle.read()
    return out


def dead_pid():
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def near_tie_model():
    """Random weights, but a head whose classes 3 and 7 tie within 2**-12 on every image (7 ahead).

    The head's kernel is zero, so the logits are its bias: 1 and 1 + 2**-12 round to the same float16, and
    the float16 model's top class becomes 3 where Keras says 7.
    """
    keras.utils.set_random_seed(0)
    model = tiny_t2t()
    head = model.get_layer("head")
    kernel, _ = head.get_weights()
    bias = np.linspace(-1.0, 0.5, 10).astype("float32")
    bias[3], bias[7] = 1.0, 1.0 + 2.0**-12
    head.set_weights([np.zeros_like(kernel), bias])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``.keras`` files: ``good`` (a random tiny model), ``other`` (another seed) and ``nan`` (``good`` with a NaN
    in the head's kernel)."""
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(1)
    tiny_t2t().save(str(root / "other.keras"))
    keras.utils.set_random_seed(0)
    model = tiny_t2t()
    model.save(str(root / "good.keras"))
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    kernel[0, 0] = np.nan
    head.set_weights([kernel, bias])
    model.save(str(root / "nan.keras"))
    return {name: str(root / f"{name}.keras") for name in ("good", "other", "nan")}


@pytest.fixture(scope="module")
def earlier_export(models, tmp_path_factory):
    """A verified export (SavedModel and float32 TFLite) of the good model; tests copy it."""
    out = str(tmp_path_factory.mktemp("earlier") / "export")
    assert export.main(["--model", models["good"], "--output-dir", out, "--formats", "saved_model,tflite_float32",
                        *CHEAP]) == 0
    return out


def copy_of(earlier_export, tmp_path):
    out = str(tmp_path / "export")
    shutil.copytree(earlier_export, out)
    return out, snapshot(out)


def hidden_leftovers(out):
    parent = os.path.dirname(out)
    return [n for n in os.listdir(parent) if n.startswith(".")] + [n for n in os.listdir(out) if n.startswith(".")]


# --------------------------------------------------------------------------
# Item 2: a failed export leaves the previous one; a successful one replaces it whole
# --------------------------------------------------------------------------
@on_tensorflow
def test_a_failed_overwrite_leaves_the_previous_export_exactly_as_it_was(models, earlier_export, tmp_path):
    out, before = copy_of(earlier_export, tmp_path)
    code = export.main(["--model", models["nan"], "--output-dir", out, "--formats", "tflite_float32,saved_model",
                        "--overwrite", *CHEAP])
    assert code == 1
    assert snapshot(out) == before  # every file byte for byte, report.json included
    assert hidden_leftovers(out) == []


@on_tensorflow
def test_a_failed_overwrite_returns_its_report_without_saving_it(models, earlier_export, tmp_path):
    out, before = copy_of(earlier_export, tmp_path)
    report = export_model(models["nan"], out, formats="tflite_float32", overwrite=True, num_samples=2,
                          latency_runs=1, verbose=False)
    assert not report.passed and not report.installed
    assert np.isnan(report.row("tflite_float32")["max_abs_diff"])
    assert snapshot(out) == before


@on_tensorflow
def test_an_exception_mid_export_leaves_the_previous_export_exactly_as_it_was(models, earlier_export, tmp_path,
                                                                             monkeypatch):
    out, before = copy_of(earlier_export, tmp_path)
    convert = tflite.convert_tflite

    def interrupted_at_float16(saved_model_dir, quantization="float32", *args, **kwargs):
        if quantization == "float16":  # after another model's float32 TFLite was written and verified
            raise KeyboardInterrupt
        return convert(saved_model_dir, quantization, *args, **kwargs)

    monkeypatch.setattr(tflite, "convert_tflite", interrupted_at_float16)
    with pytest.raises(KeyboardInterrupt):
        export_model(models["other"], out, formats="tflite_float32,tflite_float16", overwrite=True, num_samples=2,
                     latency_runs=1, verbose=False)
    assert snapshot(out) == before
    assert hidden_leftovers(out) == []


@on_tensorflow
def test_a_successful_overwrite_replaces_the_previous_export_as_a_whole(models, earlier_export, tmp_path):
    out, _ = copy_of(earlier_export, tmp_path)
    code = export.main(["--model", models["good"], "--output-dir", out, "--formats", "tflite_float16", "--overwrite",
                        *CHEAP])
    assert code == 0
    # The earlier SavedModel and float32 model are gone with the report that described them.
    assert sorted(os.listdir(out)) == ["labels.txt", "model_float16.tflite", "report.json"]
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    assert [row["artifact"] for row in report["artifacts"]] == ["tflite_float16"]
    assert report["installed"] and report["passed"]
    assert hidden_leftovers(out) == []


@on_tensorflow
def test_other_files_in_the_output_folder_are_never_touched(models, earlier_export, tmp_path):
    out, _ = copy_of(earlier_export, tmp_path)
    with open(os.path.join(out, "notes.txt"), "w") as handle:
        handle.write("mine")
    before = snapshot(out)
    assert export.main(["--model", models["nan"], "--output-dir", out, "--formats", "tflite_float32", "--overwrite",
                        *CHEAP]) == 1
    assert snapshot(out) == before
    assert export.main(["--model", models["good"], "--output-dir", out, "--formats", "tflite_float16", "--overwrite",
                        *CHEAP]) == 0
    assert sorted(os.listdir(out)) == ["labels.txt", "model_float16.tflite", "notes.txt", "report.json"]
    assert hidden_leftovers(out) == []


@on_tensorflow
def test_every_folder_and_file_tensorflow_writes_into_an_export_gets_the_umask_permissions(models, tmp_path):
    # Issue 23, item 8: TensorFlow makes the SavedModel's variables/ and assets/ 0755 whatever the umask, so
    # under a group-writable umask (0o002) they lacked the group's write bit (0o027 would hide it: 0755 & ~027).
    out = str(tmp_path / "export")
    umask = os.umask(0o002)
    try:
        assert export.main(["--model", models["good"], "--output-dir", out, "--formats", "saved_model",
                            *CHEAP]) == 0
    finally:
        os.umask(umask)
    modes = {".": (stat.S_IMODE(os.lstat(out).st_mode), True)}
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, out)] = (stat.S_IMODE(os.lstat(path).st_mode), os.path.isdir(path))
    assert modes[os.path.join("saved_model", "variables")][1]
    wrong = {name: oct(mode) for name, (mode, is_dir) in modes.items()
             if mode != (0o777 if is_dir else 0o666) & ~0o002}
    assert wrong == {}


KILLED_EXPORT = """
import os, signal, sys
from keras_t2t.export import staging
out, when = sys.argv[1], sys.argv[2]
stage = staging.ExportStaging(out)
for name, text in (("model.onnx", "new model"), ("labels.txt", "new labels"), ("report.json", "new report")):
    with open(os.path.join(stage.path, name), "w") as handle:
        handle.write(text)
if when == "before the switch":
    os.kill(os.getpid(), signal.SIGKILL)
staging.remove_path = lambda path: os.kill(os.getpid(), signal.SIGKILL)  # right after the exchange
stage.commit()
"""


@on_tensorflow
@pytest.mark.parametrize("when", ["before the switch", "after the switch, before the old export is deleted"])
def test_a_kill_leaves_the_old_or_the_new_export_whole_and_the_next_export_cleans_up(tmp_path, when):
    out = tmp_path / "export"
    out.mkdir()
    old = {"model.onnx": b"old model", "model_float32.tflite": b"old tflite", "labels.txt": b"old labels",
           "report.json": b"old report"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out), when], env=env, capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    new = {"model.onnx": b"new model", "labels.txt": b"new labels", "report.json": b"new report"}
    assert snapshot(str(out)) == (old if when == "before the switch" else new)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".export.export-")], "the killed export left its folder"
    staging.ExportStaging(str(out)).discard()  # what the next export does first
    assert sorted(os.listdir(tmp_path)) == ["export"]


# --------------------------------------------------------------------------
# Item 13: leftovers of dead exports go with the next export
# --------------------------------------------------------------------------
@on_tensorflow
def test_temporaries_of_dead_exports_are_removed_by_the_next_export(models, tmp_path):
    out = tmp_path / "export"
    (out / ".saved_model.partial-k2j3h4").mkdir(parents=True)
    (out / ".saved_model.partial-k2j3h4" / "saved_model.pb").write_bytes(b"half")
    (out / ".model_float16.tflite.partial-x8y7z6").write_bytes(b"half")
    (out / ".report.json.abc123.tmp").write_bytes(b"{")
    pid = dead_pid()
    (out / f".export-staging-{pid}").mkdir()
    (tmp_path / f".export.export-{pid}").mkdir()
    (tmp_path / f".export.export-{pid}" / "model.onnx").write_bytes(b"half")
    alive = tmp_path / f".export.export-{os.getppid()}"  # a running process's staging folder stays
    alive.mkdir()
    assert export.main(["--model", models["good"], "--output-dir", str(out), "--formats", "tflite_float32",
                        *CHEAP]) == 0
    assert sorted(os.listdir(out)) == ["labels.txt", "model_float32.tflite", "report.json"]
    assert sorted(os.listdir(tmp_path)) == sorted(["export", alive.name])


# --------------------------------------------------------------------------
# Item 15: the plain command, and a verification that does not flip on near-ties
# --------------------------------------------------------------------------
@on_tensorflow
def test_the_plain_command_exports_every_format_without_calibration_and_names_the_skipped_one(tmp_path, capsys):
    model = str(tmp_path / "m.keras")
    near_tie_model().save(model)
    out = str(tmp_path / "out")
    code = export.main(["--model", model, "--output-dir", out, "--latency-runs", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    calibrated = [spec.name for spec in formats.FORMAT_SPECS if spec.needs_calibration]
    assert "tflite_int8" in calibrated
    made = [row["artifact"].split(":")[0] for row in report["artifacts"]]
    assert list(dict.fromkeys(made)) == [name for name in formats.FORMATS if name not in calibrated]
    assert all(row["passed"] for row in report["artifacts"])
    assert [entry["artifact"] for entry in report["skipped"]] == calibrated
    assert all("--representative-dir" in entry["enable_with"] for entry in report["skipped"])
    assert "tflite_int8: skipped" in printed and "--representative-dir DIR" in printed
    # The float16 model's top class differs from Keras' on every image, by a near-tie: it passes, and says so.
    float16 = next(row for row in report["artifacts"] if row["artifact"] == "tflite_float16")
    assert float16["top1_agreement_strict"] == 0.0 and float16["top1_agreement"] == 1.0
    assert float16["decisive_samples"] == 0
    assert report["verification"]["decisive_margin"] == 0.1 and report["verification"]["decisive_samples"] == 0
    assert "near-ties" in report["verification"]["top1_rule"]
    assert not os.path.exists(os.path.join(out, "model_int8.tflite"))


def test_an_explicitly_requested_int8_model_still_needs_calibration_images(tmp_path, models):
    with pytest.raises(export.ExportError, match=r"tflite_int8 is calibrated on a representative set"):
        export_model(models["good"], tmp_path / "out", formats="tflite_float32,tflite_int8")
    assert not (tmp_path / "out").exists()


def test_top1_is_compared_exactly_where_the_reference_is_decisive_and_up_to_near_ties_elsewhere():
    margin = 0.1
    reference = np.array(
        [
            [2.0, 1.0, 0.0],    # decisive: class 0 leads by 1.0
            [1.0, 0.95, 0.0],   # near-tie between 0 and 1 (0.05 apart)
            [1.0, 0.95, 0.0],
            [0.5, 0.0, 0.45],   # near-tie between 0 and 2
        ]
    )
    assert verify.decisive(reference, margin).tolist() == [True, False, False, False]
    swapped_ties = np.array([[2.0, 1.0, 0.0], [0.9, 1.0, 0.0], [1.0, 0.9, 0.0], [0.4, 0.0, 0.5]])
    assert verify.top1_agreement(reference, reference, margin) == (1.0, 1.0, 1)
    assert verify.top1_agreement(swapped_ties, reference, margin) == (1.0, 0.5, 1)
    # A flip on the decisive sample counts, and so does a class the reference rates far below its top one.
    decisive_flip = np.array([[1.0, 2.0, 0.0], [1.0, 0.9, 0.0], [1.0, 0.9, 0.0], [0.5, 0.0, 0.4]])
    far_off = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.9, 0.0], [0.5, 0.0, 0.4]])
    assert verify.top1_agreement(decisive_flip, reference, margin) == (0.75, 0.75, 1)
    assert verify.top1_agreement(far_off, reference, margin) == (0.75, 0.75, 1)
    # With no margin, the strict rule; a NaN reference is never decisive and never agrees.
    assert verify.top1_agreement(swapped_ties, reference, 0.0)[0] == 0.5
    nan = np.array([[np.nan, 1.0, 0.0]])
    assert verify.decisive(nan, margin).tolist() == [False]
    assert verify.top1_agreement(np.array([[1.0, 0.0, 0.0]]), nan, margin)[0] == 0.0


# --------------------------------------------------------------------------
# Items 7 and 10: an unwritable output folder, an unknown backend (one line, exit 2, before any work)
# --------------------------------------------------------------------------
def test_an_unwritable_output_folder_is_one_line_and_exit_2_before_any_work(tmp_path, models, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    if os.geteuid() == 0:
        read_only = "/proc/keras_t2t_export"  # root writes through permission bits, not into /proc
    else:
        read_only = str(tmp_path / "read_only")
        os.mkdir(read_only, 0o555)
    for out, expected in ((str(blocker / "export"), "is a file, not a folder"), (read_only, "cannot be written")):
        code = export.main(["--model", models["good"], "--output-dir", out, "--formats", "tflite_float32"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and expected in err and "--output-dir" in err, err
        assert not os.path.exists(out)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a subprocess: runs once, in the TensorFlow session")
@pytest.mark.parametrize("command", [[CONVERT], ["-m", "keras_t2t.export"]], ids=["convert.py", "-m"])
def test_an_unknown_keras_backend_is_one_line_naming_the_valid_ones_with_exit_2(tmp_path, models, command):
    env = dict(os.environ, KERAS_BACKEND="bogus", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, *command, "--model", models["good"], "--output-dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=3600, cwd=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    # tflite/convert.py imports TensorFlow before it can check (it then sets the backend itself), and
    # TensorFlow's C++ start-up notes go to stderr whatever TF_CPP_MIN_LOG_LEVEL says: they are not ours.
    ours = [line for line in result.stderr.splitlines() if not line.startswith(("I0000", "WARNING: All log"))]
    assert len(ours) == 1 and "'bogus'" in ours[0] and "tensorflow, jax, torch" in ours[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------
# Another backend: the same promise through the TensorFlow process
# --------------------------------------------------------------------------
@pytest.mark.skipif(BACKEND != "jax", reason="hands off to a TensorFlow process: runs once, in the JAX session")
def test_a_failed_overwrite_from_another_backend_leaves_the_previous_export(models, tmp_path):
    out = str(tmp_path / "export")
    options = {"formats": "tflite_float32", "num_samples": 2, "latency_runs": 1, "verbose": False}
    assert export_model(models["good"], out, **options).passed
    before = snapshot(out)
    report = export_model(models["nan"], out, overwrite=True, **options)
    assert not report.passed and not report.installed
    assert snapshot(out) == before
    assert hidden_leftovers(out) == []

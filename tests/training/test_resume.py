"""The resume state is one atomic unit: a kill at any point of the epoch-end save resumes after the last
finished epoch, with that epoch's optimizer step count; what the kill left is removed by the next run.

One real run is killed (in process, by a BaseException raised inside the real
save, which like SIGKILL nothing of the trainer or Keras catches) at epoch 2's
save, after its new weights file and before its state; each other kill point is
that folder one step earlier or later. A real SIGKILL during an epoch is
test_distributed's.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from keras_t2t import io_utils
from keras_t2t.data.digits import write_digits_folder
from keras_t2t.training import DIGITS, resume, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4  # 128 training digits in batches of 32


class Killed(BaseException):
    """The process 'dies' here: not an Exception, so no handler of the trainer or of Keras takes it."""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    digits = write_digits_folder(str(tmp_path_factory.mktemp("resume") / "digits"))
    return dataclasses.replace(DIGITS, data_dir=digits, train_limit=128, val_limit=32, batch_size=32,
                               lr_base_batch=32, epochs=2, cooldown_epochs=0, warmup_epochs=0)


def _resume_files(out):
    return sorted(os.listdir(os.path.join(out, "resume")))


def _state(out):
    with open(os.path.join(out, "resume", "train_state.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def killed_in_epoch_2(recipe, tmp_path_factory):
    """A run killed at epoch 2's save, after its new weights file and before its state: ``(folder, the state
    the kill kept from being written)``. The other kill points are this folder plus or minus one step."""
    out = str(tmp_path_factory.mktemp("killed") / "run")
    unwritten = {}
    original = resume.write_json_atomic

    def write(path, data):
        if data.get("epoch") == 2:
            unwritten.update(data)
            raise Killed("after the new weights file, before the state")
        return original(path, data)

    resume.write_json_atomic = write
    try:
        with pytest.raises(Killed):
            train(recipe, out, verbose=0)
    finally:
        resume.write_json_atomic = original
    return out, unwritten


def _copy(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    return out


def _while_writing_weights(out, epoch_2_state):
    # Killed while Keras wrote the new weights file: part of it under its new name.
    path = os.path.join(out, "resume", epoch_2_state["weights_file"])
    os.truncate(path, os.path.getsize(path) // 3)


def _after_weights_before_state(out, epoch_2_state):
    pass  # the fixture's folder as it is


def _while_writing_state(out, epoch_2_state):
    # What io_utils.write_atomic leaves when killed while writing: half a temporary file beside the state.
    text = json.dumps(epoch_2_state)
    with open(os.path.join(out, "resume", ".train_state.json.k1ll3d.tmp"), "w") as handle:
        handle.write(text[: len(text) // 2])


def _after_state_before_deleting_old_weights(out, epoch_2_state):
    io_utils.write_json_atomic(os.path.join(out, "resume", "train_state.json"), epoch_2_state)


# The kill point -> (how the folder looks after it, the epoch its state holds)
KILL_POINTS = {
    "while_writing_weights": (_while_writing_weights, 1),
    "after_weights_before_state": (_after_weights_before_state, 1),
    "while_writing_state": (_while_writing_state, 1),
    "after_state_before_deleting_old_weights": (_after_state_before_deleting_old_weights, 2),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_a_kill_at_any_point_of_the_epoch_end_save_resumes_after_the_last_finished_epoch(point, recipe, tmp_path,
                                                                                        killed_in_epoch_2):
    run, epoch_2_state = killed_in_epoch_2
    out = _copy(run, tmp_path)
    make, committed = KILL_POINTS[point]
    make(out, epoch_2_state)
    state = _state(out)
    assert (state["epoch"], state["optimizer_steps"]) == (committed, committed * STEPS)
    assert state["weights_file"] in _resume_files(out)
    assert not os.path.exists(os.path.join(out, "summary.json"))
    leftovers = [n for n in _resume_files(out) if n not in ("train_state.json", state["weights_file"])]
    assert leftovers, "the kill left nothing behind: the simulation is off"

    _, summary = train(recipe, out, verbose=0)
    assert summary["resumed_from_epoch"] == committed
    assert summary["optimizer_steps"] == 2 * STEPS  # as uninterrupted
    # Throughput comes from the epochs that ran, even when this process trained none.
    assert summary["train_images_per_second"] > 0 and summary["train_seconds"] > 0
    final = _state(out)
    assert final["epoch"] == 2 and len(final["epoch_images_per_second"]) == 2
    assert _resume_files(out) == sorted(["train_state.json", final["weights_file"]])


def test_the_state_names_its_weights_file_and_a_changed_file_is_refused(killed_in_epoch_2, tmp_path):
    out = _copy(killed_in_epoch_2[0], tmp_path)
    state = _state(out)
    path = os.path.join(out, "resume", state["weights_file"])
    assert (state["weights_bytes"], state["weights_sha256"]) == resume.file_digest(path)
    with open(path, "r+b") as handle:
        handle.seek(state["weights_bytes"] // 2)
        handle.write(b"\xff" * 16)
    with pytest.raises(ValueError, match=r"names .*train_state-e0001-.*\.weights\.h5', which has .* bytes and SHA-256"):
        resume.state_weights(out, state)
    os.unlink(path)
    with pytest.raises(ValueError, match="which is missing: the folder was changed outside the trainer"):
        resume.state_weights(out, state)


def test_a_resume_folder_of_the_previous_layout_still_resumes(recipe, killed_in_epoch_2, tmp_path):
    # Before the state named its weights file: resume/train_state.weights.h5 beside a state without the name.
    out = _copy(killed_in_epoch_2[0], tmp_path)
    state = _state(out)
    os.replace(os.path.join(out, "resume", state.pop("weights_file")),
               os.path.join(out, "resume", resume.LEGACY_WEIGHTS))
    for key in ("weights_bytes", "weights_sha256"):
        state.pop(key)
    io_utils.write_json_atomic(os.path.join(out, "resume", "train_state.json"), state)
    _, summary = train(recipe, out, verbose=0)
    assert (summary["resumed_from_epoch"], summary["optimizer_steps"]) == (1, 2 * STEPS)
    assert resume.LEGACY_WEIGHTS not in _resume_files(out)


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_processes_are_removed_and_others_kept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = [f".tmp-{dead}-best.weights.h5", f".tmp-{alive}-last.weights.h5", ".summary.json.abc.tmp",
             ".recipe.json.old.tmp", "notes.txt", f".tmp-x{dead}-best.weights.h5"]
    for name in names:
        (tmp_path / name).write_text("x")
    os.makedirs(tmp_path / f".tmp-{dead}-model.keras")  # a folder is removed as a whole
    old = time.time() - 7200
    os.utime(tmp_path / ".recipe.json.old.tmp", (old, old))
    patterns = [".tmp-{pid}-*", ".summary.json.*.tmp", ".recipe.json.*.tmp"]
    removed = io_utils.remove_stale_temporaries(str(tmp_path), patterns)
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [f".tmp-{dead}-best.weights.h5", f".tmp-{dead}-model.keras", ".recipe.json.old.tmp"])
    # A live writer's file, a fresh file without a process id, and names the patterns do not match stay.
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f".tmp-{alive}-last.weights.h5", ".summary.json.abc.tmp", "notes.txt", f".tmp-x{dead}-best.weights.h5"])
    # older_than=0: the caller knows nobody else writes there.
    io_utils.remove_stale_temporaries(str(tmp_path), patterns, older_than=0)
    assert ".summary.json.abc.tmp" not in os.listdir(tmp_path)


def test_a_second_run_in_a_folder_in_use_is_refused_before_any_work(recipe, tmp_path):
    out = tmp_path / "run"
    os.makedirs(out)
    with resume.folder_lock(str(out)) as exclusive:
        assert exclusive
        with pytest.raises(ValueError, match="Another training run is using .*; wait for it to end"):
            train(recipe, str(out), verbose=0)
    assert sorted(os.listdir(out)) == [".lock"]


"""Replicas and interruptions: tf.distribute (Mirrored, MultiWorkerMirrored), JAX DataParallel, resume.

Device setup must happen before a runtime starts, so each case runs in a fresh
process (``training/train.py`` or a short script), on tiny data.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from helpers import REPO

from keras_t2t.data.digits import write_digits_folder

BACKEND = keras.backend.backend()
TRAIN = os.path.join(REPO, "training", "train.py")
# 128 training digits in steps of 32, 64 validation digits, no augmentation (the digits recipe).
TINY = ["--train-limit", "128", "--val-limit", "64", "--batch-size", "32", "--lr-base-batch", "32",
        "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]
tf_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute strategies need the TensorFlow backend")


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return write_digits_folder(str(tmp_path_factory.mktemp("dist") / "digits"))


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(args, env=None, timeout=3600):
    result = subprocess.run([sys.executable] + args, env=env or _env(), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def _summary(out):
    with open(os.path.join(out, "summary.json")) as handle:
        return json.load(handle)


MIRRORED_SCRIPT = """
import dataclasses, json, sys
from keras_t2t.training import DIGITS, build_model, setup_distribution, train
from keras_t2t.training.distribute import Distribution
two = setup_distribution(cpu_replicas=2)          # two logical CPU devices, before any TF work
import keras
digits, out = sys.argv[1], sys.argv[2]
recipe = dataclasses.replace(DIGITS, data_dir=digits, train_limit=128, val_limit=32, batch_size=32, lr_base_batch=32,
                             epochs=2, cooldown_epochs=0, warmup_epochs=0, shuffle=False, drop_path_rate=0.0,
                             t2t_dropout=0.0, jit_compile="false")
build_model(recipe, 10).save_weights(out + "/init.weights.h5")

class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__(); self.values = []
    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["loss"]))

curves, summaries = {}, {}
for name, distribution in (("one", Distribution("tensorflow", "default", 1, ["/cpu:0"])), ("two", two)):
    losses = Losses()
    _, summaries[name] = train(recipe, out + "/" + name, distribution=distribution, verbose=0,
                               weights=out + "/init.weights.h5", callbacks=[losses])
    curves[name] = losses.values
print("RESULT" + json.dumps({"curves": curves, "replicas": {k: s["replicas"] for k, s in summaries.items()},
                             "kinds": {k: s["distribution"] for k, s in summaries.items()}}))
"""


@tf_only
def test_mirrored_two_cpu_replicas_match_single_replica_training(digits_dir, tmp_path):
    # Same initial weights, same batches in the same order, no randomness: the per-step loss
    # of 2 replicas x 16 images must follow 1 replica x 32 images.
    stdout = _run(["-c", MIRRORED_SCRIPT, digits_dir, str(tmp_path)])
    result = json.loads(stdout.split("RESULT", 1)[1])
    assert result["replicas"] == {"one": 1, "two": 2}
    assert result["kinds"] == {"one": "default", "two": "mirrored"}
    one, two = np.array(result["curves"]["one"]), np.array(result["curves"]["two"])
    assert len(one) == len(two) == 8
    # Keras logs the running mean of the epoch: epoch 2's mean loss is below epoch 1's (it trains;
    # unshuffled batches hold one or two digits each, so single steps go up and down).
    assert one[7] < one[3]
    np.testing.assert_allclose(two, one, rtol=2e-3, atol=2e-4)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@tf_only
def test_two_worker_multi_worker_mirrored_run_completes_an_epoch(digits_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "run")
    args = [TRAIN, "--output-dir", out, "--data-dir", digits_dir, "--epochs", "1"] + TINY
    workers = []
    for index in range(2):
        env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen([sys.executable] + args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [w.communicate(timeout=3600)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, text in zip(workers, outputs):
        assert w.returncode == 0, text[-5000:]
    summary = _summary(out)
    assert (summary["distribution"], summary["workers"], summary["replicas"]) == ("multi_worker", 2, 2)
    assert summary["optimizer_steps"] == 4 and summary["global_batch_size"] == 32
    assert 0.0 <= summary["val_top1"] <= 1.0
    # Only the chief writes the run's files; worker 1 keeps its own in a side folder.
    assert os.path.exists(os.path.join(out, "best.weights.h5"))
    assert not os.path.exists(os.path.join(out, ".worker1", "summary.json"))


@tf_only
def test_a_batch_that_does_not_split_over_cpu_replicas_fails_before_training(digits_dir, tmp_path):
    result = subprocess.run([sys.executable, TRAIN, "--output-dir", str(tmp_path / "o"), "--data-dir", digits_dir,
                             "--cpu-replicas", "2", "--epochs", "1"] + TINY + ["--batch-size", "33"],
                            env=_env(), capture_output=True, text=True, timeout=3600, cwd=REPO)
    assert result.returncode == 2
    assert "global batch size 33 does not split over 2 replicas" in result.stderr
    assert not os.path.exists(tmp_path / "o" / "recipe.json")


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel runs in the JAX session")
def test_jax_data_parallel_over_two_host_devices(digits_dir, tmp_path):
    out = str(tmp_path / "run")
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    stdout = _run([TRAIN, "--output-dir", out, "--data-dir", digits_dir, "--cpu-replicas", "2", "--epochs", "1"]
                  + TINY, env=env)
    summary = _summary(out)
    assert (summary["distribution"], summary["replicas"]) == ("jax_data_parallel", 2)
    assert summary["optimizer_steps"] == 4
    assert "keras.distribution.DataParallel: 2 replica(s)" in stdout


def _history_epochs(out):
    with open(os.path.join(out, "history.csv")) as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="one real kill is enough (TensorFlow session); the resume "
                    "code is backend-generic and test_train_cli resumes on every backend")
def test_a_killed_run_resumes_with_the_uninterrupted_step_count(digits_dir, tmp_path):
    # 3 epochs of 4 steps: uninterrupted, a run ends at 12 optimizer steps (test_train_cli checks
    # that steps = epochs x steps per epoch). Kill -9 while epoch 2 trains, run the same command again.
    out = str(tmp_path / "run")
    args = [sys.executable, TRAIN, "--output-dir", out, "--data-dir", digits_dir, "--epochs", "3"] + TINY
    state = os.path.join(out, "resume", "train_state.json")
    process = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 3600  # only a hang trips it
        while time.time() < deadline and process.poll() is None:
            if os.path.exists(state):
                with open(state) as handle:
                    if json.load(handle)["epoch"] >= 1:
                        break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    with open(state) as handle:
        killed_at = json.load(handle)
    assert 1 <= killed_at["epoch"] < 3 and killed_at["optimizer_steps"] == 4 * killed_at["epoch"]
    assert not os.path.exists(os.path.join(out, "summary.json"))

    _run(args[1:])
    summary = _summary(out)
    assert summary["resumed_from_epoch"] == killed_at["epoch"]
    assert summary["optimizer_steps"] == 12
    assert _history_epochs(out)[-1] == 2 and sorted(set(_history_epochs(out))) == [0, 1, 2]

"""Small helpers shared by the tests (no model logic: that is what they test)."""

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def random_images(seed, batch, height, width, channels=3):
    return np.random.default_rng(seed).standard_normal((batch, height, width, channels)).astype("float32")


def run_on_backend(backend, code, timeout=600):
    """Runs Python ``code`` in a fresh process on ``backend``; returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if result.returncode != 0:
        raise AssertionError(f"{backend} subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout


def n_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)

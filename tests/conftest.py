import os
import sys

import numpy as np
import pytest

# tests/reference.py (the independent NumPy implementation of the spec) is imported as `reference`.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts (and leaves) the global dtype policy at float32."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def images(rng, batch, height, width, channels=3):
    return rng.standard_normal((batch, height, width, channels)).astype("float32")


@pytest.fixture(scope="module")
def one_torch_thread():
    """On torch, tiny models run 5-10x faster on one intra-op thread than on a busy 2-core CPU's two."""
    import keras

    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

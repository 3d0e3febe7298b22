"""`.keras` files saved by earlier versions of the package load and predict the same."""

import os

import keras
import numpy as np
import pytest

import keras_t2t  # noqa: F401  (registers the package's classes)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "saved_before_redesign")
NAMES = ("t2t_performer", "t2t_transformer", "t2t_se", "t2t_ghost", "t2t_dense", "vit_mini")


@pytest.mark.parametrize("name", NAMES)
def test_keras_file_saved_before_the_redesign_loads_and_predicts_the_same(name):
    model = keras.saving.load_model(os.path.join(FIXTURES, f"{name}.keras"))
    inputs = np.load(os.path.join(FIXTURES, "inputs.npy"))
    expected = np.load(os.path.join(FIXTURES, f"{name}_outputs.npy"))
    got = np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)

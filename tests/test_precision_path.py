"""The inference path ``precision.prepare_for_inference`` takes on each backend (issue 24, item 4):
the rule of ``recommended_inference``, and that the path it picks gives the NumPy reference's logits.

Which path is fastest is measured by ``benchmarks/breakdown.py --profile``, never here.
"""

import keras
import numpy as np
import pytest

import keras_t2t
import reference as ref
from helpers import random_images
from keras_t2t import precision
from keras_t2t.weights import load_state_dict

# The float32 bound of tests/models/test_model.py: the chosen path is the same arithmetic
# in float32 as the model's other paths, only compiled (or not) differently.
ATOL = 1e-5
BACKENDS = ("tensorflow", "jax", "torch")


@pytest.mark.parametrize("batch_size", [1, 32, None])
def test_tensorflow_and_jax_run_compiled_torch_eagerly(batch_size):
    # T2T-ViT-14 float32: XLA beat TensorFlow's own kernels at both batches in the quiet engines run
    # (docs/deploy_cpu.md), JAX has no other compiler, torch.compile did not pay.
    want = {"tensorflow": (True, "XLA"), "jax": (True, "XLA"), "torch": (False, "eager")}
    batch = "any batch" if batch_size is None else f"batch {batch_size}"
    for backend in BACKENDS:
        choice, why = precision.recommended_inference(backend, batch_size, explain=True)
        assert choice == {"jit_compile": want[backend][0]}
        assert why.startswith(f"{backend}, float32, {batch}: {want[backend][1]} (")


def test_bfloat16_on_tensorflow_stays_without_xla():
    choice, why = precision.recommended_inference("tensorflow", 1, "bfloat16", explain=True)
    assert choice == {"jit_compile": False} and "oneDNN's bfloat16 matmul" in why


def test_recommended_inference_names_the_accepted_values():
    with pytest.raises(ValueError, match=r"Unknown backend 'numpy'; accepted: 'tensorflow', 'jax', 'torch'"):
        precision.recommended_inference("numpy")
    with pytest.raises(ValueError, match="batch_size must be a positive number of images or None; got 0"):
        precision.recommended_inference("jax", 0)


def _reference_model():
    config = {"t2t_type": "performer", "image_size": (64, 64), "embed_dim": 64, "depth": 2, "num_heads": 4,
              "mlp_ratio": 2.0, "classes": 10}
    sd = ref.make_state_dict(config, np.random.default_rng(7))
    model = keras_t2t.T2TViT(input_shape=(64, 64, 3), embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                             classes=10, classifier_activation=None)
    load_state_dict(model, sd)
    return model, sd, config


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_prepared_model_predicts_the_reference_logits(batch_size):
    model, sd, config = _reference_model()
    model.predict(random_images(1, batch_size, 64, 64), verbose=0)  # a predict function made before
    prepared = precision.prepare_for_inference(model, batch_size)
    assert prepared is model
    assert model.jit_compile is precision.recommended_inference(batch_size=batch_size)["jit_compile"]
    assert model.inference_reason.startswith(f"{keras.backend.backend()}, float32, batch {batch_size}: ")
    x = random_images(2, batch_size, 64, 64)
    np.testing.assert_allclose(model.predict(x, verbose=0), ref.forward(sd, x, config), atol=ATOL, rtol=ATOL)

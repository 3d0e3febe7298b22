"""bfloat16 inference (issue 14): float32 weights into bfloat16 models, the float32 islands,
accuracy against float32 on trained weights and against the NumPy reference, and the
automatic dtype choice.

The trained model is ``tests/export/fixtures/digits_t2t_vit_mini/model.keras``: the README's
main job (``python training/train.py``, TensorFlow, 20 epochs, 95.0% validation top-1) saved by
the package's trainer.
"""

import os

import keras
import numpy as np
import pytest

import keras_t2t
import reference as ref
from helpers import (BFLOAT16_MIN_TOP1_AGREEMENT, assert_bfloat16_logits_close, random_images,
                     save_authors_checkpoint, t2t_depth)
from keras_t2t import precision
from keras_t2t.data.digits import load_digits_images

TRAINED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "export", "fixtures", "digits_t2t_vit_mini",
                       "model.keras")
# The bfloat16 logits against float32 (issue 22): within helpers.bfloat16_logit_bound of the
# model's depth, which argues the bound from bfloat16's 8 bits and lists what it was checked
# against (0.070 for the mini; measured 0.011-0.022 with oneDNN or XLA, 0.047 on an AVX2-only
# CPU, where TensorFlow runs Eigen's bfloat16 kernels). Top-1: an image whose float32 top two
# are within twice the bound of each other is a near-tie that a legitimate rounding may swap;
# every other image must keep its top-1 (helpers.assert_bfloat16_logits_close). On trained
# weights the promise holds on top: 99.5% agreement, near-ties included (at most one of
# the 359 validation digits changes; 5 of them are near-ties at the mini's bound, the closest
# 0.054 of the largest logit apart, 17 times the worst per-logit rms error measured, 0.0032:
# none changed on any CPU or backend measured).


def _np(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")).astype("float64")


def _logits_model(model):
    """The same model without its softmax (the scores before it are the logits)."""
    twin = model.__class__.from_config(dict(model.get_config(), classifier_activation=None))
    twin.set_weights(model.get_weights())
    return twin


@pytest.fixture(scope="module")
def digits_val():
    (_, _), (images, labels) = load_digits_images(image_size=32, validation_fraction=0.2, seed=0)
    return keras_t2t.preprocess_input(images), labels


@pytest.fixture(scope="module")
def trained32():
    return _logits_model(keras.saving.load_model(TRAINED, compile=False))


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_trained_model_in_bfloat16_agrees_with_float32_on_the_validation_digits(trained32, digits_val, dtype):
    images, labels = digits_val
    model = precision.prepare_for_inference(precision.cast_model(trained32, dtype))
    assert precision.compute_dtype(model) == "bfloat16"
    want = _np(trained32.predict(images, batch_size=128, verbose=0))
    got = _np(model.predict(images, batch_size=128, verbose=0))
    assert_bfloat16_logits_close(got, want, t2t_depth(trained32.get_config()), BFLOAT16_MIN_TOP1_AGREEMENT)
    # The model is a trained one: float32 is right on most validation digits.
    assert np.mean(want.argmax(-1) == labels) > 0.9


def test_bfloat16_model_keeps_its_float32_islands_and_returns_float32(trained32):
    model = precision.cast_model(trained32, "bfloat16")
    float32 = sorted(v.path for v in model.weights if v.dtype == "float32")
    # Every T2T layer's input LayerNorm (it reads unrounded tokens: the raw pixels' windows in the
    # first), the performer's random features, and the fixed position table; everything else,
    # the rest of the first T2T layer included, is bfloat16.
    attentions = sorted({v.path.split("/")[1] for v in model.weights if v.path.startswith("tokens_to_token/attention")})
    assert attentions  # the mini has T2T layers
    islands = [f"tokens_to_token/{a}/{name}" for a in attentions for name in ("norm1/beta", "norm1/gamma", "w")]
    assert float32 == sorted(islands + ["pos_embed/pos_embed"])
    assert {v.dtype for v in model.weights if v.path not in float32} == {"bfloat16"}
    assert model.get_layer("tokens_to_token").attentions[0].kqv.compute_dtype == "bfloat16"
    out = model(np.zeros((2, 32, 32, 3), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_a_cast_copy_keeps_the_preprocessing_and_the_source_its_loader_attached(tmp_path):
    from keras_t2t.resolve import resolve_model

    resolved = resolve_model(TRAINED)
    resolved.model.preprocessing = resolved.preprocessing  # as keras-t2t-visualize attaches it
    model = precision.cast_model(resolved.model, "bfloat16")
    assert model is not resolved.model and precision.compute_dtype(model) == "bfloat16"
    assert model.preprocessing == resolved.preprocessing and model.resolved_from == resolved.model.resolved_from


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_builder_loads_a_float32_file_into_bfloat16_variables(trained32, digits_val, tmp_path, suffix):
    path = str(tmp_path / f"mini{suffix}")
    trained32.save(path) if suffix == ".keras" else trained32.save_weights(path)
    model = keras_t2t.t2t_vit_mini(weights=path, input_shape=(32, 32, 3), classes=10,
                                   classifier_activation=None, dtype="bfloat16")
    assert precision.compute_dtype(model) == "bfloat16"
    images = digits_val[0][:64]
    want = _np(trained32(images))
    got = _np(model(images))
    assert_bfloat16_logits_close(got, want, t2t_depth(trained32.get_config()), min_agreement=63 / 64)


@pytest.mark.parametrize("t2t_type", ["performer", "transformer"])
def test_authors_checkpoint_into_bfloat16_matches_the_numpy_reference(tmp_path, t2t_type):
    config = dict(t2t_type=t2t_type, embed_dim=256, depth=2, num_heads=4, mlp_ratio=2.0, classes=1000,
                  image_size=(224, 224))
    ema = ref.make_state_dict(config, 41)
    path = save_authors_checkpoint(tmp_path / "custom.pth.tar", ema, ema, "T2t_vit_custom")
    model = keras_t2t.T2TViT(input_shape=(224, 224, 3), t2t_type=t2t_type, embed_dim=256, depth=2, num_heads=4,
                             mlp_ratio=2.0, classifier_activation=None, dtype="bfloat16")
    keras_t2t.load_weights(model, path)
    images = random_images(5, 4, 224, 224)
    want = ref.forward(ema, images, config)
    got = _np(model(images))
    # Depth 2 + the 224 stem's 2 T2T layers: bound 0.0625, measured 0.007-0.015. Random weights
    # and 1000 classes make near-ties (top-two gaps 0.6-5.5% of the largest logit): top-1 is
    # checked only where the bound cannot swap it, here on none of the four images.
    assert_bfloat16_logits_close(got, want, t2t_depth(model.get_config()))


def test_restructurize_is_the_reshape_of_the_reference_and_sits_in_the_t2t_module():
    tokens = np.arange(2 * 12 * 5, dtype="float32").reshape(2, 12, 5)
    layer = keras_t2t.Restructurize((3, 4))
    # The reference: (B, N, C) -> NCHW by transpose(1, 2).reshape(B, C, rows, cols), here channels-last.
    want = tokens.transpose(0, 2, 1).reshape(2, 5, 3, 4).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(_np(layer(tokens)), want)
    assert keras_t2t.Restructurize.from_config(layer.get_config()).grid == (3, 4)
    with pytest.raises(ValueError, match="3x4 grid needs 12 tokens; got 11"):
        layer(tokens[:, :11])
    model = keras_t2t.t2t_vit_mini(input_shape=(32, 32, 3), classes=10)
    module = model.get_layer("tokens_to_token")
    # The mini's first soft split (3, 2, 1) on 32x32: (32 + 2 - 3) // 2 + 1 = 16 per side.
    assert [(r.name, r.grid) for r in module.restructurizations] == [("restructurize1", (16, 16))]


AMX_CPU = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN5_CPU = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
OLD_CPU = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v4\nflags\t\t: fpu avx2\n"


def _cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_no_bfloat16_arithmetic_means_float32_without_measuring(tmp_path, backend):
    dtype, why = precision.recommended_dtype(backend, explain=True, cpuinfo=_cpuinfo(tmp_path, OLD_CPU))
    assert dtype == "float32" and "E5-2680 v4 has no bfloat16 arithmetic" in why
    assert precision.isa_flags(_cpuinfo(tmp_path, OLD_CPU))["avx512_bf16"] is False


def test_jax_on_a_cpu_stays_float32_whatever_the_flags(tmp_path):
    dtype, why = precision.recommended_dtype("jax", explain=True, cpuinfo=_cpuinfo(tmp_path, AMX_CPU))
    assert dtype == "float32" and "XLA:CPU" in why and "amx_bf16, avx512_bf16" in why


def test_tensorflow_needs_amx_for_bfloat16_on_a_cpu(tmp_path):
    # AVX512_BF16 without AMX: TensorFlow's bfloat16 model (no XLA) was slower at batch 1 than
    # float32 under XLA, whatever the matmul measurement said.
    dtype, why = precision.recommended_dtype("tensorflow", explain=True, cpuinfo=_cpuinfo(tmp_path, ZEN5_CPU))
    assert dtype == "float32" and "avx512_bf16 but no AMX" in why and "batch 1" in why


def test_a_cpu_with_bfloat16_arithmetic_gets_what_the_measurement_says(tmp_path):
    backend = keras.backend.backend()
    dtype, why = precision.recommended_dtype(explain=True, cpuinfo=_cpuinfo(tmp_path, AMX_CPU))
    if backend == "jax":
        assert dtype == "float32"
        return
    speedup = precision.bfloat16_speedup()
    assert speedup > 0 and f"{speedup:.1f}x as fast as float32 on {backend}" in why
    assert dtype == ("bfloat16" if speedup >= precision.MIN_SPEEDUP[backend] else "float32")
    other = "torch" if backend != "torch" else "tensorflow"
    assert precision.recommended_dtype(other, cpuinfo=_cpuinfo(tmp_path, AMX_CPU)) == "float32"
    with pytest.raises(ValueError, match="measures the backend in use"):
        precision.bfloat16_speedup(other)


def test_resolve_dtype_names_the_accepted_values(tmp_path):
    assert precision.resolve_dtype("mixed_bfloat16") == ("mixed_bfloat16", "as requested")
    dtype, why = precision.resolve_dtype("auto", backend="torch", cpuinfo=_cpuinfo(tmp_path, OLD_CPU))
    assert dtype == "float32" and why.startswith("auto: ")
    with pytest.raises(ValueError, match=r"Unknown dtype 'bf16'; accepted: 'auto', 'float32', 'bfloat16'"):
        precision.resolve_dtype("bf16")


def test_prepare_for_inference_turns_xla_off_for_bfloat16_on_tensorflow_only(trained32):
    model = precision.prepare_for_inference(precision.cast_model(trained32, "bfloat16"))
    if keras.backend.backend() == "tensorflow":
        assert model.jit_compile is False
    assert precision.prepare_for_inference(trained32) is trained32
    assert precision.cast_model(trained32, "float32") is trained32

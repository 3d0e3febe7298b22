"""One model, three backends: same numbers, portable files, compiled == eager, dropout only in training.

Each test runs on whichever backend is current (CI runs the suite once per
backend); the cross-backend tests hand a saved file to the two other backends
in one subprocess each.
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_t2t
import reference as ref
from helpers import BACKENDS, random_images, run_on_backend
from keras_t2t.weights import load_state_dict, resize_pos_embed

CROSS_BACKEND_ATOL = 1e-4  # the promise: same weights -> same logits within 1e-4 on every backend
SAME_BACKEND_ATOL = 1e-6  # a .keras file reloaded on the backend that wrote it

TINY = dict(t2t_stages=[(3, 2, 1), (3, 2, 1)], token_dim=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
# One model per T2T type, both on non-square images: 40x32 -> a 10x8 grid, 32x48 -> 8x12.
CROSS_MODELS = {"performer": (40, 32), "transformer": (32, 48)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(t2t_type="performer", image_hw=(32, 32), classes=10, **kw):
    return keras_t2t.T2TViT(
        input_shape=tuple(image_hw) + (3,),
        t2t_type=t2t_type,
        classes=classes,
        classifier_activation=None,
        **dict(TINY, **kw),
    )


def _reference_config(t2t_type, image_hw, classes=10):
    return dict(TINY, t2t_type=t2t_type, image_size=tuple(image_hw), classes=classes)


def _state(t2t_type, image_hw, seed, classes=10):
    """Random weights in the authors' layout: nothing like the initialisers' values."""
    return ref.make_state_dict(_reference_config(t2t_type, image_hw, classes), seed)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _max_diff(a, b):
    return float(np.max(np.abs(_np(a).astype(np.float64) - _np(b).astype(np.float64))))


def _json(config):
    return json.loads(json.dumps(config))


# === 1. same weights -> same logits on TensorFlow, JAX and PyTorch; .keras files travel ===

_OTHER_BACKEND_SCRIPT = """
import json
import numpy as np
import keras
import keras_t2t

folder = {folder!r}
out = {{"backend": keras.backend.backend(), "models": {{}}}}
for t2t_type in {types!r}:
    loaded = keras.saving.load_model(f"{{folder}}/{{t2t_type}}.keras")
    # The weights arrived bit for bit: the file's, read back in the authors' layout, equal the state dict.
    state = dict(np.load(f"{{folder}}/{{t2t_type}}_state.npz"))
    read = keras_t2t.model_state_dict(loaded)
    images = np.load(f"{{folder}}/{{t2t_type}}_images.npy")
    np.save(f"{{folder}}/{{t2t_type}}_on_{{out['backend']}}.npy", keras.ops.convert_to_numpy(loaded.predict(images, verbose=0)))
    out["models"][t2t_type] = {{
        "class": type(loaded).__name__,
        "config": loaded.get_config(),
        "same_keys": sorted(read) == sorted(state),
        "max_weight_diff": max(float(np.max(np.abs(read[k] - state[k]))) for k in state),
    }}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def cross_backend(tmp_path_factory):
    """One model per T2T type with reference weights, saved as .keras on the current backend and
    loaded and run on the two others (one subprocess each). Returns what the two tests compare."""
    folder = tmp_path_factory.mktemp("cross_backend")
    here = keras.backend.backend()
    result = {"here": here, "folder": folder, "models": {}, "others": {}}
    for index, (t2t_type, image_hw) in enumerate(CROSS_MODELS.items()):
        state = _state(t2t_type, image_hw, seed=100 + index)
        model = _tiny(t2t_type, image_hw)
        report = load_state_dict(model, state)
        assert report["loaded"] == len(state) == len(model.weights)
        images = random_images(200 + index, 3, *image_hw)
        logits = _np(model.predict(images, verbose=0))
        model.save(folder / f"{t2t_type}.keras")
        np.save(folder / f"{t2t_type}_images.npy", images)
        np.savez(folder / f"{t2t_type}_state.npz", **state)
        result["models"][t2t_type] = {
            "model": model, "images": images, "logits": logits, "state": state, "image_hw": image_hw,
        }
    for backend in BACKENDS:
        if backend == here:
            continue
        stdout = run_on_backend(
            backend, _OTHER_BACKEND_SCRIPT.format(folder=os.fspath(folder), types=list(CROSS_MODELS))
        )
        line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
        report = json.loads(line[len("RESULT "):])
        assert report["backend"] == backend
        for t2t_type in CROSS_MODELS:
            report["models"][t2t_type]["logits"] = np.load(folder / f"{t2t_type}_on_{backend}.npy")
        result["others"][backend] = report
    assert len(result["others"]) == 2
    return result


@pytest.mark.parametrize("t2t_type", sorted(CROSS_MODELS))
def test_same_weights_give_the_same_logits_on_tensorflow_jax_and_pytorch_within_1e_4(cross_backend, t2t_type):
    here = cross_backend["models"][t2t_type]
    logits = here["logits"]
    assert logits.shape == (3, 10)
    # The weights are not trivial: logits spread over classes and images.
    assert np.std(logits) > 0.1
    # The current backend equals the float64 NumPy reference ...
    expected = ref.forward(here["state"], here["images"], _reference_config(t2t_type, here["image_hw"]))
    assert _max_diff(logits, expected) < CROSS_BACKEND_ATOL
    # ... and so do the two others, holding exactly these weights (read from the .keras file).
    for backend, other in cross_backend["others"].items():
        result = other["models"][t2t_type]
        assert result["same_keys"] and result["max_weight_diff"] == 0.0
        diff = _max_diff(result["logits"], logits)
        assert diff < CROSS_BACKEND_ATOL, f"{backend} vs {cross_backend['here']}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("t2t_type", sorted(CROSS_MODELS))
def test_keras_file_saved_on_one_backend_loads_and_predicts_identically_on_the_others(cross_backend, t2t_type):
    here = cross_backend["models"][t2t_type]
    original_config = _json(here["model"].get_config())
    path = cross_backend["folder"] / f"{t2t_type}.keras"
    # On the backend that wrote it: the same class, config and numbers.
    loaded = keras.saving.load_model(path)
    assert type(loaded) is keras_t2t.T2TViT
    assert _json(loaded.get_config()) == original_config
    assert _max_diff(loaded.predict(here["images"], verbose=0), here["logits"]) < SAME_BACKEND_ATOL
    # Every stored tensor came back, the performer's fixed random features and the position table too.
    assert [v.path for v in loaded.weights] == [v.path for v in here["model"].weights]
    for original, reloaded in zip(here["model"].weights, loaded.weights):
        np.testing.assert_array_equal(_np(reloaded), _np(original), err_msg=original.path)
    # On the two other backends: the same class and config, logits within 1e-4.
    for backend, other in cross_backend["others"].items():
        result = other["models"][t2t_type]
        assert result["class"] == "T2TViT"
        assert result["config"] == original_config
        diff = _max_diff(result["logits"], here["logits"])
        assert diff < CROSS_BACKEND_ATOL, f"{backend} reading a {cross_backend['here']} file: max |diff| {diff:.2e}"


# === 2. .weights.h5 round trip, and loading it into another image size or class count ===


@pytest.fixture(params=["performer", "transformer"])
def h5_file(request, tmp_path):
    """A 32x32 (8x8 grid), 10-class model with reference weights, saved with model.save_weights."""
    source = _tiny(request.param)
    load_state_dict(source, _state(request.param, (32, 32), seed=7))
    path = tmp_path / "source.weights.h5"
    source.save_weights(path)
    x = random_images(8, 4, 32, 32)
    return source, path, x, _np(source(x, training=False))


def test_weights_h5_round_trip_through_keras_load_weights_gives_identical_predictions(h5_file):
    source, path, x, expected = h5_file
    model = _tiny(source.t2t_type)
    assert _max_diff(model(x, training=False), expected) > 1e-2  # fresh weights differ
    model.load_weights(path)
    np.testing.assert_array_equal(_np(model(x, training=False)), expected)


def test_weights_h5_round_trip_through_keras_t2t_load_weights_gives_identical_predictions(h5_file):
    source, path, x, expected = h5_file
    model = _tiny(source.t2t_type)
    assert _max_diff(model(x, training=False), expected) > 1e-2
    report = keras_t2t.load_weights(model, path)
    assert report["loaded"] == len(source.weights)
    assert report["head_dropped"] is None and report["pos_embed_resized"] is None
    np.testing.assert_array_equal(_np(model(x, training=False)), expected)


def _by_path(model):
    return {v.path: _np(v) for v in model.weights}


def test_weights_h5_loads_into_another_image_size_with_the_position_table_resized(h5_file):
    source, path, _, _ = h5_file
    bigger = _tiny(source.t2t_type, image_hw=(48, 48))  # a 12x12 grid
    report = keras_t2t.load_weights(bigger, path)
    assert report["pos_embed_resized"] == ((8, 8), (12, 12))
    assert report["head_dropped"] is None
    assert report["loaded"] == len(source.weights)
    old, new = _by_path(source), _by_path(bigger)
    assert new["pos_embed/pos_embed"].shape == (1, 1 + 144, 32)
    np.testing.assert_allclose(
        new["pos_embed/pos_embed"], resize_pos_embed(old["pos_embed/pos_embed"], (12, 12)), atol=1e-6
    )
    for key in old:
        if key != "pos_embed/pos_embed":
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    out = bigger.predict(random_images(10, 4, 48, 48), verbose=0)
    assert out.shape == (4, 10) and np.all(np.isfinite(out))


def test_weights_h5_loads_into_another_class_count_without_the_head(h5_file):
    source, path, _, _ = h5_file
    five = _tiny(source.t2t_type, classes=5)
    fresh_head = _np(five.get_layer("head").kernel)
    report = keras_t2t.load_weights(five, path)
    assert "10 classes" in report["head_dropped"] and "5" in report["head_dropped"]
    assert report["pos_embed_resized"] is None
    assert report["loaded"] == len(source.weights) - 2  # all but head kernel and bias
    old, new = _by_path(source), _by_path(five)
    for key in old:
        if not key.startswith("head/"):
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    np.testing.assert_array_equal(new["head/kernel"], fresh_head)
    assert new["head/kernel"].shape == (32, 5)
    # The backbone is the source's: the features before the head are identical.
    x = random_images(11, 4, 32, 32)
    features = [keras.Model(m.input, m.get_layer("pool").output)(x, training=False) for m in (source, five)]
    np.testing.assert_array_equal(_np(features[0]), _np(features[1]))


# === 3. compiled predict == eager call; dropout only in training ===


@pytest.mark.parametrize("t2t_type", ["performer", "transformer"])
def test_compiled_predict_and_eager_call_give_the_same_numbers(t2t_type):
    model = _tiny(t2t_type)
    load_state_dict(model, _state(t2t_type, (32, 32), seed=12))
    x = random_images(13, 4, 32, 32)
    eager = _np(model(x, training=False))
    # predict runs the compiled function: jax.jit on JAX, a tf.function on TensorFlow, eager torch.
    compiled = _np(model.predict(x, batch_size=2, verbose=0))  # two batches
    assert compiled.shape == eager.shape == (4, 10)
    assert np.std(eager) > 0.1
    assert _max_diff(compiled, eager) < 1e-5
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's predict is a plain tf.function on CPU; XLA as well. (JAX's predict is already
        # XLA; torch.compile is left out: minutes on this CPU.)
        model.compile(jit_compile=True)
        assert model.jit_compile is True
        assert _max_diff(model.predict(x, batch_size=2, verbose=0), eager) < 1e-5


RATE_KINDS = {
    "drop_rate": dict(drop_rate=0.2),
    "attn_drop_rate": dict(attn_drop_rate=0.2),
    "drop_path_rate": dict(drop_path_rate=0.5),
    "t2t_dropout": dict(t2t_dropout=0.2),
}


@pytest.mark.parametrize("kind", sorted(RATE_KINDS))
def test_each_drop_rate_makes_training_calls_differ_and_inference_stays_deterministic(kind):
    keras.utils.set_random_seed(14)
    rates = dict(t2t_dropout=0.0, **RATE_KINDS[kind]) if kind != "t2t_dropout" else RATE_KINDS[kind]
    model = _tiny("performer", **rates)
    # Reference weights: with the initialisers' 0.02-scale kernels the dropped branches are too
    # small to show at the output.
    load_state_dict(model, _state("performer", (32, 32), seed=14))
    x = random_images(15, 4, 32, 32)
    first, second = _np(model(x, training=True)), _np(model(x, training=True))
    assert np.all(np.isfinite(first))
    assert _max_diff(first, second) > 1e-3, f"{kind}: two training calls gave the same output"
    inference = _np(model(x, training=False))
    np.testing.assert_array_equal(_np(model(x, training=False)), inference)
    assert _max_diff(first, inference) > 1e-3


@pytest.mark.parametrize("t2t_type", ["performer", "transformer"])
def test_without_drop_rates_training_calls_equal_inference(t2t_type):
    # The performer's T2T dropout defaults to the reference's 0.1, so it is switched off here;
    # the transformer's default is already 0.
    extra = {"t2t_dropout": 0.0} if t2t_type == "performer" else {}
    model = _tiny(t2t_type, **extra)
    load_state_dict(model, _state(t2t_type, (32, 32), seed=16))
    x = random_images(16, 4, 32, 32)
    np.testing.assert_allclose(_np(model(x, training=True)), _np(model(x, training=False)), atol=1e-6)


def test_performer_default_t2t_dropout_is_active_in_training():
    model = _tiny("performer")  # t2t_dropout=None -> the reference's 0.1
    assert model.get_layer("tokens_to_token").dropout == 0.1
    load_state_dict(model, _state("performer", (32, 32), seed=17))
    x = random_images(17, 4, 32, 32)
    assert _max_diff(model(x, training=True), model(x, training=True)) > 1e-3

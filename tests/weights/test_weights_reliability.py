"""Weights files that do not fit, are broken, or hold NaN: refused or warned about, by name, never silent.

* A weights file must cover the model exactly (the head and the position table
  aside, which adapt): a deeper variant's file is not loaded into a shallower
  model, nor a shallower one into a deeper model, in any format, unless
  ``skip_mismatch=True`` (Keras' name) asks for what fits, with a warning naming the rest.
* A broken ``.keras`` file says what is wrong with it, not "File not found".
* NaN or Inf in the weights loads with a ``NonFiniteWeightsWarning`` naming the tensors.

The models are the small ``t2t_vit_mini`` and ``vit_mini`` rows at a few depths; every
file is written by the package itself or by ``torch.save`` (the authors' layout).
"""

import os
import shutil
import warnings
import zipfile

import keras
import numpy as np
import pytest

import keras_t2t
from helpers import random_images, save_authors_checkpoint
from keras_t2t.weights import NonFiniteWeightsWarning, load_any_weights, model_state_dict

torch = pytest.importorskip("torch")  # torch.save writes the authors' checkpoints

SKIP_HINT = "skip_mismatch=True"


def _np(x):
    return keras.ops.convert_to_numpy(x)


def mini(depth=4, **kwargs):
    return keras_t2t.t2t_vit_mini(classes=10, depth=depth, **kwargs)


def vit(depth=4, **kwargs):
    return keras_t2t.vit_mini(classes=10, depth=depth, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same T2T-ViT mini at depths 6 and 4, saved in each of the package's formats and the authors'."""
    folder = tmp_path_factory.mktemp("weights")
    saved = {}
    for depth in (4, 6):
        model = mini(depth)
        model.save_weights(folder / f"d{depth}.weights.h5")
        model.save(folder / f"d{depth}.keras")
        state = model_state_dict(model)
        save_authors_checkpoint(folder / f"d{depth}.pth.tar", state, state, f"t2t_vit_mini_{depth}", img_size=32)
        saved[depth] = model_state_dict(model)
    return folder, saved


def _caught(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if "keras_t2t" in str(w.message)]


# === a deeper variant's file, or a shallower one: refused naming the blocks ===


def test_the_issues_case_t2t_vit_10s_weights_h5_into_t2t_vit_7_is_refused_naming_blocks_7_to_9(tmp_path):
    keras_t2t.t2t_vit_10(input_shape=(32, 32, 3), classes=10).save_weights(tmp_path / "t10.weights.h5")
    with pytest.raises(ValueError) as error:
        keras_t2t.t2t_vit_7(input_shape=(32, 32, 3), classes=10, weights=tmp_path / "t10.weights.h5")
    message = str(error.value)
    for block in (7, 8, 9):
        assert f"layers/transformer_block_{block} (11 tensors)" in message
    assert "depth 7" in message and SKIP_HINT in message and "t10.weights.h5" in message


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".pth.tar"])
def test_a_deeper_files_weights_are_refused_naming_what_the_model_lacks(files, suffix):
    folder, _ = files
    model = mini(4)
    before = model_state_dict(model)
    with pytest.raises(ValueError) as error:
        load_any_weights(model, folder / f"d6{suffix}")
    message = str(error.value)
    if suffix == ".weights.h5":
        assert "the file's layers the model lacks: layers/transformer_block_4" in message
        assert "layers/transformer_block_5" in message
    else:
        assert "Not in the model: blocks.4." in message and "more (in blocks.4, blocks.5)" in message
    assert SKIP_HINT in message
    for key, value in model_state_dict(model).items():  # nothing was assigned
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".pth.tar"])
def test_a_shallower_files_weights_are_refused_naming_what_the_file_lacks(files, suffix):
    folder, _ = files
    with pytest.raises(ValueError) as error:
        keras_t2t.t2t_vit_mini(classes=10, depth=6, weights=folder / f"d4{suffix}")
    message = str(error.value)
    if suffix == ".weights.h5":
        assert "the model's layers the file lacks: layers/transformer_block_4, layers/transformer_block_5" in message
    else:
        assert "Missing from the weights: blocks.4." in message
    assert SKIP_HINT in message


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".pth.tar"])
def test_skip_mismatch_loads_the_blocks_that_fit_keeps_the_rest_and_warns_naming_them(files, suffix):
    folder, saved = files
    model = mini(6)
    own = model_state_dict(model)
    report, warned = _caught(lambda: load_any_weights(model, folder / f"d4{suffix}", skip_mismatch=True))
    assert len(warned) == 1, warned
    if suffix == ".weights.h5":  # the file names no tensors: the groups Keras writes for the blocks are named
        assert "2 missing from the weights (the model keeps its own): layers/transformer_block_4, " in warned[0]
        assert report["loaded"] == len(model.weights) - 22
    else:
        assert "22 missing from the weights (the model keeps its own): blocks.4." in warned[0]
        assert "more (in blocks.4, blocks.5)" in warned[0]
    for key, value in model_state_dict(model).items():
        expected = own[key] if key.startswith(("blocks.4.", "blocks.5.")) else saved[4][key]
        np.testing.assert_array_equal(value, expected, err_msg=key)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".pth.tar"])
def test_skip_mismatch_ignores_a_deeper_files_extra_blocks_and_says_so(files, suffix):
    folder, saved = files
    model, warned = _caught(lambda: keras_t2t.t2t_vit_mini(classes=10, depth=4, weights=folder / f"d6{suffix}",
                                                           skip_mismatch=True))
    assert len(warned) == 1 and "not in the model (ignored)" in warned[0], warned
    assert ("transformer_block_4" if suffix == ".weights.h5" else "blocks.4.") in warned[0]
    assert model.weights_report["skipped"]["unexpected"]
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, saved[6][key], err_msg=key)


def test_an_exact_file_still_loads_without_a_word(files):
    folder, saved = files
    model, warned = _caught(lambda: keras_t2t.t2t_vit_mini(classes=10, weights=folder / "d4.weights.h5"))
    assert warned == [] and model.weights_report["skipped"] is None
    images = random_images(3, 2, 32, 32)
    reference = mini(4)
    keras_t2t.weights.load_state_dict(reference, saved[4])
    np.testing.assert_allclose(_np(model(images)), _np(reference(images)), atol=1e-6)


def test_a_trained_models_file_with_its_optimizer_state_loads_exactly(tmp_path):
    model = mini(2)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    model.fit(random_images(0, 4, 32, 32), np.zeros(4, "int32"), epochs=1, verbose=0)
    model.save_weights(tmp_path / "trained.weights.h5")  # holds "optimizer/..." beside the layers
    loaded, warned = _caught(lambda: keras_t2t.t2t_vit_mini(classes=10, depth=2, weights=tmp_path / "trained.weights.h5"))
    assert warned == []
    for key, value in model_state_dict(loaded).items():
        np.testing.assert_array_equal(value, model_state_dict(model)[key], err_msg=key)


def test_the_trainers_starting_weights_are_checked_the_same_way(files):
    # train.py --weights: a deeper variant's .weights.h5 once loaded through Keras' load_weights, silently.
    from keras_t2t.training.recipe import PRESETS
    from keras_t2t.training.trainer import build_model

    recipe = PRESETS["digits"].resolved()
    assert recipe.model == "t2t_vit_mini"
    with pytest.raises(ValueError, match="the file's layers the model lacks: layers/transformer_block_4"):
        build_model(recipe, 10, weights=files[0] / "d6.weights.h5", verbose=False)
    model = build_model(recipe, 10, weights=files[0] / "d4.weights.h5", verbose=False)
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, files[1][4][key], err_msg=key)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_deeper_vits_file_is_refused_and_skip_mismatch_loads_what_fits(tmp_path, suffix):
    deeper = vit(6)
    path = tmp_path / f"vit6{suffix}"
    if suffix == ".keras":
        deeper.save(path)
    else:
        deeper.save_weights(path)
    with pytest.raises(ValueError) as error:
        keras_t2t.vit_mini(classes=10, depth=4, weights=path)
    assert ("layers/transformer_block_4" if suffix == ".weights.h5" else "blocks_4") in str(error.value)
    assert SKIP_HINT in str(error.value)
    model, warned = _caught(lambda: keras_t2t.vit_mini(classes=10, depth=4, weights=path, skip_mismatch=True))
    assert len(warned) == 1 and "not in the model (ignored)" in warned[0]
    for layer in model.layers:
        for got, want in zip(layer.weights, deeper.get_layer(layer.name).weights):
            np.testing.assert_array_equal(_np(got), _np(want), err_msg=got.path)


# === a broken .keras file: what is wrong, not "File not found" ===


def _broken(kind, folder, files_folder):
    path = folder / f"{kind}.keras"
    good = (files_folder / "d4.keras").read_bytes()
    if kind == "truncated_zip":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "h5_renamed":
        shutil.copy(files_folder / "d4.weights.h5", path)
    elif kind == "pth_renamed":
        shutil.copy(files_folder / "d4.pth.tar", path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip_of_something_else":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    return path


BROKEN = {
    "truncated_zip": "truncated or damaged zip archive",
    "random_bytes": "not a zip archive",
    "h5_renamed": "an HDF5 file (a '.weights.h5' file renamed?",
    "pth_renamed": "a PyTorch checkpoint",
    "empty": "the file is empty",
    "zip_of_something_else": "lacks config.json and model.weights.h5",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_keras_file_says_what_is_wrong_through_weights_and_from_checkpoint(files, tmp_path, kind):
    path = _broken(kind, tmp_path, files[0])
    for load in (lambda: keras_t2t.t2t_vit_mini(classes=10, weights=path), lambda: keras_t2t.from_checkpoint(path),
                 lambda: keras_t2t.vit_mini(weights=path)):
        with pytest.raises(ValueError) as error:
            load()
        message = str(error.value)
        assert f"{str(path)!r} is not a readable '.keras' model file: " in message
        assert BROKEN[kind] in message and "File not found" not in message
        assert "'.weights.h5'" in message and ".pth.tar" in message  # the accepted files


# === NaN or Inf in the weights: a warning naming the tensors ===


def _with_nonfinite(state):
    state = {key: value.copy() for key, value in state.items()}
    state["head.weight"][0, :3] = np.nan
    state["pos_embed"][0, 0, 0] = np.inf
    return state


def test_a_checkpoint_with_nan_and_inf_loads_with_a_warning_naming_the_tensors(files, tmp_path):
    state = _with_nonfinite(files[1][4])
    path = save_authors_checkpoint(tmp_path / "nan.pth.tar", state, state, "t2t_vit_mini", img_size=32)
    model, warned = _caught(lambda: keras_t2t.t2t_vit_mini(classes=10, weights=path))
    assert warned == [
        f"keras_t2t: the weights loaded hold NaN or Inf: head.weight (3 NaN), pos_embed (1 Inf): 4 non-finite "
        f"values in 2 of {len(state)} tensors; the model's outputs will not be finite."
    ]
    with pytest.warns(NonFiniteWeightsWarning):
        keras_t2t.weights.load_state_dict(mini(4), state)
    assert np.isnan(_np(model.get_layer("head").kernel)[:3, 0]).all()  # loaded as asked, not altered


@pytest.mark.parametrize("family", ["t2t", "vit"])
def test_a_weights_h5_with_nan_loads_with_a_warning(tmp_path, family):
    model = mini(2) if family == "t2t" else vit(2)
    kernel = model.get_layer("head").kernel
    kernel.assign(np.where(np.arange(kernel.shape[1]) == 3, np.nan, _np(kernel)).astype("float32"))
    model.save_weights(tmp_path / "nan.weights.h5")
    builder = keras_t2t.t2t_vit_mini if family == "t2t" else keras_t2t.vit_mini
    _, warned = _caught(lambda: builder(classes=10, depth=2, weights=tmp_path / "nan.weights.h5"))
    name = "head.weight" if family == "t2t" else "head/kernel"
    assert len(warned) == 1 and f"{name} ({kernel.shape[0]} NaN)" in warned[0], warned


def test_finite_weights_give_no_warning(files):
    _, warned = _caught(lambda: keras_t2t.t2t_vit_mini(classes=10, weights=files[0] / "d4.pth.tar"))
    assert warned == []


def test_nothing_is_left_in_the_files_folder(files):
    assert sorted(os.listdir(files[0])) == sorted(
        f"d{d}{s}" for d in (4, 6) for s in (".weights.h5", ".keras", ".pth.tar"))


def test_the_models_own_load_weights_refuses_a_deeper_models_file_as_the_package_does(files, tmp_path):
    # Keras' model.load_weights alone took a T2T-ViT-10's file into a T2T-ViT-7 silently (issue 23, item 18).
    folder, saved = files
    model = mini(4)
    before = model_state_dict(model)
    with pytest.raises(ValueError) as error:
        model.load_weights(folder / "d6.weights.h5")
    assert "the file's layers the model lacks: layers/transformer_block_4" in str(error.value)
    assert SKIP_HINT in str(error.value)
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    model.load_weights(folder / "d6.weights.h5", skip_mismatch=True)  # Keras' own way, asked for
    model.load_weights(folder / "d4.weights.h5")  # the exact file, as before
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, saved[4][key], err_msg=key)
    # A compiled model with its optimizer built reads a file saved without one, and one saved with one.
    trained = mini(4)
    trained.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    trained.fit(random_images(0, 4, 32, 32), np.zeros(4, "int32"), epochs=1, verbose=0)
    trained.save_weights(tmp_path / "with_optimizer.weights.h5")
    trained.load_weights(folder / "d4.weights.h5")
    trained.load_weights(tmp_path / "with_optimizer.weights.h5")

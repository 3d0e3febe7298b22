"""The preset cache and the one resolver against a hostile user: damaged, foreign or misnamed presets.

Each test is a promise; each of the 20 defects this file first found (a folder that
is no preset replaced by save_preset, pooling lost on load, a half-loaded model, a
changed file trusted, ...) is one of them, fixed.

Most tests use the small ``t2t_vit_mini`` written by ``keras_t2t.save_preset``
(fast); the release cache tests convert one T2T-ViT-7 release, served in the
authors' layout by a loopback mirror, once per module and copy that cache into
each test's ``KERAS_HOME``.
"""

import json
import os
import re
import shutil
import time

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import Mirror, random_images, save_authors_checkpoint  # noqa: E402
from keras_t2t.cli import evaluate as evaluate_cli  # noqa: E402
from keras_t2t.hub import preset_files, presets  # noqa: E402
from keras_t2t.resolve import load_weights_into, resolve_model  # noqa: E402
from keras_t2t.weights import pretrained  # noqa: E402

T7_FILE = "71.7_T2T_ViT_7.pth.tar"
T7_CONFIG = dict(keras_t2t.VARIANTS["t2t_vit_7"], classes=1000, image_size=(224, 224))
T7_PRESET = "t2t_vit_7_imagenet"
TWO_HOURS_AGO = time.time() - 7200  # older than remove_stale_temporaries' default hour


def _numpy_weights(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def _same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _hidden_entries(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mini_folder(tmp_path_factory):
    """A preset of a random t2t_vit_mini (10 classes, 32x32, crop_pct 1): never changed by a test."""
    model = keras_t2t.t2t_vit_mini(classes=10)
    return keras_t2t.save_preset(model, tmp_path_factory.mktemp("mini") / "mini", preprocessing=((32, 32), 1.0))


@pytest.fixture
def mini_copy(mini_folder, tmp_path):
    """A copy of the mini preset a test may damage."""

    def copy(name="copy"):
        return shutil.copytree(mini_folder, tmp_path / name)

    return copy


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A one-class image folder: enough for keras-t2t-evaluate's --data-dir check."""
    root = tmp_path_factory.mktemp("images")
    os.makedirs(root / "a")
    Image.fromarray(np.full((40, 40, 3), 128, "uint8")).save(root / "a" / "0.png")
    return str(root)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A mirror serving T2T-ViT-7 in the authors' layout, and a cache with its preset converted once."""
    folder = tmp_path_factory.mktemp("release")
    ema = ref.make_state_dict(T7_CONFIG, 71)
    path = save_authors_checkpoint(folder / T7_FILE, ema, ema, "T2t_vit_7")
    server = Mirror()
    with open(path, "rb") as handle:
        server.files[T7_FILE] = handle.read()
    home = folder / "keras_home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        patch.setenv(pretrained.URL_SETTING, server.url)
        presets.preset_folder(T7_PRESET)
    yield server, str(home)
    server.stop()


@pytest.fixture
def release_home(release, tmp_path, monkeypatch):
    """This test's KERAS_HOME: a copy of the converted cache (checkpoint, index, preset folder)."""
    server, home = release
    mine = shutil.copytree(home, tmp_path / "keras_home")
    monkeypatch.setenv("KERAS_HOME", str(mine))
    monkeypatch.setenv(pretrained.URL_SETTING, server.url)
    return pretrained.preset_cache_folder("t2t_vit_7", "imagenet")


# --------------------------------------------------------------------------- another model's preset


def test_a_preset_of_another_architecture_is_refused_naming_what_differs_and_nothing_is_loaded(mini_folder):
    with pytest.raises(ValueError, match=r"another architecture \(token_dim, t2t_stages, embed_dim, depth differ\)"):
        keras_t2t.t2t_vit_7(weights=mini_folder)
    model = keras_t2t.t2t_vit_7(classes=10, input_shape=(32, 32, 3))
    before = _numpy_weights(model)
    with pytest.raises(ValueError, match="another architecture"):
        load_weights_into(model, mini_folder)
    assert _same_weights(_numpy_weights(model), before)


def test_a_damaged_head_file_leaves_the_model_as_it_was(mini_copy):
    folder = mini_copy()
    path = os.path.join(folder, "task.weights.h5")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    model = keras_t2t.t2t_vit_mini(classes=10)
    before = _numpy_weights(model)
    with pytest.raises(Exception):  # noqa: B017 - which error is another test's promise
        load_weights_into(model, folder)
    assert _same_weights(_numpy_weights(model), before)


# --------------------------------------------------------------------------- damaged preset folders


def _truncate_model_weights(folder):
    path = os.path.join(folder, "model.weights.h5")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


def _invalid_json_config(folder):
    with open(os.path.join(folder, "config.json"), "w") as handle:
        handle.write("{not json")


def _list_config(folder):
    with open(os.path.join(folder, "config.json"), "w") as handle:
        handle.write("[]")


def _resnet_config(folder):
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump({"module": "keras_hub.src.models.resnet.resnet_backbone", "class_name": "ResNetBackbone",
                   "config": {"name": "resnet", "input_conv_filters": [64]},
                   "registered_name": "keras_hub>ResNetBackbone"}, handle)


def _no_task_json(folder):
    os.remove(os.path.join(folder, "task.json"))


DAMAGES = {
    "truncated model.weights.h5": (_truncate_model_weights, "model.weights.h5"),
    "invalid JSON in config.json": (_invalid_json_config, "config.json"),
    "config.json holding a list": (_list_config, "config.json"),
    "config.json of a ResNetBackbone": (_resnet_config, "ResNetBackbone"),
    "no task.json": (_no_task_json, "task.json"),
}


@pytest.mark.parametrize("damage", [
    "truncated model.weights.h5",
    "invalid JSON in config.json",
    "config.json holding a list",
    "config.json of a ResNetBackbone",
])
def test_a_damaged_or_foreign_preset_folder_is_one_value_error_naming_the_problem(damage, mini_copy):
    make, named = DAMAGES[damage]
    folder = mini_copy()
    make(folder)
    with pytest.raises(ValueError, match=named):
        resolve_model(str(folder))


@pytest.mark.parametrize("damage", list(DAMAGES) + ["a typo in the path", "a folder that is no preset"])
def test_the_evaluate_command_reports_any_unloadable_model_in_one_line_with_exit_2(damage, mini_copy, image_folder,
                                                                                   tmp_path, capsys):
    if damage == "a typo in the path":
        folder = str(tmp_path / "no_such_preset")
    elif damage == "a folder that is no preset":
        folder = image_folder
    else:
        folder = mini_copy()
        DAMAGES[damage][0](folder)
    code = evaluate_cli.main(["--model", str(folder), "--data-dir", image_folder, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-t2t-evaluate: error:"), err
    assert "Traceback" not in err


def test_a_preset_whose_weights_hold_more_than_its_config_says_is_refused(mini_copy):
    folder = mini_copy()
    path = os.path.join(folder, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config["config"]["depth"] = 3  # the weights file holds 4 blocks (as config.json of a shallower sibling)
    with open(path, "w") as handle:
        json.dump(config, handle)
    with pytest.raises(ValueError):
        resolve_model(str(folder))


def _h5_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return arrays


def _flip_a_weight_byte(path):
    """Flips a byte inside the largest weight array of a .weights.h5 file (the HDF5 structure intact)."""
    with h5py.File(path, "r") as handle:
        arrays = []
        handle.visititems(lambda name, item: arrays.append(item) if isinstance(item, h5py.Dataset) else None)
        largest = max(arrays, key=lambda item: item.size)
        offset = largest.id.get_offset() + largest.id.get_storage_size() // 2
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_a_checked_preset_folder_given_by_path_refuses_a_changed_weights_file(tmp_path):
    model = keras_t2t.t2t_vit_mini(classes=10)
    folder = keras_t2t.save_preset(model, tmp_path / "checked", preprocessing=((32, 32), 1.0),
                                   checked=presets.CHECKED_FILES)
    resolve_model(folder)  # intact: loads
    _flip_a_weight_byte(os.path.join(folder, "model.weights.h5"))
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_model(folder)


# --------------------------------------------------------------------------- backbone-only presets


@pytest.fixture(scope="module")
def backbone_folder(mini_folder, tmp_path_factory):
    backbone = keras_t2t.T2TViTBackbone.from_preset(mini_folder)
    return keras_t2t.save_preset(backbone, tmp_path_factory.mktemp("bb") / "backbone")


def test_save_preset_writes_a_backbone_as_a_kerashub_backbone_preset(backbone_folder, mini_folder):
    assert sorted(os.listdir(backbone_folder)) == ["config.json", "metadata.json", "model.weights.h5"]
    backbone = keras_t2t.T2TViTBackbone.from_preset(backbone_folder)
    want = keras_t2t.T2TViTBackbone.from_preset(mini_folder)
    assert _same_weights(_numpy_weights(backbone), _numpy_weights(want))


def test_a_backbone_preset_loads_into_a_model_for_fine_tuning(backbone_folder, mini_folder):
    model = keras_t2t.t2t_vit_mini(classes=5)
    load_weights_into(model, backbone_folder)
    want = keras_t2t.T2TViTBackbone.from_preset(mini_folder)
    got = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    for variable in want.weights:
        np.testing.assert_array_equal(got[variable.path], keras.ops.convert_to_numpy(variable))


def test_resolving_a_backbone_preset_says_it_has_no_classifier(backbone_folder):
    with pytest.raises(ValueError, match="backbone"):
        resolve_model(backbone_folder)


# --------------------------------------------------------------------------- the release cache


def test_a_load_hashes_each_preset_file_once_and_a_later_change_is_still_caught(release_home, monkeypatch, capsys):
    time.sleep(2.2)  # the copied files must be older than the hashing to be remembered (the racy-clean rule)
    hashed = []
    real = preset_files.sha256_of
    monkeypatch.setattr(preset_files, "sha256_of", lambda path: hashed.append(os.path.basename(path)) or real(path))
    keras_t2t.t2t_vit_7(weights="imagenet")
    keras_t2t.t2t_vit_7(weights="imagenet")
    keras_t2t.T2TViTImageClassifier.from_preset(T7_PRESET)
    assert hashed and all(hashed.count(name) == 1 for name in hashed), hashed
    _flip_a_weight_byte(os.path.join(release_home, "model.weights.h5"))  # same size, in this process
    presets.preset_folder(T7_PRESET)
    assert "not trusted, converting it again" in capsys.readouterr().out


def test_a_flipped_byte_in_a_converted_file_is_not_trusted_and_converted_again(release_home, capsys):
    path = os.path.join(release_home, "model.weights.h5")
    good = _h5_arrays(path)
    _flip_a_weight_byte(path)
    assert not all(np.array_equal(good[name], array) for name, array in _h5_arrays(path).items())
    assert presets.preset_folder(T7_PRESET) == release_home
    out = capsys.readouterr().out
    assert "does not match the SHA-256 of its model.weights.h5" in out and "not trusted, converting it again" in out
    again = _h5_arrays(path)  # the same conversion of the same checkpoint: the same arrays
    assert sorted(again) == sorted(good) and all(np.array_equal(good[name], again[name]) for name in good)
    with open(os.path.join(release_home, "metadata.json")) as handle:
        assert json.load(handle)["files_sha256"]["model.weights.h5"] == pretrained.sha256_of(path)
    assert _hidden_entries(os.path.dirname(release_home)) == []


def test_a_changed_preprocessor_in_the_cache_is_not_trusted(release_home):
    path = os.path.join(release_home, "preprocessor.json")
    with open(path) as handle:
        config = json.load(handle)
    config["config"]["image_converter"]["config"]["crop_pct"] = 0.5
    with open(path, "w") as handle:
        json.dump(config, handle)
    presets.preset_folder(T7_PRESET)
    with open(path) as handle:
        assert json.load(handle)["config"]["image_converter"]["config"]["crop_pct"] == 0.9


def test_an_older_conversion_with_another_preprocessing_is_converted_again(release_home, capsys):
    # What an earlier version wrote: consistent with its own record, but not the release's transform.
    path = os.path.join(release_home, "preprocessor.json")
    with open(path) as handle:
        config = json.load(handle)
    config["config"]["image_converter"]["config"]["mean"] = [0.5, 0.5, 0.5]
    with open(path, "w") as handle:
        json.dump(config, handle)
    meta_path = os.path.join(release_home, "metadata.json")
    with open(meta_path) as handle:
        meta = json.load(handle)
    meta["files_sha256"]["preprocessor.json"] = pretrained.sha256_of(path)
    with open(meta_path, "w") as handle:
        json.dump(meta, handle)
    presets.preset_folder(T7_PRESET)
    assert "holds another preprocessing than the release's" in capsys.readouterr().out
    with open(path) as handle:
        assert json.load(handle)["config"]["image_converter"]["config"]["mean"] == [0.485, 0.456, 0.406]


def test_a_cache_metadata_that_is_no_object_is_converted_again(release_home):
    with open(os.path.join(release_home, "metadata.json"), "w") as handle:
        handle.write("[]")
    presets.preset_folder(T7_PRESET)
    with open(os.path.join(release_home, "metadata.json")) as handle:
        assert isinstance(json.load(handle), dict)


def test_a_killed_conversions_staging_folder_is_never_used_and_is_removed(release_home, mini_folder):
    parent = os.path.dirname(release_home)
    shutil.rmtree(release_home)
    # A dead writer's staging folder, complete but of another model: it must not become the preset.
    staging = shutil.copytree(mini_folder, os.path.join(parent, f".{T7_PRESET}.partial-dead1234"))
    os.utime(staging, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    folder = presets.preset_folder(T7_PRESET)
    assert preset_files.preset_image_shape(folder) == (224, 224, 3)
    assert _hidden_entries(parent) == []


def test_a_stale_staging_folder_beside_a_valid_cache_is_removed_on_the_next_load(release_home, mini_folder):
    parent = os.path.dirname(release_home)
    staging = shutil.copytree(mini_folder, os.path.join(parent, f".{T7_PRESET}.partial-dead1234"))
    os.utime(staging, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    presets.preset_folder(T7_PRESET)
    assert _hidden_entries(parent) == []


def test_a_killed_replacements_old_folder_is_removed(release_home):
    parent = os.path.dirname(release_home)
    trash = os.path.join(parent, f".{T7_PRESET}.old-dead1234")
    os.rename(release_home, trash)  # killed between install_atomic's two renames
    os.utime(trash, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    presets.preset_folder(T7_PRESET)
    assert _hidden_entries(parent) == []


def _unwritable_presets_error(release_home):
    with pytest.raises((ValueError, pretrained.WeightsFetchError), match="presets"):
        presets.preset_folder(T7_PRESET)


def test_an_unwritable_presets_folder_is_one_clear_error(release_home):
    parent = os.path.dirname(release_home)
    shutil.rmtree(release_home)
    os.chmod(parent, 0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("this process writes into a mode 500 folder (root): permission bits do not bite here")
        _unwritable_presets_error(release_home)
    finally:
        os.chmod(parent, 0o755)


def test_a_presets_folder_that_cannot_be_created_is_one_clear_error(release_home):
    parent = os.path.dirname(release_home)
    shutil.rmtree(parent)
    with open(parent, "w") as handle:
        handle.write("not a folder")
    _unwritable_presets_error(release_home)


def test_a_cache_folder_that_cannot_be_created_is_one_clear_error(release, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "a_file" / "home"))
    monkeypatch.setenv(pretrained.URL_SETTING, release[0].url)
    with pytest.raises(pretrained.WeightsFetchError, match="is a file, not a folder. Set KERAS_HOME"):
        presets.preset_folder(T7_PRESET)


# --------------------------------------------------------------------------- names, keywords, sizes


@pytest.mark.parametrize("cls", ["T2TViTImageClassifier", "T2TViTBackbone"])
def test_a_misspelled_preset_name_suggests_the_right_one(cls):
    with pytest.raises(ValueError, match="did you mean 't2t_vit_7_imagenet'"):
        getattr(keras_t2t, cls).from_preset("t2t_vit_7_imagnet")


@pytest.mark.parametrize("keyword", ["num_clases", "poolling", "load_weight"])
def test_a_misspelled_classifier_keyword_is_refused(keyword, mini_folder):
    with pytest.raises(TypeError, match=keyword):
        keras_t2t.T2TViTImageClassifier.from_preset(mini_folder, **{keyword: 5})


def test_a_misspelled_backbone_keyword_is_refused_naming_the_right_one(mini_folder):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'depht' \(did you mean 'depth'\?\)"):
        keras_t2t.T2TViTBackbone.from_preset(mini_folder, depht=2)


def test_an_image_shape_the_t2t_stages_cannot_split_is_one_clear_error(release_home):
    with pytest.raises(ValueError, match=r"Image size 2x2 is too small for the T2T stages"):
        keras_t2t.T2TViTImageClassifier.from_preset(T7_PRESET, image_shape=(2, 2, 3))
    with pytest.raises(ValueError, match=r"\(height, width, channels\)"):
        keras_t2t.T2TViTImageClassifier.from_preset(T7_PRESET, image_shape=(224, 224))
    model = keras_t2t.T2TViTImageClassifier.from_preset(T7_PRESET, image_shape=(100, 100, 3))
    assert model.backbone.image_shape == (100, 100, 3) and model.preprocessor.image_converter.image_size == (100, 100)


def test_an_image_shape_with_other_channels_names_the_channels(mini_folder):
    with pytest.raises(ValueError, match="channel"):
        keras_t2t.T2TViTImageClassifier.from_preset(mini_folder, image_shape=(32, 32, 1))


# --------------------------------------------------------------------------- save_preset


def test_save_preset_replaces_an_earlier_preset_whole(tmp_path):
    model = keras_t2t.t2t_vit_mini(classes=10)
    folder = keras_t2t.save_preset(model, tmp_path / "p", preprocessing=((32, 32), 1.0))
    with open(os.path.join(folder, "stale.txt"), "w") as handle:
        handle.write("from before")
    assert keras_t2t.save_preset(model, folder, preprocessing=((32, 32), 1.0)) == folder
    assert "stale.txt" not in os.listdir(folder)
    assert _hidden_entries(tmp_path) == []


def test_save_preset_refuses_to_replace_a_folder_that_is_not_a_preset(tmp_path):
    model = keras_t2t.t2t_vit_mini(classes=10)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a preset"):
        keras_t2t.save_preset(model, tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "precious"


def test_save_preset_onto_a_file_is_refused_first_and_keeps_the_file(tmp_path):
    model = keras_t2t.t2t_vit_mini(classes=10)
    target = tmp_path / "model"
    target.write_text("a file")
    try:
        with pytest.raises(ValueError, match="is a file"):
            keras_t2t.save_preset(model, target)
    finally:
        assert target.read_text() == "a file" and _hidden_entries(tmp_path) == []


def test_a_model_without_head_is_refused_and_no_preset_is_written(tmp_path):
    model = keras_t2t.t2t_vit_mini(include_top=False)
    with pytest.raises(ValueError, match=r"no head \(include_top=False\)"):
        keras_t2t.save_preset(model, tmp_path / "no_head")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\], got 0.0"):
        keras_t2t.save_preset(keras_t2t.t2t_vit_mini(classes=10), tmp_path / "bad", preprocessing=((32, 32), 0.0))
    assert os.listdir(tmp_path) == []


def test_a_refused_model_leaves_no_parent_folders(tmp_path):
    with pytest.raises(ValueError):
        keras_t2t.save_preset(keras_t2t.t2t_vit_mini(include_top=False), tmp_path / "new" / "deeper" / "no_head")
    assert os.listdir(tmp_path) == []


def test_a_preset_of_an_average_pooling_model_resolves_to_the_same_model(tmp_path):
    classic = keras_t2t.t2t_vit_mini(classes=10, pooling="avg")
    folder = keras_t2t.save_preset(classic, tmp_path / "avg", preprocessing=((32, 32), 1.0))
    assert keras_t2t.T2TViTImageClassifier.from_preset(folder).pooling == "avg"  # KerasHub's loader keeps it
    images = random_images(3, 2, 32, 32)
    resolved = resolve_model(folder)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resolved.model(images)),
                               keras.ops.convert_to_numpy(classic(images)), atol=1e-5)


# --------------------------------------------------------------------------- the image converter


@pytest.fixture(scope="module")
def converter():
    return keras_t2t.T2TViTImageConverter(image_size=(32, 32), crop_pct=1.0)


@pytest.mark.parametrize("shape", [(40, 48), (40, 48, 4), (2, 40, 48, 4), (0, 0, 3)])
def test_the_converter_refuses_what_is_not_rgb_images_naming_the_shape(shape, converter):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)|\(height, width, 3\)|3 channels"):
        converter(np.zeros(shape, "uint8"))


def test_the_converter_takes_an_empty_batch_a_one_pixel_image_and_a_grey_channel(converter):
    def shape(images):
        return tuple(keras.ops.convert_to_numpy(converter(images)).shape)

    assert shape(np.zeros((0, 40, 48, 3), "uint8")) == (0, 32, 32, 3)
    assert shape(np.full((1, 1, 3), 200, "uint8")) == (32, 32, 3)
    grey = np.random.default_rng(3).integers(0, 256, (40, 40, 1)).astype("uint8")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(converter(grey)),
                               keras.ops.convert_to_numpy(converter(np.repeat(grey, 3, axis=-1))), atol=1e-5)


@pytest.mark.parametrize("crop_pct", [0, 1.5, -0.1, float("nan"), "0.9", None, True])
def test_the_converter_refuses_a_crop_pct_outside_0_1_naming_it(crop_pct):
    expected = r"crop_pct must be (a number )?in \(0, 1\], got " + re.escape(repr(crop_pct)[:3])
    with pytest.raises(ValueError, match=expected):
        keras_t2t.T2TViTImageConverter(image_size=(32, 32), crop_pct=crop_pct)


def test_the_converter_refuses_an_unknown_interpolation_when_built():
    with pytest.raises(ValueError, match="bogus"):
        keras_t2t.T2TViTImageConverter(image_size=(32, 32), interpolation="bogus")


# --------------------------------------------------------------------------- resolve_model on files and typos


@pytest.mark.parametrize("content,problem", [
    (None, "truncated or damaged zip archive"),
    (b"", "the file is empty"),
    (b"hello", "not a zip archive"),
])
def test_a_damaged_keras_file_is_one_value_error(content, problem, tmp_path):
    path = tmp_path / "model.keras"
    if content is None:
        keras_t2t.t2t_vit_mini(classes=10).save(path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"is not a readable '.keras' model file: .*{problem}"):
        resolve_model(str(path))


@pytest.mark.parametrize("name", ["no_such_preset", "checkpoint.pth.tar"])
def test_a_mistyped_path_says_no_such_file_or_folder(name, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="[Nn]o such file or folder"):
        resolve_model(str(tmp_path / name))


def test_a_misspelled_preset_name_as_weights_suggests_the_right_one():
    with pytest.raises(ValueError, match="did you mean 't2t_vit_7_imagenet'"):
        load_weights_into(keras_t2t.t2t_vit_mini(classes=10), "t2t_vit_7_imagnet")

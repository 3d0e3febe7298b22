"""The one model registry: every name resolves, builds and survives a `.keras` round trip."""

import os

import keras
import numpy as np
import pytest

import keras_t2t
from keras_t2t.models import presets
from keras_t2t.training.recipe import DIGITS

# Cheap enough to build at their default size in every backend's test session.
CHEAP = ("t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_dense", "t2t_vit_mini", "vit_mini")


def test_every_name_has_a_public_builder_and_a_group():
    names = keras_t2t.list_models()
    assert len(names) == len(set(names)) == len(presets.MODELS)
    for name in names:
        builder = getattr(keras_t2t, name)
        assert builder.__name__ == name and name in keras_t2t.__all__
        assert presets.MODELS[name].describe() in builder.__doc__
    assert set(keras_t2t.list_models("main")) == set(keras_t2t.VARIANTS)
    assert set(keras_t2t.list_models("study")) == set(keras_t2t.STUDY_VARIANTS)
    assert set(keras_t2t.list_models("mini")) == {"t2t_vit_mini", "vit_mini"}
    assert set(keras_t2t.VIT_CONFIGS) == {"vit_small_patch16", "vit_base_patch16", "vit_large_patch16", "vit_mini"}


def test_the_trainer_the_visualiser_and_the_flop_counter_use_the_registry():
    from keras_t2t.cli.visualize import load_model
    from keras_t2t.flops import count_flops
    from keras_t2t.training.trainer import model_names

    assert model_names() == keras_t2t.list_models()
    assert DIGITS.model in presets.MODELS
    model, _ = load_model("t2t_vit_mini")
    assert model.input_shape[1:] == (32, 32, 3) and model.output_shape[-1] == 10
    # The registry's weight-decay hint is what the paper recipe resolves to.
    assert keras_t2t.training.PAPER.__class__(model="t2t_vit_19").resolved().weight_decay == 0.065
    assert count_flops("t2t_vit_mini") == count_flops(dict(presets.MODELS["t2t_vit_mini"].config),
                                                      input_shape=(32, 32, 3))


def test_an_unknown_name_lists_the_accepted_ones_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Unknown model 't2t_vit_41'; accepted: t2t_vit_7, .*vit_mini"):
        keras_t2t.create_model("t2t_vit_41")
    with pytest.raises(ValueError, match=r"did you mean 't2t_vit_mini'"):
        keras_t2t.create_model("t2t_vit_mni")


def test_a_preset_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="family must be one of"):
        presets.Preset("x", "resnet", "main", {})
    with pytest.raises(ValueError, match="group must be one of"):
        presets.Preset("x", "vit", "extra", {})
    # The registry cannot be changed behind the package's back.
    with pytest.raises(TypeError):
        presets.MODELS["t2t_vit_7"].config["depth"] = 3


@pytest.mark.parametrize("name", CHEAP)
def test_every_cheap_registered_model_builds_and_round_trips_through_keras(name, tmp_path):
    preset = presets.MODELS[name]
    model = keras_t2t.create_model(name, classes=7)
    side = preset.image_size
    assert model.input_shape[1:] == (side, side, 3)
    for key, value in preset.config.items():
        got = getattr(model, key)
        assert (list(map(list, got)) if key == "t2t_stages" else got) == (
            list(map(list, value)) if key == "t2t_stages" else value
        ), key
    x = np.random.default_rng(0).standard_normal((2, side, side, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    path = os.path.join(tmp_path, f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.name == name
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected, atol=1e-5)

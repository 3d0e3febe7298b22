"""The ViT baseline (keras_t2t.vit): forward against NumPy, parameter counts, saving, errors, training."""

import importlib.util
import json
import os

import keras
import keras_hub
import numpy as np
from helpers import SMALL_VIT as SMALL, assign_vit_state_dict as assign_state_dict
import pytest

import reference
import reference_vit
from helpers import REPO

import keras_t2t
from keras_t2t import T2TViT
from keras_t2t.resolve import registry_name
from keras_t2t.training.recipe import MINI_MODEL
from keras_t2t import VIT_CONFIGS, ViT, create_vit, vit_mini
from keras_t2t.weights import load_vit_weights

# A small ViT: 8x8 images, 2x2 patches -> a 4x4 grid of 16 tokens.
def small_vit(**overrides):
    kwargs = dict(input_shape=(8, 8, 3), patch_size=2, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                  qkv_bias=True, classes=5, classifier_activation=None)
    kwargs.update(overrides)
    return ViT(**kwargs)


@pytest.fixture(scope="module")
def sd():
    return reference_vit.make_state_dict(SMALL, rng=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize("pooling", ["token", "avg"])
def test_forward_equals_the_numpy_reference(sd, images, pooling, one_torch_thread):
    model = small_vit(pooling=pooling)
    assign_state_dict(model, sd)
    expected = reference_vit.forward(sd, images, SMALL, pooling=pooling)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected["logits"], atol=1e-5, rtol=1e-5)


def test_feature_extractor_gives_the_patch_embedding_and_block_outputs(sd, images, one_torch_thread):
    model = small_vit()
    assign_state_dict(model, sd)
    expected = reference_vit.forward(sd, images, SMALL)
    features = model.feature_extractor(block_indices=(0, -1), include_patch_embed=True)(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features["patch_embed"]), expected["patches"], atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features["block_0"]), expected["blocks"][0], atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features["block_1"]), expected["blocks"][1], atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(features["tokens"]), expected["tokens"], atol=1e-5)
    with pytest.raises(ValueError, match=r"block index 2 is out of range.*0\.\.1"):
        model.feature_extractor(block_indices=(2,))


def test_sinusoid_positions_are_the_fixed_t2t_table(sd, images, one_torch_thread):
    model = small_vit(position_embedding="sinusoid")
    table = model.get_layer("pos_embed").pos_embed
    np.testing.assert_allclose(keras.ops.convert_to_numpy(table), reference.sinusoid_table(17, 16), atol=1e-6)
    assert not table.trainable
    sd = dict(sd, pos_embed=reference.sinusoid_table(17, 16))
    assign_state_dict(model, sd)
    expected = reference_vit.forward(sd, images, SMALL)["logits"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected, atol=1e-5, rtol=1e-5)


def test_learned_positions_train_and_stochastic_depth_grows_linearly():
    model = small_vit(depth=3, drop_path_rate=0.2)
    assert model.get_layer("pos_embed").pos_embed.trainable
    assert [model.get_layer(f"blocks_{i}").drop_path for i in range(3)] == pytest.approx([0.0, 0.1, 0.2])


def hand_count(image, patch, dim, depth, mlp_ratio, qkv_bias, classes, channels=3):
    """Weights of a ViT with a learned position table, from the architecture."""
    tokens = (image // patch) ** 2
    hidden = int(dim * mlp_ratio)
    embed = patch * patch * channels * dim + dim  # conv kernel + bias
    per_block = (
        2 * dim                                   # norm1
        + dim * 3 * dim + (3 * dim if qkv_bias else 0)   # qkv
        + dim * dim + dim                         # proj
        + 2 * dim                                 # norm2
        + dim * hidden + hidden                   # fc1
        + hidden * dim + dim                      # fc2
    )
    return embed + dim + (tokens + 1) * dim + depth * per_block + 2 * dim + dim * classes + classes


# Building the 224-pixel models costs seconds and their count does not depend on the backend.
_ONE_BACKEND = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                  reason="time budget: counted on the TensorFlow run")


@pytest.mark.parametrize("name, image, classes, expected", [
    # ViT-S as the T2T-ViT authors define it: D 768, depth 8, 8 heads, mlp 3, no qkv bias (48.6M in the paper).
    pytest.param("vit_small_patch16", 224, 1000, hand_count(224, 16, 768, 8, 3.0, False, 1000), marks=_ONE_BACKEND),
    # ViT-B/16: D 768, depth 12, 12 heads, mlp 4, qkv bias (86.6M).
    pytest.param("vit_base_patch16", 224, 1000, hand_count(224, 16, 768, 12, 4.0, True, 1000), marks=_ONE_BACKEND),
    ("vit_mini", 32, 10, hand_count(32, 4, 128, 4, 2.25, False, 10)),
])
def test_named_configs_have_the_hand_counted_parameters(name, image, classes, expected):
    model = create_vit(name, classes=classes)
    assert model.image_shape == (image, image, 3)
    assert model.count_params() == expected


def test_the_hand_counts_are_the_published_sizes():
    assert hand_count(224, 16, 768, 8, 3.0, False, 1000) == 48_754_408
    assert hand_count(224, 16, 768, 12, 4.0, True, 1000) == 86_567_656  # ViT-B/16's well-known count
    assert hand_count(32, 4, 128, 4, 2.25, False, 10) == 577_546


def test_vit_mini_matches_the_digits_t2t_mini_within_5_percent():
    t2t = T2TViT(input_shape=(32, 32, 3), classes=10, **MINI_MODEL).count_params()
    vit = vit_mini(classes=10).count_params()
    assert abs(vit - t2t) / t2t < 0.05, (vit, t2t)


def test_keras_file_round_trip_keeps_config_and_outputs(images, tmp_path, one_torch_thread):
    model = small_vit(pooling="avg", position_embedding="sinusoid", drop_path_rate=0.1, classifier_activation="softmax")
    path = str(tmp_path / "vit.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, ViT) and loaded.get_config() == model.get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), keras.ops.convert_to_numpy(model(images)),
                               atol=1e-6)
    twin = ViT.from_config(model.get_config())
    assert twin.count_params() == model.count_params()


def test_headless_models_give_pooled_features_or_the_sequence():
    assert tuple(small_vit(include_top=False).output.shape) == (None, 16)
    assert tuple(small_vit(include_top=False, pooling=None).output.shape) == (None, 17, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(30, 32, 3), patch_size=4), r"Image size 30x32 is not divisible by patch_size=4.*28x32"),
    (dict(embed_dim=10, num_heads=4), r"embed_dim=10 must be divisible by num_heads=4"),
    (dict(position_embedding="rope"), r"position_embedding must be one of \('learned', 'sinusoid'\)"),
    (dict(pooling="max"), r"pooling must be one of \('token', 'avg'\)"),
    (dict(pooling=None), r"pooling must be one of"),
    (dict(patch_size=0), r"patch_size must be a positive integer"),
    (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\)"),
    (dict(t2t_dropout=0.1), r"t2t_dropout applies to T2T-ViT"),
    (dict(input_shape=(None, 8, 3)), r"leaves the height unknown"),
])
def test_bad_arguments_fail_with_a_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_vit(**kwargs)


def test_unknown_config_names_list_the_table():
    with pytest.raises(ValueError, match="Unknown ViT configuration 'vit_huge'; accepted: " + ", ".join(VIT_CONFIGS)):
        create_vit("vit_huge")


def test_weights_load_from_own_files_only(images, tmp_path, one_torch_thread):
    kwargs = dict(input_shape=(8, 8, 3), patch_size=2, embed_dim=16, depth=2, num_heads=2, classes=5,
                  classifier_activation=None)
    source = create_vit("vit_mini", **kwargs)
    source.save_weights(str(tmp_path / "a.weights.h5"))
    source.save(str(tmp_path / "a.keras"))
    again = create_vit("vit_mini", weights=str(tmp_path / "a.weights.h5"), **kwargs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(images)), keras.ops.convert_to_numpy(source(images)),
                               atol=1e-6)
    # Another class count from a .keras file: everything but the head.
    three = create_vit("vit_mini", **dict(kwargs, classes=3))
    report = load_vit_weights(three, str(tmp_path / "a.keras"))
    assert "head not loaded" in report
    np.testing.assert_allclose(keras.ops.convert_to_numpy(three.get_layer("blocks_1").weights[2]),
                               keras.ops.convert_to_numpy(source.get_layer("blocks_1").weights[2]))
    (tmp_path / "vit.pth.tar").write_bytes(b"not used")
    with pytest.raises(ValueError, match=r"own '.weights.h5' or '.keras' files only.*timm's\) ViT checkpoints"):
        load_vit_weights(three, str(tmp_path / "vit.pth.tar"))
    wider = create_vit("vit_mini", **dict(kwargs, embed_dim=32))
    with pytest.raises(ValueError, match="does not fit this model .vit_mini: patch 2, embed_dim 32"):
        load_vit_weights(wider, str(tmp_path / "a.weights.h5"))
    with pytest.raises(ValueError, match=r"layer 'patch_embed' has weights"):
        load_vit_weights(wider, str(tmp_path / "a.keras"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="time budget: one backend runs the training command (the trainer is the same on all "
                    "three; test_train_cli covers the backends)")
def test_the_training_command_trains_vit_mini(tmp_path, capsys):
    from keras_t2t.data.digits import write_digits_folder

    spec = importlib.util.spec_from_file_location("train_cli", os.path.join(REPO, "training", "train.py"))
    train_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_cli)
    digits = write_digits_folder(str(tmp_path / "digits"))
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--data-dir", digits, "--model", "vit_mini", "--train-limit", "32",
            "--val-limit", "32", "--batch-size", "32", "--lr-base-batch", "32", "--epochs", "1",
            "--cooldown-epochs", "0", "--warmup-epochs", "0", "--quiet"]
    assert train_cli.main(args) == 0
    assert "model vit_mini: 577,546 weights" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "vit_mini" and summary["optimizer_steps"] == 1
    classic = keras.saving.load_model(str(out / "model.keras"))
    assert isinstance(classic, ViT)
    # The run's preset (issue 21): KerasHub's own loader builds the ViT task, with the run's evaluation crop.
    task = keras_hub.models.ImageClassifier.from_preset(str(out / "preset"))
    assert isinstance(task, keras_t2t.ViTImageClassifier)
    recipe = json.loads((out / "recipe.json").read_text())
    assert task.preprocessor.image_converter.crop_pct == recipe["eval_crop_pct"]
    assert registry_name(str(out / "preset")) == "vit_mini"
    images = np.random.default_rng(11).standard_normal((2, 32, 32, 3)).astype("float32")
    assert classic.classifier_activation is None  # the trainer saves logits, as the task gives them
    np.testing.assert_allclose(keras.ops.convert_to_numpy(task(images)), classic.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)
    # --t2t-dropout has no meaning for a ViT: a clear error, not a silent ignore.
    assert train_cli.main(args[:1] + [str(tmp_path / "other")] + args[2:] + ["--t2t-dropout", "0.1"]) == 2
    assert "t2t_dropout applies to T2T-ViT" in capsys.readouterr().err

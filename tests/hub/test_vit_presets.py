"""The ViT baseline as a KerasHub preset (issue 21: ``save_to_preset`` works on any model of the package).

Logits are checked against the independent NumPy ViT (tests/reference_vit.py) on a
state dict written into the classic model; the position table resized for another
image size against the reference's bicubic resize (tests/reference.py).
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_t2t
import reference
import reference_vit
from helpers import SMALL_VIT, assign_vit_state_dict, random_images, run_on_backend
from keras_t2t.resolve import load_weights_into, resolve_model

# The reference's small ViT with a learned position table, as a classic keras_t2t.ViT.
ARCH = dict(input_shape=(8, 8, 3), patch_size=2, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
            position_embedding="learned")


def _close(got, want):
    got, want = np.asarray(keras.ops.convert_to_numpy(got), "float64"), np.asarray(want, "float64")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def state():
    return reference_vit.make_state_dict(SMALL_VIT, rng=5)


@pytest.fixture(scope="module")
def saved(state, tmp_path_factory):
    model = keras_t2t.ViT(classes=5, classifier_activation=None, name="small_vit", **ARCH)
    assign_vit_state_dict(model, state)
    folder = keras_t2t.save_preset(model, tmp_path_factory.mktemp("vit") / "small", preprocessing=((8, 8), 1.0))
    return folder


def test_a_vit_preset_holds_kerashubs_files_and_this_packages_vit_classes(saved):
    assert sorted(os.listdir(saved)) == ["config.json", "image_converter.json", "metadata.json", "model.weights.h5",
                                         "preprocessor.json", "task.json", "task.weights.h5"]
    config = json.loads(open(os.path.join(saved, "config.json")).read())
    task = json.loads(open(os.path.join(saved, "task.json")).read())
    assert config["registered_name"] == "keras_t2t>ViTBackbone"
    assert task["registered_name"] == "keras_t2t>ViTImageClassifier"
    assert config["config"]["position_embedding"] == "learned" and config["config"]["image_shape"] == [8, 8, 3]


def test_a_vit_preset_loads_through_kerashub_in_a_fresh_process_with_the_reference_logits(saved, state, tmp_path):
    images = random_images(7, 3, 8, 8)
    np.save(tmp_path / "images.npy", images)
    code = f"""
import numpy as np, keras, keras_hub, keras_t2t
images = np.load({str(tmp_path / 'images.npy')!r})
task = keras_hub.models.ImageClassifier.from_preset({saved!r})
np.save({str(tmp_path / 'logits.npy')!r}, keras.ops.convert_to_numpy(task(images)))
backbone = keras_hub.models.Backbone.from_preset({saved!r})
np.save({str(tmp_path / 'tokens.npy')!r}, keras.ops.convert_to_numpy(backbone(images)))
converter = task.preprocessor.image_converter
print(type(task).__name__, type(task.preprocessor).__name__, type(converter).__name__, converter.crop_pct,
      {{k: tuple(v.shape[1:]) for k, v in backbone.pyramid_outputs.items()}})
"""
    out = run_on_backend(keras.backend.backend(), code)
    assert "ViTImageClassifier ViTImageClassifierPreprocessor ViTImageConverter 1.0 {'P1': (4, 4, 16)}" in out, out
    want = reference_vit.forward(state, images, SMALL_VIT)
    _close(np.load(tmp_path / "logits.npy"), want["logits"])
    _close(np.load(tmp_path / "tokens.npy"), want["tokens"])


def test_the_pyramid_map_is_the_final_patch_tokens_on_the_patch_grid(saved, state):
    backbone = keras_t2t.ViTBackbone.from_preset(saved)
    features = keras.Model(backbone.input, backbone.pyramid_outputs)
    images = random_images(8, 2, 8, 8)
    tokens = reference_vit.forward(state, images, SMALL_VIT)["tokens"][:, 1:]
    _close(features(images)["P1"], tokens.reshape(2, 4, 4, 16))


def test_every_road_reads_a_vit_preset_folder_as_the_classic_vit(saved, state):
    images = random_images(9, 2, 8, 8)
    want = reference_vit.forward(state, images, SMALL_VIT)["logits"]
    resolved = resolve_model(saved)
    assert isinstance(resolved.model, keras_t2t.ViT) and resolved.model.name == "small_vit"
    assert (resolved.preprocessing.image_size, resolved.preprocessing.crop_pct) == ((8, 8), 1.0)
    # The classic model of the saved task: softmax unless asked otherwise, as every classic builder.
    np.testing.assert_allclose(resolved.model.predict(images, verbose=0),
                               keras.ops.convert_to_numpy(keras.ops.softmax(want)), rtol=1e-5, atol=1e-6)
    rebuilt = keras_t2t.ViT(classes=5, classifier_activation=None, **ARCH)
    load_weights_into(rebuilt, saved)
    _close(rebuilt(images), want)
    # A named model of the registry takes a ViT folder of its own architecture; a T2T-ViT does not take it.
    with pytest.raises(ValueError, match="holds a ViT; t2t_vit_mini is a T2TViT"):
        keras_t2t.t2t_vit_mini(weights=saved)
    with pytest.raises(ValueError, match="another architecture"):
        keras_t2t.vit_mini(weights=saved, input_shape=(8, 8, 3))


def test_a_vit_preset_loads_at_another_size_with_its_position_table_resized(saved, state):
    model = keras_t2t.ViT(classes=5, classifier_activation=None, **dict(ARCH, input_shape=(12, 12, 3)))
    report = load_weights_into(model, saved)
    assert report["pos_embed_resized"] == ((4, 4), (6, 6)) and report["head_dropped"] is None
    resized = dict(state, pos_embed=reference.resize_pos_embed(state["pos_embed"], (6, 6)))
    images = random_images(10, 2, 12, 12)
    _close(model(images), reference_vit.forward(resized, images, SMALL_VIT)["logits"])
    with pytest.raises(ValueError, match=r"loads at the size it was saved at, \(8, 8, 3\); got image_shape="
                                         r"\(12, 12, 3\)"):
        keras_t2t.ViTImageClassifier.from_preset(saved, image_shape=(12, 12, 3))


def test_the_vit_tasks_refuse_what_they_cannot_hold(saved):
    backbone = keras_t2t.ViTBackbone.from_preset(saved)
    with pytest.raises(ValueError, match="a ViTImageClassifier has none"):
        keras_t2t.ViTImageClassifier(backbone, 5, token_labeling_head=True)
    with pytest.raises(TypeError, match="T2TViTImageClassifier needs a keras_t2t.T2TViTBackbone; got ViTBackbone"):
        keras_t2t.T2TViTImageClassifier(backbone, 5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'patch_sise'"):
        keras_t2t.ViTBackbone(image_shape=(8, 8, 3), patch_sise=2)
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        keras_t2t.ViTBackbone(image_shape=(8, 8, 3), patch_size=3)


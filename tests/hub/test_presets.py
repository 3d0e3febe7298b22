"""T2T-ViT as KerasHub presets: a release converted once into a preset folder, read through KerasHub.

A loopback HTTP mirror (``KERAS_T2T_WEIGHTS_URL``) serves a checkpoint written
here in the authors' layout (real ``torch.save``); the expected logits come from
the independent NumPy reference (tests/reference.py) on the same state dict, and
the expected preprocessing from PIL, written here from the spec (section 11).
"""

import hashlib
import json
import os
import shutil

import keras
import keras_hub
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import Mirror, random_images, run_on_backend, save_authors_checkpoint  # noqa: E402
from keras_t2t.hub import presets  # noqa: E402
from keras_t2t.weights import pretrained  # noqa: E402

RTOL = 1e-4  # the bound: float32 Keras against the float64 reference, relative to the largest logit
T7_FILE = "71.7_T2T_ViT_7.pth.tar"
T7_CONFIG = dict(keras_t2t.VARIANTS["t2t_vit_7"], classes=1000, image_size=(224, 224))
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _assert_logits_close(got, want):
    got, want = np.asarray(keras.ops.convert_to_numpy(got), "float64"), np.asarray(want, "float64")
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max(), np.abs(got - want).max()


@pytest.fixture(scope="module")
def t7(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    ema = ref.make_state_dict(T7_CONFIG, 71)
    path = save_authors_checkpoint(folder / T7_FILE, ema, ref.make_state_dict(T7_CONFIG, 72), "T2t_vit_7")
    with open(path, "rb") as handle:
        return ema, handle.read()


@pytest.fixture
def mirror(tmp_path, monkeypatch, t7):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    server = Mirror()
    server.files[T7_FILE] = t7[1]
    monkeypatch.setenv(pretrained.URL_SETTING, server.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def converted(t7, tmp_path_factory):
    """A KERAS_HOME holding the t2t_vit_7_imagenet preset, converted once for the module."""
    home = tmp_path_factory.mktemp("converted") / "keras_home"
    server = Mirror()
    server.files[T7_FILE] = t7[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        patch.setenv(pretrained.URL_SETTING, server.url)
        presets.preset_folder("t2t_vit_7_imagenet")
    server.stop()
    return home


@pytest.fixture
def cached(converted, tmp_path, monkeypatch):
    """A copy of ``converted`` as this test's KERAS_HOME, and no mirror: the cache alone serves."""
    home = shutil.copytree(converted, tmp_path / "keras_home")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(pretrained.URL_SETTING, "http://127.0.0.1:9/nothing-here/")
    return home


def _pil_eval_transform(pixels, size=224, crop_pct=0.9):
    """The authors' evaluation transform with PIL alone (spec section 11)."""
    image = Image.fromarray(pixels)
    width, height = image.size
    short = int(np.floor(size / crop_pct))
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    image = image.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return (np.asarray(image, "float64") / 255.0 - MEAN) / STD


def test_every_release_is_a_preset_named_model_tag():
    names = keras_t2t.list_presets()
    assert names == [f"{row.model}_{row.tag}" for row in keras_t2t.list_weights()]
    for name in ("t2t_vit_14_imagenet", "t2t_vit_14_imagenet_384", "t2t_vit_14_cifar10",
                 "t2t_vit_24_imagenet_token_labeling"):
        assert name in names
    with pytest.raises(ValueError, match=r"Unknown preset 't2t_vit_7_imagnet' \(did you mean 't2t_vit_7_imagenet'"):
        presets.preset_release("t2t_vit_7_imagnet")


def test_preset_gives_the_authors_logits_converts_once_and_serves_from_the_cache(mirror, t7, tmp_path):
    ema, body = t7
    model = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    assert isinstance(model.backbone, keras_t2t.T2TViTBackbone)
    images = random_images(11, 2, 224, 224)
    _assert_logits_close(model(images), ref.forward(ema, images, T7_CONFIG))
    assert mirror.requests == [T7_FILE]

    folder = os.path.join(str(tmp_path / "keras_home"), "keras_t2t", "presets", "t2t_vit_7_imagenet")
    assert sorted(os.listdir(folder)) == sorted(
        ["config.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json", "image_converter.json",
         "metadata.json"]
    )
    with open(os.path.join(folder, "metadata.json")) as handle:
        metadata = json.load(handle)
    assert metadata["source_url"] == mirror.url + T7_FILE
    assert metadata["source_sha256"] == hashlib.sha256(body).hexdigest()
    assert metadata["top1"] == 71.7

    # The server gone: the preset folder serves, and the authors' file is not read again.
    mirror.stop()
    os.remove(os.path.join(str(tmp_path / "keras_home"), "keras_t2t", T7_FILE))
    again = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    _assert_logits_close(again(images), ref.forward(ema, images, T7_CONFIG))
    backbone = keras_t2t.T2TViTBackbone.from_preset("t2t_vit_7_imagenet")
    assert {k: tuple(v.shape[1:3]) for k, v in backbone.pyramid_outputs.items()} == {
        "P2": (56, 56), "P3": (28, 28), "P4": (14, 14)}


def test_preprocessor_is_the_authors_evaluation_transform(cached):
    model = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    rng = np.random.default_rng(5)
    # A smooth picture (bicubic resamplers differ most on pixel noise), 300 wide, 260 high.
    yy, xx = np.mgrid[0:260, 0:300]
    pixels = np.stack([128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 13.0),
                       (xx + yy) % 256 * 0 + rng.integers(60, 70)], axis=-1).astype("uint8")
    got = keras.ops.convert_to_numpy(model.preprocessor(pixels[None]))[0]
    want = _pil_eval_transform(pixels)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - want).mean() < 0.1
    converter = model.preprocessor.image_converter
    assert (converter.image_size, converter.crop_pct) == ((224, 224), 0.9)


def test_a_cifar_release_preprocesses_as_the_authors_transfer_learning_test_set():
    # The authors' transfer_learning.py: Resize(224) of the 32x32 image (bilinear, no crop), ToTensor,
    # Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)); written here with PIL.
    row = presets.preset_release("t2t_vit_14_cifar10")
    preprocessor = presets.make_preprocessor(presets.release_preprocessing(row))
    yy, xx = np.mgrid[0:32, 0:32]
    pixels = np.stack([128 + 90 * np.sin(xx / 5.0), 128 + 90 * np.cos(yy / 4.0), 40 + 4 * (xx + yy)],
                      axis=-1).astype("uint8")
    resized = np.asarray(Image.fromarray(pixels).resize((224, 224), Image.BILINEAR), "float64") / 255.0
    want = (resized - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2023, 0.1994, 0.2010])
    got = keras.ops.convert_to_numpy(preprocessor(pixels[None]))[0]
    assert got.shape == (224, 224, 3)
    # 8-bit PIL output against float resizing: within a level or so, i.e. ~0.02 after the std of ~0.2.
    assert np.abs(got - want).mean() < 0.05, np.abs(got - want).mean()
    converter = preprocessor.image_converter
    assert converter.crop_pct == 1.0 and converter.interpolation == "bilinear"


def test_saved_preset_loads_through_kerashub_in_a_fresh_process(cached, tmp_path):
    model = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    folder = str(tmp_path / "mine")
    model.save_to_preset(folder)
    images = random_images(3, 1, 224, 224)
    np.save(tmp_path / "images.npy", images)
    want = keras.ops.convert_to_numpy(model(images))
    code = f"""
import numpy as np, keras_hub, keras, keras_t2t
folder = {folder!r}
images = np.load({str(tmp_path / 'images.npy')!r})
model = keras_hub.models.ImageClassifier.from_preset(folder)
np.save({str(tmp_path / 'got.npy')!r}, keras.ops.convert_to_numpy(model(images)))
backbone = keras_hub.models.Backbone.from_preset(folder)
print(type(model).__name__, {{k: tuple(v.shape[1:3]) for k, v in backbone.pyramid_outputs.items()}})
"""
    out = run_on_backend(keras.backend.backend(), code)
    assert "T2TViTImageClassifier {'P2': (56, 56), 'P3': (28, 28), 'P4': (14, 14)}" in out
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), want, rtol=1e-5, atol=1e-5)


def test_preset_at_another_image_size_resizes_the_position_table(cached, t7):
    ema, _ = t7
    model = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet", image_shape=(160, 160, 3))
    assert model.backbone.image_shape == (160, 160, 3)
    assert model.preprocessor.image_converter.image_size == (160, 160)
    resized = dict(ema, pos_embed=ref.resize_pos_embed(ema["pos_embed"], (10, 10)))
    images = random_images(4, 1, 160, 160)
    _assert_logits_close(model(images), ref.forward(resized, images, dict(T7_CONFIG, image_size=(160, 160))))


def test_a_half_written_preset_folder_is_converted_again(cached, mirror, tmp_path):
    folder = presets.preset_folder("t2t_vit_7_imagenet")
    os.remove(os.path.join(folder, "metadata.json"))  # as if killed before the end (it is written last)
    presets.preset_folder("t2t_vit_7_imagenet")
    assert os.path.exists(os.path.join(folder, "metadata.json"))
    leftovers = [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]
    assert leftovers == []


def test_any_classic_model_saves_as_a_preset_with_its_preprocessing(tmp_path):
    classic = keras_t2t.t2t_vit_mini(classes=10, classifier_activation=None, token_labeling_head=True)
    folder = keras_t2t.save_preset(classic, tmp_path / "mini", preprocessing=((32, 32), 1.0))
    task = keras_hub.models.ImageClassifier.from_preset(str(folder))
    assert isinstance(task, keras_t2t.T2TViTImageClassifier) and task.token_labeling_head
    images = random_images(8, 2, 32, 32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(task(images)), classic.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert task.preprocessor.image_converter.crop_pct == 1.0
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Sequential is not a model of keras_t2t"):
        keras_t2t.save_preset(other, tmp_path / "other")
    assert not os.path.exists(tmp_path / "other")


def test_backbone_builds_every_t2t_model_of_the_registry_with_the_classic_weights():
    # At 64x64 (4x4 tokens with the paper's stages): every variable but the position table has the shape it
    # has at 224, and the table's follows the grid, so the small size checks the same layout, 10x faster.
    names = keras_t2t.list_models("main") + keras_t2t.list_models("study") + ["t2t_vit_mini"]
    if keras.backend.backend() != "tensorflow":
        # Time budget: the layout is built by the same Python on every backend; the other backends build one
        # model of each kind (performer, transformer, the three studies, the mini's stages).
        names = ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_se", "t2t_vit_16_ghost", "t2t_vit_dense", "t2t_vit_mini"]
    for name in names:
        preset = keras_t2t.models.presets.get_preset(name)
        size = 32 if preset.image_size == 32 else 64
        classic_variables = keras_t2t.create_model(name, include_top=False, pooling=None,
                                                   input_shape=(size, size, 3)).weights
        arch = dict(preset.config, image_shape=(size, size, 3))
        if preset.family == "t2t_vit_dense":
            arch["block_type"] = "dense"
        backbone = keras_t2t.T2TViTBackbone(**arch)
        assert sorted((v.path, tuple(v.shape)) for v in backbone.weights) == sorted(
            (v.path, tuple(v.shape)) for v in classic_variables), name

"""One road: every command and builder turns a handle into a model through ``keras_t2t.resolve`` and the
preset cache, and a first weights-tag load builds one model."""

import json
import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import Mirror, random_images, save_authors_checkpoint  # noqa: E402
from keras_t2t.cli import evaluate as evaluate_cli  # noqa: E402
from keras_t2t.cli import visualize as visualize_cli  # noqa: E402
from keras_t2t.data.digits import write_digits_folder  # noqa: E402
from keras_t2t.hub import presets  # noqa: E402
from keras_t2t.resolve import resolve_model  # noqa: E402
from keras_t2t.weights import pretrained  # noqa: E402

T7_FILE = "71.7_T2T_ViT_7.pth.tar"
T7_CONFIG = dict(keras_t2t.VARIANTS["t2t_vit_7"], classes=1000, image_size=(224, 224))
MODEL_CLASSES = (keras_t2t.T2TViT, keras_t2t.T2TViTDense, keras_t2t.T2TViTBackbone, keras_t2t.T2TViTImageClassifier)


@pytest.fixture
def built(monkeypatch):
    """Counts the package's models built, by class name."""
    counts = {}
    for cls in MODEL_CLASSES:
        original = cls.__init__

        def counting(self, *args, _original=original, _cls=cls, **kwargs):
            if type(self) is _cls:
                counts[_cls.__name__] = counts.get(_cls.__name__, 0) + 1
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    return counts


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    ema = ref.make_state_dict(T7_CONFIG, 71)
    path = save_authors_checkpoint(tmp_path / T7_FILE, ema, ema, "T2t_vit_7")
    server = Mirror()
    server.files[T7_FILE] = path.read_bytes() if hasattr(path, "read_bytes") else open(path, "rb").read()
    monkeypatch.setenv(pretrained.URL_SETTING, server.url)
    yield server, ema
    server.stop()


def test_a_first_tag_load_builds_one_model_and_later_loads_read_the_preset(mirror, built):
    server, ema = mirror
    images = random_images(2, 1, 224, 224)
    model = keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None)
    assert built == {"T2TViT": 1}
    np.testing.assert_allclose(model.predict(images, verbose=0), ref.forward(ema, images, T7_CONFIG),
                               atol=1e-4, rtol=1e-4)
    built.clear()
    server.stop()  # from now on the preset folder alone
    again = keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None)
    assert built == {"T2TViT": 1}
    np.testing.assert_allclose(again.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    built.clear()
    task = keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    assert built == {"T2TViTImageClassifier": 1, "T2TViTBackbone": 1}  # KerasHub's loader: task over backbone
    np.testing.assert_allclose(keras.ops.convert_to_numpy(task(images)), model.predict(images, verbose=0),
                               atol=1e-5)


def test_a_first_preset_load_builds_one_model(mirror, built):
    keras_t2t.T2TViTImageClassifier.from_preset("t2t_vit_7_imagenet")
    assert built == {"T2TViTImageClassifier": 1, "T2TViTBackbone": 1}


def test_every_handle_resolves_to_the_same_model(mirror, tmp_path):
    _, ema = mirror
    images = random_images(3, 1, 224, 224)
    want = ref.forward(ema, images, T7_CONFIG)
    folder = presets.preset_folder("t2t_vit_7_imagenet")
    keras_file = str(tmp_path / "t7.keras")
    keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None).save(keras_file)
    handles = [("t2t_vit_7_imagenet", None), (folder, None), (keras_file, None),
               (os.path.join(pretrained.cache_dir(), T7_FILE), None), ("t2t_vit_7", "imagenet")]
    for handle, weights in handles:
        resolved = resolve_model(handle, weights=weights, classifier_activation=None) if not handle.endswith(
            ".keras") else resolve_model(handle)
        got = resolved.model.predict(images, verbose=0)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=handle)
    assert resolve_model(folder).preprocessing.crop_pct == 0.9
    assert "the preset" in resolve_model("t2t_vit_7_imagenet").description
    with pytest.raises(ValueError, match=r"Unknown model 't2t_vit_7_imagnet'.*did you mean 't2t_vit_7_imagenet'"):
        resolve_model("t2t_vit_7_imagnet")
    with pytest.raises(ValueError, match="not a model this package reads"):
        resolve_model(str(tmp_path))


def test_every_command_takes_a_preset_folder_with_its_preprocessing(tmp_path, capsys):
    digits = write_digits_folder(str(tmp_path / "digits"))
    folder = keras_t2t.save_preset(keras_t2t.t2t_vit_mini(classes=10), tmp_path / "mini",
                                   preprocessing=((32, 32), 1.0))
    assert evaluate_cli.main(["--model", folder, "--data-dir", os.path.join(digits, "val"), "--no-progress",
                              "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert f"preprocessing: 32x32, crop_pct 1, ImageNet mean/std (from the preset {folder})" in out
    assert visualize_cli.main(["--model", folder, "--output-dir", str(tmp_path / "vis")]) == 0
    assert os.listdir(tmp_path / "vis")
    # The builders take the folder as weights, and train.py --weights through the same loader.
    model = keras_t2t.t2t_vit_mini(weights=folder)
    assert model.output_shape == (None, 10)
    from keras_t2t.resolve import load_weights_into

    fresh = keras_t2t.t2t_vit_mini(classes=10, drop_path_rate=0.1)
    load_weights_into(fresh, folder)
    images = random_images(4, 2, 32, 32)
    np.testing.assert_allclose(fresh.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    with open(os.path.join(folder, "metadata.json")) as handle:
        assert json.load(handle)["tasks"] == ["ImageClassifier"]

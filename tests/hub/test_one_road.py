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
MODEL_CLASSES = (keras_t2t.T2TViT, keras_t2t.T2TViTDense, keras_t2t.T2TViTBackbone, keras_t2t.T2TViTImageClassifier,
                 keras_t2t.ViT, keras_t2t.ViTBackbone, keras_t2t.ViTImageClassifier)


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


# --- the one road, shown two ways: what the builders hand out, and what no command calls ----------------

def test_every_builder_hands_out_a_model_the_resolver_made(tmp_path):
    # ``resolved_from`` is set by keras_t2t.resolve.Resolved alone.
    mini = keras_t2t.t2t_vit_mini(classes=3)
    assert mini.resolved_from == "t2t_vit_mini (random weights)"
    assert keras_t2t.create_model("vit_mini", classes=3).resolved_from == "vit_mini (random weights)"
    state = {k: v for k, v in keras_t2t.weights.model_state_dict(mini).items()}
    path = save_authors_checkpoint(tmp_path / "mini.pth.tar", state, state, "t2t_vit_mini", img_size=32)
    assert keras_t2t.from_checkpoint(path, variant="t2t_vit_mini").resolved_from == os.path.abspath(path)
    mini.save_weights(tmp_path / "mini.weights.h5")
    loaded = keras_t2t.from_checkpoint(tmp_path / "mini.weights.h5", variant="t2t_vit_mini")
    assert loaded.resolved_from.startswith("t2t_vit_mini (") and loaded.output_shape == (None, 3)


# Calls that turn a handle into a model, or load weights into one: only keras_t2t.resolve, the
# construction under it (builders, applications, weights/, hub/) and the layers may make them.
LOADERS = {"load_model", "read_keras_file", "load_classic", "load_into_classic", "build_model", "checkpoint_model",
           "from_preset", "load_any_weights", "load_weights", "load_keras_weights", "load_vit_weights",
           "load_state_dict", "T2TViT", "T2TViTDense", "ViT", "T2TViTImageClassifier", "T2TViTBackbone",
           "ViTImageClassifier", "ViTBackbone"}
ALLOWED = {
    ("keras_t2t/training/trainer.py", "load_weights"): "the trainer's own resume state into the model it built",
    ("keras_t2t/training/trainer.py", "build_model"): "the trainer's build_model, itself create_model's caller",
    ("keras_t2t/training/__init__.py", "build_model"): "the same, re-exported",
    ("benchmarks/authors_torch.py", "load_state_dict"): "the authors' PyTorch model, the benchmark's rival",
    ("benchmarks/cases.py", "T2TViT"): "authors_torch.T2TViT, the same rival",
    ("benchmarks/engines.py", "T2TViT"): "authors_torch.T2TViT, the engines run's anchor",
    ("benchmarks/engines.py", "load_state_dict"): "our weights into the authors' PyTorch model, the anchor",
    ("benchmarks/breakdown.py", "load_state_dict"): "our weights into the authors' PyTorch model, the profile's rival",
}
COMMAND_CODE = ["keras_t2t/cli", "keras_t2t/export", "keras_t2t/training", "keras_t2t/evaluation.py",
                "keras_t2t/visualize.py", "benchmarks", "training", "tflite"]


def _called_names(path):
    import ast

    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name:
                yield name, node.lineno


def test_no_command_loads_a_model_but_through_the_resolver():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = []
    for entry in COMMAND_CODE:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            files.append(path)
        for folder, _, names in os.walk(path):
            files += [os.path.join(folder, name) for name in names if name.endswith(".py")]
    assert len(files) > 20  # the commands' code was found
    found = []
    for path in files:
        relative = os.path.relpath(path, root)
        for name, line in _called_names(path):
            if name in LOADERS and (relative, name) not in ALLOWED:
                found.append(f"{relative}:{line} calls {name}")
    assert found == [], "a command loads a model off the one road:\n" + "\n".join(found)


def test_convert_takes_model_as_every_command_does(mirror, tmp_path, capsys):
    from keras_t2t.cli import convert as convert_cli

    _, ema = mirror
    images = random_images(6, 1, 224, 224)
    out = tmp_path / "t7.keras"
    assert convert_cli.main(["--model", "t2t_vit_7_imagenet", "-o", str(out), "--classifier-activation",
                             "none"]) == 0
    model = keras.saving.load_model(out, compile=False)
    np.testing.assert_allclose(model.predict(images, verbose=0), ref.forward(ema, images, T7_CONFIG),
                               atol=1e-4, rtol=1e-4)
    checkpoint = os.path.join(pretrained.cache_dir(), T7_FILE)
    assert convert_cli.main([checkpoint, "--model", "t2t_vit_7", "-o", str(tmp_path / "t7.weights.h5")]) == 0
    capsys.readouterr()
    # A preset folder is converted already; two sources, or two models, are one line each.
    folder = presets.preset_folder("t2t_vit_7_imagenet")
    cases = [(["--model", folder], "converted already"),
             (["--model", "t2t_vit_7_imagenet", checkpoint], "name two sources"),
             (["--model", "t2t_vit_7", "--variant", "t2t_vit_10", checkpoint], "name two models"),
             (["--model", "t2t_vit_7"], "give the checkpoint to convert too")]
    for argv, words in cases:
        assert convert_cli.main(argv + ["-o", str(tmp_path / "x.keras")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.keras").exists()

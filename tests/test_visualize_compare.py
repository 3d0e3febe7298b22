"""keras-t2t-visualize beside a keras.applications ResNet-50, and --compare: the paper's Figure 2 in one PNG.

Small inputs only: ResNet-50 at 32x32 (random weights, asked for), vit_mini and t2t_vit_mini.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import reference
from helpers import REPO
from PIL import Image

from keras_t2t.cli.visualize import keras_application, main
from keras_t2t.data.images import preprocess_input
from keras_t2t.visualize import LABEL_PX, TITLE_PX, compare_features, visualize

# Keras' "caffe" preprocessing of its ResNets: RGB -> BGR, then these BGR means subtracted (no scaling).
CAFFE_BGR_MEANS = np.array([103.939, 116.779, 123.68], "float32")


@pytest.fixture(scope="module")
def resnet():
    model, source, label = keras_application("resnet50", "none", 32)
    assert label == "random weights" and "random weights" in source
    return model


def pixels(seed, size):
    return np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype("float32")


def conv1_reference(model, rgb):
    """ResNet-50's conv1 (zero pad 3, 7x7 stride 2, bias) on Keras' caffe input, in NumPy."""
    bgr = rgb[..., ::-1] - CAFFE_BGR_MEANS
    conv = model.get_layer("conv1_conv")
    kernel = np.asarray(conv.kernel)  # (7, 7, 3, 64); reference.unfold orders features c * 49 + i * 7 + j
    windows = reference.unfold(bgr[None].astype("float64"), 7, 2, 3)  # (1, 16 * 16, 147)
    out = windows[0] @ kernel.transpose(2, 0, 1, 3).reshape(147, -1) + np.asarray(conv.bias)
    side = int(np.sqrt(out.shape[0]))
    return out.reshape(side, side, -1)


def test_resnet50_first_layer_maps_are_conv1_of_keras_preprocessing(resnet, tmp_path, one_torch_thread):
    rgb = pixels(0, 32)
    result = visualize(resnet, preprocess_input(rgb), str(tmp_path), channels=8, verbose=False,
                       weights_label="random weights")
    assert result["stage"] == "conv1_conv" and result["attention"] is None
    with np.load(result["files"]["arrays"]) as arrays:
        np.testing.assert_allclose(arrays["features"], conv1_reference(resnet, rgb), rtol=1e-4, atol=2e-3)
        assert "attention" not in arrays
    assert sorted(os.listdir(tmp_path)) == ["arrays.npz", "features_conv1_conv.png"]
    title = Image.open(result["files"]["features"]).text["Title"]
    assert title.startswith("resnet50 (random weights): conv1_conv maps on their 16x16 grid")


def test_resnet_stages_are_its_layers_and_a_wrong_one_names_them(resnet, tmp_path):
    result = visualize(resnet, preprocess_input(pixels(1, 32)), str(tmp_path), stage="conv2_block1_out",
                       channels=2, verbose=False)
    assert result["features"].shape == (8, 8, 256)
    with pytest.raises(ValueError, match=r"Unknown stage 'block_0' for resnet50; accepted: a layer with a "
                                         r"\(rows, cols, channels\) output: conv1_pad, conv1_conv"):
        visualize(resnet, preprocess_input(pixels(1, 32)), str(tmp_path), stage="block_0", verbose=False)


def test_resnet_weights_come_from_a_file_with_or_without_the_top(resnet, tmp_path, capsys, one_torch_thread):
    import keras

    # A ResNet-50 with its classifier, saved the way Keras saves weights: loaded into the visualiser's
    # top-less model by trying both; the maps are then that model's.
    with_top = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=3)
    path = str(tmp_path / "r50.weights.h5")
    with_top.save_weights(path)
    model, source, label = keras_application("resnet50", path, 32)
    assert label == "r50.weights.h5" and source == f"weights {path}"
    np.testing.assert_array_equal(np.asarray(model.get_layer("conv1_conv").kernel),
                                  np.asarray(with_top.get_layer("conv1_conv").kernel))
    out = tmp_path / "vis"
    assert main(["--model", "resnet50", "--weights", path, "--image-size", "32", "--channels", "4",
                 "--output-dir", str(out)]) == 0
    assert Image.open(out / "features_conv1_conv.png").text["Title"].startswith("resnet50 (r50.weights.h5)")


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet50"], r"^error: resnet50 needs weights: imagenet \(Keras' own download\), a weights file "
                              r".* or none for random weights"),
    (["--model", "resnet50", "--weights", "missing.h5"], r"^error: Weights file 'missing.h5' does not exist"),
    (["--model", "resnet5", "--weights", "none"], r"^error: Unknown model 'resnet5'; .*resnet50"),
])
def test_resnet_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and re.search(message, captured.err)
    assert "model resnet50" not in captured.out and not (tmp_path / "out").exists()


def test_a_file_that_holds_no_resnet_weights_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "not.weights.h5"
    path.write_bytes(b"not an HDF5 file")
    assert main(["--model", "resnet50", "--weights", str(path), "--image-size", "32",
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no ResNet50 weights Keras can load, with or without the top" in err


def test_imagenet_weights_offline_fail_in_one_line_naming_the_manual_route(tmp_path):
    # No network for this process: every URL goes through a proxy that refuses connections, and an empty
    # KERAS_HOME holds no cached file. Nothing is downloaded, wherever the tests run.
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env.update(KERAS_HOME=str(tmp_path / "keras_home"), HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-m", "keras_t2t.cli.visualize", "--model", "resnet50", "--weights", "imagenet",
         "--image-size", "32", "--output-dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=3600, cwd=REPO,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "Keras could not download the ImageNet weights of resnet50" in errors[0]
    assert ("Manual route: fetch https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5") in errors[0]
    assert "--weights PATH" in errors[0]
    models = tmp_path / "keras_home" / "models"
    assert not models.exists() or not [n for n in os.listdir(models) if n.endswith(".h5")]
    assert not (tmp_path / "out").exists()


def test_compare_writes_one_png_of_three_labelled_panels(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "vis"
    argv = ["--compare", "resnet50=none", "vit_mini=none,t2t_vit_mini=none", "--image-size", "32",
            "--channels", "4", "--panel-px", "64", "--prefix", "fig2_", "--output-dir", str(out)]
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == ["fig2_compare_features.png", "fig2_compare_features_arrays.npz"]
    picture = Image.open(out / "fig2_compare_features.png")
    # Three panels of 64 pixels side by side, under the title and label bands.
    assert picture.size == (3 * 64, 64 + LABEL_PX + TITLE_PX)
    panels = picture.text["Description"].split("; ")
    assert panels == [
        "resnet50 (random weights) conv1_conv: 16x16 grid, 4 of 64 channels",
        "vit_mini (random weights) block_0: 8x8 grid, 4 of 128 channels",
        "t2t_vit_mini (random weights) block_0: 8x8 grid, 4 of 128 channels",
    ]
    with np.load(out / "fig2_compare_features_arrays.npz") as arrays:
        assert [arrays[f"features_{i}"].shape for i in range(3)] == [(16, 16, 4), (8, 8, 4), (8, 8, 4)]
    printed = capsys.readouterr().out
    assert "model resnet50 (random weights (weights none)" in printed and "built-in validation digit #0" in printed


def test_compare_panels_hold_each_models_own_maps(resnet, tmp_path, one_torch_thread):
    from keras_t2t.applications import create_model

    t2t = create_model("t2t_vit_mini", classes=10)
    rgb = pixels(2, 32)
    image = preprocess_input(rgb)
    result = compare_features(
        [dict(model=resnet, image=image, weights_label="random weights"),
         dict(model=t2t, image=image, stage="soft_split_0")],
        str(tmp_path / "two.png"), channels=3, panel_px=48, verbose=False)
    assert [(p["model"], p["stage"], p["grid"], p["channels"]) for p in result["panels"]] == [
        ("resnet50", "conv1_conv", (16, 16), 3), ("t2t_vit_mini", "soft_split_0", (16, 16), 3)]
    with np.load(result["arrays"]) as arrays:
        np.testing.assert_allclose(arrays["features_0"], conv1_reference(resnet, rgb)[..., :3], rtol=1e-4, atol=2e-3)
        # t2t_vit_mini's first soft split (3x3, stride 2, padding 1) of the normalised image.
        unfolded = reference.unfold(image[None], 3, 2, 1).reshape(16, 16, 27)
        np.testing.assert_allclose(arrays["features_1"], unfolded[..., :3], atol=1e-6)
    assert Image.open(result["path"]).size == (2 * 48, 48 + LABEL_PX + TITLE_PX)


@pytest.mark.parametrize("argv, message", [
    (["--compare", "resnet50=none", "vit_99=none", "t2t_vit_mini=none"], r"Unknown model 'vit_99'"),
    (["--compare", "resnet50=none", "vit_mini=none", "t2t_vit_mini=gone.weights.h5"],
     r"Weights file 'gone.weights.h5' does not exist"),
    (["--compare", "resnet50=none", "vit_mini", "t2t_vit_mini=none"], r"vit_mini needs weights"),
    (["--compare", "resnet50=none", "vit_mini=none", "--compare-stages", "-", "-", "-"],
     r"--compare-stages names 3 stages for 2 models"),
    (["--compare", "resnet50=none"], r"--compare needs at least two models"),
    (["--compare", "resnet50=none", "vit_mini=none", "--model", "vit_mini"], r"give --model MODEL .* not both"),
])
def test_compare_bad_input_is_one_line_exit_2_before_any_model_is_built(argv, message, tmp_path, capsys):
    assert main(argv + ["--image-size", "32", "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and re.search(message, captured.err)
    assert "model " not in captured.out and not (tmp_path / "out").exists()

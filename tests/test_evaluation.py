"""Tests of keras_t2t.evaluation (run on every Keras backend).

The expected numbers are computed here with an independent NumPy + PIL
implementation of the spec's evaluation preprocessing (section 11), not with
``eval_transform``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras

from keras_t2t.cli.evaluate import main
from keras_t2t.data.images import eval_transform, list_image_folder
from keras_t2t.evaluation import evaluate_folder

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZE = 32  # model input; resize target int(32 / 0.9) = 35
from helpers import REPO  # noqa: E402


# --------------------------------------------------------------------------
# Independent reference preprocessing (spec section 11, torchvision rules)
# --------------------------------------------------------------------------
def reference_preprocess(path, size=SIZE, crop_pct=0.9):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = int(size / crop_pct)
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=Image.Resampling.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.array(img).astype(np.float32) / 255.0
    return ((x - MEAN) / STD).astype(np.float32)


# --------------------------------------------------------------------------
# Fixtures: a small image folder and a tiny linear model
# --------------------------------------------------------------------------
CLASSES = ["alpha", "beta", "gamma"]
# (width, height, file name, PIL mode) per image; several sizes, modes and
# extension spellings.
SPECS = [
    (40, 30, "a0.JPEG", "RGB"),
    (30, 50, "a1.jpg", "RGB"),
    (64, 64, "a2.png", "L"),
    (35, 60, "a3.PNG", "RGBA"),
    (50, 37, "b0.jpeg", "RGB"),
    (33, 33, "b1.png", "RGB"),
    (70, 41, "b2.JPG", "RGB"),
    (45, 90, "b3.bmp", "RGB"),
    (36, 48, "c0.webp", "RGB"),
    (80, 35, "c1.png", "P"),
    (41, 41, "c2.JPEG", "RGB"),
    (90, 60, "c3.png", "RGB"),
    (31, 47, "c4.jpg", "RGB"),
]


def _make_image(rng, w, h, dominant, mode):
    base = np.full((h, w, 3), 60.0)
    base[..., dominant] = 150.0
    gradient = np.linspace(0, 80, w)[None, :, None] * rng.uniform(-1, 1, 3)
    noise = rng.normal(0, 50, (h, w, 3))
    arr = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P")
    return img


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for (w, h, name, mode) in SPECS:
        cls = _class_of(name)
        d = root / CLASSES[cls]
        d.mkdir(exist_ok=True)
        img = _make_image(rng, w, h, cls, mode)
        fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[
            os.path.splitext(name)[1].lower()
        ]
        img.save(d / name, format=fmt)
    # Files that must be ignored.
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / "beta" / ".hidden.jpg").write_bytes(b"garbage")
    (root / "README").write_text("not a class")
    return root


def _class_of(name):
    return {"a": 0, "b": 1, "c": 2}[name[0]]


def expected_labels():
    return [_class_of(s[2]) for s in SPECS]


def expected_paths(root):
    out = []
    for c, cls in enumerate(CLASSES):
        out.extend(sorted(str(root / cls / s[2]) for s in SPECS if _class_of(s[2]) == c))
    return out


def make_model(num_classes, seed):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    model = keras.Model(inputs, outputs)
    w = rng.normal(0, 1, (3, num_classes)).astype(np.float32)
    b = rng.normal(0, 0.1, (num_classes,)).astype(np.float32)
    model.get_layer("head").set_weights([w, b])
    return model, w, b


def numpy_topk(root, w, b, ks=(1, 5), indices=None):
    paths = expected_paths(root)
    labels = np.array(sorted(expected_labels()))
    if indices is not None:
        paths = [paths[i] for i in indices]
        labels = labels[indices]
    x = np.stack([reference_preprocess(p) for p in paths]).astype(np.float64)
    scores = x.mean(axis=(1, 2)) @ w.astype(np.float64) + b
    order = np.argsort(-scores, axis=1)
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        out[f"top{k}"] = float(np.mean([labels[i] in order[i, :kk] for i in range(len(paths))]))
    return out, scores


# --------------------------------------------------------------------------
# eval_transform
# --------------------------------------------------------------------------
def _random_image(w, h, seed=1):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def test_eval_transform_landscape_matches_exact_pil_sequence():
    img = _random_image(301, 200)
    out = eval_transform(img, 224, 0.9)
    # Shorter side 200 -> 248, longer int(248 * 301 / 200) = 373;
    # crop top round(24 / 2) = 12, left round(149 / 2) = round(74.5) = 74.
    ref = img.resize((373, 248), Image.Resampling.BICUBIC).crop((74, 12, 298, 236))
    ref = (np.asarray(ref, np.float32) / 255.0 - MEAN) / STD
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_eval_transform_portrait_and_grayscale():
    img = _random_image(150, 407, seed=2).convert("L")
    out = eval_transform(img, 224, 0.9)
    # Shorter side 150 -> 248, longer int(248 * 407 / 150) = 672;
    # crop top round(448 / 2) = 224, left 12.
    rgb = img.convert("RGB")
    ref = rgb.resize((248, 672), Image.Resampling.BICUBIC).crop((12, 224, 236, 448))
    ref = (np.asarray(ref, np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    # Grey input -> the three channels differ only through mean/std.
    np.testing.assert_allclose(out * STD + MEAN, np.repeat((out * STD + MEAN)[..., :1], 3, -1), atol=1e-6)


def test_eval_transform_no_resize_when_already_at_scale_size():
    img = _random_image(248, 300, seed=3)
    out = eval_transform(img)
    # Shorter side is already 248 and int(248 * 300 / 248) = 300: no resize;
    # crop top round(76 / 2) = 38, left round(24 / 2) = 12.
    ref = img.crop((12, 38, 236, 262))
    ref = (np.asarray(ref, np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_eval_transform_normalisation_of_constant_image():
    img = Image.new("RGB", (500, 375), (255, 0, 128))
    out = eval_transform(img, 384, 0.9)
    assert out.shape == (384, 384, 3)
    expected = (np.array([1.0, 0.0, 128 / 255], np.float32) - MEAN) / STD
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def test_eval_transform_non_square_size():
    img = _random_image(100, 60, seed=4)
    out = eval_transform(img, (32, 48), 0.9)
    assert out.shape == (32, 48, 3)
    # Scale target (35, 53); aspect kept: ratio = min(60/35, 100/53) -> 58x35;
    # crop top round(1.5) = 2, left round(5) = 5.
    ref = img.resize((58, 35), Image.Resampling.BICUBIC).crop((5, 2, 53, 34))
    ref = (np.asarray(ref, np.float32) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_eval_transform_rejects_bad_arguments():
    img = _random_image(40, 40)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(img, 32, 1.5)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(img, 32, 0)
    with pytest.raises(ValueError, match="image_size"):
        eval_transform(img, (32, 32, 3))
    with pytest.raises(ValueError, match="image_size"):
        eval_transform(img, -4)
    with pytest.raises(TypeError, match="PIL"):
        eval_transform(np.zeros((4, 4, 3)))


# --------------------------------------------------------------------------
# list_image_folder
# --------------------------------------------------------------------------
def test_list_image_folder(image_folder):
    paths, labels, classes = list_image_folder(image_folder)
    assert classes == CLASSES
    assert paths == expected_paths(image_folder)
    assert labels == sorted(expected_labels())
    assert not any(p.endswith((".txt", "hidden.jpg")) for p in paths)


def test_list_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_image_folder(tmp_path / "nope")
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a folder"):
        list_image_folder(f)
    flat = tmp_path / "flat"
    flat.mkdir()
    _random_image(10, 10).save(flat / "x.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        list_image_folder(flat)
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    _random_image(10, 10).save(root / "cat" / "x.png")
    (root / "dog" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"'[^']*dog' holds no image"):
        list_image_folder(root)


# --------------------------------------------------------------------------
# evaluate_folder
# --------------------------------------------------------------------------
def _two_class_folder(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 40 if name == "a" else 200, "uint8")).save(root / name / f"{name}.png")
    return root


def test_a_link_back_up_the_tree_is_not_followed(tmp_path):
    # Issue 23: with a/up -> .., evaluation counted 82 images where there are 2 (class b's, labelled a).
    root = _two_class_folder(tmp_path / "data")
    os.symlink("..", root / "a" / "up")
    os.symlink(str(root), root / "b" / "root")  # an absolute link to the dataset itself
    os.symlink(str(tmp_path), root / "b" / "above")  # and to a folder above it
    paths, labels, names = list_image_folder(root)
    assert (len(paths), labels, names) == (2, [0, 1], ["a", "b"])


def test_two_link_cycles_are_listed_once_and_a_link_to_another_class_lists_nothing_twice(tmp_path):
    root = _two_class_folder(tmp_path / "data")
    os.symlink("../b", root / "a" / "to_b")
    os.symlink("../a", root / "b" / "to_a")
    os.makedirs(root / "b" / "deep")
    os.symlink("..", root / "b" / "deep" / "loop")
    paths, labels, _ = list_image_folder(root)
    assert (len(paths), labels) == (2, [0, 1])


def test_a_link_to_a_folder_outside_the_dataset_is_followed_once(tmp_path):
    root = _two_class_folder(tmp_path / "data")
    outside = tmp_path / "more_a"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), "uint8")).save(outside / "extra.png")
    os.symlink(str(outside), root / "a" / "more")
    os.symlink(str(outside), root / "a" / "same_again")
    paths, labels, _ = list_image_folder(root)
    assert labels == [0, 0, 1] and sum(p.endswith("extra.png") for p in paths) == 1


def test_evaluate_folder_matches_numpy(image_folder):
    model, w, b = make_model(7, seed=3)
    res = evaluate_folder(model, image_folder, image_size=SIZE, batch_size=5, progress=False)
    exp, _ = numpy_topk(image_folder, w, b)
    assert res["num_images"] == len(SPECS)
    assert res["num_classes"] == 3
    assert res["top1"] == pytest.approx(exp["top1"])
    assert res["top5"] == pytest.approx(exp["top5"])
    assert 0 < exp["top1"] < 1 or 0 < exp["top5"] < 1  # a non-trivial case
    assert res["seconds"] > 0 and res["images_per_second"] > 0
    assert res["image_size"] == [SIZE, SIZE] and res["crop_pct"] == 0.9


def test_evaluate_folder_matches_numpy_three_classes_and_limit(image_folder, capsys):
    model, w, b = make_model(3, seed=0)
    res = evaluate_folder(model, image_folder, image_size=SIZE, batch_size=4, progress=True)
    exp, scores = numpy_topk(image_folder, w, b)
    assert res["top1"] == pytest.approx(exp["top1"])
    assert res["top5"] == 1.0 == exp["top5"]  # k clipped to the 3 classes
    assert "image" in capsys.readouterr().out  # the progress bar was shown
    res = evaluate_folder(model, image_folder, image_size=SIZE, limit=5, progress=False, top_k=(1, 2))
    idx = np.unique(np.round(np.linspace(0, len(SPECS) - 1, 5)).astype(int))
    exp, _ = numpy_topk(image_folder, w, b, ks=(1, 2), indices=idx)
    assert res["num_images"] == 5
    assert res["top1"] == pytest.approx(exp["top1"])
    assert res["top2"] == pytest.approx(exp["top2"])
    assert "top5" not in res


def test_evaluate_folder_perfect_model(image_folder):
    # A model that picks the dominant channel must be perfectly right on
    # this synthetic data (sanity check of the label wiring).
    model, _, _ = make_model(3, seed=0)
    model.get_layer("head").set_weights([np.eye(3, dtype=np.float32) * 10, np.zeros(3, np.float32)])
    res = evaluate_folder(model, image_folder, image_size=SIZE, progress=False)
    _, scores = numpy_topk(image_folder, np.eye(3, dtype=np.float32) * 10, np.zeros(3))
    labels = np.array(sorted(expected_labels()))
    assert res["top1"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    assert res["top1"] >= 0.9


def test_evaluate_folder_errors(image_folder, tmp_path):
    model, _, _ = make_model(3, seed=0)
    with pytest.raises(ValueError, match="expects 32x32"):
        evaluate_folder(model, image_folder, image_size=64, progress=False)
    small, _, _ = make_model(2, seed=0)
    with pytest.raises(ValueError, match="only 2 scores"):
        evaluate_folder(small, image_folder, image_size=SIZE, progress=False)
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    _random_image(40, 40).save(bad / "x" / "good.png")
    (bad / "x" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.JPEG"):
        evaluate_folder(model, bad, image_size=SIZE, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_folder(model, tmp_path / "missing", image_size=SIZE, progress=False)


def test_evaluate_folder_imagenet_class_index(tmp_path):
    root = tmp_path / "inet"
    for wnid in ["n01443537", "n15075141"]:  # goldfish (1), toilet tissue (999)
        (root / wnid).mkdir(parents=True)
        _random_image(40, 40).save(root / wnid / "x.png")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    out = keras.layers.Dense(1000, name="head")(x)
    model = keras.Model(inputs, out)
    bias = np.zeros(1000, np.float32)
    bias[[1, 999]] = [4.0, 5.0]  # toilet tissue first, goldfish second
    model.get_layer("head").set_weights([np.zeros((3, 1000), np.float32), bias])
    res = evaluate_folder(model, root, image_size=SIZE, progress=False, class_index="imagenet")
    assert res["top1"] == 0.5 and res["top5"] == 1.0
    with pytest.warns(UserWarning, match="class_index='imagenet'"):
        res = evaluate_folder(model, root, image_size=SIZE, progress=False)
    # Sorted numbering: labels 0 and 1, predicted order 999, 1, 0, ...
    assert res["top1"] == 0.0 and res["top5"] == 1.0


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def test_cli_end_to_end(image_folder, tmp_path):
    model, w, b = make_model(7, seed=3)
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    out = tmp_path / "summary.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [
            sys.executable, "-m", "keras_t2t.evaluation",
            "--model", str(model_path), "--data-dir", str(image_folder),
            "--batch-size", "4", "--output", str(out), "--no-progress",
        ],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    exp, _ = numpy_topk(image_folder, w, b)
    assert summary["top1"] == pytest.approx(exp["top1"])
    assert summary["top5"] == pytest.approx(exp["top5"])
    assert summary["num_images"] == len(SPECS)
    assert summary["num_classes"] == 3
    assert summary["image_size"] == [SIZE, SIZE]  # taken from the model
    assert summary["backend"] == keras.backend.backend()
    assert "top1" in proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-dir", "{data}"], "one of the arguments --model --variant is required"),
        (["--model", "{model}", "--data-dir", "{tmp}/missing"], "does not exist"),
        (["--model", "{tmp}/nope.keras", "--data-dir", "{data}"], "no such file"),
        (["--model", "{model}", "--data-dir", "{data}", "--crop-pct", "1.7"], "crop-pct"),
        (["--model", "{model}", "--data-dir", "{data}", "--batch-size", "0"], "batch-size"),
        (["--model", "{model}", "--data-dir", "{data}", "--image-size", "abc"], "image-size"),
        (["--variant", "t2t_vit_7", "--data-dir", "{data}"], "--variant needs --weights"),
        (["--model", "{model}", "--variant", "t2t_vit_7", "--data-dir", "{data}"], "not allowed with"),
        (["--model", "{model}", "--data-dir", "{data}", "--output", "{tmp}/no/dir/x.json"], "--output"),
        (["--model", "{tmp}/junk.keras", "--data-dir", "{data}"], "cannot load the model"),
        (["--model", "{model}", "--data-dir", "{data}", "--dtype", "bf16"], "--dtype: invalid choice: 'bf16'"),
    ],
)
def test_cli_bad_arguments_exit_2(image_folder, tmp_path, capsys, args, message):
    model_path = tmp_path / "m.keras"
    model_path.write_bytes(b"placeholder")  # never loaded by the earlier checks
    (tmp_path / "junk.keras").write_bytes(b"not a keras zip")
    out = tmp_path / "summary.json"
    argv = [a.format(data=image_folder, model=model_path, tmp=tmp_path) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("keras-t2t-evaluate: error: ")
    assert not out.exists()


def test_cli_dtype_rebuilds_a_keras_t2t_model_in_bfloat16(image_folder, tmp_path, capsys):
    import keras_t2t

    model = keras_t2t.t2t_vit_mini(input_shape=(32, 32, 3), classes=3, classifier_activation=None)
    model.save(tmp_path / "mini.keras")
    out = tmp_path / "summary.json"
    argv = ["--model", str(tmp_path / "mini.keras"), "--data-dir", str(image_folder), "--no-progress",
            "--output", str(out), "--dtype", "bfloat16"]
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert (summary["dtype"], summary["dtype_reason"]) == ("bfloat16", "as requested")
    assert "dtype bfloat16 (as requested)" in capsys.readouterr().out
    assert main(argv[:-1] + ["auto"]) == 0
    summary = json.loads(out.read_text())
    assert summary["dtype"] == keras_t2t.recommended_dtype() and summary["dtype_reason"].startswith("auto: ")

"""Pretrained weights by tag (``weights="imagenet"``), served by a loopback mirror.

A real HTTP server on 127.0.0.1 (``http.server`` in a thread) serves
checkpoints written here in the authors' layouts (real ``torch.save``) under
the release file names; ``KERAS_T2T_WEIGHTS_URL`` points at it and
``KERAS_HOME`` at a temporary folder. No test touches the internet. The
expected logits come from the independent NumPy reference (tests/reference.py)
on the same state dict.
"""

import argparse
import collections
import hashlib
import json
import os
import re
import socket

import ml_dtypes
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import (  # noqa: E402
    Mirror,
    assert_bfloat16_logits_close,
    random_images,
    save_authors_checkpoint,
    t2t_depth,
)
from keras_t2t.cli import evaluate as evaluate_cli  # noqa: E402
from keras_t2t.cli import weights as weights_cli  # noqa: E402
from keras_t2t.weights import model_state_dict, pretrained  # noqa: E402

ATOL = 1e-4  # Keras logits (float32) against the float64 reference
T7_FILE = "71.7_T2T_ViT_7.pth.tar"
T7_CONFIG = dict(keras_t2t.VARIANTS["t2t_vit_7"], classes=1000, image_size=(224, 224))

# The release files as the issue lists them (base URL + file name), with their tags, sizes and classes.
RELEASES = [
    ("t2t_vit_7", "imagenet", "71.7_T2T_ViT_7.pth.tar", 224, 1000, 71.7),
    ("t2t_vit_10", "imagenet", "75.2_T2T_ViT_10.pth.tar", 224, 1000, 75.2),
    ("t2t_vit_12", "imagenet", "76.5_T2T_ViT_12.pth.tar", 224, 1000, 76.5),
    ("t2t_vit_14", "imagenet", "81.5_T2T_ViT_14.pth.tar", 224, 1000, 81.5),
    ("t2t_vit_14", "imagenet_384", "83.3_T2T_ViT_14.pth.tar", 384, 1000, 83.3),
    ("t2t_vit_14", "cifar10", "cifar10_t2t-vit_14_98.3.pth", 224, 10, 98.3),
    ("t2t_vit_14", "cifar100", "cirfar100_t2t-vit-14_88.4.pth", 224, 100, 88.4),
    ("t2t_vit_19", "imagenet", "81.9_T2T_ViT_19.pth.tar", 224, 1000, 81.9),
    ("t2t_vit_19", "cifar10", "cifar10_t2t-vit_19_98.4.pth", 224, 10, 98.4),
    ("t2t_vit_19", "cifar100", "cifar100_t2t-vit-19_89.0.pth", 224, 100, 89.0),
    ("t2t_vit_24", "imagenet", "82.3_T2T_ViT_24.pth.tar", 224, 1000, 82.3),
    ("t2t_vit_24", "imagenet_token_labeling", "84.2_T2T_ViT_24.pth.tar", 224, 1000, 84.2),
    ("t2t_vit_t_14", "imagenet", "81.7_T2T_ViTt_14.pth.tar", 224, 1000, 81.7),
    ("t2t_vit_t_19", "imagenet", "82.4_T2T_ViTt_19.pth.tar", 224, 1000, 82.4),
    ("t2t_vit_t_24", "imagenet", "82.6_T2T_ViTt_24.pth.tar", 224, 1000, 82.6),
]


def _logits(model, images):
    return model.predict(images, verbose=0)  # compiled: on JAX much faster than an eager call at 224


def _bytes_of(path):
    with open(path, "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The bodies the mirror can serve: checkpoints in the authors' layouts, and the states behind them."""
    folder = tmp_path_factory.mktemp("served")
    ema, plain = ref.make_state_dict(T7_CONFIG, 71), ref.make_state_dict(T7_CONFIG, 72)
    t7 = _bytes_of(save_authors_checkpoint(folder / "t7.pth.tar", ema, plain, "T2t_vit_7"))
    # The same weights saved the other way round: a valid t2t_vit_7 file with other bytes.
    t7_other = _bytes_of(save_authors_checkpoint(folder / "t7b.pth.tar", plain, ema, "T2t_vit_7"))
    t10_config = dict(keras_t2t.VARIANTS["t2t_vit_10"], classes=1000, image_size=(224, 224))
    t10_state = ref.make_state_dict(t10_config, 10)
    t10 = _bytes_of(save_authors_checkpoint(folder / "t10.pth.tar", t10_state, t10_state, "T2t_vit_10"))
    at64 = ref.make_state_dict(dict(T7_CONFIG, image_size=(64, 64)), 64)
    t7_at_64 = _bytes_of(save_authors_checkpoint(folder / "t7_64.pth.tar", at64, at64, "T2t_vit_7", img_size=64))
    return argparse.Namespace(ema=ema, t7=t7, t7_other=t7_other, t10=t10, t7_at_64=t7_at_64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh KERAS_HOME; the weights cache folder inside it."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(pretrained.URL_SETTING, raising=False)
    return tmp_path / "keras_home" / "keras_t2t"


@pytest.fixture
def mirror(cache, monkeypatch):
    server = Mirror()
    monkeypatch.setenv(pretrained.URL_SETTING, server.url)
    yield server
    server.stop()


def _cached(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def _index(cache):
    with open(cache / "index.json") as handle:
        return json.load(handle)


def _flip_a_byte(path, offset=1000):
    data = bytearray(_bytes_of(path))
    data[offset] ^= 0xFF
    with open(path, "wb") as handle:
        handle.write(bytes(data))


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# === the registry ===


def test_every_released_file_is_a_registry_row_of_its_model(monkeypatch):
    assert [tuple(row) for row in keras_t2t.list_weights()] == RELEASES
    assert keras_t2t.list_weights("t2t_vit_19") == [row for row in keras_t2t.list_weights() if row.model == "t2t_vit_19"]
    assert keras_t2t.list_weights("t2t_vit_14_se") == []
    row = keras_t2t.list_weights("t2t_vit_7")[0]
    assert (row.model, row.tag, row.file, row.image_size, row.classes, row.top1) == RELEASES[0]
    # The older view keeps its (top1, image_size, file) rows of the ImageNet weights.
    assert keras_t2t.RELEASED_WEIGHTS["t2t_vit_14"] == [
        (81.5, 224, "81.5_T2T_ViT_14.pth.tar"), (83.3, 384, "83.3_T2T_ViT_14.pth.tar")
    ]
    assert keras_t2t.RELEASED_WEIGHTS["t2t_vit_19"] == [(81.9, 224, "81.9_T2T_ViT_19.pth.tar")]
    # Without the setting, files come from the authors' release page.
    release = pretrained.release_for("t2t_vit_14", "cifar100")
    monkeypatch.delenv(pretrained.URL_SETTING, raising=False)
    assert pretrained.release_url(release) == (
        "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/cirfar100_t2t-vit-14_88.4.pth"
    )


@pytest.mark.parametrize(
    "model, weights, expected",
    [
        ("t2t_vit_7", "cifar10", (r"weights='cifar10' is neither a weights tag of t2t_vit_7 \(its tags: 'imagenet'\) "
                                  r"nor an existing file \(a path must exist.*Tag 'cifar10' exists for t2t_vit_14, "
                                  r"t2t_vit_19\.")),
        ("t2t_vit_14", "imagenet_21k", (r"its tags: 'imagenet', 'imagenet_384', 'cifar10', 'cifar100'\) nor an "
                                        r"existing file")),
        ("t2t_vit_14_se", "imagenet", (r"t2t_vit_14_se \(it has no released weights\).*Tag 'imagenet' exists for "
                                       r"t2t_vit_7, t2t_vit_10")),
        ("vit_mini", "imagenet", r"vit_mini \(it has no released weights\)"),
        ("t2t_vit_7", "/no/such/71.7_T2T_ViT_7.pth.tar", (r"weights='/no/such/71.7_T2T_ViT_7.pth.tar' is neither a "
                                                          r"weights tag of t2t_vit_7 .*a path must exist")),
    ],
)
def test_a_weights_string_that_is_no_tag_and_no_file_names_the_valid_tags(cache, model, weights, expected):
    with pytest.raises(ValueError, match=expected):
        keras_t2t.create_model(model, weights=weights)
    with pytest.raises(FileNotFoundError):  # what a missing path raised before tags existed
        keras_t2t.create_model(model, weights=weights)
    assert _cached(cache) == []  # refused before any download


def test_the_build_follows_the_tag_unless_the_arguments_say_otherwise():
    assert pretrained.build_arguments("t2t_vit_14", "imagenet_384") == ((384, 384, 3), 1000)
    assert pretrained.build_arguments("t2t_vit_14", "cifar10") == ((224, 224, 3), 10)
    assert pretrained.build_arguments("t2t_vit_19", "CIFAR100") == ((224, 224, 3), 100)
    assert pretrained.build_arguments("t2t_vit_24", "imagenet_token_labeling") == ((224, 224, 3), 1000)
    assert pretrained.build_arguments("t2t_vit_14", "imagenet_384", (288, 288, 3), 37) == ((288, 288, 3), 37)


@pytest.mark.parametrize("setting", ["ftp://mirror.example/t2t/", "/no/such/folder"])
def test_a_bad_mirror_setting_is_refused_naming_it(cache, monkeypatch, setting):
    monkeypatch.setenv(pretrained.URL_SETTING, setting)
    with pytest.raises(ValueError, match=rf"KERAS_T2T_WEIGHTS_URL='{setting}' .*http\(s\):// or file:// URL, or a "
                                         "local folder"):
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 2
    assert not os.path.exists(cache / T7_FILE)


# === from the mirror into the cache, and from the cache without it ===


def test_t2t_vit_7_imagenet_from_the_mirror_then_from_the_cache_alone(served, mirror, cache, capsys):
    mirror.files[T7_FILE] = served.t7
    # The fetch command: download, check, record, convert.
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 0
    out = capsys.readouterr().out
    assert f"t2t_vit_7:imagenet: {T7_FILE} ({mirror.url}{T7_FILE})" in out and "t2t_vit_7:imagenet: ok" in out
    preset = cache / "presets" / "t2t_vit_7_imagenet"
    assert _cached(cache) == sorted([T7_FILE, "index.json", "presets"])  # no temporary file left
    assert sorted(os.listdir(cache / "presets")) == ["t2t_vit_7_imagenet"]
    index = _index(cache)
    assert index[T7_FILE]["sha256"] == hashlib.sha256(served.t7).hexdigest()
    assert index[T7_FILE]["bytes"] == len(served.t7) and index[T7_FILE]["source"] == mirror.url + T7_FILE
    with open(preset / "metadata.json") as handle:
        recorded = json.load(handle)["files_sha256"]
    assert recorded["model.weights.h5"] == hashlib.sha256(_bytes_of(preset / "model.weights.h5")).hexdigest()
    assert mirror.requests == [T7_FILE]

    # A cached checkpoint that changed is not trusted: fetched again (the conversion, intact, is kept).
    _flip_a_byte(cache / T7_FILE)
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 0
    assert "not trusted, fetching it again" in capsys.readouterr().out
    assert mirror.requests == [T7_FILE, T7_FILE] and _bytes_of(cache / T7_FILE) == served.t7
    # A changed conversion is made again from the (verified) checkpoint, without a download.
    _flip_a_byte(preset / "model.weights.h5", offset=3000)
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 0
    assert "not trusted, converting it again" in capsys.readouterr().out
    assert mirror.requests == [T7_FILE, T7_FILE]
    with open(preset / "metadata.json") as handle:
        recorded = json.load(handle)["files_sha256"]
    assert recorded["model.weights.h5"] == hashlib.sha256(_bytes_of(preset / "model.weights.h5")).hexdigest()

    # The mirror gone and the PyTorch file deleted: the builder loads the conversion.
    mirror.stop()
    os.remove(cache / T7_FILE)
    model = keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    images = random_images(11, 2, 224, 224)
    np.testing.assert_allclose(_logits(model, images), ref.forward(served.ema, images, T7_CONFIG), atol=ATOL, rtol=ATOL)

    # Other arguments win over the tag's: a 160x160 model with 5 classes, the rest loaded.
    model = keras_t2t.t2t_vit_7(weights="imagenet", input_shape=(160, 160, 3), classes=5, verbose=False)
    assert model.input_shape == (None, 160, 160, 3) and model.output_shape == (None, 5)
    loaded = model_state_dict(model)
    for key in ("blocks.6.mlp.fc2.weight", "tokens_to_token.attention1.w", "norm.weight"):
        np.testing.assert_array_equal(loaded[key], served.ema[key], err_msg=key)
    np.testing.assert_allclose(
        loaded["pos_embed"], ref.resize_pos_embed(served.ema["pos_embed"], (10, 10)), atol=1e-5
    )

    assert mirror.requests == [T7_FILE, T7_FILE]


def test_a_local_folder_and_a_file_url_serve_as_mirrors(served, cache, monkeypatch, tmp_path):
    folder = tmp_path / "release files"
    folder.mkdir()
    (folder / T7_FILE).write_bytes(served.t7)
    for setting in (str(folder), folder.as_uri()):
        monkeypatch.setenv(pretrained.URL_SETTING, setting)
        path = pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
        assert path == str(cache / T7_FILE) and _bytes_of(path) == served.t7
        assert _index(cache)[T7_FILE]["source"] == folder.as_uri() + "/" + T7_FILE
        assert _cached(cache) == sorted([T7_FILE, "index.json"])
        pretrained.forget("t2t_vit_7", "imagenet")
        assert _cached(cache) == ["index.json"] and _index(cache) == {}


def test_a_fetch_deletes_what_killed_fetches_left_once_an_hour_old(served, mirror, cache):
    mirror.files[T7_FILE] = served.t7
    cache.mkdir(parents=True)
    stale, active = cache / f".{T7_FILE}.partial-k1ll3d.pth.tar", cache / f".{T7_FILE}.partial-4ct1v3.pth.tar"
    stale.write_bytes(served.t7[:1000])
    active.write_bytes(served.t7[:1000])
    two_hours_ago = os.path.getmtime(active) - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    assert _cached(cache) == sorted([active.name, T7_FILE, "index.json"])


# === what is refused, and that nothing is left behind ===

FAILURES = {
    "missing": (None, None, r"HTTP Error 404|404 -- Not Found"),
    "html": ("t7", "html", r"the server sent a web page \(HTML\), not a checkpoint"),
    "short": ("t7", "short", r"retrieval incomplete: got only"),
    "truncated": ("t7_half", None, r"it is not a readable T2T-ViT checkpoint \(71.7_T2T_ViT_7.pth.tar: "),
    "empty": ("nothing", None, r"the body is empty"),
    "wrong_model": ("t10", None, r"its tensors are a t2t_vit_10 checkpoint, not t2t_vit_7's"),
    "wrong_size": ("t7_at_64", None, r"its position table is for \(64, 64\) images, the 'imagenet' weights' is 224"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_bad_download_is_refused_naming_the_url_the_setting_and_the_manual_route(served, mirror, cache, case):
    body, fault, reason = FAILURES[case]
    bodies = {"t7": served.t7, "t7_half": served.t7[: len(served.t7) // 2], "nothing": b"", "t10": served.t10,
              "t7_at_64": served.t7_at_64}
    if body is not None:
        mirror.files[T7_FILE] = bodies[body]
    if fault is not None:
        mirror.faults[T7_FILE] = fault
    with pytest.raises(pretrained.WeightsFetchError) as caught:
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    message = str(caught.value)
    assert f"from {mirror.url}{T7_FILE}: " in message
    assert "Set KERAS_T2T_WEIGHTS_URL to a mirror" in message
    assert f"download https://github.com/yitu-opensource/T2T-ViT/releases/download/main/{T7_FILE} yourself" in message
    assert f"keras_t2t.t2t_vit_7(weights='/path/to/{T7_FILE}')" in message
    assert re.search(reason, message), message
    assert _cached(cache) == []  # no partial or bad file, no record


def test_the_builder_and_the_fetch_command_report_failures(served, mirror, cache, capsys):
    with pytest.raises(pretrained.WeightsFetchError, match=r"404.*KERAS_T2T_WEIGHTS_URL"):
        keras_t2t.t2t_vit_7(weights="imagenet")
    mirror.faults[T7_FILE] = "html"
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors[0].startswith("error: t2t_vit_7:imagenet: Could not get the 'imagenet' weights of t2t_vit_7")
    assert "HTML" in errors[0] and errors[1] == "1 of 1 failed"
    assert _cached(cache) == []


def test_no_network_names_the_url_the_setting_and_the_manual_route(cache, monkeypatch, capsys, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/mirror/"
    monkeypatch.setenv(pretrained.URL_SETTING, url)
    with pytest.raises(pretrained.WeightsFetchError) as caught:
        keras_t2t.t2t_vit_7(weights="imagenet")
    message = str(caught.value)
    assert f"from {url}{T7_FILE}: " in message and "Connection refused" in message
    assert "KERAS_T2T_WEIGHTS_URL" in message and "yourself and pass its path" in message
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 2
    # keras-t2t-evaluate takes the tag (no "no such file") and fails at the fetch, naming it.
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "val" / "a" / "x.png")
    assert evaluate_cli.main(["--variant", "t2t_vit_7", "--weights", "imagenet", "--data-dir",
                              str(tmp_path / "val")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot load the model: WeightsFetchError: Could not get the 'imagenet' weights of t2t_vit_7" in err
    assert f"{url}{T7_FILE}" in err and "no such file" not in err
    assert _cached(cache) == []


def test_a_new_download_must_match_the_first_ones_sha256(served, mirror, cache):
    mirror.files[T7_FILE] = served.t7
    pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    first = _index(cache)[T7_FILE]["sha256"]
    _flip_a_byte(cache / T7_FILE)
    mirror.files[T7_FILE] = served.t7_other  # a valid t2t_vit_7 checkpoint, other bytes
    with pytest.raises(pretrained.WeightsFetchError, match=rf"differs from {first}, recorded at the first download.*"
                                                           r"keras-t2t-weights fetch --refresh t2t_vit_7:imagenet"):
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    assert _cached(cache) == sorted([T7_FILE, "index.json"])  # the changed file kept, never used; the new one not kept
    # --refresh takes the new file whatever the record says.
    pretrained.refresh("t2t_vit_7", "imagenet")
    assert _index(cache)[T7_FILE]["sha256"] == hashlib.sha256(served.t7_other).hexdigest()
    assert _bytes_of(cache / T7_FILE) == served.t7_other


# === the CIFAR tags: the transfer-learning layout, 10 classes ===


def test_t2t_vit_14_cifar10_in_the_transfer_learning_layout_gives_the_reference_logits(mirror, cache, tmp_path):
    config = dict(keras_t2t.VARIANTS["t2t_vit_14"], classes=10, image_size=(224, 224))
    state = ref.make_state_dict(config, 14)
    # What the authors' transfer_learning.py saves: {'net': state_dict (DataParallel keys), 'acc', 'epoch'}.
    net = collections.OrderedDict(("module." + k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items())
    torch.save({"net": net, "acc": 98.3, "epoch": 57}, tmp_path / "cifar10.pth")
    mirror.files["cifar10_t2t-vit_14_98.3.pth"] = _bytes_of(tmp_path / "cifar10.pth")
    model = keras_t2t.t2t_vit_14(weights="cifar10", classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 10)
    images = random_images(14, 1, 224, 224)
    np.testing.assert_allclose(_logits(model, images), ref.forward(state, images, config), atol=ATOL, rtol=ATOL)
    assert _cached(cache) == sorted(["cifar10_t2t-vit_14_98.3.pth", "index.json", "presets"])
    assert os.listdir(cache / "presets") == ["t2t_vit_14_cifar10"]


# === the command line ===


def test_list_prints_every_release_and_the_cache(served, mirror, cache, capsys):
    mirror.files[T7_FILE] = served.t7
    pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    capsys.readouterr()
    assert weights_cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache: {cache}  source: {mirror.url}"
    assert lines[1].split() == ["model", "tag", "file", "size", "classes", "top-1", "cache"]
    assert [line.split() for line in lines[2:]] == [
        [m, t, f, str(s), str(c), f"{top1:.1f}", "downloaded" if f == T7_FILE else "-"]
        for m, t, f, s, c, top1 in RELEASES
    ]
    assert weights_cli.main(["list", "--model", "t2t_vit_19"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fetch"], r"fetch needs MODEL:TAG arguments or --all"),
        (["fetch", "t2t_vit_7"], r"expected MODEL:TAG, e.g. t2t_vit_14:imagenet, got 't2t_vit_7'"),
        (["fetch", "t2t_vit_7:cifar10"], r"t2t_vit_7 has no weights tag 'cifar10'; its tags: imagenet"),
        (["fetch", "t2t_vit_99:imagenet"], r"unknown model 't2t_vit_99'"),
        (["list", "--model", "t2t_vit_99"], r"Unknown model 't2t_vit_99'"),
        (["download"], r"invalid choice: 'download'"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(cache, capsys, argv, message):
    assert weights_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and re.search(message, err), err
    assert _cached(cache) == []


def test_a_tag_loads_into_bfloat16_variables_close_to_the_reference(served, mirror, cache):
    # Issue 14: dtype="bfloat16" with a pretrained tag builds bfloat16 variables (the float32 islands
    # aside) from the float32 checkpoint; the logits stay within bfloat16 rounding of the reference.
    mirror.files[T7_FILE] = served.t7
    model = keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None, dtype="bfloat16")
    assert {v.dtype for v in model.weights if v.path.endswith("qkv/kernel")} == {"bfloat16"}
    assert keras_t2t.precision.compute_dtype(model) == "bfloat16"
    images = random_images(13, 2, 224, 224)
    want = ref.forward(served.ema, images, T7_CONFIG)
    got = _logits(model, images).astype("float64")
    assert_bfloat16_logits_close(got, want, t2t_depth(model.get_config()))
    # Same weights as the float32 tag, rounded: one of them compared exactly.
    loaded = model_state_dict(model)
    key = "blocks.6.mlp.fc2.weight"
    np.testing.assert_array_equal(np.asarray(loaded[key], "float32"),
                                  np.asarray(served.ema[key]).astype(ml_dtypes.bfloat16).astype("float32"))


# === issue 23: a cache that never deletes what it cannot replace; timeouts; bad URLs ===


def _offline(monkeypatch):
    monkeypatch.setenv(pretrained.URL_SETTING, f"http://127.0.0.1:{_closed_port()}/nothing/")


def test_a_release_file_put_in_the_cache_by_hand_is_read_checked_and_recorded_offline(served, cache, monkeypatch,
                                                                                     capsys):
    # The documented route for a machine without network: copy the file into the cache.
    cache.mkdir(parents=True)
    (cache / T7_FILE).write_bytes(served.t7)
    _offline(monkeypatch)
    model = keras_t2t.t2t_vit_7(weights="imagenet", classifier_activation=None)
    assert "had no SHA-256 record; it was read" in capsys.readouterr().out
    assert _index(cache)[T7_FILE]["sha256"] == hashlib.sha256(served.t7).hexdigest()
    images = random_images(3, 1, 224, 224)
    np.testing.assert_allclose(_logits(model, images), ref.forward(served.ema, images, T7_CONFIG), atol=1e-4,
                               rtol=1e-4)


def test_a_damaged_index_deletes_no_valid_file(served, mirror, cache, monkeypatch):
    mirror.files[T7_FILE] = served.t7
    pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    (cache / "index.json").write_text("{ this is not json")
    _offline(monkeypatch)
    assert pretrained.fetch_checkpoint("t2t_vit_7", "imagenet") == str(cache / T7_FILE)
    assert _bytes_of(cache / T7_FILE) == served.t7 and T7_FILE in _index(cache)


def test_an_unrecorded_file_that_is_not_the_release_is_kept_while_it_cannot_be_replaced(served, cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / T7_FILE).write_bytes(served.t10)  # another model's checkpoint under the name
    _offline(monkeypatch)
    with pytest.raises(pretrained.WeightsFetchError, match="failed its check was kept"):
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    assert _bytes_of(cache / T7_FILE) == served.t10


def test_refresh_keeps_the_cache_when_the_new_download_fails(served, mirror, cache, monkeypatch, capsys):
    mirror.files[T7_FILE] = served.t7
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 0
    preset = pretrained.preset_cache_folder("t2t_vit_7", "imagenet")
    before = (_bytes_of(cache / T7_FILE), _index(cache), sorted(os.listdir(preset)))
    mirror.faults[T7_FILE] = "short"  # the new download breaks off half-way
    assert weights_cli.main(["fetch", "--refresh", "t2t_vit_7:imagenet"]) == 1
    assert (_bytes_of(cache / T7_FILE), _index(cache), sorted(os.listdir(preset))) == before
    assert not [name for name in os.listdir(cache) if "partial" in name]


def test_a_mirror_that_never_answers_is_given_up_after_the_timeout_leaving_no_partial_file(cache, monkeypatch):
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    monkeypatch.setenv(pretrained.URL_SETTING, f"http://127.0.0.1:{listener.getsockname()[1]}/mute/")
    monkeypatch.setenv(pretrained.TIMEOUT_SETTING, "1")
    try:
        with pytest.raises(pretrained.WeightsFetchError, match=r"timed out.*no answer for 1 s; "
                                                               r"KERAS_T2T_DOWNLOAD_TIMEOUT"):
            pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    finally:
        listener.close()
    assert accepted and _cached(cache) == []
    monkeypatch.setenv(pretrained.TIMEOUT_SETTING, "soon")
    with pytest.raises(ValueError, match="KERAS_T2T_DOWNLOAD_TIMEOUT='soon' must be a number of seconds > 0"):
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")


@pytest.mark.parametrize("setting", ["http://[::1/", "http://mirror.example:port/"])
def test_an_invalid_mirror_url_names_the_setting(cache, monkeypatch, capsys, setting):
    monkeypatch.setenv(pretrained.URL_SETTING, setting)
    with pytest.raises(ValueError, match=r"KERAS_T2T_WEIGHTS_URL='.*' is not a valid URL"):
        pretrained.fetch_checkpoint("t2t_vit_7", "imagenet")
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 2
    assert "KERAS_T2T_WEIGHTS_URL" in capsys.readouterr().err

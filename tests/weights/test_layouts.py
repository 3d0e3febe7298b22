"""The authors' other checkpoint layouts, and the class count read from a checkpoint's head.

* The CIFAR-10/100 fine-tunes, saved by the authors' ``transfer_learning.py`` as
  ``{'net': state_dict, 'acc': float, 'epoch': int}``, keys with DataParallel's
  ``module.`` prefix.
* The Token Labeling checkpoint (``84.2_T2T_ViT_24.pth.tar``): timm's layout plus
  ``aux_head`` (a Linear from embed_dim to the classes, on every patch token). Token
  Labeling's evaluation scores ``head(cls) + 0.5 * max over the patch tokens of
  aux_head(token)``; that is what the loaded model must give.

Files are written with real ``torch.save``; tensors and expected numbers come from the
independent NumPy reference (tests/reference.py). Most models are small custom sizes
(``from_checkpoint(..., variant=..., **row overrides)``); one converter test uses a
t2t_vit_7 row at 32x32.
"""

import inspect

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import (  # noqa: E402
    random_images,
    row_state_dict,
    save_authors_checkpoint,
    save_net_checkpoint,
    torch_state_dict,
)
from keras_t2t.cli import convert as convert_cli  # noqa: E402
from keras_t2t.weights import checkpoint_head, model_state_dict  # noqa: E402
from keras_t2t.weights.torch_pickle import CheckpointError, load_state_dict_file  # noqa: E402

ATOL = 1e-4  # Keras logits (float32) against the float64 reference
# A small performer T2T-ViT at 32x32 (grid 2x2), loaded as a custom size of the t2t_vit_14 row.
ROW = dict(token_dim=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
SMALL = dict(ROW, t2t_type="performer", image_size=(32, 32), classes=10)
CIFAR_ACC, CIFAR_EPOCH = 98.31, 57


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _logits(model, images):
    return _np(model(images, training=False))


def with_aux_head(state, classes, seed):
    """``state`` plus Token Labeling's aux_head (classes, D) / (classes,)."""
    rng = np.random.default_rng(seed)
    width = state["norm.weight"].shape[0]
    aux = {
        "aux_head.weight": (rng.standard_normal((classes, width)) / np.sqrt(width)).astype("float32"),
        "aux_head.bias": (0.02 * rng.standard_normal(classes)).astype("float32"),
    }
    return dict(state, **aux)


def token_labeling_scores(state, images, config):
    """Token Labeling's evaluation in NumPy: head(cls) + 0.5 * max over patch tokens of aux_head(token)."""
    features = ref.forward(state, images, config, return_features=True)
    per_token = features["tokens"][:, 1:] @ state["aux_head.weight"].T.astype("float64") + state["aux_head.bias"]
    return features["logits"] + 0.5 * per_token.max(axis=1)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A small 10-class checkpoint in the 'net' layout, and its reference logits."""
    state = ref.make_state_dict(SMALL, 10)
    path = save_net_checkpoint(tmp_path_factory.mktemp("net") / "cifar10_t2t-vit_small.pth", state, CIFAR_ACC,
                               CIFAR_EPOCH)
    images = random_images(3, 2, 32, 32)
    return dict(path=path, state=state, images=images, logits=ref.forward(state, images, SMALL))


@pytest.fixture(scope="module")
def token_labeling(tmp_path_factory):
    """A small Token Labeling checkpoint (timm's layout, EMA weights with aux_head) and its expected scores."""
    ema = with_aux_head(ref.make_state_dict(SMALL, 20), SMALL["classes"], 21)
    plain = with_aux_head(ref.make_state_dict(SMALL, 22), SMALL["classes"], 23)
    path = save_authors_checkpoint(
        tmp_path_factory.mktemp("tl") / "84.2_T2T_ViT_small.pth.tar", ema, plain, "T2t_vit_24", img_size=32
    )
    images = random_images(4, 2, 32, 32)
    return dict(
        path=path, ema=ema, images=images, combined=token_labeling_scores(ema, images, SMALL),
        main=ref.forward(ema, images, SMALL),
    )


# === the 'net' layout ===


def test_net_layout_is_read_with_the_module_prefix_stripped_and_its_acc_and_epoch_reported(cifar):
    state, info = load_state_dict_file(cifar["path"])
    assert info == {"source_key": "net", "epoch": CIFAR_EPOCH, "acc": CIFAR_ACC}
    assert set(state) == set(cifar["state"]) and not any(k.startswith("module.") for k in state)
    for key, value in cifar["state"].items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    forced, info = load_state_dict_file(cifar["path"], which="net")
    assert info["source_key"] == "net" and set(forced) == set(state)


def test_net_comes_after_the_timm_entries_and_which_net_forces_it(tmp_path):
    ema, plain, net = (ref.make_state_dict(SMALL, seed) for seed in (1, 2, 3))
    path = tmp_path / "both.pth.tar"
    torch.save({"state_dict_ema": torch_state_dict(ema), "state_dict": torch_state_dict(plain),
                "net": torch_state_dict(net)}, path)
    for which, prefer_ema, expected, source in ((None, True, ema, "state_dict_ema"),
                                                 (None, False, plain, "state_dict"), ("net", True, net, "net")):
        state, info = load_state_dict_file(path, prefer_ema=prefer_ema, which=which)
        assert info["source_key"] == source
        np.testing.assert_array_equal(state["head.weight"], expected["head.weight"])


def test_a_checkpoint_without_weights_names_every_accepted_entry(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"acc": 1.0, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"no 'state_dict_ema', 'state_dict', 'model' or 'net' entry"):
        load_state_dict_file(path)
    with pytest.raises(CheckpointError, match=r"which='nett' is not one of .*'net' or 'bare'"):
        load_state_dict_file(path, which="nett")


def test_net_checkpoint_loads_with_the_heads_10_classes_and_gives_the_reference_logits(cifar):
    model = keras_t2t.from_checkpoint(cifar["path"], variant="t2t_vit_14", classifier_activation=None, **ROW)
    assert model.output_shape == (None, 10) and model.input_shape == (None, 32, 32, 3)
    assert model.weights_report["head_dropped"] is None and model.weights_report["loaded"] == len(cifar["state"])
    info = model.checkpoint_info
    assert (info["source_key"], info["acc"], info["epoch"], info["variant"]) == ("net", CIFAR_ACC, CIFAR_EPOCH,
                                                                                 "t2t_vit_14")
    np.testing.assert_allclose(_logits(model, cifar["images"]), cifar["logits"], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("how", ["builder", "create_model"])
def test_builders_with_a_checkpoint_path_take_the_class_count_from_its_head(cifar, how):
    kwargs = dict(weights=cifar["path"], classifier_activation=None, **ROW)
    model = keras_t2t.t2t_vit_14(**kwargs) if how == "builder" else keras_t2t.create_model("t2t_vit_14", **kwargs)
    assert model.output_shape == (None, 10) and model.weights_report["head_dropped"] is None
    np.testing.assert_allclose(_logits(model, cifar["images"]), cifar["logits"], atol=ATOL, rtol=ATOL)


def test_explicit_classes_give_a_fresh_head_and_load_the_rest(cifar):
    model = keras_t2t.from_checkpoint(cifar["path"], variant="t2t_vit_14", classes=1000, verbose=False, **ROW)
    assert model.output_shape == (None, 1000)
    assert model.weights_report["head_dropped"].startswith("the weights have 10 classes, the model 1000")
    loaded = model_state_dict(model)
    assert loaded["head.weight"].shape == (1000, 32)
    for key, value in cifar["state"].items():
        if not key.startswith("head."):
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_include_top_false_gives_the_reference_features(cifar):
    model = keras_t2t.from_checkpoint(cifar["path"], variant="t2t_vit_14", include_top=False, verbose=False, **ROW)
    assert model.output_shape == (None, 32) and model.weights_report["head_dropped"] == "the model has no head"
    pooled = ref.forward(cifar["state"], cifar["images"], SMALL, return_features=True)["pooled"]
    np.testing.assert_allclose(_logits(model, cifar["images"]), pooled, atol=ATOL, rtol=ATOL)


def test_without_weights_the_builders_keep_1000_classes_and_say_classes_none_in_their_signature():
    assert inspect.signature(keras_t2t.t2t_vit_14).parameters["classes"].default is None
    model = keras_t2t.create_model("t2t_vit_14", input_shape=(32, 32, 3), **ROW)
    assert model.output_shape == (None, 1000) and model.classes == 1000
    assert keras_t2t.create_model("t2t_vit_14", input_shape=(32, 32, 3), classes=3, **ROW).output_shape == (None, 3)


def test_a_weights_h5_file_gives_its_class_count_too(tmp_path, cifar):
    source = keras_t2t.from_checkpoint(cifar["path"], variant="t2t_vit_14", classifier_activation=None, **ROW)
    path = tmp_path / "ten.weights.h5"
    source.save_weights(path)
    model = keras_t2t.create_model("t2t_vit_14", weights=path, input_shape=(32, 32, 3), classifier_activation=None,
                                   **ROW)
    assert model.output_shape == (None, 10)
    np.testing.assert_allclose(_logits(model, cifar["images"]), cifar["logits"], atol=ATOL, rtol=ATOL)


# === Token Labeling ===


def test_token_labeling_checkpoint_gives_token_labelings_combined_scores(token_labeling):
    model = keras_t2t.from_checkpoint(
        token_labeling["path"], variant="t2t_vit_24", classifier_activation=None, verbose=False, **ROW
    )
    assert model.token_labeling_head is True and model.output_shape == (None, 10)
    report = model.weights_report
    assert report["aux_head_dropped"] is None and report["head_dropped"] is None
    assert report["loaded"] == len(token_labeling["ema"])
    got = _logits(model, token_labeling["images"])
    np.testing.assert_allclose(got, token_labeling["combined"], atol=ATOL, rtol=ATOL)
    assert np.abs(got - token_labeling["main"]).max() > 0.1  # the aux head really counts
    loaded = model_state_dict(model)
    np.testing.assert_array_equal(loaded["aux_head.weight"], token_labeling["ema"]["aux_head.weight"])


def test_token_labeling_model_saves_and_reloads_with_its_aux_head(tmp_path, token_labeling):
    model = keras_t2t.from_checkpoint(token_labeling["path"], variant="t2t_vit_24", classifier_activation=None, **ROW)
    model.save(tmp_path / "tl.keras")
    reloaded = keras.saving.load_model(tmp_path / "tl.keras")
    assert reloaded.get_config()["token_labeling_head"] is True
    np.testing.assert_allclose(_logits(reloaded, token_labeling["images"]), token_labeling["combined"], atol=ATOL,
                               rtol=ATOL)


def test_token_labeling_head_false_gives_the_main_head_and_says_aux_head_was_dropped(capsys, token_labeling):
    model = keras_t2t.from_checkpoint(
        token_labeling["path"], variant="t2t_vit_24", classifier_activation=None, token_labeling_head=False, **ROW
    )
    assert model.token_labeling_head is False
    assert "token_labeling_head=False" in model.weights_report["aux_head_dropped"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "aux_head not loaded (the model has no token-labeling head" in printed[0]
    np.testing.assert_allclose(_logits(model, token_labeling["images"]), token_labeling["main"], atol=ATOL, rtol=ATOL)


def test_a_new_head_or_no_top_drops_the_aux_head_with_the_head(token_labeling):
    seven = keras_t2t.from_checkpoint(token_labeling["path"], variant="t2t_vit_24", classes=7, verbose=False, **ROW)
    assert seven.token_labeling_head is False and seven.output_shape == (None, 7)
    assert seven.weights_report["aux_head_dropped"].startswith("the weights have 10 classes, the model 7;")
    features = keras_t2t.from_checkpoint(token_labeling["path"], variant="t2t_vit_24", include_top=False,
                                         verbose=False, **ROW)
    assert features.weights_report["aux_head_dropped"] == "the model has no head"
    with pytest.raises(ValueError, match="token_labeling_head=True .* needs include_top=True"):
        keras_t2t.T2TViT(input_shape=(32, 32, 3), include_top=False, token_labeling_head=True, **ROW)


# === detection of the released files' variants (real row shapes; the blocks share one set of arrays) ===


def test_a_cifar_net_file_of_t2t_vit_14_is_detected_as_t2t_vit_14(tmp_path):
    state = row_state_dict(keras_t2t.VARIANTS["t2t_vit_14"], classes=10)
    path = save_net_checkpoint(tmp_path / "cifar10_t2t-vit_14_98.3.pth", state, 98.3, 59)
    state, info = load_state_dict_file(path)
    assert info["source_key"] == "net"
    assert keras_t2t.detect_variant(state) == ("t2t_vit_14", {})
    assert checkpoint_head(state) == (10, False)


def test_the_token_labeling_file_is_detected_as_t2t_vit_24(tmp_path):
    state = with_aux_head(row_state_dict(keras_t2t.VARIANTS["t2t_vit_24"]), 1000, 5)
    path = tmp_path / "84.2_T2T_ViT_24.pth.tar"
    weights = torch_state_dict(state)
    torch.save({"state_dict_ema": weights, "state_dict": weights, "epoch": 300}, path)
    loaded, info = load_state_dict_file(path)
    assert info["source_key"] == "state_dict_ema"
    assert keras_t2t.detect_variant(loaded) == ("t2t_vit_24", {})
    assert checkpoint_head(loaded) == (1000, True)


# === the converter ===


def test_converter_reads_the_net_entry_of_a_t2t_vit_7_fine_tune(tmp_path, capsys):
    config = dict(keras_t2t.VARIANTS["t2t_vit_7"], image_size=(32, 32), classes=10)
    state = ref.make_state_dict(config, 7)
    path = save_net_checkpoint(tmp_path / "cifar10_t2t-vit_7.pth", state, acc=97.5, epoch=41)
    output = tmp_path / "cifar10_t2t_vit_7.keras"
    code = convert_cli.main([str(path), "--output", str(output), "--weights-entry", "net"])
    out, err = capsys.readouterr()
    assert code == 0, err
    for expected in ("variant: t2t_vit_7 (detected)", "weights entry: net, epoch 41, acc 97.5",
                     "image size: 32x32", "classes: 10", f"{len(state)} tensors equal the checkpoint's"):
        assert expected in out, (expected, out)
    model = keras.saving.load_model(output)
    images = random_images(8, 2, 32, 32)
    scores = _logits(keras.Model(model.input, model.get_layer("head").output), images)
    np.testing.assert_allclose(scores, ref.forward(state, images, config), atol=ATOL, rtol=ATOL)

    timm = save_authors_checkpoint(tmp_path / "timm.pth.tar", state, state, "T2t_vit_7", img_size=32)
    code = convert_cli.main([str(timm), "--output", str(tmp_path / "x.keras"), "--weights-entry", "net"])
    err = capsys.readouterr().err
    assert code == 2 and "no 'net' state dict" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10_t2t-vit_7.pth", output.name, "timm.pth.tar"]

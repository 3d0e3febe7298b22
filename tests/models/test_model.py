"""The whole model against the NumPy reference, the variant table, the keywords and the errors."""

import keras
import numpy as np
import pytest

import keras_t2t
import reference as ref
from helpers import n_params, random_images
from keras_t2t.weights import load_state_dict

ATOL = 1e-5

# Spec section 8, measured on the reference code (224x224, 1000 classes).
SPEC_PARAMETER_COUNTS = {
    "t2t_vit_7": (4_255_694, 4_310_222),
    "t2t_vit_10": (5_834_702, 5_889_230),
    "t2t_vit_12": (6_887_374, 6_941_902),
    "t2t_vit_14": (21_465_806, 21_545_550),
    "t2t_vit_19": (39_085_070, 39_177_422),
    "t2t_vit_24": (64_000_974, 64_105_934),
    "t2t_vit_t_14": (21_465_422, 21_541_070),
    "t2t_vit_t_19": (39_084_686, 39_172_942),
    "t2t_vit_t_24": (64_000_590, 64_101_454),
    "t2t_vit_14_resnext": (21_465_806, 21_545_550),
    "t2t_vit_14_wide": (25_000_910, 25_156_302),
}


@pytest.mark.parametrize("variant", sorted(SPEC_PARAMETER_COUNTS))
def test_parameter_counts_equal_the_spec(variant):
    model = getattr(keras_t2t, variant)()
    trainable, total = SPEC_PARAMETER_COUNTS[variant]
    assert n_params(model.trainable_weights) == trainable
    assert model.count_params() == total
    assert model.name == variant


def _config(t2t_type, image_size, **kw):
    config = {"t2t_type": t2t_type, "image_size": image_size, "embed_dim": 64, "depth": 2,
              "num_heads": 4, "mlp_ratio": 2.0, "classes": 10}
    config.update(kw)
    return config


def _model(config, **kw):
    return keras_t2t.T2TViT(
        input_shape=tuple(config["image_size"]) + (config.get("in_channels", 3),),
        t2t_type=config["t2t_type"],
        t2t_stages=config.get("t2t_stages", ((7, 4, 2), (3, 2, 1), (3, 2, 1))),
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        qkv_bias=config.get("qkv_bias", False),
        classes=config["classes"],
        classifier_activation=None,
        **kw,
    )


@pytest.mark.parametrize("t2t_type", ["performer", "transformer"])
@pytest.mark.parametrize("image_size", [(224, 224), (160, 224)])
def test_model_matches_reference_forward(t2t_type, image_size):
    config = _config(t2t_type, image_size)
    sd = ref.make_state_dict(config, np.random.default_rng(1))
    model = _model(config)
    report = load_state_dict(model, sd)
    assert report["loaded"] == len(sd)
    x = random_images(2, 2, *image_size)
    out = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    np.testing.assert_allclose(out, ref.forward(sd, x, config), atol=ATOL, rtol=ATOL)


def test_real_size_t2t_vit_7_matches_reference():
    config = {"t2t_type": "performer", "image_size": (224, 224), "embed_dim": 256, "depth": 7,
              "num_heads": 4, "mlp_ratio": 2.0, "classes": 1000}
    sd = ref.make_state_dict(config, np.random.default_rng(7))
    model = keras_t2t.t2t_vit_7(classifier_activation=None)
    load_state_dict(model, sd)
    x = random_images(3, 2, 224, 224)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=False)), ref.forward(sd, x, config), atol=ATOL, rtol=ATOL
    )


def test_small_images_with_custom_stages_and_avg_pooling_match_reference():
    config = _config("performer", (32, 32), t2t_stages=[(3, 1, 1), (3, 2, 1), (3, 2, 1)], token_dim=16)
    sd = ref.make_state_dict(config, np.random.default_rng(2))
    model = _model(config, token_dim=16, pooling="avg")
    assert model.grid_size == (8, 8)
    load_state_dict(model, sd)
    x = random_images(4, 3, 32, 32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), ref.forward(sd, x, config, pooling="avg"), atol=ATOL, rtol=ATOL
    )


def test_qk_scale_option_reproduces_the_pretrained_builder_quirk():
    config = _config("performer", (64, 64))
    sd = ref.make_state_dict(config, np.random.default_rng(3))
    scale = 64**-0.5
    model = _model(config, qk_scale=scale)
    load_state_dict(model, sd)
    x = random_images(5, 2, 64, 64)
    out = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(out, ref.forward(sd, x, config, qk_scale=scale), atol=ATOL, rtol=ATOL)
    assert not np.allclose(out, ref.forward(sd, x, config), atol=1e-3)


def test_feature_extractor_returns_final_tokens_and_chosen_blocks():
    config = _config("transformer", (96, 64), depth=3)
    sd = ref.make_state_dict(config, np.random.default_rng(4))
    model = _model(config)
    load_state_dict(model, sd)
    features = model.feature_extractor(block_indices=[0, -1], include_t2t=True)
    x = random_images(6, 2, 96, 64)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in features(x).items()}
    expected = ref.forward(sd, x, config, return_features=True)
    assert set(out) == {"tokens", "block_0", "block_2", "t2t"}
    assert out["tokens"].shape == (2, 1 + 6 * 4, 64)
    np.testing.assert_allclose(out["tokens"], expected["tokens"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(out["block_0"], expected["blocks"][0], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(out["block_2"], expected["blocks"][2], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(out["t2t"], expected["t2t"], atol=ATOL, rtol=ATOL)


def test_no_top_returns_pooled_features_or_the_sequence():
    pooled = keras_t2t.T2TViT(input_shape=(64, 64, 3), embed_dim=32, depth=1, num_heads=2, include_top=False)
    assert pooled.output_shape == (None, 32)
    sequence = keras_t2t.T2TViT(
        input_shape=(64, 64, 3), embed_dim=32, depth=1, num_heads=2, include_top=False, pooling=None
    )
    assert sequence.output_shape == (None, 1 + 4 * 4, 32)


def test_resolution_change_resizes_position_table_bicubically():
    torch = pytest.importorskip("torch")
    config = _config("performer", (224, 224))
    sd = ref.make_state_dict(config, np.random.default_rng(5))
    # A 224-trained table loaded into a 384 model: cls row kept, 14x14 grid -> 24x24 bicubic.
    model = _model(dict(config, image_size=(384, 384)))
    report = load_state_dict(model, sd)
    assert report["pos_embed_resized"] == ((14, 14), (24, 24))
    grid = torch.from_numpy(sd["pos_embed"][0, 1:].reshape(1, 14, 14, 64)).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid.double(), size=(24, 24), mode="bicubic", align_corners=False)
    expected = np.concatenate(
        [sd["pos_embed"][:, :1], resized.permute(0, 2, 3, 1).reshape(1, 576, 64).numpy()], axis=1
    )
    table = keras.ops.convert_to_numpy(model.get_layer("pos_embed").pos_embed)
    np.testing.assert_allclose(table, expected, atol=1e-6)
    # ... and the model then computes the reference's forward with that table.
    x = random_images(8, 1, 384, 384)
    sd384 = dict(sd, pos_embed=expected.astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), ref.forward(sd384, x, dict(config, image_size=(384, 384))),
        atol=ATOL, rtol=ATOL,
    )


def test_builder_keywords_follow_keras_applications():
    model = keras_t2t.t2t_vit_7(input_shape=(64, 96, 1), classes=5, name="mine")
    assert model.name == "mine" and model.input_shape == (None, 64, 96, 1) and model.output_shape == (None, 5)
    probs = keras.ops.convert_to_numpy(model(random_images(9, 2, 64, 96, 1)))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert keras_t2t.create_model("t2t_vit_t_14", include_top=False).output_shape == (None, 384)
    assert keras_t2t.list_variants() == list(SPEC_PARAMETER_COUNTS)


def test_preprocess_input_uses_imagenet_mean_and_std():
    pixels = np.array([[[[0, 128, 255]]]], dtype="uint8")
    expected = (np.array([0, 128, 255]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(keras_t2t.preprocess_input(pixels)[0, 0, 0], expected, atol=1e-6)
    tensor = keras.ops.convert_to_tensor(pixels.astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras_t2t.preprocess_input(tensor))[0, 0, 0], expected, atol=1e-6
    )


# === bad input: a ValueError that names the value and what is accepted ===


def _small(**kw):
    base = dict(input_shape=(32, 32, 3), embed_dim=16, depth=1, num_heads=2)
    base.update(kw)
    return keras_t2t.T2TViT(**base)


def test_wrong_channel_count_is_refused():
    model = _small()
    with pytest.raises(ValueError, match=r"axis -1 .* value 3.*\(1, 32, 32, 1\)|expected .*3.*1\)"):
        model(np.zeros((1, 32, 32, 1), "float32"))


def test_wrong_rank_is_refused():
    model = _small()
    with pytest.raises(ValueError, match=r"expected shape=\(None, 32, 32, 3\), found shape=\(32, 32, 3\)|expected ndim=4"):
        model(np.zeros((32, 32, 3), "float32"))
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\).*\(32, 32\)"):
        _small(input_shape=(32, 32))


def test_image_too_small_for_the_stages_is_refused():
    with pytest.raises(ValueError, match=r"Image size 2x2 is too small for the T2T stages.*soft split 0"):
        _small(input_shape=(2, 2, 3))
    with pytest.raises(ValueError, match=r"soft split 2 .*kernel 9"):
        _small(input_shape=(32, 32, 3), t2t_stages=[(7, 4, 2), (3, 2, 1), (9, 1, 0)])


def test_unknown_variant_name_is_refused():
    with pytest.raises(ValueError, match=r"Unknown model 't2t_vit_15'; accepted: t2t_vit_7, "):
        keras_t2t.create_model("t2t_vit_15")


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match=r"pooling must be one of \('token', 'avg'\); got 'max'"):
        _small(pooling="max")
    with pytest.raises(ValueError, match=r"got None"):
        _small(pooling=None)


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"embed_dim=16 must be divisible by num_heads=3"):
        _small(num_heads=3)
    with pytest.raises(ValueError, match=r"t2t_type must be one of .*got 'linear'"):
        _small(t2t_type="linear")
    with pytest.raises(ValueError, match=r"input_shape .* leaves the height unknown"):
        _small(input_shape=(None, 32, 3))
    with pytest.raises(ValueError, match=r"classes must be a positive integer; got 0"):
        _small(classes=0)
    with pytest.raises(ValueError, match=r"weights='cifar10' is neither a weights tag of t2t_vit_7 \(its tags: "
                                         r"'imagenet'\)"):
        keras_t2t.t2t_vit_7(weights="cifar10")


def test_weights_h5_with_the_paper_stages_loads_at_another_size(tmp_path):
    # The paper's first split (7, 4, 2) cannot split tiny images: finding the file's
    # image size must skip those sizes rather than fail on them.
    small = dict(embed_dim=32, depth=1, num_heads=2, classes=3)
    source = keras_t2t.T2TViT(input_shape=(64, 64, 3), **small)
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    target = keras_t2t.T2TViT(input_shape=(96, 96, 3), **small)
    report = keras_t2t.load_weights(target, path)
    assert report["pos_embed_resized"] == ((4, 4), (6, 6))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("head").kernel),
        keras.ops.convert_to_numpy(source.get_layer("head").kernel),
    )


# --- issue 15: misspelled keywords and empty batches -------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(drop_path=0.3, num_class=10), r"'drop_path' \(did you mean 'drop_path_rate'\?\), 'num_class' \(did you "
                                            r"mean 'classes'\?\)"),
        (dict(emb_dim=64), r"'emb_dim' \(did you mean 'embed_dim'\?\)"),
        (dict(weigths="x.pth"), r"'weigths' \(did you mean 'weights'\?\)"),
    ],
)
def test_a_misspelled_builder_keyword_is_a_type_error_naming_the_closest_valid_one(kwargs, expected):
    with pytest.raises(TypeError, match=expected):
        keras_t2t.t2t_vit_mini(**kwargs)


def test_misspelled_keywords_are_refused_by_every_model_class():
    with pytest.raises(TypeError, match=r"'growth' \(did you mean 'growth_rate'\?\)"):
        keras_t2t.T2TViTDense(growth=8)
    with pytest.raises(TypeError, match=r"'patch' \(did you mean 'patch_size'\?\)"):
        keras_t2t.ViT(patch=4)
    # What keras.Model itself takes still goes through.
    assert keras_t2t.t2t_vit_mini(classes=3, trainable=False).trainable is False


@pytest.mark.parametrize("name, top", [("t2t_vit_mini", True), ("vit_mini", True), ("t2t_vit_mini", False)])
def test_an_empty_batch_gives_an_empty_batch_of_outputs(name, top):
    kwargs = dict(classes=3) if top else dict(include_top=False, pooling=None)
    model = keras_t2t.create_model(name, **kwargs)
    out = keras.ops.convert_to_numpy(model(np.zeros((0, 32, 32, 3), "float32")))
    full = keras.ops.convert_to_numpy(model(np.zeros((2, 32, 32, 3), "float32")))
    assert out.shape == (0,) + full.shape[1:] and out.dtype == full.dtype


@pytest.mark.parametrize("name", ["t2t_vit_mini", "vit_mini"])
def test_predict_on_zero_images_gives_zero_rows_as_calling_the_model_does(name):
    # Keras' predict has no batch outputs to concatenate then (issue 23: UnboundLocalError, StopIteration).
    model = keras_t2t.create_model(name, classes=3)
    empty = np.zeros((0, 32, 32, 3), "float32")
    scores = model.predict(empty, verbose=0)
    assert scores.shape == (0, 3) and scores.dtype == np.float32
    features = model.feature_extractor(block_indices=[0]).predict(empty, verbose=0)
    called = model.feature_extractor(block_indices=[0])(np.zeros((2, 32, 32, 3), "float32"))
    assert sorted(features) == sorted(called)
    for key, value in features.items():
        assert value.shape == (0,) + tuple(called[key].shape[1:]), key
    bf16 = keras_t2t.precision.cast_model(model, "bfloat16")
    assert bf16.predict(empty, verbose=0).shape == (0, 3)
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 3)  # the usual road

"""The paper's backbone studies (spec sections 8 and 9): SE, ghost and dense T2T-ViT.

Each study model against the independent NumPy reference (tests/reference.py,
``forward_study``) with weights in the authors' key layout going in through
``load_state_dict``, the spec's parameter counts, detection from a state dict,
an authors'-format checkpoint end to end, serialisation and the errors.
"""

import concurrent.futures

import keras
import numpy as np
import pytest

import keras_t2t
import reference as ref
from helpers import random_images, save_authors_checkpoint
from keras_t2t.weights import load_state_dict, model_state_dict

ATOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Spec section 8, second table (224x224, 1000 classes): (trainable, all weights).
SPEC_STUDY_PARAMETER_COUNTS = {
    "t2t_vit_14_se": (21_723_854, 21_803_598),
    "t2t_vit_16_ghost": (16_173_518, 16_253_262),
    "t2t_vit_dense": (23_617_750, 23_647_062),
}

# Small versions of each study (32x32 images, three stride-2 splits: a 4x4 grid), built
# with the study's own builder and the row's entries overridden.
SMALL_STEM = dict(image_size=(32, 32), t2t_stages=[(3, 2, 1), (3, 2, 1), (3, 2, 1)], token_dim=16, classes=10)
SMALL = {
    "t2t_vit_14_se": dict(block_type="se", embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_16_ghost": dict(block_type="ghost", embed_dim=64, depth=2, num_heads=4, mlp_ratio=3.0, qkv_bias=True),
    # Block widths 64, 96 (-> 128, transition -> 64) | 64 (-> 96). The SE model's width
    # comes back, so on JAX its kernels' shapes are compiled once for both.
    "t2t_vit_dense": dict(block_type="dense", embed_dim=64, dense_stages=(2, 1), growth_rate=32, num_heads=4,
                          mlp_ratio=2.0),
}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _ref_config(name):
    return dict(SMALL_STEM, t2t_type="performer", **SMALL[name])


def _small_overrides(name):
    return dict(
        {k: v for k, v in SMALL[name].items() if k != "block_type"},
        t2t_stages=SMALL_STEM["t2t_stages"], token_dim=SMALL_STEM["token_dim"], classes=SMALL_STEM["classes"],
        classifier_activation=None,
    )


def _build_small(name, **kwargs):
    config = dict(_small_overrides(name), input_shape=SMALL_STEM["image_size"] + (3,))
    config.update(kwargs)
    return keras_t2t.create_model(name, **config)


@pytest.fixture(scope="module")
def small():
    """name -> (reference config, the reference's random state dict, the Keras model holding it)."""
    cache = {}

    def get(name):
        if name not in cache:
            config = _ref_config(name)
            sd = ref.make_study_state_dict(config, np.random.default_rng(len(cache) + 1))
            model = _build_small(name)
            report = load_state_dict(model, sd)
            assert report["loaded"] == len(sd)
            cache[name] = (config, sd, model)
        return cache[name]

    return get


# === parameter counts at 224 (each model built once, without initial values) ===


def _count_without_initial_values(name):
    with keras.StatelessScope(initialize_variables=False):
        model = keras_t2t.create_model(name)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return trainable, model.count_params(), model.name, model.output_shape


@pytest.fixture(scope="module")
def full_size_counts():
    # A count needs the variables' shapes only, so the 224 models are built without initial
    # values (StatelessScope with initialize_variables=False): on JAX, initialising the dense
    # model's many kernel shapes alone takes a minute of compiles. Keras keeps the list of
    # never-initialised variables per thread; building in a worker thread that then ends
    # keeps them from being initialised later by this thread's next stateless scope.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        return {name: worker.submit(_count_without_initial_values, name).result() for name in SPEC_STUDY_PARAMETER_COUNTS}


@pytest.mark.parametrize("name", list(SPEC_STUDY_PARAMETER_COUNTS))
def test_parameter_counts_equal_the_spec(full_size_counts, name):
    trainable, total, model_name, output_shape = full_size_counts[name]
    assert (trainable, total) == SPEC_STUDY_PARAMETER_COUNTS[name]
    assert model_name == name and output_shape == (None, 1000)


# === numerics against the NumPy reference, weights through the authors' key layout ===


@pytest.mark.parametrize("name", list(SMALL))
def test_study_model_matches_reference_forward(small, name):
    config, sd, model = small(name)
    x = random_images(20, 2, 32, 32)
    np.testing.assert_allclose(_np(model(x, training=False)), ref.forward_study(sd, x, config), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("name", list(SMALL))
def test_model_state_dict_gives_back_the_authors_keys_shapes_and_values(small, name):
    _, sd, model = small(name)
    back = model_state_dict(model)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in sd.items()}
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_the_se_gate_and_the_cheap_operations_change_the_output(small):
    # Guards the reference comparison: dropping the SE gate or the cheap halves changes the output.
    x = random_images(21, 2, 32, 32)
    config, sd, _ = small("t2t_vit_14_se")
    no_gate = dict(sd)
    for i in range(config["depth"]):
        no_gate[f"blocks.{i}.attn.se_layer.fc.2.weight"] = np.full_like(sd[f"blocks.{i}.attn.se_layer.fc.2.weight"], 50.0)
    assert not np.allclose(ref.forward_study(no_gate, x, config), ref.forward_study(sd, x, config), atol=1e-3)
    config, sd, model = small("t2t_vit_16_ghost")
    zeroed = {k: (np.zeros_like(v) if "cheap_operation" in k else v) for k, v in sd.items()}
    assert not np.allclose(ref.forward_study(zeroed, x, config), _np(model(x)), atol=1e-3)


def test_dense_feature_extractor_returns_each_blocks_growing_width(small):
    config, sd, model = small("t2t_vit_dense")
    assert model.depth == 3 and model.num_features == 96
    # Checkpoint numbering: blocks.2 is the transition between the two stages.
    assert model.block_names == ["blocks_0", "blocks_1", "blocks_3"]
    features = model.feature_extractor(block_indices=[0, 1, -1], include_t2t=True)
    x = random_images(22, 2, 32, 32)
    out = {k: _np(v) for k, v in features(x).items()}
    expected = ref.forward_study(sd, x, config, return_features=True)
    assert {k: v.shape for k, v in out.items()} == {
        "tokens": (2, 17, 96), "block_0": (2, 17, 96), "block_1": (2, 17, 128), "block_2": (2, 17, 96),
        "t2t": (2, 16, 64),
    }
    np.testing.assert_allclose(out["tokens"], expected["tokens"], atol=ATOL, rtol=ATOL)
    for i in (0, 1, 2):
        np.testing.assert_allclose(out[f"block_{i}"], expected["blocks"][i], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(out["t2t"], expected["t2t"], atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match=r"block index 3 is out of range for a depth-3 model"):
        model.feature_extractor(block_indices=[3])


def test_ghost_feature_extractor_and_avg_pooling_match_reference(small):
    config, sd, _ = small("t2t_vit_16_ghost")
    model = _build_small("t2t_vit_16_ghost", include_top=False, pooling="avg")
    load_state_dict(model, sd)
    x = random_images(23, 2, 32, 32)
    expected = ref.forward_study(sd, x, config, pooling="avg", return_features=True)
    np.testing.assert_allclose(_np(model(x)), expected["pooled"], atol=ATOL, rtol=ATOL)
    block = _np(model.feature_extractor(block_indices=[-1])(x)["block_1"])
    np.testing.assert_allclose(block, expected["blocks"][1], atol=ATOL, rtol=ATOL)


def test_dense_drop_path_rate_follows_the_stage_not_the_block():
    # Spec section 9: the reference picks linspace(0, drop_path_rate, depth)[stage], its
    # depth left at the default 12 (T2T_ViT_Dense's builder does not set it).
    model = _build_small("t2t_vit_dense", drop_path_rate=0.11)
    rates = [model.get_layer(name).drop_path for name in model.block_names]
    schedule = np.linspace(0.0, 0.11, 12)
    assert rates == pytest.approx([schedule[0], schedule[0], schedule[1]])


# === serialisation ===


@pytest.mark.parametrize("name", list(SMALL))
def test_keras_file_round_trip_keeps_class_config_and_outputs(small, tmp_path, name):
    _, _, model = small(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    x = random_images(24, 2, 32, 32)
    np.testing.assert_array_equal(_np(loaded(x)), _np(model(x)))
    twin = type(model).from_config(model.get_config())
    assert [v.shape for v in twin.weights] == [v.shape for v in model.weights]


def test_dense_config_names_its_stages_not_a_depth(small):
    config = small("t2t_vit_dense")[2].get_config()
    assert config["dense_stages"] == [2, 1] and config["growth_rate"] == 32
    assert "depth" not in config and "block_type" not in config
    assert small("t2t_vit_14_se")[2].get_config()["block_type"] == "se"


# === detection from a state dict and the authors' checkpoint files ===


@pytest.mark.parametrize("name", list(SPEC_STUDY_PARAMETER_COUNTS))
def test_each_study_models_authors_state_dict_is_detected_and_holds_the_spec_count(name):
    # Full widths and depths at 224: the reference's authors' layout (tests/reference.py).
    state = ref.make_study_state_dict(dict(keras_t2t.STUDY_VARIANTS[name], image_size=(224, 224)), 3)
    assert ref.count_params(state) == SPEC_STUDY_PARAMETER_COUNTS[name][1]
    assert keras_t2t.detect_variant(state) == (name, {})
    prefixed = {"module." + k: v for k, v in state.items()}
    assert keras_t2t.detect_variant(prefixed, arch=name) == (name, {})


def test_ghost_qkv_bias_is_detected_as_an_override():
    config = dict(keras_t2t.STUDY_VARIANTS["t2t_vit_16_ghost"], image_size=(32, 32), qkv_bias=True)
    assert keras_t2t.detect_variant(ref.make_study_state_dict(config, 4)) == ("t2t_vit_16_ghost", {"qkv_bias": True})


def test_study_weights_that_fit_no_row_name_the_block_type():
    config = dict(keras_t2t.STUDY_VARIANTS["t2t_vit_dense"], image_size=(32, 32), growth_rate=32)
    with pytest.raises(ValueError, match=r"No T2T-ViT variant .*dense blocks, dense_stages \(3, 6, 6, 4\), "
                                         r"growth_rate 32\); known: .*t2t_vit_dense \("):
        keras_t2t.detect_variant(ref.make_study_state_dict(config, 5))


def test_dense_checkpoint_loads_through_from_checkpoint(small, tmp_path):
    pytest.importorskip("torch")  # writes a real torch.save checkpoint

    config, ema, _ = small("t2t_vit_dense")
    plain = ref.make_study_state_dict(config, 99)
    path = save_authors_checkpoint(tmp_path / "dense.pth.tar", ema, plain, "t2t_vit_dense", img_size=32)
    # A custom-size checkpoint fits no table row: the variant is named, its row overridden.
    with pytest.raises(ValueError, match=r"No T2T-ViT variant .*dense blocks"):
        keras_t2t.from_checkpoint(path)
    model = keras_t2t.from_checkpoint(path, variant="t2t_vit_dense", **_small_overrides("t2t_vit_dense"))
    assert isinstance(model, keras_t2t.T2TViTDense) and model.input_shape == (None, 32, 32, 3)
    assert model.checkpoint_info["variant"] == "t2t_vit_dense" and model.checkpoint_info["source_key"] == "state_dict_ema"
    x = random_images(26, 2, 32, 32)
    np.testing.assert_allclose(_np(model(x)), ref.forward_study(ema, x, config), atol=ATOL, rtol=ATOL)


def test_ghost_checkpoint_loads_through_the_builders_weights_keyword(small, tmp_path):
    pytest.importorskip("torch")  # writes a real torch.save checkpoint

    config, ema, _ = small("t2t_vit_16_ghost")
    # One set of weights in both entries (which entry wins is test_checkpoints.py's business).
    path = save_authors_checkpoint(tmp_path / "ghost.pth.tar", ema, ema, "T2t_vit_16_ghost", img_size=32)
    model = keras_t2t.t2t_vit_16_ghost(weights=path, **_small_overrides("t2t_vit_16_ghost"))
    assert model.block_type == "ghost" and model.input_shape == (None, 32, 32, 3)
    assert model.weights_report["loaded"] == len(ema)
    x = random_images(25, 2, 32, 32)
    np.testing.assert_allclose(_np(model(x)), ref.forward_study(ema, x, config), atol=ATOL, rtol=ATOL)


def test_weights_of_another_block_type_are_refused_naming_the_keys(small):
    _, se_state, _ = small("t2t_vit_14_se")
    model = _build_small("t2t_vit_14_se", block_type="standard")
    with pytest.raises(ValueError, match=r"do not fit this model .*Not in the model: blocks.0.attn.se_layer.fc.0"):
        load_state_dict(model, se_state)


# === bad arguments: a ValueError naming the value and what is accepted ===


def _tiny(**kwargs):
    base = dict(input_shape=(32, 32, 3), embed_dim=32, depth=1, num_heads=2, mlp_ratio=3.0)
    base.update(kwargs)
    return keras_t2t.T2TViT(**base)


def _tiny_dense(**kwargs):
    base = dict(input_shape=(32, 32, 3), embed_dim=16, dense_stages=(1, 1), growth_rate=8, num_heads=2)
    base.update(kwargs)
    return keras_t2t.T2TViTDense(**base)


def test_bad_block_type_is_refused():
    with pytest.raises(ValueError, match=r"block_type must be one of \('standard', 'se', 'ghost'\); got 'resnet'"):
        _tiny(block_type="resnet")
    with pytest.raises(ValueError, match=r"block_type 'dense' changes the topology.*T2TViTDense"):
        _tiny(block_type="dense")


def test_ghost_needs_mlp_ratio_3_and_an_even_width():
    with pytest.raises(ValueError, match=r"block_type 'ghost' needs mlp_ratio=3 .*got 2.0"):
        _tiny(block_type="ghost", mlp_ratio=2.0)
    with pytest.raises(ValueError, match=r"embed_dim must be even; got 33"):
        _tiny(block_type="ghost", embed_dim=33, num_heads=3)
    with pytest.raises(ValueError, match=r"GhostBlock needs mlp_ratio=3 .*got 4.0"):
        keras_t2t.GhostBlock(2, mlp_ratio=4.0)


def test_se_needs_a_width_of_at_least_16():
    with pytest.raises(ValueError, match=r"embed_dim must be >= 16; got 8"):
        _tiny(block_type="se", embed_dim=8)
    with pytest.raises(ValueError, match=r"SqueezeExcite reduction must be a positive integer; got 0"):
        keras_t2t.SqueezeExcite(0)


def test_bad_dense_arguments_are_refused():
    with pytest.raises(ValueError, match=r"dense_stages must be a non-empty list of positive integers.*got \(\)"):
        _tiny_dense(dense_stages=())
    with pytest.raises(ValueError, match=r"dense_stages must be .*got \(3, 0\)"):
        _tiny_dense(dense_stages=(3, 0))
    with pytest.raises(ValueError, match=r"growth_rate must be a positive integer; got 0"):
        _tiny_dense(growth_rate=0)
    with pytest.raises(ValueError, match=r"stage 0 has width 21, which num_heads=2 does not divide"):
        _tiny_dense(dense_stages=(2, 1), growth_rate=5)
    with pytest.raises(ValueError, match=r"embed_dim=16 must be divisible by num_heads=3"):
        _tiny_dense(num_heads=3)


def test_unknown_variant_lists_the_studies():
    with pytest.raises(ValueError, match=r"Unknown model 't2t_vit_dense_2'; accepted: .*t2t_vit_14_se, "
                                         r"t2t_vit_16_ghost, t2t_vit_dense, "):
        keras_t2t.create_model("t2t_vit_dense_2")
    assert keras_t2t.list_variants(studies=True)[-3:] == list(SPEC_STUDY_PARAMETER_COUNTS)
    assert "t2t_vit_dense" not in keras_t2t.list_variants()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="time budget: the trainer's model table is backend-independent")
def test_the_trainer_builds_every_study_model_by_name():
    from keras_t2t.training.recipe import Recipe
    from keras_t2t.training.trainer import build_model, model_names

    assert set(SPEC_STUDY_PARAMETER_COUNTS) <= set(model_names())
    model = build_model(Recipe(model="t2t_vit_16_ghost", image_size=32), num_classes=10, verbose=False)
    assert model.block_type == "ghost" and model.depth == 16 and model.output_shape == (None, 10)

"""Each layer against the independent NumPy reference of the spec (tests/reference.py), to 1e-5."""

import keras
import numpy as np
import pytest

import reference as ref
from keras_t2t import layers

ATOL = 1e-5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _set_dense(dense, sd, name):
    dense.kernel.assign(sd[name + ".weight"].T)
    if dense.use_bias:
        dense.bias.assign(sd[name + ".bias"])


def _set_norm(norm, sd, name):
    norm.gamma.assign(sd[name + ".weight"])
    norm.beta.assign(sd[name + ".bias"])


def _load(layer, sd, prefix, names):
    """Assigns ``sd[prefix + "." + key]`` to each sublayer ``names[key]`` ("mlp.fc1": layer.mlp.fc1)."""
    for key, path in names.items():
        sublayer = layer
        for attribute in path.split("."):
            sublayer = getattr(sublayer, attribute)
        setter = _set_norm if isinstance(sublayer, keras.layers.LayerNormalization) else _set_dense
        setter(sublayer, sd, f"{prefix}.{key}")


@pytest.mark.parametrize(
    "height,width,k,s,p,channels",
    [(224, 224, 7, 4, 2, 3), (56, 56, 3, 2, 1, 64), (40, 24, 3, 2, 1, 5), (33, 17, 5, 3, 0, 2)],
)
def test_soft_split_equals_torch_unfold_order(height, width, k, s, p, channels, rng):
    x = rng.standard_normal((2, height, width, channels)).astype("float32")
    out = _np(layers.SoftSplit(k, s, p)(x))
    expected = ref.unfold(x, k, s, p)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected.astype("float32"))


def test_soft_split_grid_224_to_56_28_14():
    t2t = layers.TokensToToken(embed_dim=8)
    assert t2t.stage_grids(224, 224) == [(56, 56), (28, 28), (14, 14)]
    assert t2t.stage_grids(384, 384) == [(96, 96), (48, 48), (24, 24)]


def test_sinusoid_table_matches_spec():
    np.testing.assert_allclose(layers.sinusoid_table(197, 384), ref.sinusoid_table(197, 384), atol=1e-6)


def _performer_state(rng, dim, emb=64):
    config = {"t2t_type": "performer", "image_size": (224, 224), "embed_dim": 32, "depth": 1,
              "num_heads": 1, "mlp_ratio": 1.0}
    sd = ref.make_state_dict(config, rng)
    prefix = "tokens_to_token.attention1" if dim == 147 else "tokens_to_token.attention2"
    return sd, prefix


@pytest.mark.parametrize("dim,tokens", [(147, 50), (576, 30)])
def test_token_performer_matches_reference(dim, tokens, rng):
    sd, p = _performer_state(rng, dim)
    x = rng.standard_normal((2, tokens, dim)).astype("float32")
    layer = layers.TokenPerformer(token_dim=64)
    layer.build(x.shape)
    _load(layer, sd, p, {"norm1": "norm1", "kqv": "kqv", "proj": "proj", "norm2": "norm2", "mlp.0": "mlp.fc1",
                         "mlp.2": "mlp.fc2"})
    layer.w.assign(sd[p + ".w"])
    out = _np(layer(x, training=False))
    np.testing.assert_allclose(out, ref.token_performer(sd, p, x), atol=ATOL, rtol=ATOL)


def test_token_performer_random_features_are_fixed_orthogonal_rows():
    layer = layers.TokenPerformer(token_dim=64)
    layer.build((1, 10, 147))
    assert not layer.w.trainable and layer.w.shape == (32, 64)
    w = _np(layer.w)
    np.testing.assert_allclose(w @ w.T, 32 * np.eye(32), atol=1e-3)


@pytest.mark.parametrize("dim,tokens", [(147, 40), (576, 25)])
def test_token_transformer_matches_reference_with_input_dim_scale(dim, tokens, rng):
    config = {"t2t_type": "transformer", "image_size": (224, 224), "embed_dim": 32, "depth": 1,
              "num_heads": 1, "mlp_ratio": 1.0}
    sd = ref.make_state_dict(config, rng)
    p = "tokens_to_token.attention1" if dim == 147 else "tokens_to_token.attention2"
    x = rng.standard_normal((2, tokens, dim)).astype("float32")
    layer = layers.TokenTransformer(token_dim=64)
    layer.build(x.shape)
    _load(layer, sd, p, {"norm1": "norm1", "attn.qkv": "qkv", "attn.proj": "proj", "norm2": "norm2",
                         "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"})
    assert not layer.qkv.use_bias
    out = _np(layer(x, training=False))
    np.testing.assert_allclose(out, ref.token_transformer(sd, p, x), atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("qkv_bias,qk_scale", [(False, None), (True, None), (False, 384**-0.5)])
def test_transformer_block_matches_reference(qkv_bias, qk_scale, rng):
    config = {"t2t_type": "performer", "image_size": (32, 32), "embed_dim": 384, "depth": 1,
              "num_heads": 6, "mlp_ratio": 3.0, "qkv_bias": qkv_bias}
    sd = ref.make_state_dict(config, rng)
    x = rng.standard_normal((2, 17, 384)).astype("float32")
    block = layers.TransformerBlock(6, mlp_ratio=3.0, qkv_bias=qkv_bias, qk_scale=qk_scale)
    block.build(x.shape)
    _load(block, sd, "blocks.0", {name: name for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1",
                                                           "mlp.fc2")})
    out = _np(block(x, training=False))
    np.testing.assert_allclose(out, ref.block(sd, "blocks.0", x, 6, qk_scale=qk_scale), atol=ATOL, rtol=ATOL)


def test_layer_norms_use_pytorch_epsilon():
    block = layers.TransformerBlock(2)
    block.build((1, 3, 8))
    t2t = layers.TokenPerformer()
    assert block.norm1.epsilon == block.norm2.epsilon == t2t.norm1.epsilon == 1e-5


def test_drop_path_drops_whole_samples_and_rescales(rng):
    layer = layers.DropPath(0.5, seed=1)
    x = np.ones((64, 5, 4), "float32")
    out = _np(layer(x, training=True))
    per_sample = out.reshape(64, -1)
    # Each sample is either dropped entirely (0) or kept and scaled by 1 / keep = 2.
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)


def test_a_block_drops_its_residual_branches_in_training_only(rng):
    # Stochastic depth in the block: in training with rate 0.9 both branches of most samples are
    # dropped (the sample comes out as it went in) and some are kept; at inference none is dropped.
    block = layers.TransformerBlock(2, drop_path=0.9)
    x = rng.standard_normal((64, 3, 8)).astype("float32")
    unchanged = lambda out: np.all(_np(out) == x, axis=(1, 2))  # noqa: E731
    trained = unchanged(block(x, training=True))
    assert 0 < trained.sum() < 64, trained.sum()
    assert not unchanged(block(x, training=False)).any()


def test_layers_round_trip_their_config():
    for layer in [
        layers.SoftSplit(3, 2, 1),
        layers.TokenPerformer(token_dim=32, kernel_ratio=0.25, dropout=0.2),
        layers.TokenTransformer(token_dim=32, mlp_ratio=2.0, dropout=0.1),
        layers.TokensToToken("transformer", 32, 96, [(5, 2, 2), (3, 2, 1)], 0.05),
        layers.TransformerBlock(4, 2.0, True, 0.1, 0.1, 0.2, 0.3),
        layers.DropPath(0.2, seed=3),
        layers.TokenPooling("avg"),
    ]:
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_attention_weights_are_the_softmax_the_block_applies(rng):
    # The class token's row against the NumPy reference of the same block (the softmax that
    # keras_t2t.visualize draws), and every row a distribution over the 17 tokens.
    import reference_vit

    config = {"t2t_type": "performer", "image_size": (32, 32), "embed_dim": 384, "depth": 1,
              "num_heads": 6, "mlp_ratio": 3.0, "qkv_bias": True}
    sd = ref.make_state_dict(config, rng)
    x = rng.standard_normal((2, 17, 384)).astype("float32")
    block = layers.TransformerBlock(6, mlp_ratio=3.0, qkv_bias=True)
    block.build(x.shape)
    _load(block, sd, "blocks.0", {"norm1": "norm1", "attn.qkv": "attn.qkv"})
    normed = block.norm1(x)
    everything = _np(block.attn.attention_weights(normed))
    class_row = _np(block.attn.attention_weights(normed, queries=[0]))
    assert everything.shape == (2, 6, 17, 17) and class_row.shape == (2, 6, 1, 17)
    expected = reference_vit.cls_attention(sd, "blocks.0", x, num_heads=6)
    np.testing.assert_allclose(class_row[:, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(everything[:, :, 0], expected, atol=1e-6)
    np.testing.assert_allclose(everything.sum(axis=-1), np.ones((2, 6, 17)), atol=1e-6)


def test_attention_probabilities_equal_the_reference_softmax(rng):
    q, k = (rng.standard_normal((2, 3, n, 8)).astype("float32") for n in (5, 11))
    expected = ref.softmax(np.einsum("bhqd,bhkd->bhqk", q.astype("float64"), k.astype("float64")) * 0.3, axis=-1)
    np.testing.assert_allclose(_np(layers.attention_probabilities(q, k, 0.3)), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["standard", "se", "ghost"])
def test_attention_dropout_drops_weights_in_training_only(kind, rng):
    # The one attention core serves the backbone attention and the SE and ghost ones alike.
    keras.utils.set_random_seed(7)
    attention = {
        "standard": layers.MultiHeadSelfAttention,
        "se": layers.SEAttention,
        "ghost": layers.GhostAttention,
    }[kind](4, attn_dropout=0.5)
    x = rng.standard_normal((2, 9, 32)).astype("float32")
    inference = _np(attention(x, training=False))
    np.testing.assert_array_equal(_np(attention(x)), inference)
    first, second = _np(attention(x, training=True)), _np(attention(x, training=True))
    assert np.all(np.isfinite(first))
    assert np.abs(first - second).max() > 1e-4 and np.abs(first - inference).max() > 1e-4
    no_dropout = {"standard": layers.MultiHeadSelfAttention, "se": layers.SEAttention,
                  "ghost": layers.GhostAttention}[kind](4)
    no_dropout.build(x.shape)
    no_dropout.set_weights(attention.get_weights())
    np.testing.assert_allclose(_np(no_dropout(x, training=True)), inference, atol=ATOL, rtol=ATOL)


def test_restructurization_puts_token_r_cols_plus_c_at_pixel_r_c(rng):
    tokens = rng.standard_normal((2, 12, 5)).astype("float32")
    image = _np(layers.restructurization(tokens, (3, 4)))
    assert image.shape == (2, 3, 4, 5)
    for r in range(3):
        for c in range(4):
            np.testing.assert_array_equal(image[:, r, c], tokens[:, r * 4 + c])

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
    _set_norm(layer.norm1, sd, p + ".norm1")
    _set_dense(layer.kqv, sd, p + ".kqv")
    _set_dense(layer.proj, sd, p + ".proj")
    _set_norm(layer.norm2, sd, p + ".norm2")
    _set_dense(layer.mlp.fc1, sd, p + ".mlp.0")
    _set_dense(layer.mlp.fc2, sd, p + ".mlp.2")
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
    _set_norm(layer.norm1, sd, p + ".norm1")
    _set_dense(layer.qkv, sd, p + ".attn.qkv")
    _set_dense(layer.proj, sd, p + ".attn.proj")
    _set_norm(layer.norm2, sd, p + ".norm2")
    _set_dense(layer.mlp.fc1, sd, p + ".mlp.fc1")
    _set_dense(layer.mlp.fc2, sd, p + ".mlp.fc2")
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
    _set_norm(block.norm1, sd, "blocks.0.norm1")
    _set_dense(block.attn.qkv, sd, "blocks.0.attn.qkv")
    _set_dense(block.attn.proj, sd, "blocks.0.attn.proj")
    _set_norm(block.norm2, sd, "blocks.0.norm2")
    _set_dense(block.mlp.fc1, sd, "blocks.0.mlp.fc1")
    _set_dense(block.mlp.fc2, sd, "blocks.0.mlp.fc2")
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

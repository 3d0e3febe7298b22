"""The speed/memory code paths of keras_t2t.layers against the NumPy reference, to 1e-5.

Each path is forced on small inputs so it runs in seconds: the query-chunked
attention (used by TokenTransformer above ``attention_chunk_threshold`` tokens:
T2T-ViT_t's 3136-token first layer), with chunks that do and do not divide the
token count, forward and backward; and the soft split's gather on an input
where windows overlap and padding is large. Speed itself is measured by
``benchmarks/run.py``, never asserted here.
"""

import keras
import numpy as np
import pytest

import reference as ref
from keras_t2t import T2TViT, layers

ATOL = 1e-5


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _transformer_layer(sd, prefix, dim, **kwargs):
    layer = layers.TokenTransformer(token_dim=64, **kwargs)
    layer.build((None, None, dim))
    layer.norm1.gamma.assign(sd[prefix + ".norm1.weight"])
    layer.norm1.beta.assign(sd[prefix + ".norm1.bias"])
    layer.qkv.kernel.assign(sd[prefix + ".attn.qkv.weight"].T)
    layer.proj.kernel.assign(sd[prefix + ".attn.proj.weight"].T)
    layer.proj.bias.assign(sd[prefix + ".attn.proj.bias"])
    layer.norm2.gamma.assign(sd[prefix + ".norm2.weight"])
    layer.norm2.beta.assign(sd[prefix + ".norm2.bias"])
    for name in ("fc1", "fc2"):
        dense = getattr(layer.mlp, name)
        dense.kernel.assign(sd[f"{prefix}.mlp.{name}.weight"].T)
        dense.bias.assign(sd[f"{prefix}.mlp.{name}.bias"])
    return layer


@pytest.mark.parametrize("tokens,chunk", [(48, 16), (50, 16), (37, 64)])
def test_chunked_token_transformer_matches_reference(tokens, chunk, rng):
    # threshold 8 < tokens: the chunked path runs (48 = 3 x 16 even, 50 = 3 x 16 + 2
    # padded, 37 < one chunk of 64 falls back to the plain attention).
    config = {"t2t_type": "transformer", "image_size": (224, 224), "embed_dim": 32, "depth": 1,
              "num_heads": 1, "mlp_ratio": 1.0}
    sd = ref.make_state_dict(config, rng)
    prefix = "tokens_to_token.attention1"
    x = rng.standard_normal((2, tokens, 147)).astype("float32")
    layer = _transformer_layer(sd, prefix, 147, attention_chunk_size=chunk, attention_chunk_threshold=8)
    out = _np(layer(x, training=False))
    np.testing.assert_allclose(out, ref.token_transformer(sd, prefix, x), atol=ATOL, rtol=ATOL)


def test_chunk_threshold_and_size_are_config():
    layer = layers.TokenTransformer(attention_chunk_size=16, attention_chunk_threshold=8)
    clone = layers.TokenTransformer.from_config(layer.get_config())
    assert (clone.attention_chunk_size, clone.attention_chunk_threshold) == (16, 8)
    defaults = layers.TokenTransformer()
    # T2T-ViT_t: the 3136-token first layer is chunked, the 784-token second is not.
    assert defaults.attention_chunk_threshold < 3136 and defaults.attention_chunk_threshold >= 784
    with pytest.raises(ValueError, match="attention_chunk_size"):
        layers.TokenTransformer(attention_chunk_size=0)


@pytest.mark.parametrize("tokens,chunk", [(40, 8), (41, 8)])
def test_chunked_attention_multi_head_matches_softmax_attention(tokens, chunk, rng):
    q, k, v = (rng.standard_normal((2, 3, tokens, 16)).astype("float32") for _ in range(3))
    scale = 0.3
    logits = np.einsum("bhqd,bhkd->bhqk", q.astype("float64") * scale, k.astype("float64"))
    expected = ref.softmax(logits, axis=-1) @ v.astype("float64")
    chunked = _np(layers.chunked_attention(q, k, v, scale, query_chunk_size=chunk))
    plain = _np(layers.chunked_attention(q, k, v, scale))
    np.testing.assert_allclose(chunked, expected, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(plain, expected, atol=ATOL, rtol=ATOL)


def test_chunked_token_transformer_trains(rng):
    # Gradients flow through the chunk loop (lax.map / tf.map_fn) like through the plain path.
    x = rng.standard_normal((4, 24, 12)).astype("float32")
    y = rng.standard_normal((4, 24, 8)).astype("float32")
    losses = {}
    for name, threshold in (("chunked", 4), ("plain", 10_000)):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((24, 12))
        outputs = layers.TokenTransformer(
            token_dim=8, attention_chunk_size=7, attention_chunk_threshold=threshold
        )(inputs)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        losses[name] = [float(model.train_on_batch(x, y)) for _ in range(3)]
    assert losses["chunked"][-1] < losses["chunked"][0]
    np.testing.assert_allclose(losses["chunked"], losses["plain"], rtol=1e-4)


@pytest.mark.parametrize("height,width,k,s,p,channels", [(9, 11, 5, 1, 3, 4), (8, 8, 3, 3, 0, 2)])
def test_soft_split_overlap_and_large_padding(height, width, k, s, p, channels, rng):
    x = rng.standard_normal((3, height, width, channels)).astype("float32")
    out = _np(layers.SoftSplit(k, s, p)(x))
    np.testing.assert_array_equal(out, ref.unfold(x, k, s, p).astype("float32"))


@pytest.mark.parametrize("tokens,chunk", [(40, 8), (41, 8)])
def test_unrolled_chunk_loop_gives_the_same_attention(tokens, chunk, rng):
    # tracing "export" writes one slice per chunk instead of the ops.map loop.
    q, k, v = (rng.standard_normal((2, 3, tokens, 5)).astype("float32") for _ in range(3))
    mapped = _np(layers.chunked_attention(q, k, v, 0.4, query_chunk_size=chunk))
    unrolled = _np(layers.chunked_attention(q, k, v, 0.4, query_chunk_size=chunk, tracing="export"))
    np.testing.assert_allclose(unrolled, mapped, atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match=r"tracing must be one of \('fast', 'export'\); got 'scan'"):
        layers.chunked_attention(q, k, v, 0.4, query_chunk_size=chunk, tracing="scan")


def test_export_tracing_switches_every_attention_layer_of_a_model_and_restores_it(rng):
    model = T2TViT(input_shape=(32, 32, 3), t2t_type="transformer", t2t_stages=((3, 2, 1), (3, 2, 1), (3, 2, 1)),
                   token_dim=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, block_type="se", classes=3)
    t2t = model.get_layer("tokens_to_token")
    traced = list(t2t.attentions) + [model.get_layer(f"blocks_{i}").attn for i in range(2)]
    assert [type(layer).__name__ for layer in traced] == ["TokenTransformer"] * 2 + ["SEAttention"] * 2
    x = rng.standard_normal((2, 32, 32, 3)).astype("float32")
    fast = _np(model(x, training=False))
    with layers.export_tracing(model):
        assert [layer.tracing for layer in traced] == ["export"] * 4
        exported = _np(model(x, training=False))
    np.testing.assert_allclose(exported, fast, atol=ATOL, rtol=ATOL)
    assert [layer.tracing for layer in traced] == ["fast"] * 4
    with pytest.raises(RuntimeError, match="inside the block"):
        with layers.export_tracing(model):
            raise RuntimeError("inside the block")
    assert [layer.tracing for layer in traced] == ["fast"] * 4
    # The form is not config: a .keras file is the same whichever form traced it.
    assert all("tracing" not in layer.get_config() for layer in traced)
    with pytest.raises(ValueError, match=r"tracing must be one of \('fast', 'export'\); got 'unrolled'"):
        traced[0].tracing = "unrolled"
    assert traced[0].tracing == "fast"


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TFLite conversion runs on TensorFlow")
def test_t2t_vit_t_with_chunked_attention_converts_to_builtin_tflite(tmp_path):
    # 224x224 gives the 3136-token first T2T layer, above the chunking threshold: the
    # exporter must trace the chunks without TensorList ops (builtin ops only).
    from keras_t2t import export

    model = T2TViT(input_shape=(224, 224, 3), t2t_type="transformer", embed_dim=32, depth=1, num_heads=2,
                   mlp_ratio=2.0, classes=5, classifier_activation=None)
    assert model.get_layer("tokens_to_token").attentions[0].attention_chunk_threshold < 3136
    classifier = export.classifier_for_export(model)
    export.write_saved_model(classifier, str(tmp_path / "saved"), uint8_signature=False)
    flat = export.convert_tflite(str(tmp_path / "saved"), "float32")
    (tmp_path / "m.tflite").write_bytes(flat)
    ops_used = export.tflite_operators(flat)
    assert "WHILE" not in ops_used and ops_used["SOFTMAX"] >= 3136 // 392, ops_used
    images = np.random.default_rng(3).standard_normal((1, 224, 224, 3)).astype("float32")
    got, want = export.tflite_runner(str(tmp_path / "m.tflite"))(images), classifier(images)
    got = list(got.values())[0] if isinstance(got, dict) else got
    want = list(want.values())[0] if isinstance(want, dict) else want
    np.testing.assert_allclose(np.asarray(got), _np(want), atol=1e-5, rtol=1e-5)


def _attention_and_grads_np(q, k, v, scale, upstream):
    """NumPy float64: out = softmax(q k^T scale) v and the gradients of sum(out * upstream)."""
    q, k, v, g = (x.astype("float64") for x in (q, k, v, upstream))
    probs = ref.softmax(np.einsum("bhqd,bhkd->bhqk", q, k) * scale, axis=-1)
    out = probs @ v
    d_v = np.swapaxes(probs, -1, -2) @ g
    d_probs = g @ np.swapaxes(v, -1, -2)
    d_logits = probs * (d_probs - np.sum(d_probs * probs, axis=-1, keepdims=True))
    d_q = d_logits @ k * scale
    d_k = np.swapaxes(d_logits, -1, -2) @ q * scale
    return out, (d_q, d_k, d_v)


def _backend_grads(fn, args):
    """(fn(*args), d sum(fn) / d args) with the active backend's autodiff (tests only)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out = fn(*tensors)
            total = tf.reduce_sum(out)
        return _np(out), [_np(g) for g in tape.gradient(total, tensors)]
    if backend == "jax":
        import jax

        out = fn(*args)
        grads = jax.grad(lambda *a: fn(*a).sum(), argnums=tuple(range(len(args))))(*args)
        return _np(out), [_np(g) for g in grads]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    out = fn(*tensors)
    out.sum().backward()
    return _np(out.detach()), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("chunk", [None, 8])
def test_attention_gradients_match_the_analytic_softmax_gradients(chunk, rng):
    # The deferred softmax division (and the shift it holds without gradient) must give
    # the gradients of plain softmax attention, chunked or not.
    q, k, v = (rng.standard_normal((2, 3, 21, 8)).astype("float32") for _ in range(3))
    upstream = rng.standard_normal((2, 3, 21, 8)).astype("float32")
    scale = 0.35
    want_out, want_grads = _attention_and_grads_np(q, k, v, scale, upstream)
    weights = keras.ops.convert_to_tensor(upstream)
    got_out, got_grads = _backend_grads(
        lambda q_, k_, v_: layers.chunked_attention(q_, k_, v_, scale, query_chunk_size=chunk) * weights,
        (q, k, v),
    )
    np.testing.assert_allclose(got_out, want_out * upstream, atol=ATOL, rtol=ATOL)
    for name, got, want in zip("qkv", got_grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def test_attention_with_large_logits_stays_finite(rng):
    # Logits in the thousands: exp() overflows unless the row maximum is taken out first.
    q, k, v = (rng.standard_normal((1, 2, 12, 4)).astype("float32") for _ in range(3))
    q *= 60.0
    k *= 60.0
    logits = np.einsum("bhqd,bhkd->bhqk", q.astype("float64"), k.astype("float64"))
    assert np.abs(logits).max() > 1000
    expected = ref.softmax(logits, axis=-1) @ v.astype("float64")
    got = _np(layers.chunked_attention(q, k, v, 1.0))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL)


def test_attention_in_bfloat16_keeps_float32_softmax(rng):
    # bfloat16 q, k, v: the result is bfloat16 and within bfloat16 rounding of the
    # float64 attention of the same (rounded) inputs.
    q, k, v = (rng.standard_normal((2, 2, 30, 16)).astype("float32") for _ in range(3))
    rounded = [_np(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")) for x in (q, k, v)]
    expected = ref.softmax(
        np.einsum("bhqd,bhkd->bhqk", rounded[0].astype("float64"), rounded[1].astype("float64")) * 0.25, axis=-1
    ) @ rounded[2].astype("float64")
    out = layers.chunked_attention(*(keras.ops.cast(x, "bfloat16") for x in (q, k, v)), 0.25)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(_np(keras.ops.cast(out, "float32")), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("tracing", ["fast", "export"])
def test_both_softmax_forms_give_the_attention(tracing, rng):
    # "fast": the deferred division (the default off torch); "export": one softmax op, what the
    # exporter traces for TFLite.
    q, k, v = (rng.standard_normal((2, 3, 17, 8)).astype("float32") for _ in range(3))
    expected = ref.softmax(np.einsum("bhqd,bhkd->bhqk", q.astype("float64"), k.astype("float64")) * 0.3) @ v
    got = _np(layers.chunked_attention(q, k, v, 0.3, tracing=tracing))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match=r"tracing must be one of \('fast', 'export'\); got 'softmax'"):
        layers.attend(q, k, v, 0.3, tracing="softmax")
    assert layers.TokenTransformer().tracing == layers.MultiHeadSelfAttention(2).tracing == "fast"


@pytest.mark.parametrize("max_logits", [1, 2 * 30 * 30, 10**9])
def test_attention_by_batch_chunks_is_the_softmax_attention_in_bfloat16(max_logits, rng):
    # torch's bfloat16 path on a CPU (attend picks it there); any backend can run it. Chunks of one,
    # two and all five images: each within bfloat16 rounding of the float64 attention of the
    # rounded inputs, and the same result whatever the chunking.
    q, k, v = (rng.standard_normal((5, 2, 30, 16)).astype("float32") for _ in range(3))
    rounded = [_np(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")).astype("float64") for x in (q, k, v)]
    expected = ref.softmax(np.einsum("bhqd,bhkd->bhqk", rounded[0], rounded[1]) * 0.25, axis=-1) @ rounded[2]
    bf16 = [keras.ops.cast(x, "bfloat16") for x in (q, k, v)]
    out = layers.attention_by_batch_chunks(*bf16, 0.25, max_logits=max_logits)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    got = _np(keras.ops.cast(out, "float32"))
    np.testing.assert_allclose(got, expected, atol=3e-2, rtol=3e-2)
    whole = _np(keras.ops.cast(layers.attention_by_batch_chunks(*bf16, 0.25, max_logits=10**9), "float32"))
    np.testing.assert_allclose(got, whole, atol=1e-2, rtol=1e-2)


def test_torch_bfloat16_attention_on_a_cpu_takes_the_batch_chunks(rng):
    # attend's choice on torch: bfloat16 on a CPU with small per-image logits -> batch chunks, whose
    # result equals attention_by_batch_chunks' exactly; float32 -> torch's fused kernel.
    if keras.backend.backend() != "torch":
        pytest.skip("torch's attention path")
    from keras_t2t.layers import attention

    q, k, v = (keras.ops.cast(rng.standard_normal((3, 2, 20, 8)).astype("float32"), "bfloat16") for _ in range(3))
    assert attention.TORCH_BFLOAT16_CHUNK_LOGITS >= 2 * 20 * 20
    got = _np(keras.ops.cast(layers.attend(q, k, v, 0.3), "float32"))
    want = _np(keras.ops.cast(layers.attention_by_batch_chunks(q, k, v, 0.3), "float32"))
    np.testing.assert_array_equal(got, want)
    fused = _np(keras.ops.cast(keras.ops.dot_product_attention(
        *(keras.ops.transpose(x, (0, 2, 1, 3)) for x in (q, k, v)), scale=0.3), "float32")).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got, fused, atol=3e-2, rtol=3e-2)


def test_attention_by_batch_chunks_traces_with_an_unknown_batch(rng):
    # Inside a functional model the batch is unknown: one chunk, the same attention.
    inputs = [keras.Input((2, 12, 8)) for _ in range(3)]
    model = keras.Model(inputs, layers.attention_by_batch_chunks(*inputs, 0.3, max_logits=1))
    q, k, v = (rng.standard_normal((3, 2, 12, 8)).astype("float32") for _ in range(3))
    expected = ref.softmax(np.einsum("bhqd,bhkd->bhqk", q.astype("float64"), k.astype("float64")) * 0.3) @ v
    np.testing.assert_allclose(_np(model.predict([q, k, v], verbose=0)), expected, atol=ATOL, rtol=ATOL)

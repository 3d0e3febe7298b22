"""Training: model.fit learns real digits (float32 and mixed_bfloat16), the performer's
float32 island under mixed precision, and the stochastic-depth schedule."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_t2t

# The paper's first soft split (7x7 windows, stride 4) then one 3x3 stride 2: 32x32 -> 8x8 -> 4x4 tokens.
TINY = dict(
    input_shape=(32, 32, 3), t2t_stages=[(7, 4, 2), (3, 2, 1)], token_dim=16, embed_dim=32, depth=2,
    num_heads=2, mlp_ratio=2.0, classes=10,
)
# Pooling "avg" for the fits: from scratch the class token ignores the images for the first hundred
# or so steps (a plateau at ln(10) whose length depends on the seed); the patch-token mean learns
# from the first steps on, so a 96-step fit shows learning reliably on every backend.
FIT_POOLING = "avg"
TRAIN_IMAGES = 256
EPOCHS = 6
BATCH = 16
CHANCE = 0.1  # ten digit classes
# The two float32 fits cover both heads: softmax scores with from_logits=False (performer) and
# logits with from_logits=True (transformer).
LOSS_SETUPS = {"performer": "softmax", "transformer": None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _np(x):
    return ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits, 4x nearest upsampled to 32x32, grey repeated to RGB, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.images))[:TRAIN_IMAGES]
    images = np.kron(data.images[order] / 16.0, np.ones((1, 4, 4)))  # (N, 32, 32), values in [0, 1]
    images = np.repeat(images[..., None], 3, axis=-1) * 2.0 - 1.0
    return images.astype("float32"), data.target[order].astype("int32")


class BatchLosses(keras.callbacks.Callback):
    """Records logs["loss"] after every step (Keras reports the epoch's running mean: one NaN step poisons it)."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def _fit(t2t_type, classifier_activation, x, y):
    keras.utils.set_random_seed(1)
    model = keras_t2t.T2TViT(
        t2t_type=t2t_type, classifier_activation=classifier_activation, pooling=FIT_POOLING, **TINY
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=5e-3, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=classifier_activation is None),
        metrics=["accuracy"],
    )
    steps = BatchLosses()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=0, callbacks=[steps])
    return model, history.history, steps.losses


def _assert_learned(history, label):
    first, last = history["loss"][0], history["loss"][-1]
    # A clear margin: the last epoch's mean loss at most 80% of the first's.
    assert last < 0.8 * first, f"{label}: epoch losses {history['loss']}"
    assert history["accuracy"][-1] > 2.5 * CHANCE, f"{label}: accuracies {history['accuracy']}"


# === 1. model.fit trains a small configuration: loss goes down, accuracy above chance ===


@pytest.mark.parametrize("t2t_type", sorted(LOSS_SETUPS))
def test_fit_on_digits_makes_the_loss_go_down_and_accuracy_beat_chance(digits, t2t_type):
    x, y = digits
    _, history, _ = _fit(t2t_type, LOSS_SETUPS[t2t_type], x, y)
    assert len(history["loss"]) == EPOCHS
    # The first epoch starts near the loss of a uniform guess, ln(10) = 2.30.
    assert 1.8 < history["loss"][0] < 2.6
    _assert_learned(history, t2t_type)


# === 2. the same under mixed_bfloat16 ===


@pytest.mark.parametrize("t2t_type", ["performer", "transformer"])
def test_fit_under_mixed_bfloat16_keeps_every_step_finite_and_the_loss_going_down(digits, t2t_type):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the conftest fixture resets it
    x, y = digits
    model, history, step_losses = _fit(t2t_type, None, x, y)
    # The policy reached the layers: bfloat16 compute, float32 variables.
    for name in ("tokens_to_token", "blocks_0", "head"):
        assert model.get_layer(name).compute_dtype == "bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}
    assert len(step_losses) == EPOCHS * math.ceil(TRAIN_IMAGES / BATCH)
    assert np.all(np.isfinite(step_losses)), step_losses
    _assert_learned(history, f"{t2t_type} under mixed_bfloat16")
    # The scores come out in float32 (the graph's output, and what predict returns).
    assert keras.backend.standardize_dtype(model.output.dtype) == "float32"
    predicted = model.predict(x[:BATCH], verbose=0)
    assert keras.backend.standardize_dtype(predicted.dtype) == "float32"
    assert np.all(np.isfinite(predicted))


# --- the performer's float32 island ---
#
# bfloat16 has float32's exponent range, so exp() does not overflow there; what bfloat16 loses is
# precision (8 significant bits). The random features exp(k.w - |k|^2 / 2) subtract two large
# numbers: with k.w and |k|^2 / 2 both near 1024, where bfloat16's step is 8, a rounding shifts the
# exponent by up to 4. The layer's weights are set so its features sit in that regime with a
# moderate exponent: float32 arithmetic gets them right (1e-4), bfloat16 arithmetic gets garbage.
# Checked against a float64 computation from the layer's own bfloat16 k, q and v.

TOKEN_DIM, NUM_FEATURES, IN_DIM, TOKENS = 64, 32, 27, 49
OFFSET = 8.0  # k and q carry OFFSET in their first 32 coordinates; w carries OFFSET / 2 there


def _to_bfloat16(a):
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _island_layer(w_exact_in_bfloat16):
    rng = np.random.default_rng(21)
    half = TOKEN_DIM // 2
    layer = keras_t2t.TokenPerformer(token_dim=TOKEN_DIM, dropout=0.0)
    layer.build((2, TOKENS, IN_DIM))
    assert layer.num_features == NUM_FEATURES and layer.compute_dtype == "bfloat16"
    kernel = np.zeros((IN_DIM, 3 * TOKEN_DIM), np.float32)
    bias = np.zeros(3 * TOKEN_DIM, np.float32)
    for part in (0, 1):  # k, then q: OFFSET on the first half, a small varying part on the second
        kernel[:, part * TOKEN_DIM + half : (part + 1) * TOKEN_DIM] = rng.normal(0, 0.5 / math.sqrt(IN_DIM), (IN_DIM, half))
        bias[part * TOKEN_DIM : part * TOKEN_DIM + half] = OFFSET
    kernel[:, 2 * TOKEN_DIM :] = rng.normal(0, 1 / math.sqrt(IN_DIM), (IN_DIM, TOKEN_DIM))  # v
    w = np.zeros((NUM_FEATURES, TOKEN_DIM), np.float32)
    w[:, half:] = np.linalg.qr(rng.standard_normal((half, half)))[0][:NUM_FEATURES] * math.sqrt(half)
    # OFFSET / 2 plus a per-feature part below bfloat16's resolution at 4 (1/32): invisible in
    # bfloat16, a factor up to e^(+-2.5) on each feature in float32.
    w[:, :half] = OFFSET / 2 + rng.uniform(-0.01, 0.01, (NUM_FEATURES, 1))
    if w_exact_in_bfloat16:
        w = _to_bfloat16(w)
    layer.kqv.kernel.assign(kernel)
    layer.kqv.bias.assign(bias)
    layer.w.assign(w)
    layer.proj.kernel.assign(np.eye(TOKEN_DIM, dtype=np.float32))  # the attention reaches the output 1:1
    return layer, w.astype(np.float64)


def _attention_from(k, q, v, w, bfloat16=False):
    """y = (qp @ (v^T kp)^T) / (qp . sum kp + 1e-8), in float64, or rounding every step to bfloat16."""
    r = _to_bfloat16 if bfloat16 else (lambda a: a)
    k, q, v, w = (r(np.asarray(a, np.float64 if not bfloat16 else np.float32)) for a in (k, q, v, w))

    def features(x):
        projected = r(x @ w.T)
        half_sq_norm = r(r(np.sum(r(x * x), axis=-1, keepdims=True)) / 2)
        return r(r(np.exp(r(projected - half_sq_norm))) / math.sqrt(NUM_FEATURES))

    kp, qp = features(k), features(q)
    normaliser = r(qp @ r(np.sum(kp, axis=1))[..., None])
    kptv = r(np.einsum("btd,btm->bdm", v, kp))
    return r(r(np.einsum("btm,bdm->btd", qp, kptv)) / r(normaliser + 1e-8))


def _island_errors(w_exact_in_bfloat16):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer, w = _island_layer(w_exact_in_bfloat16)
    # bfloat16 inputs, as the layer's call casts them (norm1 called alone would keep float32).
    x = ops.cast(np.random.default_rng(22).standard_normal((2, TOKENS, IN_DIM)).astype("float32"), "bfloat16")
    out = layer(x, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    out = _np(ops.cast(out, "float32")).astype(np.float64)
    # The layer's own bfloat16 k, q, v; the rest of the layer (proj, norm2, mlp) applied by its sublayers.
    kqv = layer.kqv(layer.norm1(x))
    k, q, v = (_np(ops.cast(t, "float32")) for t in ops.split(kqv, 3, axis=-1))
    assert np.abs(k[..., : TOKEN_DIM // 2] - OFFSET).max() == 0  # the large part is exact in bfloat16

    def rest_of_layer(attention):
        y = ops.split(kqv, 3, axis=-1)[2] + layer.proj(ops.cast(attention.astype(np.float32), "bfloat16"))
        return _np(ops.cast(y + layer.mlp(layer.norm2(y)), "float32")).astype(np.float64)

    scale = np.mean(np.abs(out))
    expected = rest_of_layer(_attention_from(k, q, v, w))
    in_bfloat16 = rest_of_layer(_attention_from(k, q, v, w, bfloat16=True))
    return (
        np.all(np.isfinite(out)),
        np.mean(np.abs(out - expected)) / scale,
        np.mean(np.abs(in_bfloat16 - expected)) / scale,
    )


ISLAND_TOLERANCE = 1e-3  # relative mean error; measured 2e-5 to 6e-5, bfloat16 arithmetic gives 0.4


def test_performer_random_features_of_bfloat16_k_q_v_are_computed_in_float32():
    finite, error, bfloat16_error = _island_errors(w_exact_in_bfloat16=True)
    assert finite
    # The same features computed in bfloat16 are far off: the check below can fail.
    assert bfloat16_error > 20 * ISLAND_TOLERANCE, bfloat16_error
    assert error < ISLAND_TOLERANCE, f"relative error {error:.2e} (bfloat16 arithmetic gives {bfloat16_error:.2e})"


def test_performer_random_features_use_w_at_float32_precision_under_mixed_bfloat16():
    finite, error, bfloat16_error = _island_errors(w_exact_in_bfloat16=False)
    assert finite
    assert bfloat16_error > 20 * ISLAND_TOLERANCE, bfloat16_error
    assert error < ISLAND_TOLERANCE, f"relative error {error:.2e} (bfloat16 arithmetic gives {bfloat16_error:.2e})"


# === 3. stochastic depth: block i gets linspace(0, drop_path_rate, depth)[i] ===


def test_drop_path_rate_0_3_over_depth_4_gives_block_rates_0_0_1_0_2_0_3():
    model = keras_t2t.T2TViT(**dict(TINY, depth=4, drop_path_rate=0.3))
    expected = np.linspace(0.0, 0.3, 4)  # [0, 0.1, 0.2, 0.3]
    blocks = [model.get_layer(f"blocks_{i}") for i in range(4)]
    np.testing.assert_allclose([b.get_config()["drop_path"] for b in blocks], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose([b.drop_path_layer.rate for b in blocks], expected, rtol=0, atol=1e-12)
    rebuilt = keras_t2t.T2TViT.from_config(model.get_config())
    np.testing.assert_allclose(
        [rebuilt.get_layer(f"blocks_{i}").get_config()["drop_path"] for i in range(4)], expected, rtol=0, atol=1e-12
    )
    # The rate is what the layer applies in training: block 3 drops ~30% of 4000 samples' branches
    # (binomial sd 0.007) and scales the kept ones by 1 / 0.7; block 0 drops none.
    keras.utils.set_random_seed(3)
    ones = np.ones((4000, 1, 1), "float32")
    kept = _np(blocks[3].drop_path_layer(ones, training=True)).ravel()
    assert abs(np.mean(kept == 0) - 0.3) < 0.03
    np.testing.assert_allclose(kept[kept != 0], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(_np(blocks[0].drop_path_layer(ones, training=True)), ones)
    np.testing.assert_array_equal(_np(blocks[3].drop_path_layer(ones, training=False)), ones)

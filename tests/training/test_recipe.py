"""The paper's training recipe (spec section 12), checked against hand-computed numbers."""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from keras_t2t.training import (
    DIGITS,
    MINI_MODEL,
    PAPER,
    Recipe,
    WarmupCosineDecay,
    build_optimizer,
    no_decay_variables,
    smooth_labels,
)
from keras_t2t.training.callbacks import ema_weights


def test_paper_recipe_is_the_references_defaults():
    r = PAPER.resolved()
    assert (r.epochs, r.cooldown_epochs, r.total_epochs) == (300, 10, 310)
    assert (r.lr, r.lr_base_batch, r.batch_size) == (5e-4, 512, 512)
    assert (r.warmup_epochs, r.warmup_lr, r.min_lr) == (10, 1e-6, 1e-5)
    assert r.weight_decay == 0.05 and r.no_decay_bias_norm_cls
    assert r.label_smoothing == 0.1
    assert (r.mixup_alpha, r.cutmix_alpha, r.mixup_switch_prob) == (0.8, 1.0, 0.5)
    # rand-m9-mstd0.5-inc1: two ops, magnitude 9, magnitude std 0.5
    assert (r.randaugment_ops, r.randaugment_magnitude, r.randaugment_magnitude_std) == (2, 9.0, 0.5)
    assert r.random_erasing == 0.25 and r.drop_path_rate == 0.1 and r.ema_decay == 0.99996
    assert r.random_resized_crop and r.crop_scale == (0.08, 1.0) and r.interpolation == "random"
    assert r.hflip == 0.5 and r.eval_crop_pct == 0.9


@pytest.mark.parametrize("model, decay", [("t2t_vit_7", 0.03), ("t2t_vit_12", 0.03), ("t2t_vit_14", 0.05),
                                          ("t2t_vit_19", 0.065), ("t2t_vit_t_24", 0.065)])
def test_weight_decay_follows_the_variant_unless_given(model, decay):
    assert dataclasses.replace(PAPER, model=model).resolved().weight_decay == decay
    assert dataclasses.replace(PAPER, model=model, weight_decay=0.01).resolved().weight_decay == 0.01


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert dataclasses.replace(PAPER, batch_size=1024).scaled_lr() == pytest.approx(1e-3)
    assert dataclasses.replace(PAPER, batch_size=256).scaled_lr() == pytest.approx(2.5e-4)


def test_recipe_round_trips_through_json_and_reports_differences():
    text = json.dumps(DIGITS.to_dict())
    again = Recipe.from_dict(json.loads(text))
    assert again == DIGITS
    assert again.diff(dataclasses.replace(DIGITS, lr=0.5)) == {"lr": (DIGITS.lr, 0.5)}
    with pytest.raises(ValueError, match="Unknown recipe fields: bogus"):
        Recipe.from_dict({"bogus": 1})


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "batch_size must be > 0"),
    ("label_smoothing", 1.5, "label_smoothing must be in"),
    ("randaugment_magnitude", 11, "0..10 scale"),
    ("precision", "float16", "precision must be one of"),
    ("warmup_epochs", 400, "must not exceed epochs"),
    ("hflip", 0.3, "hflip must be 0 or 0.5"),
])
def test_bad_recipe_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PAPER, **{field: value}).resolved()


# --- schedule: peak 1e-3, 10 steps per epoch, 100 cosine epochs, 10 warm-up epochs from 1e-6, min 1e-5 ---
SCHEDULE = dict(peak_lr=1e-3, steps_per_epoch=10, decay_epochs=100, warmup_epochs=10, warmup_lr=1e-6, min_lr=1e-5)
HAND = [
    (0, 1e-6),  # warm-up starts at warmup_lr
    (50, 5.005e-4),  # 1e-6 + 5 * (1e-3 - 1e-6) / 10
    (100, 9.757729755661011e-4),  # 1e-5 + (1e-3 - 1e-5) * (1 + cos(0.1 pi)) / 2: timm's cosine counts from 0
    (550, 4.2756493980508566e-4),  # 1e-5 + (1e-3 - 1e-5) * (1 + cos(0.55 pi)) / 2
    (1000, 1e-5),  # end of the cosine
    (1050, 1e-5),  # cool-down at min_lr
]


@pytest.mark.parametrize("step, lr", HAND)
def test_schedule_values_at_chosen_steps(step, lr):
    schedule = WarmupCosineDecay(**SCHEDULE)
    assert schedule.value(step) == pytest.approx(lr, rel=1e-9)
    assert float(keras.ops.convert_to_numpy(schedule(step))) == pytest.approx(lr, rel=1e-5)


def test_per_epoch_schedule_holds_the_value_through_the_epoch():
    schedule = WarmupCosineDecay(**SCHEDULE, per_epoch=True)
    assert schedule.value(50) == schedule.value(59) == pytest.approx(5.005e-4)
    assert float(keras.ops.convert_to_numpy(schedule(59))) == pytest.approx(5.005e-4, rel=1e-5)


def test_schedule_survives_serialization():
    schedule = WarmupCosineDecay(**SCHEDULE)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert again.value(550) == schedule.value(550)


def _mini(classes=3):
    from keras_t2t import T2TViT

    return T2TViT(input_shape=(32, 32, 3), classes=classes, classifier_activation=None, **MINI_MODEL)


def test_no_weight_decay_on_biases_norms_and_cls_token():
    model = _mini()
    excluded = {v.path for v in no_decay_variables(model)}
    assert "cls_token/cls_token" in excluded
    assert all(len(v.shape) == 1 for v in model.trainable_variables if v.path in excluded - {"cls_token/cls_token"})
    assert {"blocks_0/norm1/gamma", "blocks_0/norm1/beta", "blocks_0/attn/proj/bias", "head/bias"} <= excluded
    assert "blocks_0/attn/qkv/kernel" not in excluded

    # One AdamW step with zero gradients moves nothing but the decay: w <- w * (1 - lr * wd).
    recipe = dataclasses.replace(DIGITS, lr=1e-3, lr_base_batch=64, batch_size=64, warmup_epochs=0.0,
                                 weight_decay=0.05).resolved()
    optimizer = build_optimizer(recipe, model, steps_per_epoch=10)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in model.trainable_variables])
    for v in model.trainable_variables:
        after = keras.ops.convert_to_numpy(v)
        factor = 1.0 if v.path in excluded else 1.0 - 1e-3 * 0.05  # 0.99995
        np.testing.assert_allclose(after, before[v.path] * factor, rtol=1e-6, atol=1e-9, err_msg=v.path)


def test_label_smoothing_matches_hand_numbers():
    one_hot = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    smoothed = smooth_labels(one_hot, 0.1)
    np.testing.assert_allclose(smoothed, [[0.925, 0.025, 0.025, 0.025]], rtol=1e-6)
    # Cross-entropy of logits (2, 0, 0, 0): log-sum-exp = log(e^2 + 3) = 2.3407530;
    # -(0.925 * (2 - 2.3407530) + 3 * 0.025 * (-2.3407530)) = 0.4907530
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)(smoothed, np.array([[2.0, 0, 0, 0]], "float32"))
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(0.4907530, abs=1e-6)


def test_ema_update_matches_hand_numbers():
    # One weight w = 1, gradient 1 each step, lr 0.01, no decay: Adam moves w by ~lr a step
    # (0.99, then 0.98). Keras copies the weight into the average at the first step, then
    # ema = 0.9 * ema + 0.1 * w  ->  0.9 * 0.99 + 0.1 * 0.98 = 0.989.
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    recipe = dataclasses.replace(DIGITS, lr=0.01, lr_base_batch=64, batch_size=64, warmup_epochs=0.0,
                                 epochs=10**6, weight_decay=0.0, ema_decay=0.9).resolved()
    optimizer = build_optimizer(recipe, model, steps_per_epoch=1)
    model.compile(optimizer=optimizer, loss="mse")
    kernel = model.trainable_variables[0]
    for _ in range(2):
        optimizer.apply_gradients([(keras.ops.ones(kernel.shape), kernel)])
    assert float(keras.ops.convert_to_numpy(kernel)[0, 0]) == pytest.approx(0.98, abs=1e-6)
    with ema_weights(model):
        assert float(keras.ops.convert_to_numpy(kernel)[0, 0]) == pytest.approx(0.989, abs=1e-6)
    assert float(keras.ops.convert_to_numpy(kernel)[0, 0]) == pytest.approx(0.98, abs=1e-6)


def test_eps_and_betas_are_pytorchs():
    model = _mini()
    optimizer = build_optimizer(DIGITS.resolved(), model, steps_per_epoch=10)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-8)
    assert math.isclose(float(keras.ops.convert_to_numpy(optimizer.learning_rate)), DIGITS.warmup_lr, rel_tol=1e-5)

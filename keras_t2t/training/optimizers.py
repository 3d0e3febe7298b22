"""AdamW as the reference configures it: decay off for biases, norms and the class token."""

import keras

from keras_t2t.training.schedules import WarmupCosineDecay


def no_decay_variables(model):
    """Trainable variables that get no weight decay (timm's rule: 1-D tensors and ``cls_token``)."""
    return [v for v in model.trainable_variables if len(v.shape) <= 1 or v.name in ("cls_token", "pos_embed")]


def build_schedule(recipe, steps_per_epoch):
    return WarmupCosineDecay(
        peak_lr=recipe.scaled_lr(),
        steps_per_epoch=steps_per_epoch,
        decay_epochs=recipe.epochs,
        warmup_epochs=recipe.warmup_epochs,
        warmup_lr=recipe.warmup_lr,
        min_lr=recipe.min_lr,
        per_epoch=recipe.lr_per_epoch,
    )


def build_optimizer(recipe, model, steps_per_epoch):
    """``keras.optimizers.AdamW`` with the recipe's schedule, decay exclusions and EMA.

    Weight decay is decoupled and scaled by the learning rate (``w -= lr * wd * w``),
    as in PyTorch's AdamW. EMA (``ema_decay`` > 0) keeps the moving average in the
    optimizer (``use_ema``); ``keras_t2t.training.callbacks.EMAEvaluation`` swaps it
    in for validation and the saved weights.
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=build_schedule(recipe, steps_per_epoch),
        weight_decay=recipe.weight_decay,
        beta_1=recipe.beta_1,
        beta_2=recipe.beta_2,
        epsilon=recipe.epsilon,
        global_clipnorm=recipe.clip_grad_norm or None,
        use_ema=recipe.ema_decay > 0,
        ema_momentum=recipe.ema_decay if recipe.ema_decay > 0 else 0.99,
    )
    if recipe.no_decay_bias_norm_cls:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer


def smooth_labels(one_hot, smoothing):
    """``y * (1 - s) + s / classes`` (timm folds this into its Mixup; so do we, in the data)."""
    if not smoothing:
        return one_hot
    classes = one_hot.shape[-1]
    return one_hot * (1.0 - smoothing) + smoothing / classes

"""The reference's learning-rate schedule (timm's CosineLRScheduler) in optimizer steps."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_t2t")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``warmup_lr``, cosine to ``min_lr``, then ``min_lr`` (cool-down).

    With ``t`` the position in epochs (``step / steps_per_epoch``, floored when
    ``per_epoch`` as timm's ``t_in_epochs`` does):

    - ``t < warmup_epochs``: ``warmup_lr + t * (peak_lr - warmup_lr) / warmup_epochs``
    - ``t < decay_epochs``: ``min_lr + (peak_lr - min_lr) * (1 + cos(pi * t / decay_epochs)) / 2``
    - otherwise (the cool-down epochs): ``min_lr``.

    As in timm (``warmup_prefix=False``) the cosine counts from step 0, so it is
    already slightly below ``peak_lr`` when the warm-up ends.
    """

    def __init__(self, peak_lr, steps_per_epoch, decay_epochs, warmup_epochs=0.0, warmup_lr=1e-6,
                 min_lr=1e-5, per_epoch=False, name="warmup_cosine"):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}.")
        if decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be > 0; got {decay_epochs}.")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.decay_epochs = float(decay_epochs)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.per_epoch = bool(per_epoch)
        self.name = name

    def __call__(self, step):
        t = ops.cast(step, "float32") / float(self.steps_per_epoch)
        if self.per_epoch:
            t = ops.floor(t)
        cosine = self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (
            1.0 + ops.cos(math.pi * ops.minimum(t, self.decay_epochs) / self.decay_epochs)
        )
        lr = ops.where(t >= self.decay_epochs, self.min_lr, cosine)
        if self.warmup_epochs > 0:
            warm = self.warmup_lr + t * (self.peak_lr - self.warmup_lr) / self.warmup_epochs
            lr = ops.where(t < self.warmup_epochs, warm, lr)
        return lr

    def value(self, step):
        """The same formula in Python floats (for printing and tests)."""
        t = step / self.steps_per_epoch
        if self.per_epoch:
            t = math.floor(t)
        if self.warmup_epochs > 0 and t < self.warmup_epochs:
            return self.warmup_lr + t * (self.peak_lr - self.warmup_lr) / self.warmup_epochs
        if t >= self.decay_epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.decay_epochs))

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "decay_epochs": self.decay_epochs,
            "warmup_epochs": self.warmup_epochs,
            "warmup_lr": self.warmup_lr,
            "min_lr": self.min_lr,
            "per_epoch": self.per_epoch,
            "name": self.name,
        }

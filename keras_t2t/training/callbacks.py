"""Callbacks of the trainer: EMA evaluation, per-epoch resume state, best/last weights, throughput.

Usable with any ``model.fit``. File writes are atomic (``keras_t2t.io_utils``: a temporary
name, then one rename) so a run killed at any moment leaves either the old
or the new file, never half of one; the resume state is one unit
(``keras_t2t.training.resume``).
"""

import contextlib
import os
import time

import keras
import numpy as np

from keras_t2t.io_utils import save_atomic
from keras_t2t.training.resume import LEGACY_WEIGHTS, STATE_FILE, read_state, save_state

RESUME_WEIGHTS = LEGACY_WEIGHTS  # the name before the state named its weights file (resume.save_state)
RESUME_STATE = STATE_FILE


def _inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def has_ema(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return False
    optimizer = _inner_optimizer(optimizer)
    return bool(getattr(optimizer, "use_ema", False)) and hasattr(optimizer, "_model_variables_moving_average")


def _swap_ema(model):
    optimizer = _inner_optimizer(model.optimizer)
    for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        current = keras.ops.convert_to_numpy(variable)
        variable.assign(keras.ops.convert_to_numpy(average))
        average.assign(current)


@contextlib.contextmanager
def ema_weights(model):
    """Inside the block the model holds its EMA weights (a no-op without EMA)."""
    if not has_ema(model):
        yield
        return
    _swap_ema(model)
    try:
        yield
    finally:
        _swap_ema(model)


class EMAEvaluation(keras.callbacks.Callback):
    """Validates with the EMA weights, as the reference reports its accuracies."""

    def __init__(self):
        super().__init__()
        self._swapped = False

    def on_test_begin(self, logs=None):
        if has_ema(self.model) and not self._swapped:
            _swap_ema(self.model)
            self._swapped = True

    def on_test_end(self, logs=None):
        if self._swapped:
            _swap_ema(self.model)
            self._swapped = False


def save_weights_atomic(model, path):
    return save_atomic(path, model.save_weights)


class ModelExporter:
    """Writes the model's weights without optimizer state, from a twin built outside any strategy.

    The files load with ``keras_t2t.load_weights`` (or ``model.load_weights`` on a
    model of the same configuration), whatever distribution trained them.
    """

    def __init__(self, model):
        config = model.get_config()
        self.twin = type(model).from_config(config)

    def sync(self, model):
        self.twin.set_weights([keras.ops.convert_to_numpy(v) for v in model.weights])
        return self.twin

    def save_weights(self, model, path):
        save_weights_atomic(self.sync(model), path)

    def save_model(self, model, path):
        save_atomic(path, self.sync(model).save)


class TrainingState(keras.callbacks.Callback):
    """After every epoch: the resume state (weights + optimizer, epoch, steps), last and best weights.

    ``output_dir/resume/`` holds everything ``model.fit`` needs to continue (the
    optimizer's step count sets the schedule position), committed as one unit by
    ``resume.save_state``; ``last.weights.h5`` and ``best.weights.h5`` hold the
    evaluated weights (EMA when on) of the last and of the best-``monitor``
    epoch. With a ``Throughput`` callback (placed before this one), the state
    also keeps the training seconds and images/s of every epoch, across resumes.
    """

    def __init__(self, output_dir, fingerprint, exporter, monitor="val_top1", is_chief=True, throughput=None):
        super().__init__()
        self.output_dir = output_dir
        self.fingerprint = fingerprint
        self.exporter = exporter
        self.monitor = monitor
        self.is_chief = is_chief
        self.throughput = throughput
        self.best = -np.inf
        previous = read_state(output_dir) or {}
        if previous.get("best") is not None:
            self.best = previous["best"]
        # What the epochs before this process measured.
        self.previous_seconds = float(previous.get("train_seconds", 0.0))
        self.previous_rates = [float(r) for r in previous.get("epoch_images_per_second", [])]

    def train_seconds(self):
        """Training seconds of every epoch of the run so far, the resumed ones included."""
        return self.previous_seconds + (self.throughput.train_seconds if self.throughput else 0.0)

    def epoch_rates(self):
        """Training images/s of every epoch of the run so far, the resumed ones included."""
        return self.previous_rates + (list(self.throughput.epoch_rates) if self.throughput else [])

    def on_epoch_end(self, epoch, logs=None):
        if not self.is_chief:
            return
        logs = logs or {}
        value = logs.get(self.monitor)
        improved = value is not None and float(value) > self.best
        with ema_weights(self.model):
            self.exporter.save_weights(self.model, os.path.join(self.output_dir, "last.weights.h5"))
            if improved:
                self.best = float(value)
                self.exporter.save_weights(self.model, os.path.join(self.output_dir, "best.weights.h5"))
        state = dict(
            self.fingerprint,
            epoch=epoch + 1,
            optimizer_steps=int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            best=None if self.best == -np.inf else self.best,
            best_metric=self.monitor,
            time=time.time(),
            train_seconds=self.train_seconds(),
            epoch_images_per_second=self.epoch_rates(),
        )
        save_state(self.model, self.output_dir, state)


class Throughput(keras.callbacks.Callback):
    """Training images per second (validation excluded) and the learning rate, added to the logs."""

    def __init__(self, global_batch_size, steps_per_epoch, schedule=None):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.steps_per_epoch = steps_per_epoch
        self.schedule = schedule
        self.epoch_rates = []
        self.train_seconds = 0.0
        self._start = None
        self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end or time.perf_counter()
        seconds = end - self._start
        self.train_seconds += seconds
        rate = self.steps_per_epoch * self.global_batch_size / max(seconds, 1e-9)
        self.epoch_rates.append(rate)
        if logs is not None:
            logs["images_per_second"] = rate
            if self.schedule is not None:
                step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                logs["lr"] = self.schedule.value(step)

    def images_per_second(self):
        """Mean over the epochs after the first (which includes compilation), when there are any."""
        rates = self.epoch_rates[1:] or self.epoch_rates
        return float(np.mean(rates)) if rates else 0.0


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers the step."""

    def __init__(self):
        super().__init__()
        self.nan_step = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.nan_step = (self._epoch, batch)
            self.model.stop_training = True

"""Training T2T-ViT from scratch with the paper's recipe (spec section 12), on any Keras 3 backend.

The pieces are importable on their own for ``model.fit`` users::

    from keras_t2t import training
    recipe = training.PRESETS["paper"]                     # or training.Recipe(...)
    optimizer = training.build_optimizer(recipe, model, steps_per_epoch)
    source = training.resolve_data(recipe)                 # folder, TFDS name or digits
    train_ds = training.train_dataset(source, recipe, batch_size)
    model, summary = training.train(recipe, "runs/x")      # the whole generic trainer

``training/train.py`` is the command line over ``train``.
"""

from keras_t2t.training.callbacks import EMAEvaluation, ModelExporter, NaNGuard, Throughput, TrainingState, ema_weights
from keras_t2t.training.data import (
    DataSource,
    resolve_data,
    scan_image_folder,
    steps_per_epoch,
    train_dataset,
    val_dataset,
)
from keras_t2t.training.distribute import Distribution, prepare_environment, setup_distribution
from keras_t2t.training.optimizers import build_optimizer, build_schedule, no_decay_variables, smooth_labels
from keras_t2t.training.recipe import DIGITS, MINI_MODEL, MINI_NAME, PAPER, PRESETS, Recipe
from keras_t2t.training.schedules import WarmupCosineDecay
from keras_t2t.training.trainer import build_model, train

__all__ = [
    "DIGITS", "MINI_MODEL", "MINI_NAME", "PAPER", "PRESETS", "Recipe", "WarmupCosineDecay", "build_schedule",
    "build_optimizer", "no_decay_variables", "smooth_labels", "DataSource", "resolve_data", "scan_image_folder",
    "steps_per_epoch", "train_dataset", "val_dataset", "Distribution", "setup_distribution", "prepare_environment",
    "EMAEvaluation", "ModelExporter", "NaNGuard", "Throughput", "TrainingState", "ema_weights", "build_model", "train",
]

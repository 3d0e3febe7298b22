"""Training T2T-ViT from scratch with the paper's recipe (spec section 12), on any Keras 3 backend.

The pieces are importable on their own for ``model.fit`` users::

    from keras_t2t import training
    recipe = training.PRESETS["paper"]                     # or training.Recipe(...)
    optimizer = training.build_optimizer(recipe, model, steps_per_epoch)
    source = training.resolve_data(recipe)                 # folder, TFDS name or digits
    train_ds = training.train_dataset(source, recipe, batch_size)
    model, summary = training.train(recipe, "runs/x")      # the whole generic trainer

``training/train.py`` is the command line over ``train``; it reads ``recipe`` (no Keras) to
build its parser, and imports the rest once its arguments are parsed.
"""

from keras_t2t.backends import load_public_api

# The public names, by the module that defines them (all but ``recipe`` import Keras or TensorFlow).
_PUBLIC_MODULES = {
    "keras_t2t.training.recipe": ("DIGITS", "MINI_MODEL", "MINI_NAME", "PAPER", "PRESETS", "Recipe"),
    "keras_t2t.training.schedules": ("WarmupCosineDecay",),
    "keras_t2t.training.optimizers": ("build_schedule", "build_optimizer", "no_decay_variables", "smooth_labels"),
    "keras_t2t.training.data": (
        "DataSource", "resolve_data", "scan_image_folder", "steps_per_epoch", "train_dataset", "val_dataset",
    ),
    "keras_t2t.training.distribute": ("Distribution", "setup_distribution", "prepare_environment"),
    "keras_t2t.training.callbacks": (
        "EMAEvaluation", "ModelExporter", "NaNGuard", "Throughput", "TrainingState", "ema_weights",
    ),
    "keras_t2t.training.trainer": ("build_model", "train"),
}
__all__ = [name for names in _PUBLIC_MODULES.values() for name in names]

# Now, or in a keras-t2t command (training/train.py) when a name is first used.
load_public_api(globals(), _PUBLIC_MODULES)

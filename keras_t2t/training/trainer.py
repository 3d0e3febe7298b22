"""The generic trainer: a ``Recipe`` in, a trained model and ``summary.json`` out.

Nothing here knows which model or dataset it trains: those are recipe fields.

Files in ``output_dir``::

    recipe.json              the resolved recipe (written before training)
    resume/                  per-epoch state to continue a killed run (weights + optimizer), one unit
                             (keras_t2t.training.resume)
    .lock                    held while a run works in the folder
    last.weights.h5          evaluated (EMA when on) weights after the last epoch
    best.weights.h5          ... of the epoch with the best val_top1
    model.keras              the final model (evaluated weights), for keras.saving.load_model
    history.csv, logs/       CSV and TensorBoard logs
    summary.json             val_top1, val_top5, epochs, replicas, throughput, backend, ...
"""

import json
import os
import sys
import time

import keras

from keras_t2t.training import callbacks as cb
from keras_t2t.training import data as data_lib
from keras_t2t.training import resume
from keras_t2t.training.distribute import make_train_input, setup_distribution, shard_validation
from keras_t2t.training.optimizers import build_optimizer, build_schedule
from keras_t2t.applications import create_model
from keras_t2t.builders import list_models
from keras_t2t.hub.preset_files import save_preset
from keras_t2t.io_utils import check_output_folder, remove_path, write_json_atomic
from keras_t2t.models.presets import get_preset
from keras_t2t.resolve import check_weights_handle, load_weights_into, resolve_model
from keras_t2t.training.recipe import Recipe

# Recipe fields that may change between a run and its resumption (they do not
# change what is trained or the schedule position).
RESUMABLE_CHANGES = ("cache", "jit_compile", "data_dir", "manual_dir")
# What a training run leaves in its folder, in the order the end of the run names them.
RUN_FILES = ("model.keras", "preset", "summary.json", "recipe.json", "history.csv", "best.weights.h5",
             "last.weights.h5", "logs", "resume")


def model_names():
    """Every model the trainer can build: the whole registry (``keras_t2t.list_models()``)."""
    return list_models()


def build_model(recipe, num_classes, weights=None, verbose=True):
    """The recipe's model with a ``num_classes`` logits head; ``weights`` loaded by the model's own loader.

    Loading adapts what the loader can (for T2T-ViT: the head is dropped for
    another class count, the position table resized for another image size,
    as the authors' fine-tuning does).
    """
    get_preset(recipe.model)
    kwargs = dict(
        input_shape=(recipe.image_size, recipe.image_size, 3),
        classes=num_classes,
        classifier_activation=None,
        drop_path_rate=recipe.drop_path_rate,
    )
    if recipe.t2t_dropout != -1.0:
        kwargs["t2t_dropout"] = recipe.t2t_dropout
    model = create_model(recipe.model, **kwargs)
    if weights:
        # Any file, this trainer's own included: Keras' load_weights would ignore a deeper variant's extra blocks.
        report = load_weights_into(model, weights, model_name=recipe.model)
        if verbose:
            print(f"weights: {os.fspath(weights)}: {report}")
    return model


def _loss():
    return keras.losses.CategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")


def _metrics(num_classes):
    # Weighted metrics sum (weight x value) and weights over all replicas, so the padded last
    # validation batch counts exactly; Keras' own "loss" averages per-replica means instead.
    return [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
        keras.metrics.CategoricalCrossentropy(from_logits=True, name="ce"),
    ]


def _jit(recipe):
    value = str(recipe.jit_compile).lower()
    return "auto" if value == "auto" else value == "true"


def fingerprint(recipe, source):
    """What a resume directory must agree on: the recipe and the data's classes."""
    return {
        "recipe": recipe.to_dict(),
        "num_classes": source.num_classes,
        "num_train": source.num_train,
    }


def check_resume(output_dir, recipe, source):
    """The epoch to continue from (0 for a fresh run); a ValueError if the folder is another run's."""
    state = resume.read_state(output_dir)
    if state is None:
        return 0, None
    try:
        previous = Recipe.from_dict(state["recipe"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{output_dir!r} holds resume state that is not a keras_t2t training run ({error}); "
            "use another --output-dir."
        ) from error
    if previous.model != recipe.model or previous.image_size != recipe.image_size or (
        state.get("num_classes") != source.num_classes
    ):
        raise ValueError(
            f"{output_dir!r} holds a run of another model ({previous.model}, {previous.image_size}px, "
            f"{state.get('num_classes')} classes) than this one ({recipe.model}, {recipe.image_size}px, "
            f"{source.num_classes} classes); use another --output-dir, or the same settings to resume."
        )
    changed = {k: v for k, v in previous.diff(recipe).items() if k not in RESUMABLE_CHANGES}
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changed.items()))
        raise ValueError(
            f"{output_dir!r} holds a run with another recipe ({shown}). Resuming continues the saved "
            "schedule, so the recipe must match; use another --output-dir for a new run."
        )
    return int(state["epoch"]), state


def _tensorboard_available():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _print(verbose, *args):
    if verbose:
        print(*args, flush=True)


def finished_run(output_dir, recipe, state):
    """The summary of the finished run in ``output_dir`` when ``state`` is its last epoch, else None."""
    if state is None or int(state["epoch"]) < recipe.total_epochs:
        return None
    try:
        with open(os.path.join(output_dir, "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        return None  # killed after its last epoch, before the summary: the run finishes it
    if not os.path.exists(os.path.join(output_dir, "model.keras")) or summary.get("eval_only"):
        return None
    return summary


def train(recipe, output_dir, distribution=None, weights=None, eval_only=False, verbose=1, download=True,
          verify_images=False, callbacks=(), skip_bad_images=False):
    """Trains (or with ``eval_only`` validates) ``recipe``; returns ``(model, summary dict)``.

    Every check (output folder, data, batch split, resume folder) runs before
    the model is built. Re-running with the same ``output_dir`` resumes after
    the last completed epoch with the same optimizer step count; re-running a
    finished run changes nothing and returns its ``model.keras`` and summary.
    Every image of a folder dataset is decoded before any work (``verify_images``:
    again, not from the cache); bad images are an error, or with
    ``skip_bad_images`` left out and counted.
    """
    recipe = recipe.resolved()
    if recipe.model not in model_names():
        raise ValueError(f"Unknown model {recipe.model!r}; accepted: {', '.join(model_names())}.")
    if eval_only and not weights:
        raise ValueError("eval_only needs weights (a checkpoint to validate).")
    if weights:
        check_weights_handle(weights, recipe.model)
    output_dir = check_output_folder(output_dir)
    distribution = distribution or setup_distribution()
    per_replica = distribution.check_batch_size(recipe.batch_size)
    source = data_lib.resolve_data(recipe, download=download, verify_images=verify_images,
                                   skip_bad_images=skip_bad_images)
    steps = data_lib.steps_per_epoch(source, recipe, recipe.batch_size) if not eval_only else 0
    initial_epoch, state = (0, None) if eval_only else check_resume(output_dir, recipe, source)
    fresh = not os.path.isdir(output_dir) or not os.listdir(output_dir)
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    try:
        return _train_in_folder(recipe, output_dir, distribution, weights, eval_only, verbose, callbacks, source,
                                per_replica, steps, initial_epoch, state)
    except BaseException:
        if fresh and distribution.is_chief:
            _remove_untouched_start(output_dir, created)
        raise


def _remove_untouched_start(output_dir, created):
    """What a fresh run that failed before training left (its lock, its recipe.json, the folder it
    made): removed, so a bad --weights file or any early failure leaves nothing behind."""
    names = set(os.listdir(output_dir))
    if names - {resume.LOCK_FILE, "recipe.json"}:
        return  # something more was written: a resumable run, or someone else's files
    for name in names:
        remove_path(os.path.join(output_dir, name))
    if created:
        try:
            os.rmdir(output_dir)
        except OSError:
            pass


def _train_in_folder(recipe, output_dir, distribution, weights, eval_only, verbose, callbacks, source, per_replica,
                     steps, initial_epoch, state):
    is_chief = distribution.is_chief
    # Non-chief workers of a multi-worker run write nothing to the shared folder.
    files_dir = output_dir if is_chief else os.path.join(output_dir, f".worker{distribution.worker_index}")
    os.makedirs(files_dir, exist_ok=True)
    with resume.folder_lock(files_dir) as exclusive:
        removed = resume.remove_leftovers(files_dir, exclusive)
        if removed:
            _print(verbose, f"removed {len(removed)} leftover(s) of an interrupted run: "
                            + ", ".join(os.path.relpath(p, files_dir) for p in removed))
        # Every worker reads the same shared folder, so all of them stop here or none does.
        summary = None if eval_only else finished_run(output_dir, recipe, state)
        if summary is not None:
            _print(verbose, f"The run in {output_dir} is finished ({summary.get('epochs')} epochs, val_top1 "
                            f"{summary.get('val_top1', float('nan')):.4f}); nothing was changed. Use another "
                            "--output-dir for a new run.")
            model = resolve_model(os.path.join(output_dir, "model.keras")).model
            model.training_summary = summary
            return model, summary

        _print(verbose, f"backend {keras.backend.backend()}; {distribution.describe()}")
        _print(verbose, f"data: {source.describe()}")
        _print(verbose, f"global batch {recipe.batch_size} = {distribution.num_replicas} x {per_replica}; "
                        f"{steps} steps per epoch; peak lr {recipe.scaled_lr():.3g} "
                        f"({recipe.lr:g} x {recipe.batch_size}/{recipe.lr_base_batch})")
        _print(verbose, "augmentation: " + recipe.augmentation_summary())
        if is_chief and not eval_only:
            write_json_atomic(os.path.join(output_dir, "recipe.json"), recipe.to_dict())

        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(recipe.precision)
        try:
            return _run(recipe, output_dir, files_dir, distribution, source, steps, initial_epoch, state, weights,
                        eval_only, verbose, callbacks)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


def _run(recipe, output_dir, files_dir, distribution, source, steps, initial_epoch, state, weights, eval_only,
         verbose, extra_callbacks):
    keras.utils.set_random_seed(recipe.seed + 1000 * distribution.worker_index)
    val = shard_validation(distribution, data_lib.val_dataset(source, recipe, recipe.batch_size))
    with distribution.scope():
        model = build_model(recipe, source.num_classes, weights=None if initial_epoch else weights,
                            verbose=verbose)
        optimizer = build_optimizer(recipe, model, max(steps, 1))
        model.compile(optimizer=optimizer, loss=_loss(), weighted_metrics=_metrics(source.num_classes),
                      jit_compile=_jit(recipe))
        if initial_epoch:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(resume.state_weights(output_dir, state))
            done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            if done != initial_epoch * steps:
                raise ValueError(
                    f"The resume state in {output_dir!r} says epoch {initial_epoch} but holds {done} optimizer "
                    f"steps, not {initial_epoch * steps}; use another --output-dir."
                )
            _print(verbose, f"resuming after epoch {initial_epoch} (optimizer step {done})")
    exporter = cb.ModelExporter(model)
    _print(verbose, f"model {recipe.model}: {model.count_params():,} weights, "
                    f"{len(model.trainable_variables)} trainable tensors; precision {recipe.precision}")

    throughput = training_state = None
    if not eval_only:
        def build(batch_size, num_shards, shard_index):
            return data_lib.train_dataset(source, recipe, batch_size, num_shards, shard_index,
                                          seed=recipe.seed + shard_index)

        train_input = make_train_input(distribution, build, recipe.batch_size)
        nan_guard = cb.NaNGuard()
        throughput = cb.Throughput(recipe.batch_size, steps, schedule=build_schedule(recipe, max(steps, 1)))
        callbacks = [cb.EMAEvaluation(), throughput, nan_guard]
        if distribution.is_chief:
            # The logs come before the resume state: a kill between the two repeats an epoch's
            # row in history.csv rather than losing it.
            callbacks.append(
                keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=initial_epoch > 0)
            )
            if _tensorboard_available():
                callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "logs"), write_graph=False))
            else:
                _print(verbose, "TensorBoard logs off: pip install tensorboard")
        training_state = cb.TrainingState(files_dir, fingerprint(recipe, source), exporter,
                                          is_chief=distribution.is_chief, throughput=throughput)
        callbacks.append(training_state)
        callbacks += list(extra_callbacks)
        start = time.perf_counter()
        model.fit(
            train_input,
            epochs=recipe.total_epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=val,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles
        )
        fit_seconds = time.perf_counter() - start
        # fit() ends by putting the EMA weights into the model (finalize_variable_values).
        if nan_guard.nan_step is not None:
            raise FloatingPointError(
                f"The training loss became NaN at step {nan_guard.nan_step} and training stopped. With "
                "--precision mixed_float16 try mixed_bfloat16 (the reference saw float16 NaN losses too), "
                "or lower --lr."
            )
    else:
        fit_seconds = 0.0

    results = model.evaluate(val, verbose=0, return_dict=True)
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    summary = {
        "val_top1": float(results["top1"]),
        "val_top5": float(results["top5"]),
        "val_loss": float(results["ce"]),  # weighted over all replicas (see _metrics)
        "epochs": 0 if eval_only else recipe.total_epochs,
        "optimizer_steps": optimizer_steps,
        "replicas": distribution.num_replicas,
        "workers": distribution.num_workers,
        "distribution": distribution.kind,
        "global_batch_size": recipe.batch_size,
        "train_images_per_second": _images_per_second(throughput, training_state),
        "train_seconds": training_state.train_seconds() if training_state else 0.0,
        "fit_seconds": fit_seconds,
        "resumed_from_epoch": initial_epoch,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "precision": recipe.precision,
        "model": recipe.model,
        "dataset": recipe.dataset,
        "num_classes": source.num_classes,
        "class_names": list(source.class_names),  # the labels of keras_t2t.export
        "num_train": source.num_train,
        "num_val": min(source.num_val, recipe.val_limit) if recipe.val_limit else source.num_val,
        "skipped_images": len(source.skipped),
        "eval_only": bool(eval_only),
        "weights": (os.path.abspath(weights) if os.path.exists(weights) else weights) if weights else None,
        "ema": recipe.ema_decay > 0,
    }
    if distribution.is_chief:
        if not eval_only:
            exporter.save_model(model, os.path.join(output_dir, "model.keras"))
            _save_run_preset(exporter.twin, output_dir, recipe, summary, verbose)
        # An evaluation in a training run's folder does not replace that run's summary.
        name = "eval_summary.json" if eval_only and resume.read_state(output_dir) else "summary.json"
        write_json_atomic(os.path.join(output_dir, name), summary)
    after = "" if eval_only else f" after {summary['epochs']} epoch{'s' * (summary['epochs'] != 1)}"
    _print(verbose, f"validation top-1 {100 * summary['val_top1']:.2f}% (top-5 {100 * summary['val_top5']:.2f}%) "
                    f"on {summary['num_val']} images{after}")
    if distribution.is_chief:
        _print(verbose, _written(output_dir, [name] if eval_only else RUN_FILES))
    model.training_summary = summary
    return model, summary


def _written(output_dir, names):
    """``wrote <folder>: <file>, <folder>/, ...`` for those of ``names`` that are in ``output_dir``."""
    found = [name + ("/" if os.path.isdir(os.path.join(output_dir, name)) else "") for name in names
             if os.path.exists(os.path.join(output_dir, name))]
    return f"wrote {os.path.join(output_dir, '')}: {', '.join(found)}"


def _images_per_second(throughput, training_state):
    """This process's measurement when it trained; else (a run finished after a kill) the recorded epochs'."""
    if throughput is not None and throughput.epoch_rates:
        return throughput.images_per_second()
    rates = training_state.epoch_rates() if training_state else []
    rates = rates[1:] or rates  # the first epoch includes compilation
    return float(sum(rates) / len(rates)) if rates else 0.0


def main_guard(function):
    """Runs ``function`` and turns the expected user errors into one line on stderr and exit status 2."""
    try:
        return function()
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _save_run_preset(model, output_dir, recipe, summary, verbose):
    """``output_dir/preset``: the trained model as a KerasHub preset with the run's evaluation
    preprocessing (the recipe's image size and ``eval_crop_pct``), its classes and its top-1."""
    metadata = {key: summary[key] for key in ("val_top1", "dataset", "class_names", "model", "epochs")}
    save_preset(model, os.path.join(output_dir, "preset"), preprocessing=(recipe.image_size, recipe.eval_crop_pct),
                metadata=metadata)

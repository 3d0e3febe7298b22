"""ImageNet-style evaluation of a Keras classifier (any Keras 3 backend).

The preprocessing is the one the released T2T-ViT weights were evaluated with
(the reference's timm/torchvision eval transform, spec section 11):

1. convert to RGB;
2. resize the shorter side to ``int(image_size / crop_pct)`` (248 for 224)
   with PIL bicubic, keeping the aspect ratio exactly as torchvision's
   ``Resize(int)`` does (longer side = ``int(size * long / short)``);
3. center crop ``image_size`` (torchvision rounding:
   ``top = int(round((h - crop_h) / 2))``);
4. scale to [0, 1] and normalise with the ImageNet mean/std.

Only NumPy, Pillow and Keras are used, so this runs on TensorFlow, JAX and
PyTorch alike.

The preprocessing itself is ``keras_t2t.data.images`` (the package's one image
vocabulary). Command line (``keras_t2t.cli.evaluate``)::

    keras-t2t-evaluate --model model.keras --data-dir /data/val \
        [--image-size 224] [--crop-pct 0.9] [--batch-size 32] [--limit N] \
        [--output summary.json]

(``python -m keras_t2t.evaluation`` is the same command.)

Unreadable image files stop the evaluation with a ``ValueError`` naming the
file (no silent skipping: a partial accuracy would not be comparable).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
import warnings

from keras_t2t.cli.commands import run_as_main  # noqa: E402

# python -m keras_t2t.evaluation: the command of keras_t2t.cli.evaluate, parsed before Keras is imported.
run_as_main(__name__, "evaluate")

import keras
import numpy as np

from keras_t2t.data.images import DEFAULT_CROP_PCT, as_hw, check_crop_pct, list_image_folder, load_image
from keras_t2t.data.imagenet import imagenet_wnids

__all__ = ["evaluate_folder"]

# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
def model_input_hw(model):
    """Static (h, w) of the model's image input, or None."""
    try:
        shape = tuple(model.inputs[0].shape)
    except Exception:
        return None
    if len(shape) != 4:
        return None
    h, w = shape[1], shape[2]
    if h is None or w is None:
        return None
    return int(h), int(w)


def _predict(model, x):

    if hasattr(model, "predict_on_batch"):
        y = model.predict_on_batch(x)
    else:
        y = model(x, training=False)
    if isinstance(y, dict):
        if len(y) != 1:
            raise ValueError(f"the model returns {len(y)} outputs; expected one score tensor")
        y = next(iter(y.values()))
    if isinstance(y, (list, tuple)):
        if len(y) != 1:
            raise ValueError(f"the model returns {len(y)} outputs; expected one score tensor")
        y = y[0]
    if not isinstance(y, np.ndarray):
        y = np.asarray(keras.ops.convert_to_numpy(y))
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must map a batch of images {x.shape} to scores of shape "
            f"(batch, classes); got {y.shape}"
        )
    return y


def _resolve_class_index(class_index, class_names):
    """Map folder classes to model output indices."""
    if class_index is None:
        return np.arange(len(class_names))
    if isinstance(class_index, str):
        if class_index != "imagenet":
            raise ValueError(f"class_index must be None, 'imagenet' or a mapping, got {class_index!r}")
        wnids = {w: i for i, w in enumerate(imagenet_wnids())}
        missing = [c for c in class_names if c not in wnids]
        if missing:
            raise ValueError(
                "class_index='imagenet' needs class folders named by ImageNet-1k "
                f"WordNet ids; not ImageNet-1k ids: {missing[:5]}"
            )
        return np.asarray([wnids[c] for c in class_names])
    try:
        return np.asarray([int(class_index[c]) for c in class_names])
    except KeyError as e:
        raise ValueError(f"class_index has no entry for class folder {e.args[0]!r}") from None


def evaluate_folder(
    model,
    root,
    image_size=224,
    crop_pct=DEFAULT_CROP_PCT,
    batch_size=32,
    top_k=(1, 5),
    progress=True,
    limit=None,
    class_index=None,
    num_workers=None,
):
    """Top-k accuracy of ``model`` on an ImageNet-style folder.

    Args:
        model: a Keras model (or callable) mapping float images
            ``(B, H, W, 3)`` to scores ``(B, classes)`` (logits or
            probabilities).
        root: folder ``root/<class>/<images>`` (see :func:`list_image_folder`).
        image_size, crop_pct: preprocessing (see :func:`eval_transform`).
        batch_size: images per model call. The last batch is zero-padded to
            ``batch_size`` so the model always sees one shape (no retracing).
        top_k: the k's to report; a k larger than the number of model
            classes is clipped to it (e.g. top5 of a 3-class model is top3).
        progress: show a ``keras.utils.Progbar``.
        limit: evaluate only ``limit`` images, an evenly spaced deterministic
            subset of the sorted listing (so every class is sampled).
        class_index: how folder classes map to model outputs. ``None``: the
            i-th sorted class folder is output i (torchvision ImageFolder).
            ``"imagenet"``: folders are ImageNet-1k WordNet ids mapped to
            their standard index (for a subset of ImageNet classes). A dict
            ``{class_name: output_index}`` for anything else.
        num_workers: threads decoding images (default ``min(4, cpu_count)``).

    Returns:
        dict with ``top1``, ``top5`` (one ``top{k}`` per requested k, as
        fractions in [0, 1]), ``num_images``, ``num_classes`` (class folders),
        ``seconds`` (wall time, decoding included), ``images_per_second``,
        ``image_size`` ([h, w]) and ``crop_pct``.

    Raises:
        ValueError: bad folder, unreadable image (naming the file), or a
            model whose outputs do not fit the folder.
    """

    image_hw = as_hw(image_size)
    crop_pct = check_crop_pct(crop_pct)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(top_k, (int, np.integer)):
        top_k = (top_k,)
    top_k = tuple(int(k) for k in top_k)
    if not top_k or any(k <= 0 for k in top_k):
        raise ValueError(f"top_k must hold positive integers, got {top_k!r}")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0
    ):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    model_hw = model_input_hw(model)
    if model_hw is not None and model_hw != image_hw:
        raise ValueError(
            f"the model expects {model_hw[0]}x{model_hw[1]} images but image_size is "
            f"{image_hw[0]}x{image_hw[1]}"
        )

    paths, labels, class_names = list_image_folder(root)
    targets = _resolve_class_index(class_index, class_names)
    labels = targets[np.asarray(labels, dtype=np.int64)]
    if limit is not None and limit < len(paths):
        idx = np.unique(np.round(np.linspace(0, len(paths) - 1, int(limit))).astype(np.int64))
        paths = [paths[i] for i in idx]
        labels = labels[idx]
    n = len(paths)
    batch_size = int(batch_size)

    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    num_workers = max(1, int(num_workers))

    correct = {k: 0 for k in top_k}
    progbar = (
        keras.utils.Progbar(n, unit_name="image", stateful_metrics=[f"top{k}" for k in top_k])
        if progress
        else None
    )
    num_model_classes = None
    seen = 0
    start = time.perf_counter()

    def load(p):
        return load_image(p, image_hw, crop_pct)

    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
        # Decode one batch ahead while the model runs on the current one.
        pending = [pool.submit(load, paths[i]) for i in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            futures = pending
            pending = (
                [pool.submit(load, paths[i]) for i in batches[b + 1]]
                if b + 1 < len(batches)
                else []
            )
            try:
                images = [f.result() for f in futures]
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
            m = len(images)
            x = np.zeros((batch_size, image_hw[0], image_hw[1], 3), np.float32)
            x[:m] = np.stack(images)
            scores = _predict(model, x)[:m]
            if num_model_classes is None:
                num_model_classes = scores.shape[1]
                if int(labels.max()) >= num_model_classes:
                    raise ValueError(
                        f"the folder has {len(class_names)} classes (label up to "
                        f"{int(labels.max())}) but the model outputs only "
                        f"{num_model_classes} scores"
                    )
                if (
                    class_index is None
                    and len(class_names) < num_model_classes == 1000
                    and _all_imagenet_wnids(class_names)
                ):
                    warnings.warn(
                        f"the folder holds {len(class_names)} ImageNet class folders, "
                        "numbered 0..K-1 in sorted order; pass class_index='imagenet' "
                        "(CLI: --class-index imagenet) to map them to the model's "
                        "1000 ImageNet outputs",
                        stacklevel=2,
                    )
            y = labels[batch.start : batch.stop]
            kmax = min(max(top_k), num_model_classes)
            # Stable sort of negated scores: ties go to the lower index;
            # NaN scores sort last.
            order = np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :kmax]
            hits = order == y[:, None]
            for k in top_k:
                correct[k] += int(hits[:, : min(k, num_model_classes)].any(axis=1).sum())
            seen += m
            if progbar is not None:
                progbar.update(seen, values=[(f"top{k}", correct[k] / seen) for k in top_k])

    seconds = time.perf_counter() - start
    result = {f"top{k}": (correct[k] / n if n else 0.0) for k in top_k}
    result.update(
        num_images=n,
        num_classes=len(class_names),
        seconds=seconds,
        images_per_second=(n / seconds if seconds > 0 else float("inf")),
        image_size=list(image_hw),
        crop_pct=crop_pct,
    )
    return result


def _all_imagenet_wnids(names):
    try:
        known = set(imagenet_wnids())
    except Exception:
        return False
    return all(n in known for n in names)

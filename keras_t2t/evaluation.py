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

Command line::

    python -m keras_t2t.evaluation --model model.keras --data-dir /data/val \
        [--image-size 224] [--crop-pct 0.9] [--batch-size 32] [--limit N] \
        [--output summary.json]

Unreadable image files stop the evaluation with a ``ValueError`` naming the
file (no silent skipping: a partial accuracy would not be comparable).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time
import warnings

import numpy as np
from PIL import Image

from keras_t2t.cli_args import positive_int
from keras_t2t.io_utils import write_json_atomic

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DEFAULT_CROP_PCT",
    "eval_transform",
    "list_image_folder",
    "load_image",
    "evaluate_folder",
    "main",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.9

#: File extensions treated as images (compared case-insensitively). This is
#: torchvision's ``IMG_EXTENSIONS`` set, so a folder lists the same files.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


# --------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------
def _as_hw(image_size):
    """``224`` or ``(h, w)`` -> ``(h, w)`` of positive ints."""
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(
                f"image_size must be an int or a (height, width) pair, got {image_size!r}"
            )
        h, w = image_size
    else:
        h = w = image_size
    out = []
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"image_size must hold positive integers, got {image_size!r}")
        out.append(int(v))
    return tuple(out)


def _check_crop_pct(crop_pct):
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.floating)):
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    crop_pct = float(crop_pct)
    if not (0.0 < crop_pct <= 1.0) or math.isnan(crop_pct):
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    return crop_pct


def _resize_size(width, height, image_hw, crop_pct):
    """Output (width, height) of the resize step for a ``width x height`` image."""
    crop_h, crop_w = image_hw
    if crop_h == crop_w:
        # torchvision Resize(int): shorter side -> size, longer side truncated.
        size = int(math.floor(crop_h / crop_pct))
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size
    # Non-square target (timm's ResizeKeepRatio, as timm's eval transform uses
    # for non-square sizes): scale, aspect kept, so that the image covers
    # (floor(h / crop_pct), floor(w / crop_pct)).
    scale_h = int(math.floor(crop_h / crop_pct))
    scale_w = int(math.floor(crop_w / crop_pct))
    ratio = min(height / scale_h, width / scale_w)
    return int(round(width / ratio)), int(round(height / ratio))


def eval_transform(image, image_size=224, crop_pct=DEFAULT_CROP_PCT):
    """Evaluation preprocessing of one PIL image.

    Args:
        image: a ``PIL.Image.Image`` (any mode; converted to RGB).
        image_size: output size, an int or a ``(height, width)`` pair.
        crop_pct: the center-crop fraction; the shorter side is first resized
            to ``int(image_size / crop_pct)``.

    Returns:
        A ``float32`` NumPy array of shape ``(height, width, 3)``, normalised
        with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"eval_transform expects a PIL.Image.Image, got {type(image).__name__}")
    crop_h, crop_w = _as_hw(image_size)
    crop_pct = _check_crop_pct(crop_pct)
    img = image.convert("RGB")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot preprocess an empty image of size {img.size}")
    new_w, new_h = _resize_size(width, height, (crop_h, crop_w), crop_pct)
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    # torchvision CenterCrop (the resized image is never smaller than the crop
    # because crop_pct <= 1).
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    img = img.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return x.astype(np.float32, copy=False)


def load_image(path, image_size=224, crop_pct=DEFAULT_CROP_PCT):
    """Open an image file and apply :func:`eval_transform`.

    Raises:
        ValueError: naming the file, if it cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            with Image.open(f) as img:
                img.load()
                return eval_transform(img, image_size=image_size, crop_pct=crop_pct)
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot read image file {path!s}: {e}") from e


# --------------------------------------------------------------------------
# Folder listing
# --------------------------------------------------------------------------
def _is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root):
    """List an ImageNet-style folder ``root/<class>/<image files>``.

    Classes are the sub-folders of ``root`` sorted by name (as torchvision's
    ``ImageFolder``), numbered 0..K-1. Each class folder is searched
    recursively for files whose extension (any case) is in
    :data:`IMAGE_EXTENSIONS`. Hidden entries (names starting with ``.``) are
    ignored.

    Returns:
        ``(paths, labels, class_names)``: lists of file paths and int labels
        (sorted by class, then path) and the sorted class names.

    Raises:
        ValueError: if ``root`` is missing or not a folder, has no class
            sub-folders, or a class folder holds no image (the folder is
            named in the message).
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise ValueError(f"Image folder {root!r} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a folder (expected ROOT/<class>/<images>)")
    with os.scandir(root) as it:
        class_names = sorted(
            e.name for e in it if e.is_dir() and not e.name.startswith(".")
        )
    if not class_names:
        raise ValueError(
            f"Image folder {root!r} has no class sub-folders "
            "(expected ROOT/<class>/<images>, e.g. val/n01440764/*.JPEG)"
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(
                os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f)
            )
        if not found:
            raise ValueError(
                f"Class folder {class_dir!r} holds no image file "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}, any case)"
            )
        found.sort()
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, labels, class_names


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
def _model_input_hw(model):
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
    import keras

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
        from keras_t2t.imagenet import imagenet_wnids

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
    import keras

    image_hw = _as_hw(image_size)
    crop_pct = _check_crop_pct(crop_pct)
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

    model_hw = _model_input_hw(model)
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
        from keras_t2t.imagenet import imagenet_wnids

        known = set(imagenet_wnids())
    except Exception:
        return False
    return all(n in known for n in names)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _parse_image_size(text):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or HEIGHT,WIDTH, got {text!r}"
        ) from None
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


def _crop_pct(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not (0.0 < v <= 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def _build_parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_t2t.evaluation",
        description=(
            "Top-1/top-5 accuracy of a Keras image classifier on an ImageNet-style "
            "folder DATA_DIR/<class>/<images>, with the T2T-ViT evaluation "
            "preprocessing (bicubic resize to image_size/crop_pct, center crop, "
            "ImageNet mean/std)."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a saved Keras model (.keras) mapping images to class scores")
    src.add_argument(
        "--variant",
        help="a keras_t2t variant name (e.g. t2t_vit_14); needs --weights",
    )
    p.add_argument("--weights", help="weights for --variant (checkpoint or .weights.h5)")
    p.add_argument("--data-dir", required=True, help="folder DATA_DIR/<class>/<images>")
    p.add_argument(
        "--image-size",
        type=_parse_image_size,
        default=None,
        help="input size, N or H,W (default: the model's input size, else 224)",
    )
    p.add_argument("--crop-pct", type=_crop_pct, default=DEFAULT_CROP_PCT, help="default 0.9")
    p.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only N images (evenly spaced subset)")
    p.add_argument(
        "--class-index",
        choices=["sorted", "imagenet"],
        default="sorted",
        help="'sorted' (default): the i-th sorted class folder is output i; "
        "'imagenet': class folders are ImageNet-1k WordNet ids (for a subset of ImageNet)",
    )
    p.add_argument("--workers", type=positive_int, default=None, help="image decoding threads")
    p.add_argument("--output", help="write the JSON summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p




def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    parser = _build_parser()
    args = parser.parse_args(argv)

    if args.variant is not None and not args.weights:
        parser.error("--variant needs --weights PATH")
    if args.model is not None and args.weights:
        parser.error("--weights goes with --variant, not --model")
    if args.model is not None and not os.path.isfile(args.model):
        parser.error(f"--model: no such file {args.model!r}")
    if args.weights and not os.path.exists(args.weights):
        parser.error(f"--weights: no such file {args.weights!r}")
    if args.output:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            parser.error(f"--output: folder {out_dir!r} does not exist")
        if os.path.isdir(args.output):
            parser.error(f"--output: {args.output!r} is a folder")
    try:
        list_image_folder(args.data_dir)  # fail fast, before loading the model
    except ValueError as e:
        parser.error(f"--data-dir: {e}")

    import keras

    try:
        if args.model is not None:
            model = keras.saving.load_model(args.model, compile=False)
            model_desc = os.path.abspath(args.model)
        else:
            import keras_t2t

            model = keras_t2t.create_model(
                args.variant, weights=args.weights, classifier_activation=None
            )
            model_desc = f"{args.variant} ({os.path.abspath(args.weights)})"
    except Exception as e:  # noqa: BLE001 - report any loading failure plainly
        parser.error(f"cannot load the model: {type(e).__name__}: {e}")

    image_size = args.image_size
    if image_size is None:
        image_size = _model_input_hw(model) or 224
    try:
        result = evaluate_folder(
            model,
            args.data_dir,
            image_size=image_size,
            crop_pct=args.crop_pct,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            limit=args.limit,
            class_index=None if args.class_index == "sorted" else "imagenet",
            num_workers=args.workers,
        )
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1

    summary = dict(result)
    summary.update(
        model=model_desc,
        data_dir=os.path.abspath(args.data_dir),
        batch_size=args.batch_size,
        limit=args.limit,
        class_index=args.class_index,
        backend=keras.backend.backend(),
        keras_version=keras.__version__,
    )
    print(
        f"top1 {100 * result['top1']:.3f}%  top5 {100 * result['top5']:.3f}%  "
        f"on {result['num_images']} images, {result['num_classes']} classes  "
        f"({result['images_per_second']:.1f} images/s)"
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    if args.output:
        write_json_atomic(args.output, summary)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

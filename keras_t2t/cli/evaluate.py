"""``keras-t2t-evaluate`` (also ``python -m keras_t2t.evaluation``): top-1/top-5 on an image folder.

Bad arguments (an unwritable ``--output`` folder included, checked before any work)
or a model that does not load end the command with one ``error:`` line and exit
code 2; 1 is an evaluation failure.
"""

import json
import os
import sys

import keras

from keras_t2t.cli.args import (
    IMAGE_SIZE_HELP,
    OneLineParser,
    UsageError,
    add_dtype_argument,
    add_model_source,
    fraction,
    image_size,
    positive_int,
)
from keras_t2t.data.images import DEFAULT_CROP_PCT, list_image_folder
from keras_t2t.evaluation import evaluate_folder
from keras_t2t.hub.presets import is_preset_name
from keras_t2t.io_utils import check_output_folder, write_json_atomic
from keras_t2t.precision import apply_dtype
from keras_t2t.resolve import resolve_model
from keras_t2t.weights.pretrained import is_weights_tag


def _build_parser():
    p = OneLineParser(
        prog="keras-t2t-evaluate",
        description=(
            "Top-1/top-5 accuracy of a Keras image classifier on an ImageNet-style "
            "folder DATA_DIR/<class>/<images>, with the T2T-ViT evaluation "
            "preprocessing (bicubic resize to image_size/crop_pct, center crop, "
            "ImageNet mean/std)."
        ),
    )
    add_model_source(p, "the model: a .keras file (a training run's model.keras is fed as the run evaluated it), a "
                        "preset name (t2t_vit_7_imagenet, ...) or folder, or an authors' checkpoint",
                     "weights for --variant: a tag (imagenet, ...; keras-t2t-weights list) or a file "
                     "(checkpoint or .weights.h5)")
    p.add_argument("--data-dir", required=True, help="folder DATA_DIR/<class>/<images>")
    p.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        help=f"input size, {IMAGE_SIZE_HELP} (default: the model's input size, else 224)",
    )
    p.add_argument("--crop-pct", type=fraction, default=None,
                   help="center-crop fraction (default: the model's preset or training run's, else "
                        f"{DEFAULT_CROP_PCT}); the output says which was used")
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
    add_dtype_argument(p)
    p.add_argument("--output", help="write the JSON summary to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    parser = _build_parser()
    try:
        args, code = parser.parse(argv)
        if args is None:
            return code
        model, model_desc = _checked_model(parser, args)
    except UsageError as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return _evaluate(parser, args, model, model_desc)


def _checked_model(parser, args):
    """Every argument checked, then the model loaded: (model, its description); UsageError otherwise."""
    if args.variant is not None and not args.weights:
        parser.error("--variant needs --weights PATH")
    if args.model is not None and args.weights:
        parser.error("--weights goes with --variant, not --model")
    if args.model is not None and not os.path.exists(args.model) and not is_preset_name(args.model):
        parser.error(f"--model: no such file or folder {args.model!r}, nor a preset name (keras_t2t.list_presets())")
    if args.weights and not os.path.exists(args.weights) and not is_weights_tag(args.weights):
        parser.error(f"--weights: no such file {args.weights!r}, nor a weights tag (imagenet, ...)")
    if args.output:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        try:
            check_output_folder(out_dir, "--output: folder")
        except ValueError as error:
            parser.error(str(error))
        if not os.path.isdir(out_dir):
            parser.error(f"--output: folder {out_dir!r} does not exist")
        if os.path.isdir(args.output):
            parser.error(f"--output: {args.output!r} is a folder")
    try:
        list_image_folder(args.data_dir)  # fail fast, before loading the model
    except ValueError as e:
        parser.error(f"--data-dir: {e}")

    try:
        if args.model is not None:
            resolved = resolve_model(args.model)
        else:
            resolved = resolve_model(args.variant, weights=args.weights, classifier_activation=None)
    except Exception as e:  # noqa: BLE001 - report any loading failure plainly
        parser.error(f"cannot load the model: {type(e).__name__}: {e}")
    model, model_desc = resolved.model, resolved.description
    args.preprocessing = resolved.preprocessing.with_overrides(args.image_size, args.crop_pct)
    print(args.preprocessing.describe(), flush=True)
    model, args.dtype, args.dtype_reason = apply_dtype(model, args.dtype)
    print(f"dtype {args.dtype} ({args.dtype_reason})", flush=True)
    return model, model_desc


def _evaluate(parser, args, model, model_desc):
    preprocessing = args.preprocessing
    try:
        result = evaluate_folder(
            model,
            args.data_dir,
            image_size=preprocessing.image_size,
            crop_pct=preprocessing.crop_pct,
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
        dtype=args.dtype,
        dtype_reason=args.dtype_reason,
        image_size=list(preprocessing.image_size),
        crop_pct=preprocessing.crop_pct,
        preprocessing_source=preprocessing.source,
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

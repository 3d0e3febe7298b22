"""``keras-t2t-evaluate`` (also ``python -m keras_t2t.evaluation``): top-1/top-5 on an image folder.

Bad arguments (an unwritable ``--output`` folder included, checked before any work)
or a model that does not load end the command with one ``error:`` line and exit
code 2; 1 is an evaluation failure. The parser and the entry point are
``keras_t2t.cli.commands`` (no Keras): ``main`` parses, then ``run`` works.
"""

import json
import os
import sys

from keras_t2t.cli.commands import run_as_main  # noqa: E402

run_as_main(__name__, "evaluate")  # python -m keras_t2t.cli.evaluate: parsed before Keras is imported

import keras  # noqa: E402

from keras_t2t.cli.args import UsageError  # noqa: E402
from keras_t2t.cli.commands import EVALUATE, one_line  # noqa: E402
from keras_t2t.cli.commands import evaluate as main  # noqa: E402 - the entry point: parses, then run()
from keras_t2t.cli.commands import evaluate_parser as build_parser  # noqa: E402
from keras_t2t.data.images import list_image_folder  # noqa: E402
from keras_t2t.evaluation import evaluate_folder  # noqa: E402
from keras_t2t.hub.presets import is_preset_name  # noqa: E402
from keras_t2t.io_utils import check_output_folder, write_json_atomic  # noqa: E402
from keras_t2t.precision import apply_dtype  # noqa: E402
from keras_t2t.resolve import resolve_model  # noqa: E402
from keras_t2t.weights.pretrained import is_weights_tag  # noqa: E402

__all__ = ["build_parser", "main", "run"]


def run(args):
    """Runs the command on parsed ``args`` (``commands.evaluate_parser``); returns the exit status."""
    try:
        model, model_desc = _checked_model(args)
    except UsageError as error:
        print(f"{EVALUATE}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return _evaluate(args, model, model_desc)


def _checked_model(args):
    """Every argument checked, then the model loaded: (model, its description); UsageError otherwise."""
    if args.variant is not None and not args.weights:
        raise UsageError("--variant needs --weights PATH")
    if args.model is not None and args.weights:
        raise UsageError("--weights goes with --variant, not --model")
    if args.model is not None and not os.path.exists(args.model) and not is_preset_name(args.model):
        raise UsageError(
            f"--model: no such file or folder {args.model!r}, nor a preset name (keras_t2t.list_presets())")
    if args.weights and not os.path.exists(args.weights) and not is_weights_tag(args.weights):
        raise UsageError(f"--weights: no such file {args.weights!r}, nor a weights tag (imagenet, ...)")
    if args.output:
        out_dir = os.path.dirname(os.path.abspath(args.output))
        try:
            check_output_folder(out_dir, "--output: folder")
        except ValueError as error:
            raise UsageError(str(error)) from None
        if not os.path.isdir(out_dir):
            raise UsageError(f"--output: folder {out_dir!r} does not exist")
        if os.path.isdir(args.output):
            raise UsageError(f"--output: {args.output!r} is a folder")
    try:
        list_image_folder(args.data_dir)  # fail fast, before loading the model
    except ValueError as e:
        raise UsageError(f"--data-dir: {e}") from None

    try:
        if args.model is not None:
            resolved = resolve_model(args.model)
        else:
            resolved = resolve_model(args.variant, weights=args.weights, classifier_activation=None)
    except Exception as e:  # noqa: BLE001 - report any loading failure plainly
        raise UsageError(f"cannot load the model: {type(e).__name__}: {e}") from None
    model, model_desc = resolved.model, resolved.description
    args.preprocessing = resolved.preprocessing.with_overrides(args.image_size, args.crop_pct)
    print(args.preprocessing.describe(), flush=True)
    model, args.dtype, args.dtype_reason = apply_dtype(model, args.dtype)
    print(f"dtype {args.dtype} ({args.dtype_reason})", flush=True)
    return model, model_desc


def _evaluate(args, model, model_desc):
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
        print(f"{EVALUATE}: error: {e}", file=sys.stderr)
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


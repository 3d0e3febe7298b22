"""The export command line: ``python tflite/convert.py``, ``python -m keras_t2t.export``, ``keras-t2t-export``.

The parser imports no Keras or TensorFlow, so ``--help`` and bad arguments answer at once; the export
itself (``pipeline.export_model``) is imported once the arguments are parsed, after
``keras_t2t.backends.quiet_logs``.
"""

import argparse
import math
import sys

from keras_t2t.backends import quiet_logs
from keras_t2t.cli.args import (
    IMAGE_SIZE_HELP,
    add_model_source,
    add_verbose_argument,
    fraction,
    image_size,
    positive_int,
)
from keras_t2t.export.errors import ExportError

# The export's vocabulary for the parser, without importing what defines it (Keras):
# formats.FORMATS, export_model's defaults and verify.DEFAULT_DECISIVE_MARGIN.
# tests/cli/test_quiet_commands.py checks that each equals its source.
FORMATS = (
    "saved_model",
    "tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_int8",
    "tflite_float32_pixels", "tflite_float16_pixels", "tflite_dynamic_int8_pixels", "tflite_int8_pixels",
    "onnx", "onnx_dynamic_int8",
    "openvino", "openvino_int8",
)
DEFAULT_INT8_AGREEMENT = 0.95
DEFAULT_NUM_SAMPLES = 16
DEFAULT_NUM_CALIBRATION = 100
DEFAULT_LATENCY_RUNS = 10
DEFAULT_DECISIVE_MARGIN = 0.1


def agreement(text):
    """A top-1 agreement: a fraction like 0.95 or a percentage like 95% (or 95), or an argparse error."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction like 0.95 or a percentage like 95%, got {text!r}"
        ) from None
    if text.endswith("%") or value > 1.0:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1] (or 0%..100%), got {text!r}")
    return value


def logit_margin(text):
    """A number of logits >= 0 (e.g. 0.1), or an argparse error naming the text."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of logits >= 0 such as 0.1, got {text!r}")
    return value


def build_parser(prog="keras-t2t-export"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export a T2T-ViT classifier to SavedModel, TFLite (float32, float16, dynamic-range int8, "
            "full-integer int8), ONNX and OpenVINO (float32, int8), then run every artifact in its own runtime and "
            "compare it with the "
            "Keras model. Writes the artifacts, labels.txt and report.json into --output-dir, replacing an earlier "
            "export there as a whole. Without calibration images every format that needs none is made. Exit code "
            "0: all verified; 1: an artifact outside its tolerance (it is not kept, and an earlier export in "
            "--output-dir is left as it was); 2: bad input (nothing written)."
        ),
    )
    add_model_source(parser, "a '.keras' model file (saved on any backend; a training run's model.keras brings "
                     "the run's preprocessing), a preset name (t2t_vit_7_imagenet, ...), a preset folder, or an "
                     "authors' checkpoint ('.pth', '.pth.tar')",
                     "with --variant: a weights tag (imagenet, ...), a '.weights.h5' file or an authors' '.pth.tar' "
                     "checkpoint")
    parser.add_argument(
        "--image-size", type=image_size, help=f"with --variant: {IMAGE_SIZE_HELP} (default: the weights')"
    )
    parser.add_argument(
        "--classes", type=positive_int, help="with --variant: class count (default: the weights' head)"
    )
    parser.add_argument("--output-dir", required=True, help="where the artifacts, labels.txt and report.json go")
    parser.add_argument(
        "--formats",
        default="all",
        help=f"comma-separated, from: {', '.join(FORMATS)}; or 'all' (default: every format; without "
        "--representative-dir/--representative-tfds, every one that needs no calibration)",
    )
    parser.add_argument(
        "--representative-dir",
        help="image folder (searched recursively) to calibrate the int8 models (tflite_int8, openvino_int8)",
    )
    parser.add_argument("--representative-tfds", help="or a TFDS dataset NAME[:SPLIT] to calibrate the int8 models")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir for --representative-tfds")
    parser.add_argument("--tfds-download", action="store_true", help="let TFDS download the dataset if missing")
    parser.add_argument(
        "--num-calibration", type=positive_int, default=DEFAULT_NUM_CALIBRATION,
        help=f"calibration images, evenly spaced over the set (default {DEFAULT_NUM_CALIBRATION})",
    )
    parser.add_argument(
        "--sample-dir",
        help="image folder to verify on (default: crops of the photographs bundled with scikit-learn)",
    )
    parser.add_argument(
        "--num-samples", type=positive_int, default=DEFAULT_NUM_SAMPLES,
        help=f"images to verify on (default {DEFAULT_NUM_SAMPLES})",
    )
    parser.add_argument(
        "--crop-pct", type=fraction, default=None,
        help="eval resize/crop of the sample and calibration images (default: the model's preprocessing: its "
        "preset's or training run's, the authors' for a release, else 0.9; report.json records which)",
    )
    parser.add_argument(
        "--int8-agreement", type=agreement, default=DEFAULT_INT8_AGREEMENT,
        help="top-1 agreement the int8 models must reach, e.g. 0.95 or 95%% (default 95%%)",
    )
    parser.add_argument(
        "--decisive-margin", type=logit_margin, default=DEFAULT_DECISIVE_MARGIN,
        help="top-1 is compared up to near-ties: the artifact's top class agrees when the Keras model scores it "
        f"within this many logits of its own top class (default {DEFAULT_DECISIVE_MARGIN:g})",
    )
    parser.add_argument("--labels", help="class names: a UTF-8 file, one per line, or \"imagenet\" (default: the names the training run recorded, ImageNet's for an ImageNet release, else class_<i>, said on the output)")
    parser.add_argument(
        "--no-uint8-signature", dest="uint8_signature", action="store_false",
        help="leave out the SavedModel signature that takes uint8 pixels",
    )
    parser.add_argument(
        "--latency-runs", type=positive_int, default=DEFAULT_LATENCY_RUNS,
        help=f"timed runs per artifact at batch 1, median reported (default {DEFAULT_LATENCY_RUNS})",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an export already in --output-dir (as a whole, and only once the new one is verified)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    add_verbose_argument(parser)
    return parser


def main(argv=None, prog="keras-t2t-export"):
    """Command-line entry point; returns the exit status (0 verified, 1 verification failed, 2 bad input)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.variant is not None and not args.weights:
        parser.error("--variant needs --weights TAG or PATH")
    if args.model is not None and (args.weights or args.image_size or args.classes):
        parser.error("--weights, --image-size and --classes go with --variant, not --model")
    options = vars(args)
    quiet = options.pop("quiet")
    quiet_logs(options.pop("verbose"))
    from keras_t2t.export.pipeline import export_model  # Keras and TensorFlow: once the arguments are parsed

    try:
        report = export_model(options.pop("model"), options.pop("output_dir"), **options, verbose=not quiet)
    except ExportError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1

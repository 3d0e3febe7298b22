"""The console scripts' entry points and their parsers, none of which imports Keras.

Each entry point parses its command line first, so ``--help`` and a bad argument
answer at once. Only then does it quiet TensorFlow's, absl's and CUDA's own log
lines (``keras_t2t.backends.quiet_logs``; ``--verbose`` keeps them), import the
command's module (``convert``, ``evaluate``, ``visualize``, ``weights``, which
import Keras) and call its ``run(args)``. Each command module's ``main(argv)`` is
its entry point here; ``keras-t2t-export``'s is ``keras_t2t.export.cli``.
"""

import argparse
import ast
import importlib
import importlib.util
import sys

from keras_t2t.cli.args import (
    DEFAULT_CROP_PCT,
    IMAGE_SIZE_HELP,
    OneLineParser,
    UsageError,
    add_dtype_argument,
    add_model_source,
    add_verbose_argument,
    fraction,
    image_size,
    model_tag,
    positive_float,
    positive_int,
    quiet_logs,
)
from keras_t2t.models.presets import ALL_VARIANTS

__all__ = [
    "convert", "evaluate", "visualize", "weights",
    "convert_parser", "evaluate_parser", "visualize_parser", "weights_parser",
]

#: ``keras-t2t-convert --weights-entry``: which weights of an authors' checkpoint.
WEIGHTS_ENTRIES = ("auto", "state_dict_ema", "state_dict", "model", "net", "bare")
#: ``keras-t2t-visualize``: the weights word for random weights, and the file of ``--compare``.
RANDOM = "none"
COMPARE_FILE = "compare_features.png"


def one_line(error):
    """An error's message on one line (or its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def _parsed(parser, argv, prefix="error: ", hint=" (see --help)"):
    """``(arguments, None)``, TensorFlow's logs quieted unless ``--verbose``; or ``(None, exit code)`` when
    ``--help`` answered (0) or an argument is bad (2, one line on stderr: ``prefix``, the message, ``hint``)."""
    try:
        args, code = parser.parse(argv)
    except UsageError as error:
        print(f"{prefix}{one_line(error)}{hint}", file=sys.stderr)
        return None, 2
    if args is not None:
        quiet_logs(args.verbose)
    return args, code


def _command(parser, module, argv):
    """Parses ``argv`` with ``parser()`` (no Keras), then imports ``keras_t2t.cli.<module>`` and runs it."""
    args, code = _parsed(parser(), argv)
    if args is None:
        return code
    return importlib.import_module(f"keras_t2t.cli.{module}").run(args)


def run_as_main(module_name, command):
    """``python -m <module>``: runs the ``command`` entry point of this module (``"convert"``, ``"evaluate"``,
    ``"visualize"``, ``"weights"``) and exits, when ``module_name`` is ``"__main__"``. A command module calls
    it before it imports Keras, so that ``--help`` and bad arguments answer at once."""
    if module_name == "__main__":
        sys.exit({"convert": convert, "evaluate": evaluate, "visualize": visualize, "weights": weights}[command]())


# --------------------------------------------------------------------------
# keras-t2t-convert
# --------------------------------------------------------------------------
def convert_parser():
    """The argument parser of ``keras-t2t-convert``."""
    parser = OneLineParser(
        prog="keras-t2t-convert",
        description="Convert an authors' T2T-ViT checkpoint (.pth.tar) to a verified .keras or .weights.h5 file.",
    )
    parser.add_argument("checkpoint", nargs="?", help="the authors' checkpoint (*.pth.tar, *.pth)")
    parser.add_argument(
        "--model", metavar="HANDLE",
        help="what to convert, as every command's --model names it: an authors' checkpoint (as CHECKPOINT), a "
        "release preset name (t2t_vit_14_imagenet: its checkpoint, fetched once and cached) or a registry name "
        "(as --variant, with CHECKPOINT)",
    )
    parser.add_argument(
        "--output", "-o", required=True, help="output file; its suffix (.keras or .weights.h5) picks the format"
    )
    parser.add_argument(
        "--variant", choices=list(ALL_VARIANTS), metavar="NAME",
        help=f"the variant (default: detected from the checkpoint); one of {', '.join(ALL_VARIANTS)}",
    )
    parser.add_argument(
        "--weights-entry", choices=WEIGHTS_ENTRIES, default="auto",
        help="which weights of the checkpoint (default auto: the EMA weights when present; 'net' holds "
        "the authors' CIFAR fine-tunes)",
    )
    parser.add_argument(
        "--image-size", type=image_size, metavar="N|HxW",
        help=f"input size of the model, {IMAGE_SIZE_HELP} (default: the checkpoint's own resolution)",
    )
    parser.add_argument(
        "--classes", type=positive_int, metavar="N",
        help="classes of the head (default: the checkpoint's); another number drops the checkpoint's head",
    )
    parser.add_argument("--no-top", action="store_true", help="leave out the classification head")
    parser.add_argument("--qk-scale", type=positive_float, metavar="FLOAT", help="attention scale override")
    parser.add_argument(
        "--classifier-activation", default="softmax", metavar="NAME",
        help="activation of the head's output (default softmax; 'none' for logits)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--allow-nonfinite", action="store_true",
        help="convert a checkpoint whose weights hold NaN or Inf as it is (refused by default)",
    )
    add_verbose_argument(parser)
    return parser


def convert(argv=None):
    """``keras-t2t-convert`` (``keras_t2t.cli.convert``); returns the exit code."""
    return _command(convert_parser, "convert", argv)


# --------------------------------------------------------------------------
# keras-t2t-evaluate
# --------------------------------------------------------------------------
EVALUATE = "keras-t2t-evaluate"


def evaluate_parser():
    """The argument parser of ``keras-t2t-evaluate``."""
    p = OneLineParser(
        prog=EVALUATE,
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
    add_verbose_argument(p)
    return p


def evaluate(argv=None):
    """``keras-t2t-evaluate`` (``keras_t2t.cli.evaluate``); returns the exit code."""
    args, code = _parsed(evaluate_parser(), argv, prefix=f"{EVALUATE}: error: ", hint="")
    if args is None:
        return code
    from keras_t2t.cli import evaluate as command

    return command.run(args)


# --------------------------------------------------------------------------
# keras-t2t-visualize
# --------------------------------------------------------------------------
def _docstring(module):
    """A module's docstring, read from its source without importing it (``keras_t2t.visualize`` imports Keras)."""
    with open(importlib.util.find_spec(module).origin, encoding="utf-8") as handle:
        return ast.get_docstring(ast.parse(handle.read()), clean=False)


def visualize_parser():
    """The argument parser of ``keras-t2t-visualize``."""
    parser = OneLineParser(
        prog="keras-t2t-visualize",
        description="Token features on the image grid and class-token attention of a T2T-ViT or ViT, the "
                    "feature maps of a keras.applications ResNet, and the three side by side (--compare) "
                    "(PNG pictures plus the arrays as .npz).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_docstring("keras_t2t.visualize").split("\n\n", 1)[1],
    )
    parser.add_argument("--model", default=None,
                        help="a saved .keras file, a model name of the training command (t2t_vit_mini, "
                             "t2t_vit_14, vit_mini, ...) or a keras.applications ResNet (resnet50, resnet101, "
                             "resnet152)")
    parser.add_argument("--weights", default=None,
                        help="weights for a model name: a file (.weights.h5, .keras; T2T-ViT also the authors' "
                             ".pth.tar; a ResNet Keras' .h5), a released tag (imagenet; for a ResNet Keras' own "
                             f"download), or {RANDOM} for random weights (a ResNet needs one of these; other "
                             "names default to random weights)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="MODEL=WEIGHTS",
                        help="draw the first-layer features of these models on the same image side by side in "
                             f"one PNG ({COMPARE_FILE}), as in the paper's Figure 2; each MODEL as --model, each "
                             f"WEIGHTS as --weights and required ({RANDOM} for random weights; a .keras file takes "
                             "no =WEIGHTS), e.g. resnet50=imagenet vit_large_patch16=vit_l16.weights.h5 "
                             "t2t_vit_24=imagenet")
    parser.add_argument("--compare-stages", nargs="+", default=None, metavar="STAGE",
                        help="with --compare: one stage per model, '-' for the default (a CNN's first "
                             "convolution, a ViT's or T2T-ViT's first block: block_0)")
    parser.add_argument("--image", default=None, help="an image file (default: a built-in validation digit)")
    parser.add_argument("--digit-index", type=int, default=0, help="which validation digit without --image")
    parser.add_argument("--image-size", type=image_size, default=None,
                        help=f"input size for a model name, {IMAGE_SIZE_HELP} (default: 32 for the digits "
                             "models, else 224)")
    parser.add_argument("--classes", type=int, default=None,
                        help="head size for a model name (default: 10 for the digits models, else 1000)")
    parser.add_argument("--stage", default=None,
                        help="whose tokens to draw: soft_split_i, t2t_layer_i, project, patch_embed or block_i "
                             "(default: t2t_layer_1 for T2T-ViT, patch_embed for ViT); for a ResNet a layer name "
                             "(default: its first convolution, conv1_conv)")
    parser.add_argument("--block", type=int, default=-1, help="the block whose class-token attention to draw "
                                                              "(default: the last)")
    parser.add_argument("--channels", type=positive_int, default=16, help="how many channel maps to draw")
    parser.add_argument("--panel-px", type=positive_int, default=None,
                        help="pixels per map (default 96); with --compare, per model panel (default 320)")
    parser.add_argument("--prefix", default="", help="file name prefix")
    add_dtype_argument(parser)
    parser.add_argument("--output-dir", required=True, help="where the PNGs and arrays .npz go")
    add_verbose_argument(parser)
    return parser


def visualize(argv=None):
    """``keras-t2t-visualize`` (``keras_t2t.cli.visualize``); returns the exit code."""
    return _command(visualize_parser, "visualize", argv)


# --------------------------------------------------------------------------
# keras-t2t-weights
# --------------------------------------------------------------------------
def weights_parser():
    """The argument parser of ``keras-t2t-weights``."""
    parser = OneLineParser(
        prog="keras-t2t-weights",
        description="The authors' released T2T-ViT weights by tag: list them, or fetch and convert them into "
        "the cache ($KERAS_HOME/keras_t2t) for offline use. KERAS_T2T_WEIGHTS_URL replaces the release "
        "page (an http(s):// or file:// URL, or a local folder holding the files).",
    )
    add_verbose_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    listing = commands.add_parser("list", help="every release row and what the cache holds of it")
    listing.add_argument("--model", help="only this model's rows")
    add_verbose_argument(listing, default=argparse.SUPPRESS)
    fetch = commands.add_parser("fetch", help="download, check and convert weights into the cache")
    fetch.add_argument(
        "weights", nargs="*", type=model_tag, metavar="MODEL:TAG", help="e.g. t2t_vit_14:imagenet t2t_vit_7:imagenet"
    )
    fetch.add_argument("--all", action="store_true", help="every release")
    fetch.add_argument("--refresh", action="store_true",
                       help="download them again; the cached file is replaced only once the new one passed its checks")
    add_verbose_argument(fetch, default=argparse.SUPPRESS)
    return parser


def weights(argv=None):
    """``keras-t2t-weights`` (``keras_t2t.cli.weights``); returns the exit code."""
    return _command(weights_parser, "weights", argv)

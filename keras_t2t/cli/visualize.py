"""``keras-t2t-visualize``: token feature maps and class-token attention as PNG (``keras_t2t.visualize``)."""

import argparse
import os
import sys

import keras

from keras_t2t import visualize as visualize_module
from keras_t2t.builders import create_model
from keras_t2t.cli.args import IMAGE_SIZE_HELP, image_size
from keras_t2t.data.digits import digits_sample
from keras_t2t.data.images import load_image_resized
from keras_t2t.models.presets import MODELS, unknown_model_error
from keras_t2t.training.recipe import DIGITS
from keras_t2t.visualize import require_matplotlib, visualize
from keras_t2t.weights import load_any_weights


def load_model(model, weights=None, image_size=None, classes=None):
    """A model from a saved ``.keras`` file, or any registered name (random or ``weights``).

    ``image_size`` is ``N`` or ``(H, W)``; without it, the registry's image size (32 for
    the digits models), with 10 classes for the digits models and 1000 otherwise.
    """
    if os.fspath(model).endswith(".keras"):
        if weights:
            raise ValueError("--weights goes with a model name; a .keras file already holds its weights.")
        if not os.path.exists(model):
            raise FileNotFoundError(f"Model file {os.fspath(model)!r} does not exist.")
        return keras.saving.load_model(model, compile=False), "saved model"
    if model not in MODELS:
        raise unknown_model_error(model, list(MODELS) + ["a .keras file"])
    preset = MODELS[model]
    digits_sized = preset.image_size == DIGITS.image_size
    size = image_size or preset.image_size
    height, width = (size, size) if isinstance(size, int) else size
    classes = classes or (10 if digits_sized else 1000)
    if weights and not os.path.exists(weights):
        raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist.")
    built = create_model(model, input_shape=(height, width, 3), classes=classes)
    if not weights:
        return built, "random weights (no --weights): the pictures show an untrained model"
    return built, f"weights {os.fspath(weights)}: {load_any_weights(built, weights)}"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-t2t-visualize",
        description="Token features on the image grid and class-token attention of a T2T-ViT or ViT "
                    "(PNG pictures plus the arrays as .npz).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=visualize_module.__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--model", required=True,
                        help="a saved .keras file, or a model name of the training command (t2t_vit_mini, "
                             "t2t_vit_14, vit_mini, ...)")
    parser.add_argument("--weights", default=None, help="weights for a model name (.weights.h5, .keras; "
                                                        "T2T-ViT also the authors' .pth.tar)")
    parser.add_argument("--image", default=None, help="an image file (default: a built-in validation digit)")
    parser.add_argument("--digit-index", type=int, default=0, help="which validation digit without --image")
    parser.add_argument("--image-size", type=image_size, default=None,
                        help=f"input size for a model name, {IMAGE_SIZE_HELP} (default: 32 for the digits "
                             "models, else 224)")
    parser.add_argument("--classes", type=int, default=None,
                        help="head size for a model name (default: 10 for the digits models, else 1000)")
    parser.add_argument("--stage", default=None,
                        help="whose tokens to draw: soft_split_i, t2t_layer_i, project, patch_embed or block_i "
                             "(default: t2t_layer_1 for T2T-ViT, patch_embed for ViT)")
    parser.add_argument("--block", type=int, default=-1, help="the block whose class-token attention to draw "
                                                              "(default: the last)")
    parser.add_argument("--channels", type=int, default=16, help="how many channel maps to draw")
    parser.add_argument("--panel-px", type=int, default=96, help="pixels per map")
    parser.add_argument("--prefix", default="", help="file name prefix")
    parser.add_argument("--output-dir", required=True, help="where the PNGs and arrays.npz go")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        require_matplotlib()
        model, source = load_model(args.model, args.weights, args.image_size, args.classes)
        height, width, channels = (int(v) for v in model.input.shape[1:])
        if args.image:
            image = load_image_resized(args.image, height, width, channels)
            what = f"image {args.image}"
        else:
            image, label = digits_sample(height, width, args.digit_index)
            what = f"built-in validation digit #{args.digit_index} (a {label})"
        print(f"model {model.name} ({source}); {what} at {height}x{width}", flush=True)
        visualize(model, image, args.output_dir, stage=args.stage, block=args.block, channels=args.channels,
                  prefix=args.prefix, panel_px=args.panel_px)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a T2T-ViT from scratch with the paper's recipe (or fine-tune, or validate a checkpoint).

    python training/train.py --output-dir runs/digits                 # built-in digits, no download
    python training/train.py --output-dir runs/digits_vit --model vit_mini   # the ViT baseline, same recipe
    python training/train.py --output-dir runs/c10 --dataset cifar10 --model t2t_vit_7 --image-size 224
    python training/train.py --output-dir runs/in1k --dataset folder --data-dir /data/imagenet \\
        --model t2t_vit_14                                            # DIR/train/<class>/*, DIR/val/<class>/*
    python training/train.py --output-dir runs/ft --dataset cifar10 --model t2t_vit_14 \\
        --weights 81.5_T2T_ViT_14.pth.tar --image-size 224 --epochs 60 --lr 5e-5 ...   # fine-tuning
    python training/train.py --output-dir runs/ev --dataset folder --data-dir D --eval-only --weights W

Every recipe field (keras_t2t.training.Recipe) is a flag; the defaults are the
paper's recipe, or the light digits recipe with the built-in digits. The
recipe is summed up in the first line printed, saved whole as recipe.json, and
printed whole as JSON by --print-recipe. The run ends with the validation top-1,
the files it wrote and the commands that evaluate and export the model.
Re-running a command with the same --output-dir resumes it after its last
completed epoch; re-running a finished one says so and changes nothing.
"""

import argparse
import dataclasses
import os
import shlex
import sys

# Runs from a checkout without installing too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# keras_t2t imports Keras, which fails on an unknown backend: the check comes first (main).
BACKENDS = ("tensorflow", "jax", "torch")

# timm's flag names for the same fields, accepted as aliases.
ALIASES = {
    "mixup_alpha": ["--mixup"],
    "cutmix_alpha": ["--cutmix"],
    "label_smoothing": ["--smoothing"],
    "random_erasing": ["--reprob"],
    "drop_path_rate": ["--drop-path"],
    "ema_decay": ["--model-ema-decay"],
    "image_size": ["--img-size"],
    "warmup_epochs": ["--warmup-epochs"],
}
HELP = {
    "model": "t2t_vit_mini (the digits default), a keras_t2t variant (t2t_vit_7 ... t2t_vit_t_24), or a ViT "
             "baseline (vit_mini, vit_small_patch16, vit_base_patch16; keras_t2t.vit); a release preset name "
             "(t2t_vit_7_imagenet, ...), a preset folder, a .keras file or an authors' checkpoint is that model "
             "starting from those weights",
    "dataset": "'digits' (built in, no download), 'folder' (--data-dir with train/ and val/), or a TFDS name",
    "data_dir": "the folder for --dataset folder (or where the digits are written); TFDS's data_dir otherwise",
    "manual_dir": "TFDS manual download folder (imagenet2012's tar files)",
    "batch_size": "global batch, split across replicas",
    "lr": "peak learning rate for a global batch of --lr-base-batch (scaled linearly)",
    "epochs": "cosine epochs; --cooldown-epochs at the minimum lr follow",
    "weight_decay": "AdamW decay (-1: the reference's value for the model: 0.03/0.05/0.065)",
    "ema_decay": "EMA of the weights, evaluated and saved (0: off)",
    "randaugment_ops": "RandAugment ops per image (0: off); magnitude/std on timm's 0..10 scale",
    "random_erasing": "random erasing probability",
    "precision": "float32, mixed_bfloat16, or mixed_float16 (with loss scaling)",
    "t2t_dropout": "dropout inside the T2T layers (-1: the reference's)",
    "cache": "auto (in memory when it fits), memory, none, or a file prefix",
    "train_limit": "use only the first N training images (0: all)",
    "val_limit": "use only the first N validation images (0: all)",
}


def _flag(name):
    return "--" + name.replace("_", "-")


def build_parser():
    from keras_t2t.training.recipe import PRESETS, Recipe

    parser = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", required=True, help="checkpoints, logs, recipe.json and summary.json go here")
    run.add_argument("--recipe", choices=sorted(PRESETS), default=None,
                     help="preset the flags start from (default: 'digits' for --dataset digits, else 'paper')")
    run.add_argument("--cpu-replicas", type=int, default=0,
                     help="train on N logical CPU devices as replicas (TensorFlow MirroredStrategy, JAX DataParallel)")
    run.add_argument("--weights", default=None,
                     help="start from these weights: a tag of --model (imagenet, ...), a release preset name "
                          "(t2t_vit_7_imagenet, ...), a preset folder, or a file (.pth.tar of the authors, .keras, "
                          ".weights.h5); the head and position table adapt to --image-size and the class count")
    run.add_argument("--eval-only", action="store_true", help="validate --weights and write summary.json; no training")
    run.add_argument("--no-download", action="store_true", help="fail instead of downloading a TFDS dataset")
    run.add_argument("--verify-images", action="store_true",
                     help="decode every image of a folder again (by default each is decoded once before training "
                          "and the result kept for the next runs, by file size and modification time)")
    run.add_argument("--skip-bad-images", action="store_true",
                     help="train without the images that do not decode (counted in the output and summary.json) "
                          "instead of refusing them")
    run.add_argument("--print-recipe", action="store_true", help="print the resolved recipe as JSON and exit")
    run.add_argument("--quiet", action="store_true", help="one line per epoch instead of the progress bar")
    run.add_argument("--verbose", action="store_true",
                     help="also show the log lines of TensorFlow, absl and CUDA (left out by default)")
    run.add_argument("--keep-freed-memory", action="store_true",
                     help="keep freed memory in the process (glibc; keras_t2t.allocator): eager torch reuses its "
                          "activations instead of refaulting them (T2T-ViT-14 at batch 32 trained ~6%% faster on torch in benchmarks/README.md)")

    recipe = parser.add_argument_group("recipe (defaults: the preset's; --print-recipe shows them)")
    for field in dataclasses.fields(Recipe):
        default = field.default
        names = [_flag(field.name)] + [a for a in ALIASES.get(field.name, []) if a != _flag(field.name)]
        help_text = HELP.get(field.name, "")
        if isinstance(default, bool):
            recipe.add_argument(*names, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif isinstance(default, tuple):
            recipe.add_argument(*names, dest=field.name, type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                                help=help_text)
        elif field.name == "image_size":
            recipe.add_argument(*names, dest=field.name, type=_square_size, default=None, metavar="N",
                                help=help_text)
        else:
            recipe.add_argument(*names, dest=field.name, type=type(default), default=None, help=help_text)
    return parser


def recipe_from_args(args):
    from keras_t2t.training.recipe import PRESETS, Recipe

    preset = args.recipe or ("digits" if (args.dataset or "digits") == "digits" else "paper")
    base = PRESETS[preset]
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None
    }
    for key in ("crop_scale", "crop_ratio"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return preset, dataclasses.replace(base, **overrides)


def _square_size(text):
    """``--image-size``: ``N``, or ``NxN``; the recipe's crops are square, so ``HxW`` of two sides is refused
    in one line (the other commands take ``HxW``)."""
    parts = text.lower().split("x")
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"must be N or NxN (a positive number of pixels); got {text!r}")
    if len(set(sides)) != 1:
        raise argparse.ArgumentTypeError(
            f"training crops square images: give N (got {text!r}); a model trained at N runs at any HxW its "
            "T2T stages split (the position table is resized), and the other commands take HxW")
    return sides[0]


def _model_from_handle(args):
    """``--model`` takes what every command's --model takes: a registry name, or a release preset name, a
    preset folder, a ``.keras`` file or an authors' checkpoint, which trains that model starting from those
    weights (``--weights`` given as well wins)."""
    if not args.model:
        return
    from keras_t2t.models.presets import MODELS
    from keras_t2t.resolve import registry_name

    if args.model not in MODELS:
        name = registry_name(args.model)
        args.weights = args.weights or args.model
        args.model = name


def recipe_line(preset, recipe, weights=None, eval_only=False):
    """The recipe in one line: model, data, image size, epochs, batch, learning rate, precision."""
    data = recipe.dataset + (f" {recipe.data_dir}" if recipe.dataset == "folder" else "")
    start = f" from {weights}" if weights else ""
    if eval_only:
        schedule = "validation only"
    else:
        cooldown = f" + {recipe.cooldown_epochs} cooldown" if recipe.cooldown_epochs else ""
        schedule = f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}{cooldown}"
    lr = "" if eval_only else f", peak lr {recipe.scaled_lr():.3g}"
    return (f"recipe {preset}: {recipe.model}{start} on {data} at {recipe.image_size}x{recipe.image_size}, "
            f"{schedule}, batch {recipe.batch_size}{lr}, {recipe.precision} (--print-recipe shows every field)")


def validation_folder(recipe):
    """The image folder the run validated on, or None (a TFDS split)."""
    if recipe.dataset == "digits":
        from keras_t2t.data.digits import default_digits_dir

        return os.path.join(recipe.data_dir or default_digits_dir(), "val")
    if recipe.dataset == "folder":
        return os.path.join(recipe.data_dir, "val")
    return None


def next_commands(output_dir, recipe):
    """The commands that evaluate and export the run's model, ready to paste."""
    model = shlex.quote(os.path.join(output_dir, "model.keras"))
    folder = validation_folder(recipe)
    if folder is not None:
        evaluate = f"keras-t2t-evaluate --model {model} --data-dir {shlex.quote(folder)}"
        samples = f" --sample-dir {shlex.quote(folder)}"
    else:  # keras-t2t-evaluate reads folders; train.py validates the TFDS split again
        data_dir = f" --data-dir {shlex.quote(recipe.data_dir)}" if recipe.data_dir else ""
        script = os.path.relpath(os.path.abspath(__file__))
        script = shlex.quote(os.path.abspath(__file__) if script.startswith("..") else script)
        evaluate = (f"python {script} --output-dir {shlex.quote(os.path.join(output_dir, 'eval'))} "
                    f"--dataset {recipe.dataset}{data_dir} --model {recipe.model} "
                    f"--image-size {recipe.image_size} --eval-only --weights {model}")
        samples = ""
    export = f"keras-t2t-export --model {model} --output-dir {shlex.quote(os.path.join(output_dir, 'export'))}"
    return [evaluate, export + samples]


def _backend_name():
    """The Keras backend, known before keras is imported (JAX's host devices must be set first)."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        import json

        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def main(argv=None):
    backend = _backend_name()
    if backend not in BACKENDS:
        print(f"error: unknown Keras backend {backend!r} (KERAS_BACKEND or keras.json); training runs on "
              f"{', '.join(BACKENDS)}.", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset is None and args.recipe == "paper":
        parser.error("--recipe paper needs --dataset (a TFDS name, or 'folder' with --data-dir)")
    if args.eval_only and not args.weights:
        parser.error("--eval-only needs --weights PATH")
    if args.weights and not os.path.exists(args.weights) and (os.sep in args.weights or "." in args.weights):
        # A path that is not there (a tag or a preset name is checked by the trainer, which knows the model).
        parser.error(f"--weights: no such file {args.weights!r}")
    if args.cpu_replicas < 0:
        parser.error("--cpu-replicas must be >= 0")
    try:
        _model_from_handle(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: --model: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    preset, recipe = recipe_from_args(args)
    try:
        recipe = recipe.resolved()
    except ValueError as error:
        parser.error(str(error))
    if args.print_recipe:
        import json

        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    from keras_t2t.io_utils import check_output_folder

    try:
        check_output_folder(args.output_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(recipe_line(preset, recipe, args.weights, args.eval_only), flush=True)

    if args.keep_freed_memory:
        from keras_t2t.allocator import keep_freed_memory

        try:
            settings = keep_freed_memory()
        except RuntimeError as error:
            parser.error(f"--keep-freed-memory: {error}")
        print("allocator: freed memory stays in the process (mmap threshold {mmap_threshold} bytes, "
              "trim threshold {trim_threshold} bytes)".format(**settings), flush=True)

    from keras_t2t.backends import quiet_logs
    from keras_t2t.training.distribute import prepare_environment

    prepare_environment(backend, args.cpu_replicas)
    quiet_logs(args.verbose)  # before TensorFlow is imported

    from keras_t2t.training import trainer
    from keras_t2t.training.distribute import setup_distribution

    def run():
        distribution = setup_distribution(args.cpu_replicas)  # before any other TF/JAX work
        trainer.train(
            recipe,
            args.output_dir,
            distribution=distribution,
            weights=args.weights,
            eval_only=args.eval_only,
            verbose=2 if args.quiet else 1,
            download=not args.no_download,
            verify_images=args.verify_images,
            skip_bad_images=args.skip_bad_images,
        )
        if not args.eval_only and distribution.is_chief:
            print("next:\n" + "".join(f"  {command}\n" for command in next_commands(args.output_dir, recipe)),
                  end="", flush=True)
        return 0

    return trainer.main_guard(run)


if __name__ == "__main__":
    sys.exit(main())

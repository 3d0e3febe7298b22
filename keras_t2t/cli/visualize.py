"""``keras-t2t-visualize``: token feature maps and class-token attention as PNG (``keras_t2t.visualize``).

Exit codes: 0 done; 2 bad input (one line: an unknown model or stage, a missing or unreadable
weights file, an output folder that cannot be written, an unknown Keras backend); 1 a download
that failed (one line naming the manual route). The parser and the entry point are
``keras_t2t.cli.commands`` (no Keras): ``main`` parses, then ``run`` draws.
"""

# ruff: noqa: E402 - Keras is imported below the entry block, so that --help answers without it
import os
import re
import sys

from keras_t2t.cli.commands import run_as_main  # noqa: E402

run_as_main(__name__, "visualize")  # python -m keras_t2t.cli.visualize: parsed before Keras is imported

import keras

from keras_t2t.applications import create_model
from keras_t2t.cli.args import UsageError
# The entry point (main: parses, then run()) and its parser live in commands, free of Keras.
from keras_t2t.cli.commands import COMPARE_FILE, RANDOM, visualize as main, visualize_parser as build_parser
from keras_t2t.data.digits import digits_sample
from keras_t2t.data.images import load_image, load_image_resized
from keras_t2t.hub.presets import is_preset_name
from keras_t2t.io_utils import check_output_folder
from keras_t2t.models.presets import MODELS, unknown_model_error
from keras_t2t.precision import apply_dtype
from keras_t2t.resolve import resolve_model
from keras_t2t.training.recipe import DIGITS
from keras_t2t.visualize import (
    KERAS_APPLICATIONS,
    compare_features,
    require_matplotlib,
    visualize,
)
from keras_t2t.weights.loading import is_checkpoint_path
from keras_t2t.weights.pretrained import WeightsFetchError, is_weights_tag, release_for

__all__ = [
    "COMPARE_FILE", "RANDOM", "build_parser", "check_source", "keras_application", "load_input", "load_labelled",
    "load_model", "main", "parse_compare", "run",
]

RANDOM_LABEL = "random weights"
_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+?): (.*)", re.DOTALL)


def _size(image_size, default):
    size = image_size or default
    return (size, size) if isinstance(size, int) else tuple(size)


def _weights_needed(name):
    return ValueError(
        f"{name} needs weights: imagenet (Keras' own download), a weights file (.h5, .weights.h5, .keras) or "
        f"{RANDOM} for random weights (--weights ...; with --compare write {name}=imagenet, {name}=PATH or "
        f"{name}={RANDOM})."
    )


def keras_application(name, weights, image_size=None):
    """``(model, source, label)``: the ``keras.applications`` model ``name`` (``resnet50``, ...) without its top.

    ``weights``: ``"imagenet"`` (Keras' own download, cached in ``$KERAS_HOME/models``), a weights
    file Keras reads (its ImageNet files with or without the top, a ``.weights.h5`` or ``.keras``
    saved from the same constructor) or ``"none"`` (random weights, only when asked).
    """
    application = KERAS_APPLICATIONS[name]
    build = getattr(keras.applications, application.constructor)
    height, width = _size(image_size, 224)
    shape = (height, width, 3)
    check_source(name, weights)
    if str(weights).lower() == RANDOM:
        source = f"random weights (weights {RANDOM}): the pictures show an untrained model"
        return build(include_top=False, weights=None, input_shape=shape), source, RANDOM_LABEL
    if str(weights).lower() == "imagenet":
        try:
            model = build(include_top=False, weights="imagenet", input_shape=shape)
        except ValueError:
            raise
        except Exception as error:  # keras.utils.get_file raises a bare Exception when the fetch fails
            raise _download_error(name, error) from None
        return model, "ImageNet weights (Keras' download)", "ImageNet weights"
    path = os.fspath(weights)
    failures = []
    for include_top in (False, True):  # Keras' files come with and without the classifier
        try:
            model = build(include_top=include_top, weights=path, input_shape=shape)
        except Exception as error:  # h5py, Keras' savers and loaders each raise their own kinds
            failures.append(" ".join(str(error).split())[:200])
            continue
        return model, f"weights {path}", os.path.basename(path)
    raise ValueError(
        f"{path!r} holds no {application.constructor} weights Keras can load, with or without the top "
        f"({failures[0]}); accepted: Keras' {name} ImageNet files, or a .weights.h5/.keras saved from "
        f"keras.applications.{application.constructor}."
    )


def _download_error(name, error):
    text = " ".join(str(error).split())
    match = _FETCH_FAILURE.match(text)
    url, reason = (match.group(1), match.group(2)) if match else ("the file named above", text)
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return WeightsFetchError(
        f"Keras could not download the ImageNet weights of {name} ({reason}); this machine may be offline. "
        f"Manual route: fetch {url} where there is a network, then give the file with --weights PATH "
        f"(or copy it into {os.path.join(home, 'models')}, where Keras looks before downloading)."
    )


def _is_model_file(model):
    """Whether ``model`` names a saved model (``.keras``, a preset name or folder, an authors' checkpoint),
    which ``keras_t2t.resolve`` loads, rather than a name to build."""
    path = os.fspath(model)
    return (path.endswith(".keras") or is_preset_name(path) or os.path.isdir(path)
            or (is_checkpoint_path(path) and os.path.isfile(path)))


def check_source(model, weights=None, random_by_default=True):
    """Raises the one-line error ``load_labelled`` would for this model and weights, without building anything
    (an unknown name, a missing file, an unknown tag, weights not given where they must be)."""
    if _is_model_file(model):
        if weights:
            raise ValueError("--weights goes with a model name; a .keras file, a preset or a checkpoint already "
                             "holds its weights.")
        if not os.path.exists(model) and not is_preset_name(model):
            raise FileNotFoundError(f"Model file {os.fspath(model)!r} does not exist.")
        return
    if model not in MODELS and model not in KERAS_APPLICATIONS:
        raise unknown_model_error(model, list(MODELS) + list(KERAS_APPLICATIONS) + ["a .keras file"])
    if weights is None:
        if model in KERAS_APPLICATIONS or not random_by_default:
            raise _weights_needed(model)
        return
    if str(weights).lower() == RANDOM or os.path.exists(weights):
        return
    if model in KERAS_APPLICATIONS:
        if str(weights).lower() != "imagenet":
            raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist (or give imagenet or "
                                    f"{RANDOM}).")
    elif is_weights_tag(weights):
        release_for(model, weights)
    else:
        raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist.")


def load_labelled(model, weights=None, image_size=None, classes=None, random_by_default=True):
    """``(model, source, label)``: a ``.keras`` file, a registered name or a ``keras.applications`` name.

    ``weights``: a file, a released tag (``imagenet``, ...), ``"none"`` (random) or ``None``
    (random for registered names when ``random_by_default``; an error for ``keras.applications``
    names, which need it said). ``label`` names the weights for the pictures' titles.
    """
    check_source(model, weights, random_by_default)
    if _is_model_file(model):
        resolved = resolve_model(model)
        resolved.model.preprocessing = resolved.preprocessing  # what load_input feeds it
        label = model if is_preset_name(model) else os.path.basename(os.path.normpath(model))
        return resolved.model, f"{resolved.description}; {resolved.preprocessing.describe()}", label
    if model in KERAS_APPLICATIONS:
        return keras_application(model, weights, image_size)
    preset = MODELS[model]
    height, width = _size(image_size, preset.image_size)
    asked_classes = classes  # with a weights file, None follows the file's head
    classes = classes or (10 if preset.image_size == DIGITS.image_size else 1000)
    if weights is None or str(weights).lower() == RANDOM:
        built = create_model(model, input_shape=(height, width, 3), classes=classes)
        asked = "no --weights" if weights is None else f"weights {RANDOM}"
        return built, f"random weights ({asked}): the pictures show an untrained model", RANDOM_LABEL
    if not os.path.exists(weights):  # a released tag (check_source made sure)
        built = create_model(model, weights=weights, input_shape=(height, width, 3) if image_size else None,
                             verbose=False)
        return built, f"released weights {weights!r}", f"{weights} weights"
    built = resolve_model(model, weights=weights, input_shape=(height, width, 3), classes=asked_classes,
                          verbose=False).model
    return built, f"weights {os.fspath(weights)}: {built.weights_report}", os.path.basename(weights)


def load_model(model, weights=None, image_size=None, classes=None):
    """A model from a saved ``.keras`` file, or any registered name (random or ``weights``), and where its
    weights came from. ``image_size`` is ``N`` or ``(H, W)``; without it, the registry's image size (32 for
    the digits models), with 10 classes for the digits models and 1000 otherwise."""
    built, source, _ = load_labelled(model, weights, image_size, classes)
    return built, source


def load_input(model, image=None, digit_index=0):
    """The image the pictures show at ``model``'s input size (normalised), and a description of it."""
    height, width, channels = (int(v) for v in model.input.shape[1:])
    preprocessing = getattr(model, "preprocessing", None)
    if image and preprocessing is not None and channels == 3:
        # A model with a preset or a training run is fed as it was evaluated.
        return load_image(image, (height, width), preprocessing.crop_pct, preprocessing.mean, preprocessing.std), (
            f"image {image} (crop_pct {preprocessing.crop_pct:g}, from {preprocessing.source})")
    if image:
        return load_image_resized(image, height, width, channels), f"image {image}"
    picture, label = digits_sample(height, width, digit_index)
    return picture, f"built-in validation digit #{digit_index} (a {label})"


def parse_compare(words):
    """``MODEL[=WEIGHTS]`` words (space- or comma-separated) -> ``[(model, weights or None), ...]``."""
    entries = []
    for word in words:
        for item in filter(None, (part.strip() for part in word.split(","))):
            model, equals, weights = item.partition("=")
            if not model or (equals and not weights):
                raise UsageError(f"--compare takes MODEL=WEIGHTS (WEIGHTS: a file, imagenet or {RANDOM}); "
                                 f"got {item!r}")
            entries.append((model, weights or None))
    if len(entries) < 2:
        raise UsageError(f"--compare needs at least two models, e.g. resnet50=imagenet vit_large_patch16=PATH "
                         f"t2t_vit_24=imagenet; got {len(entries)}")
    return entries


def _compare(args):
    entries = parse_compare(args.compare)
    stages = args.compare_stages or ["-"] * len(entries)
    if len(stages) != len(entries):
        raise UsageError(f"--compare-stages names {len(stages)} stages for {len(entries)} models; give one per "
                         "model ('-' for the default)")
    for name, weights in entries:  # every name and file before the first model is built
        check_source(name, weights, random_by_default=False)
    panels = []
    for (name, weights), stage in zip(entries, stages):
        model, source, label = load_labelled(name, weights, args.image_size, args.classes, random_by_default=False)
        model, dtype, reason = apply_dtype(model, args.dtype)
        image, what = load_input(model, args.image, args.digit_index)
        height, width = (int(v) for v in model.input.shape[1:3])
        print(f"model {model.name} ({source}, {dtype}: {reason}); {what} at {height}x{width}", flush=True)
        panels.append(dict(model=model, image=image, stage=None if stage == "-" else stage, weights_label=label))
    path = os.path.join(args.output_dir, f"{args.prefix}{COMPARE_FILE}")
    compare_features(panels, path, channels=args.channels, panel_px=args.panel_px or 320)


def run(args):
    """Draws what parsed ``args`` (``commands.visualize_parser``) ask for; returns the exit code."""
    try:
        if (args.model is None) == (args.compare is None):
            raise UsageError("give --model MODEL (one model's pictures) or --compare MODEL=WEIGHTS ... (side by "
                             "side), not both")
        if args.compare_stages and not args.compare:
            raise UsageError("--compare-stages goes with --compare (use --stage with --model)")
        require_matplotlib()
        check_output_folder(args.output_dir)
        if args.compare:
            _compare(args)
            return 0
        model, source, label = load_labelled(args.model, args.weights, args.image_size, args.classes)
        model, dtype, reason = apply_dtype(model, args.dtype)
        image, what = load_input(model, args.image, args.digit_index)
        height, width = (int(v) for v in model.input.shape[1:3])
        print(f"model {model.name} ({source}, {dtype}: {reason}); {what} at {height}x{width}", flush=True)
        visualize(model, image, args.output_dir, stage=args.stage, block=args.block, channels=args.channels,
                  prefix=args.prefix, panel_px=args.panel_px or 96, weights_label=label)
    except (UsageError, WeightsFetchError, ValueError, FileNotFoundError, ImportError) as error:
        return _fail(error)
    return 0


def _fail(error):
    """One line on stderr; the exit status: 1 for a failed download, 2 for bad input."""
    text = " ".join(str(error).split()) + (" (see --help)" if isinstance(error, UsageError) else "")
    print(f"error: {text}", file=sys.stderr)
    return 1 if isinstance(error, WeightsFetchError) else 2


"""Argument types shared by the command lines (argparse ``type=`` callables).

Every command takes image sizes in one grammar, ``N`` or ``HxW`` (``image_size``).
The Keras backend check (``backend_error``, ``refuse_unknown_backend``) and the
quieting of TensorFlow's logs (``quiet_logs``, for ``--verbose``) live in
``keras_t2t.backends`` and are re-exported here. This module imports nothing
heavier than the registry: the commands build their parsers from it and answer
``--help`` before Keras is imported.
"""

import argparse
import math

from keras_t2t.backends import KERAS_BACKENDS, backend_error, configured_backend, quiet_logs, refuse_unknown_backend
from keras_t2t.models.presets import MODELS, list_weights

__all__ = [
    "positive_int", "positive_float", "fraction", "image_size", "IMAGE_SIZE_HELP", "add_model_source", "model_tag",
    "OneLineParser", "UsageError", "KERAS_BACKENDS", "configured_backend", "backend_error", "refuse_unknown_backend",
    "add_dtype_argument", "DTYPE_CHOICES", "DEFAULT_CROP_PCT", "add_verbose_argument", "quiet_logs",
]

# Repeated from modules that import Keras, so that the parsers import none
# (tests/cli/test_quiet_commands.py checks each equals its source).
#: ``keras_t2t.precision.DTYPE_CHOICES``
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "mixed_bfloat16")
#: ``keras_t2t.data.images.DEFAULT_CROP_PCT``
DEFAULT_CROP_PCT = 0.9


class UsageError(Exception):
    """Bad command-line arguments, as ``OneLineParser`` reports them (the commands exit with 2)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ``UsageError`` (one line, no usage dump) instead of exiting."""

    def error(self, message):
        raise UsageError(message)

    def parse(self, argv=None):
        """``(arguments, None)``, or ``(None, exit code)`` when ``--help`` (or ``--version``) answered."""
        try:
            return self.parse_args(argv), None
        except SystemExit as exit_:
            return None, exit_.code if isinstance(exit_.code, int) else 0



def _number(text, convert, accepted, expected):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accepted(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text):
    """An integer >= 1, or an argparse error naming the text."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text):
    """A finite number > 0, or an argparse error naming the text."""
    return _number(text, float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def fraction(text):
    """A number in (0, 1] (e.g. a crop fraction), or an argparse error naming the text."""
    return _number(text, float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


IMAGE_SIZE_HELP = "N (a square N x N) or HxW, e.g. 224 or 160x224"


def image_size(text):
    """The image-size grammar of every command: ``N`` or ``HxW`` -> ``(height, width)``.

    Raises ``argparse.ArgumentTypeError`` naming the text otherwise (``H,W`` is
    refused with a pointer to ``HxW``).
    """
    text = str(text).strip()
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        hint = f" (write {text.replace(',', 'x')})" if "," in text else ""
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive integers, got {text!r}{hint}")
    return tuple(sizes)


def model_tag(text):
    """``MODEL:TAG`` of a released checkpoint (``t2t_vit_14:imagenet``, see ``keras_t2t.list_weights()``)
    -> ``(model, tag)``, or an argparse error naming the text and the model's tags."""
    model, _, tag = str(text).strip().partition(":")
    tag = tag.strip().lower()
    if not model or not tag:
        raise argparse.ArgumentTypeError(f"expected MODEL:TAG, e.g. t2t_vit_14:imagenet, got {text!r}")
    if model not in MODELS:
        raise argparse.ArgumentTypeError(
            f"unknown model {model!r} in {text!r}; models with weights: "
            + ", ".join(dict.fromkeys(row.model for row in list_weights()))
        )
    tags = [row.tag for row in list_weights(model)]
    if tag not in tags:
        raise argparse.ArgumentTypeError(
            f"{model} has no weights tag {tag!r}; " + (f"its tags: {', '.join(tags)}" if tags else "it has none")
        )
    return model, tag


def add_model_source(parser, model_help, weights_help):
    """``--model FILE`` or ``--variant NAME`` (any registered name) with ``--weights``: how commands take a model."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help=model_help)
    source.add_argument(
        "--variant", help="a keras_t2t model name (t2t_vit_7, ...; see keras_t2t.list_models()); needs --weights"
    )
    parser.add_argument("--weights", help=weights_help)


def add_dtype_argument(parser, default="auto"):
    """``--dtype auto|float32|bfloat16|mixed_bfloat16`` (``keras_t2t.precision``): the dtype a
    keras_t2t model is rebuilt in; ``auto`` takes bfloat16 only where this machine runs it faster."""
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default=default,
        help=f"compute dtype of the model (default: {default}; auto: bfloat16 where it runs faster than "
             "float32 here, i.e. a bfloat16 GPU, or a CPU whose bfloat16 matmul is measured faster on this "
             "backend, else float32; keras_t2t.recommended_dtype(explain=True) says why)",
    )


def add_verbose_argument(parser, default=False):
    """``--verbose``: TensorFlow's, absl's and CUDA's own log lines stay in the output (``quiet_logs``).
    A subcommand's parser takes ``default=argparse.SUPPRESS``, so that it keeps a ``--verbose`` given before it."""
    parser.add_argument(
        "--verbose", action="store_true", default=default,
        help="also show the log lines of TensorFlow, absl and CUDA (left out by default)",
    )

"""Argument types shared by the command lines (argparse ``type=`` callables)."""

import argparse
import math


def positive_int(text):
    """An integer >= 1, or an argparse error naming the text."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text):
    """A finite number > 0, or an argparse error naming the text."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value

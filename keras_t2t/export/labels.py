"""The class names of a model the package trained: what the export writes as its labels.

The trainer (``keras_t2t.training``) records ``class_names`` (the training
folder's class folders, or the TFDS label names) in ``summary.json``, in the
folder where it saves ``model.keras`` and the ``.weights.h5`` files, and in the
``metadata.json`` of the ``preset/`` folder it writes beside them.
"""

import json
import os

TRAINING_SUMMARY = "summary.json"
PRESET_METADATA = "metadata.json"


def _class_names(path):
    """The ``class_names`` list a JSON file holds, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = json.load(handle).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return list(names)


def training_class_names(path):
    """``(class names, where from)`` the trainer recorded beside a model or weights file, or in a preset
    folder's ``metadata.json``; else ``None``."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        metadata = os.path.join(path, PRESET_METADATA)
        names = _class_names(metadata)
        return None if names is None else (names, f"preset: {metadata}")
    if not os.path.isfile(path):
        return None
    summary = os.path.join(os.path.dirname(path), TRAINING_SUMMARY)
    names = _class_names(summary)
    return None if names is None else (names, f"training run: {summary}")

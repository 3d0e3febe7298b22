"""The class names of a model the package trained: what the export writes as its labels.

The trainer (``keras_t2t.training``) records ``class_names`` (the training
folder's class folders, or the TFDS label names) in ``summary.json``, in the
folder where it saves ``model.keras`` and the ``.weights.h5`` files.
"""

import json
import os

TRAINING_SUMMARY = "summary.json"


def training_class_names(path):
    """``(class names, where from)`` the trainer recorded beside a model or weights file, else ``None``."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    summary = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), TRAINING_SUMMARY)
    try:
        with open(summary, encoding="utf-8") as handle:
            names = json.load(handle).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return list(names), f"training run: {summary}"

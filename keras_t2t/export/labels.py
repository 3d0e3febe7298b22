"""The class names of a model the package trained: what the export writes as its labels.

The trainer (``keras_t2t.training``) records ``class_names`` (the training
folder's class folders, or the TFDS label names) in ``summary.json``, in the
folder where it saves ``model.keras`` and the ``.weights.h5`` files, and in the
``metadata.json`` of the ``preset/`` folder it writes beside them. ImageNet's class
names are used for an ImageNet release, or when asked for (``--labels imagenet``):
never silently for a model that merely has 1000 classes.
"""

import json
import os

from keras_t2t.data.imagenet import imagenet_class_names
from keras_t2t.export.errors import ExportError
from keras_t2t.hub import presets

TRAINING_SUMMARY = "summary.json"
PRESET_METADATA = "metadata.json"


IMAGENET = "imagenet"  # ``--labels imagenet``: ImageNet-1k's class names, shipped with the package


def _class_names(path):
    """``(class_names, None)`` a JSON file holds; ``(None, why not)`` when it is there but unusable;
    ``(None, None)`` when there is no such file."""
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        return None, f"{path} cannot be read ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
    names = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None, f"{path} holds no class_names list"
    return list(names), None


def training_class_names(path):
    """``(class names, where from)`` the trainer recorded beside a model or weights file, or in a preset
    folder's ``metadata.json``; ``(None, why not)`` when such a file is there but unusable; else ``None``.

    A release (a preset name such as ``t2t_vit_14_imagenet``, or its cached preset folder) of
    an ImageNet tag has ImageNet-1k's class names.
    """
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    if presets.is_preset_name(path):
        row = presets.preset_release(path)
        return (_imagenet(), f"imagenet (the release {path})") if row.tag.startswith(IMAGENET) else None
    path = os.path.abspath(path)
    if os.path.isdir(path):
        metadata = os.path.join(path, PRESET_METADATA)
        names, problem = _class_names(metadata)
        if names is not None:
            return names, f"preset: {metadata}"
        tag = _preset_tag(metadata)
        if tag is not None and tag.startswith(IMAGENET):
            return _imagenet(), f"imagenet (the release preset {path})"
        return (None, problem) if problem and tag is None else None
    if not os.path.isfile(path):
        return None
    summary = os.path.join(os.path.dirname(path), TRAINING_SUMMARY)
    names, problem = _class_names(summary)
    if names is None:
        return (None, problem) if problem else None
    return names, f"training run: {summary}"


def _preset_tag(metadata):
    try:
        with open(metadata, encoding="utf-8") as handle:
            tag = json.load(handle).get("tag")
    except (OSError, ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) else None


def _imagenet():
    return list(imagenet_class_names())


def release_tag_names(weights):
    """ImageNet's names and their source for a weights tag of ImageNet (``--variant X --weights imagenet``)."""
    if isinstance(weights, str) and weights.lower().startswith(IMAGENET) and not os.path.exists(weights):
        return _imagenet(), f"imagenet (the {weights!r} weights)"
    return training_class_names(weights)


def read_labels_file(path):
    """The labels of a file, one per line (blank lines skipped); ``ExportError`` naming the file and what is wrong."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ExportError(f"Cannot read the labels file {os.fspath(path)!r}: {error}") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExportError(f"The labels file {os.fspath(path)!r} is not UTF-8 text (byte {error.start}: "
                          f"{data[error.start:error.start + 1]!r}); save it as UTF-8, one label per line.") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]

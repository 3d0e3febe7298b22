"""ImageNet-1k class names and ``decode_predictions``.

The 1000 ILSVRC-2012 classes ship inside the package
(``keras_t2t/data/imagenet_class_names.json``, beside this module), in the standard order used by
every ImageNet classifier (WordNet ids sorted, ``n01440764`` "tench" first,
``n15075141`` "toilet tissue" last). Nothing is downloaded at run time.

The list was extracted from timm 1.0.31 (Apache-2.0,
``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``).
"""

from __future__ import annotations

import functools
import json
import os

import keras
import numpy as np

__all__ = [
    "NUM_CLASSES",
    "IMAGENET_CLASS_NAMES",
    "IMAGENET_WNIDS",
    "imagenet_class_names",
    "imagenet_wnids",
    "imagenet_lemmas",
    "decode_predictions",
]

NUM_CLASSES = 1000

_DATA_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "imagenet_class_names.json"
)


@functools.lru_cache(maxsize=1)
def _load():
    try:
        with open(_DATA_FILE, "r", encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError as e:  # pragma: no cover - broken install
        raise RuntimeError(
            f"The packaged ImageNet class list is missing ({_DATA_FILE}); "
            "reinstall keras-t2t."
        ) from e
    wnids = tuple(doc["wnids"])
    names = tuple(doc["names"])
    lemmas = tuple(doc["lemmas"])
    if not (len(wnids) == len(names) == len(lemmas) == NUM_CLASSES):
        raise RuntimeError(
            f"{_DATA_FILE} is corrupt: expected {NUM_CLASSES} classes, got "
            f"{len(wnids)} ids / {len(names)} names"
        )
    return wnids, names, lemmas


def imagenet_wnids():
    """The 1000 WordNet ids (e.g. ``'n01440764'``), index i = class i."""
    return _load()[0]


def imagenet_class_names():
    """The 1000 human-readable class names (first WordNet lemma, e.g. ``'tench'``)."""
    return _load()[1]


def imagenet_lemmas():
    """The full WordNet lemma string of each class (e.g. ``'tench, Tinca tinca'``)."""
    return _load()[2]


class _LazySequence:
    """A read-only tuple-like view that loads the data file on first use."""

    def __init__(self, loader, what):
        self._loader = loader
        self._what = what

    def _data(self):
        return self._loader()

    def __len__(self):
        return len(self._data())

    def __getitem__(self, index):
        return self._data()[index]

    def __iter__(self):
        return iter(self._data())

    def __contains__(self, item):
        return item in self._data()

    def __eq__(self, other):
        if isinstance(other, _LazySequence):
            other = other._data()
        if isinstance(other, (tuple, list)):
            return tuple(self._data()) == tuple(other)
        return NotImplemented

    def __hash__(self):
        return hash(self._data())

    def index(self, value):
        return self._data().index(value)

    def __repr__(self):
        return f"<ImageNet-1k {self._what}: {len(self)} entries>"


#: The 1000 class names, loaded lazily (behaves like a tuple).
IMAGENET_CLASS_NAMES = _LazySequence(imagenet_class_names, "class names")
#: The 1000 WordNet ids, loaded lazily (behaves like a tuple).
IMAGENET_WNIDS = _LazySequence(imagenet_wnids, "WordNet ids")


def decode_predictions(preds, top=5):
    """Decode ImageNet-1k scores into the top classes of each sample.

    Like ``keras.applications.imagenet_utils.decode_predictions``, but with
    the class list shipped in this package.

    Args:
        preds: array-like (NumPy or any backend tensor) of shape
            ``(batch, 1000)``: logits or probabilities.
        top: how many classes to return per sample (1..1000).

    Returns:
        A list (one per sample) of lists of ``(wnid, class_name, score)``
        tuples, best first. ``score`` is the Python float of the input value.
        Ties keep the lower class index first.
    """
    preds = _to_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet-1k scores of shape "
            f"(samples, {NUM_CLASSES}); got an array of shape {tuple(preds.shape)}"
        )
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not (
        1 <= int(top) <= NUM_CLASSES
    ):
        raise ValueError(f"top must be an integer in [1, {NUM_CLASSES}], got {top!r}")
    top = int(top)
    wnids, names, _ = _load()
    results = []
    for row in preds:
        # Stable sort on the negated scores: ties keep index order.
        order = np.argsort(-row.astype(np.float64), kind="stable")[:top]
        results.append([(wnids[i], names[i], float(row[i])) for i in order])
    return results


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # plain lists / objects keras does not know
        return np.asarray(x)

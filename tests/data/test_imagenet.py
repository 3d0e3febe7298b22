import json
import os

import numpy as np
import pytest

from keras_t2t.data import imagenet
from keras_t2t.data.imagenet import (
    IMAGENET_CLASS_NAMES,
    IMAGENET_WNIDS,
    decode_predictions,
    imagenet_class_names,
    imagenet_lemmas,
    imagenet_wnids,
)


def test_packaged_class_list_is_the_standard_imagenet_1k_order():
    wnids = imagenet_wnids()
    names = imagenet_class_names()
    assert len(wnids) == len(names) == len(imagenet_lemmas()) == 1000
    assert len(set(wnids)) == 1000
    assert list(wnids) == sorted(wnids)
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[-1], names[-1]) == ("n15075141", "toilet tissue")
    # A few well-known indices of the standard order.
    assert (wnids[1], names[1]) == ("n01443537", "goldfish")
    assert names[207] == "golden retriever"
    assert names[281] == "tabby"
    assert all(n and n == n.strip() for n in names)


def test_data_file_is_inside_the_package():
    path = os.path.join(os.path.dirname(imagenet.__file__), "imagenet_class_names.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    assert "timm" in doc["source"] and "Apache-2.0" in doc["source"]


def test_lazy_sequences_behave_like_tuples():
    assert len(IMAGENET_CLASS_NAMES) == 1000
    assert IMAGENET_CLASS_NAMES[0] == "tench"
    assert IMAGENET_CLASS_NAMES[-1] == "toilet tissue"
    assert IMAGENET_WNIDS.index("n15075141") == 999
    assert "goldfish" in IMAGENET_CLASS_NAMES
    assert list(IMAGENET_CLASS_NAMES)[:2] == ["tench", "goldfish"]
    assert IMAGENET_CLASS_NAMES == imagenet_class_names()


def test_decode_predictions_orders_top_k():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [5, 999, 0, 42]] = [0.9, 0.5, 0.7, 0.1]
    preds[1, [281, 207]] = [3.0, 4.0]
    preds[1, 1] = -1.0
    out = decode_predictions(preds, top=3)
    assert len(out) == 2
    wn, nm = imagenet_wnids(), imagenet_class_names()
    assert [t[0] for t in out[0]] == [wn[5], wn[0], wn[999]]
    assert [t[1] for t in out[0]] == [nm[5], "tench", "toilet tissue"]
    assert [t[2] for t in out[0]] == pytest.approx([0.9, 0.7, 0.5])
    # Second row: two positives, then ties at 0 resolved by lowest index.
    assert [t[0] for t in out[1]] == [wn[207], wn[281], wn[0]]
    assert out[1][0][1] == "golden retriever"
    assert all(isinstance(t[2], float) for row in out for t in row)
    # Default top=5.
    assert [len(r) for r in decode_predictions(preds)] == [5, 5]


def test_decode_predictions_accepts_backend_tensors():
    import keras

    preds = np.zeros((1, 1000), np.float32)
    preds[0, 10] = 1.0
    out = decode_predictions(keras.ops.convert_to_tensor(preds), top=1)
    assert out == [[(imagenet_wnids()[10], imagenet_class_names()[10], 1.0)]]


@pytest.mark.parametrize("shape", [(1000,), (2, 999), (2, 1001), (2, 1000, 1), ()])
def test_decode_predictions_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*" + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        decode_predictions(np.zeros(shape, np.float32))


@pytest.mark.parametrize("top", [0, -1, 1001, 2.5, True])
def test_decode_predictions_rejects_bad_top(top):
    with pytest.raises(ValueError, match="top"):
        decode_predictions(np.zeros((1, 1000)), top=top)

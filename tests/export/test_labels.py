"""Which class names an export writes (issue 23, items 5, 10, 11): a run's recorded names, an ImageNet
release's, what --labels says; never ImageNet's silently, and every unusable file said in one line."""

import json
import os

import pytest

from keras_t2t.export.errors import ExportError
from keras_t2t.export.labels import release_tag_names, training_class_names
from keras_t2t.export.pipeline import resolve_labels


def _model_file(folder, summary=None, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(b"not read here")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if raw is not None:
        (folder / "summary.json").write_bytes(raw)
    return folder / "model.keras"


def test_a_1000_class_model_with_no_names_gets_generic_labels_and_a_sentence_saying_why(tmp_path):
    names, source = resolve_labels(None, 1000, training_class_names(_model_file(tmp_path / "run")))
    assert names[:2] == ["class_0", "class_1"] and len(names) == 1000
    assert "no class names recorded" in source and "--labels imagenet" in source
    names, source = resolve_labels("imagenet", 1000)
    assert names[0] == "tench" and source == "imagenet (--labels imagenet)"


def test_an_imagenet_release_brings_imagenets_names():
    names, source = resolve_labels(None, 1000, training_class_names("t2t_vit_7_imagenet"))
    assert names[0] == "tench" and "the release t2t_vit_7_imagenet" in source
    names, _ = resolve_labels(None, 1000, release_tag_names("imagenet"))
    assert names[0] == "tench"
    assert training_class_names("t2t_vit_14_cifar10") is None  # not ImageNet's


@pytest.mark.parametrize("summary, raw, words", [
    ({"class_names": ["a", "b", "c"]}, None, "records 3 class names, the model has 10 classes"),
    (None, b"{ not json", "cannot be read (JSONDecodeError"),
    ({"val_top1": 0.9}, None, "holds no class_names list"),
])
def test_an_unusable_summary_is_said_not_ignored(tmp_path, summary, raw, words):
    trained = training_class_names(_model_file(tmp_path / "run", summary, raw))
    names, source = resolve_labels(None, 10, trained)
    assert names == [f"class_{i}" for i in range(10)]
    assert words in source and "--labels FILE" in source


def test_a_labels_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("chien\nchat\n".encode("utf-8") + b"caf\xe9\n")  # latin-1 in the last line
    with pytest.raises(ExportError, match=r"is not UTF-8 text \(byte 14: b'\\xe9'\); save it as UTF-8"):
        resolve_labels(str(path), 3)
    path.write_bytes("\ufeffchien\r\nchat\r\ncafé\r\n".encode("utf-8"))  # a BOM and Windows line ends
    assert resolve_labels(str(path), 3) == (["chien", "chat", "café"], str(path))
    assert not os.path.exists(tmp_path / "out")

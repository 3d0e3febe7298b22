"""The KerasHub section (docs/pretrained.md) runs as written: each of its Python blocks in a fresh process, offline.

A loopback mirror (``KERAS_T2T_WEIGHTS_URL``) serves a T2T-ViT-7 checkpoint written here in the
authors' layout, so the blocks' ``from_preset("t2t_vit_7_imagenet")`` fetch and convert it.
"""

import os
import re

import keras
import pytest

torch = pytest.importorskip("torch")

import reference as ref  # noqa: E402
from helpers import REPO, Mirror, run_on_backend, save_authors_checkpoint  # noqa: E402

SECTION = "## KerasHub presets, the backbone and segmentation"
T7_FILE = "71.7_T2T_ViT_7.pth.tar"


def _blocks():
    with open(os.path.join(REPO, "docs", "pretrained.md"), encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("\n" + SECTION + "\n")
    following = text.find("\n## ", start + len(SECTION) + 2)
    section = text[start:following if following > 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_preset_and_the_segmentation_blocks():
    blocks = _blocks()
    assert len(blocks) == 2
    assert "T2TViTImageClassifier.from_preset" in blocks[0] and "DeepLabV3ImageSegmenter" in blocks[1]


@pytest.mark.parametrize("index", [0, 1])
def test_each_python_block_of_the_kerashub_section_runs(index, tmp_path, monkeypatch):
    import keras_t2t

    config = dict(keras_t2t.VARIANTS["t2t_vit_7"], classes=1000, image_size=(224, 224))
    state = ref.make_state_dict(config, 7)
    path = save_authors_checkpoint(tmp_path / T7_FILE, state, state, "T2t_vit_7")
    server = Mirror()
    with open(path, "rb") as handle:
        server.files[T7_FILE] = handle.read()
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("KERAS_T2T_WEIGHTS_URL", server.url)
    code = f"import os\nos.chdir({str(workdir)!r})\n" + _blocks()[index]
    try:
        out = run_on_backend(keras.backend.backend(), code)
    finally:
        server.stop()
    if index == 0:
        assert "['t2t_vit_7_imagenet', 't2t_vit_10_imagenet', 't2t_vit_12_imagenet']" in out
        assert "{'P2': (56, 56, 64), 'P3': (28, 28, 64), 'P4': (14, 14, 256)}" in out
        assert os.path.isfile(workdir / "my_t2t_vit_7" / "task.json")
    else:
        assert "(4, 64, 64, 3)" in out

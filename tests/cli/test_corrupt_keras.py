"""A damaged .keras file given to any command is one line naming what is wrong (issue 23, item 6):
visualize said "File not found", a flipped bit gave a 59-line BadZipFile traceback."""

import pytest

import keras_t2t
from keras_t2t.cli import visualize as visualize_cli
from keras_t2t.export import cli as export_cli


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    keras_t2t.t2t_vit_mini(classes=3).save(folder / "good.keras")
    data = (folder / "good.keras").read_bytes()
    (folder / "trunc.keras").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0xFF  # inside the weights' record: its CRC no longer matches
    (folder / "flip.keras").write_bytes(bytes(flipped))
    return folder


@pytest.mark.parametrize("name, words", [("trunc.keras", "truncated or damaged zip archive"),
                                         ("flip.keras", "Bad CRC-32")])
def test_every_command_names_a_damaged_keras_file_in_one_line(damaged, tmp_path, capsys, name, words):
    path = str(damaged / name)
    commands = [
        (visualize_cli.main, ["--model", path, "--output-dir", str(tmp_path / "vis")]),
        (export_cli.main, ["--model", path, "--output-dir", str(tmp_path / "export")]),
    ]
    for main, argv in commands:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"'{path}' is not a readable '.keras' model file" in err and words in err, err
        assert "File not found" not in err and "Traceback" not in err
    assert not (tmp_path / "vis").exists() and not (tmp_path / "export").exists()


def test_visualize_refuses_a_decompression_bomb_image_in_one_line(damaged, tmp_path, capsys):
    # Issue 23, item 13: a 20000x20000 PNG (48 KB on disk) gave a DecompressionBombError traceback.
    from PIL import Image

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    argv = ["--model", str(damaged / "good.keras"), "--image", str(tmp_path / "bomb.png"),
            "--output-dir", str(tmp_path / "vis")]
    assert visualize_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.png" in err and "exceeds limit" in err and "Traceback" not in err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_visualize_feeds_the_models_preprocessing_in_either_dtype(damaged, tmp_path, capsys, dtype):
    # A bfloat16 cast (the "auto" dtype on a CPU with bfloat16) dropped the preprocessing the loader attached:
    # the image went through another transform, and a bomb past the reader that refuses it in one line.
    from PIL import Image

    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "red.png")
    argv = ["--model", str(damaged / "good.keras"), "--image", str(tmp_path / "red.png"),
            "--output-dir", str(tmp_path / "vis"), "--dtype", dtype]
    assert visualize_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "crop_pct 0.9" in out and f"{dtype}:" in out, out


def test_the_resize_reader_refuses_a_decompression_bomb_with_the_files_name(tmp_path):
    from PIL import Image

    from keras_t2t.data.images import load_image_resized

    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match=r"bomb\.png.*exceeds limit"):
        load_image_resized(tmp_path / "bomb.png", 32, 32)

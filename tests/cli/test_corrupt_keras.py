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

"""keras-t2t-convert, keras-t2t-evaluate and keras-t2t-weights on bad settings: one line, exit 2, before any work.

* an output location that cannot be written (under a regular file, in /sys or /proc, where
  even root cannot create anything) is refused before the input is read;
* ``KERAS_BACKEND=bogus`` is one line naming the backends keras-t2t runs on (a fresh process:
  the check runs when the package is imported, before Keras);
* a checkpoint whose weights hold NaN or Inf is refused by the converter when it is read,
  naming the tensors, and converted as it is with ``--allow-nonfinite``.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import keras_t2t
from helpers import REPO, row_state_dict, save_authors_checkpoint
from keras_t2t.cli import convert as convert_cli
from keras_t2t.cli import evaluate as evaluate_cli
from keras_t2t.cli import weights as weights_cli
from keras_t2t.weights import NonFiniteWeightsWarning, model_state_dict

T2T_VIT_7 = dict(t2t_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)

# Where nothing can be written, and how check_output_folder says so ({parent}: a regular file).
UNWRITABLE = {
    "under_a_file": ("{parent}/out", "cannot be created: '{parent}' is a file, not a folder."),
    "sys": ("/sys/keras_t2t_out", "cannot be written: nothing can be created in '/sys'"),
    "proc": ("/proc/keras_t2t_out", "cannot be written: nothing can be created in '/proc'"),
}


@pytest.fixture(params=sorted(UNWRITABLE))
def unwritable(request, tmp_path):
    """(a folder that cannot be written, the message naming why)."""
    folder, message = UNWRITABLE[request.param]
    root = "/" + folder.split("/")[1]
    if request.param != "under_a_file" and not os.path.isdir(root):
        pytest.skip(f"no {root} here")
    parent = tmp_path / "a_file"
    parent.write_text("not a folder")
    return folder.format(parent=parent), message.format(parent=parent)


def _one_error_line(capsys, prefix="error: "):
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(prefix), captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_convert_refuses_an_unwritable_output_folder_before_reading_the_checkpoint(unwritable, tmp_path, capsys):
    folder, message = unwritable
    # The checkpoint does not exist: a command that read it first would say so instead.
    argv = [str(tmp_path / "missing.pth.tar"), "--output", f"{folder}/model.keras"]
    assert convert_cli.main(argv) == 2
    err = _one_error_line(capsys)
    assert f"the --output folder '{folder}'" in err and message in err and "missing.pth.tar" not in err


def test_evaluate_refuses_an_unwritable_output_folder_before_loading_the_model(unwritable, tmp_path, capsys):
    folder, message = unwritable
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "val" / "a" / "x.png")
    (tmp_path / "junk.keras").write_bytes(b"not a model")  # loading it would fail with another message
    argv = ["--model", str(tmp_path / "junk.keras"), "--data-dir", str(tmp_path / "val"),
            "--output", f"{folder}/summary.json"]
    assert evaluate_cli.main(argv) == 2
    err = _one_error_line(capsys, "keras-t2t-evaluate: error: ")
    assert f"--output: folder '{folder}'" in err and message in err and "cannot load" not in err


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_weights_fetch_refuses_an_unwritable_cache_before_any_download(unwritable, monkeypatch, capsys):
    folder, message = unwritable
    monkeypatch.setenv("KERAS_HOME", folder)
    # Nothing listens there: a download attempt would fail with exit code 1 and a fetch error.
    monkeypatch.setenv("KERAS_T2T_WEIGHTS_URL", f"http://127.0.0.1:{_closed_port()}/")
    assert weights_cli.main(["fetch", "t2t_vit_7:imagenet"]) == 2
    err = _one_error_line(capsys)
    assert f"The weights cache ($KERAS_HOME/keras_t2t) '{folder}/keras_t2t'" in err and message in err
    assert "KERAS_HOME" in err and "Could not get" not in err


@pytest.mark.parametrize("command", [
    ["-m", "keras_t2t.cli.convert", "x.pth.tar", "--output", "x.keras"],
    ["-m", "keras_t2t.convert_cli", "x.pth.tar", "--output", "x.keras"],
    ["-m", "keras_t2t.cli.evaluate", "--model", "x.keras", "--data-dir", "."],
    ["-m", "keras_t2t.cli.weights", "list"],
    ["-m", "keras_t2t.evaluation", "--model", "x.keras", "--data-dir", "."],
])
def test_an_unknown_keras_backend_is_one_line_naming_the_valid_ones(tmp_path, command):
    env = dict(os.environ, KERAS_BACKEND="bogus", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=3600,
                            cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: unknown Keras backend 'bogus'")
    assert "tensorflow, jax, torch" in result.stderr and result.stdout == ""
    assert os.listdir(tmp_path) == []


# === NaN or Inf in a checkpoint: said when it is read ===


@pytest.fixture(scope="module")
def nonfinite_checkpoint(tmp_path_factory):
    """A t2t_vit_7 checkpoint at 32x32 (10 classes) with 3 NaN in head.weight and 1 Inf in pos_embed."""
    state = row_state_dict(T2T_VIT_7, classes=10, image_size=(32, 32))
    state = {key: np.array(value) for key, value in state.items()}
    state["head.weight"][0, :3] = np.nan
    state["pos_embed"][0, 0, 0] = np.inf
    folder = tmp_path_factory.mktemp("nonfinite")
    path = save_authors_checkpoint(folder / "nan.pth.tar", state, state, "t2t_vit_7", img_size=32)
    return path, state


def test_convert_refuses_a_checkpoint_with_nan_or_inf_naming_the_tensors(nonfinite_checkpoint, tmp_path, capsys):
    path, state = nonfinite_checkpoint
    assert convert_cli.main([str(path), "--output", str(tmp_path / "m.keras")]) == 2
    err = _one_error_line(capsys)
    assert err == (
        f"error: checkpoint '{path}' holds NaN or Inf in its 'state_dict_ema' weights: head.weight (3 NaN), "
        f"pos_embed (1 Inf): 4 non-finite values in 2 of {len(state)} tensors; a model of them gives no finite "
        "scores (--allow-nonfinite converts them as they are)\n"
    )
    assert "verification" not in err and os.listdir(tmp_path) == []


def test_convert_with_allow_nonfinite_writes_them_where_they_were(nonfinite_checkpoint, tmp_path, capsys):
    path, state = nonfinite_checkpoint
    output = tmp_path / "m.weights.h5"
    assert convert_cli.main([str(path), "--output", str(output), "--allow-nonfinite"]) == 0
    out = capsys.readouterr().out
    assert "non-finite weights (converted as they are, --allow-nonfinite): head.weight (3 NaN)" in out
    assert "verify: 111 tensors equal the checkpoint's" in out and f"wrote {output}" in out
    with pytest.warns(NonFiniteWeightsWarning, match="head.weight \\(3 NaN\\), pos_embed \\(1 Inf\\)"):
        model = keras_t2t.t2t_vit_7(input_shape=(32, 32, 3), weights=output, classifier_activation=None)
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)  # NaN equal to NaN, in place

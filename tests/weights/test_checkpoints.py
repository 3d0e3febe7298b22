"""Checkpoints in the authors' container format (real ``torch.save``), end to end.

Each checkpoint here is what timm's CheckpointSaver writes for the reference
code (spec section 10): a dict with ``state_dict`` and ``state_dict_ema``
(different values: the EMA ones must win), ``epoch``, ``arch``, ``args`` (an
argparse.Namespace), ``optimizer``, ``version`` and ``metric``, keys carrying
DataParallel's ``module.`` prefix. The tensors come from the independent
NumPy reference (tests/reference.py), which also gives the expected logits.
"""

import argparse
import os
import pickle
import re
import stat
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras_t2t  # noqa: E402
import reference as ref  # noqa: E402
from helpers import REPO, random_images, row_state_dict, save_authors_checkpoint  # noqa: E402
from keras_t2t.cli import convert as convert_cli  # noqa: E402
from keras_t2t.weights import model_state_dict  # noqa: E402
from keras_t2t.weights.torch_pickle import CheckpointError, load_state_dict_file  # noqa: E402

ATOL = 1e-4  # Keras logits (float32) against the float64 reference
T2T_VIT_7 = dict(t2t_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, classes=1000)
T2T_VIT_7_PARAMS = "4,310,222"  # spec section 8, all weights


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _logits(model, images):
    return _np(model(images, training=False))


@pytest.fixture(scope="module")
def t7(tmp_path_factory):
    """A real-size t2t_vit_7 checkpoint at 224x224, and the reference's logits of its EMA weights."""
    config = dict(T2T_VIT_7, image_size=(224, 224))
    ema = ref.make_state_dict(config, 71)
    plain = ref.make_state_dict(config, 72)
    path = save_authors_checkpoint(tmp_path_factory.mktemp("t7") / "71.7_T2T_ViT_7.pth.tar", ema, plain, "T2t_vit_7")
    images = random_images(11, 2, 224, 224)
    return argparse.Namespace(
        path=path, config=config, ema=ema, plain=plain, images=images, logits=ref.forward(ema, images, config)
    )


# === a. the checkpoint's logits, through from_checkpoint, for each T2T type and at 384 ===


def test_performer_t2t_vit_7_checkpoint_gives_the_reference_logits_of_its_ema_weights(t7):
    model = keras_t2t.from_checkpoint(t7.path, classifier_activation=None)
    assert model.name == "t2t_vit_7" and model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    info = model.checkpoint_info
    assert (info["variant"], info["source_key"], info["arch"], info["epoch"]) == (
        "t2t_vit_7", "state_dict_ema", "T2t_vit_7", 309
    )
    np.testing.assert_allclose(_logits(model, t7.images), t7.logits, atol=ATOL, rtol=ATOL)
    # The EMA weights were loaded, not the raw ones.
    loaded = model_state_dict(model)
    assert len(loaded) == len(t7.ema) == 111
    for key in t7.ema:
        np.testing.assert_array_equal(loaded[key], t7.ema[key], err_msg=key)
    assert not np.allclose(loaded["head.weight"], t7.plain["head.weight"])
    # (--weights-entry state_dict of the converter gets the raw ones: see the .weights.h5 test below.)


def test_transformer_t2t_checkpoint_gives_the_reference_logits(tmp_path):
    # Transformer T2T layers at 224 (the 3136-token attention), t2t_vit_7's backbone widths at depth 2
    # (t2t_vit_t_14 itself is 21M parameters: too slow for every backend).
    config = dict(T2T_VIT_7, t2t_type="transformer", depth=2, image_size=(224, 224))
    ema, plain = ref.make_state_dict(config, 31), ref.make_state_dict(config, 32)
    assert "tokens_to_token.attention1.attn.qkv.weight" in ema and "blocks.0.attn.qkv.bias" not in ema
    path = save_authors_checkpoint(tmp_path / "t2t_t.pth.tar", ema, plain, "T2t_vit_t_custom")
    model = keras_t2t.T2TViT(
        input_shape=(224, 224, 3), t2t_type="transformer", embed_dim=256, depth=2, num_heads=4, mlp_ratio=2.0,
        classifier_activation=None,
    )
    report = keras_t2t.load_weights(model, path)
    assert report["loaded"] == len(ema) and not report["head_dropped"] and not report["pos_embed_resized"]
    images = random_images(12, 2, 224, 224)
    np.testing.assert_allclose(_logits(model, images), ref.forward(ema, images, config), atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match=r"No T2T-ViT variant .*transformer T2T, embed_dim 256, depth 2"):
        keras_t2t.from_checkpoint(path)


def test_384_checkpoint_is_built_at_384_by_itself_and_gives_the_reference_logits(tmp_path):
    config = dict(T2T_VIT_7, image_size=(384, 384))
    ema, plain = ref.make_state_dict(config, 381), ref.make_state_dict(config, 382)
    assert ema["pos_embed"].shape == (1, 577, 256)  # 24x24 grid + the class token
    path = save_authors_checkpoint(tmp_path / "t7_384.pth.tar", ema, plain, "T2t_vit_7", img_size=384)
    model = keras_t2t.from_checkpoint(path, classifier_activation=None)
    assert model.input_shape == (None, 384, 384, 3) and model.grid_size == (24, 24)
    assert model.weights_report["pos_embed_resized"] is None
    images = random_images(13, 1, 384, 384)
    np.testing.assert_allclose(_logits(model, images), ref.forward(ema, images, config), atol=ATOL, rtol=ATOL)


# === b. the builders with weights=checkpoint ===


def test_builder_with_the_checkpoint_path_gives_the_same_logits(t7):
    model = keras_t2t.t2t_vit_7(weights=t7.path, classifier_activation=None)
    assert model.input_shape == (None, 224, 224, 3)
    np.testing.assert_allclose(_logits(model, t7.images), t7.logits, atol=ATOL, rtol=ATOL)


def test_builder_with_other_classes_drops_the_head_and_loads_the_rest(t7):
    model = keras_t2t.t2t_vit_7(weights=t7.path, classes=10, verbose=False)
    report = model.weights_report
    assert "1000 classes" in report["head_dropped"] and "10" in report["head_dropped"]
    assert report["loaded"] == 111 - 2  # everything but head.weight and head.bias
    loaded = model_state_dict(model)
    assert loaded["head.weight"].shape == (10, 256)
    for key in t7.ema:
        if not key.startswith("head."):
            np.testing.assert_array_equal(loaded[key], t7.ema[key], err_msg=key)


def test_builder_at_288_resizes_the_224_position_table_as_the_reference_does(t7):
    model = keras_t2t.t2t_vit_7(weights=t7.path, input_shape=(288, 288, 3), verbose=False)
    assert model.weights_report["pos_embed_resized"] == ((14, 14), (18, 18))
    table = model_state_dict(model)["pos_embed"]
    assert table.shape == (1, 1 + 18 * 18, 256)
    np.testing.assert_allclose(table, ref.resize_pos_embed(t7.ema["pos_embed"], 18), atol=1e-6)


# === c. detection of every variant from the weights' shapes ===


def _row_state_dict(name):
    return row_state_dict(keras_t2t.VARIANTS[name])


def test_the_cheap_row_state_dict_has_make_state_dicts_keys_and_shapes():
    full = ref.make_state_dict(dict(keras_t2t.VARIANTS["t2t_vit_10"], image_size=(32, 32)), 0)
    cheap = _row_state_dict("t2t_vit_10")
    assert {k: v.shape for k, v in cheap.items()} == {k: v.shape for k, v in full.items()}


@pytest.mark.parametrize("name", list(keras_t2t.VARIANTS))
def test_every_variant_is_detected_from_its_shapes(name):
    arch = "T2t_vit_14_resnext" if name == "t2t_vit_14_resnext" else None  # shapes equal t2t_vit_14's
    assert keras_t2t.detect_variant(_row_state_dict(name), arch=arch) == (name, {})


def test_resnext_is_told_from_t2t_vit_14_by_the_checkpoints_arch_entry(tmp_path):
    state = _row_state_dict("t2t_vit_14")
    assert keras_t2t.detect_variant(state) == ("t2t_vit_14", {})
    path = save_authors_checkpoint(tmp_path / "resnext.pth.tar", state, state, "T2t_vit_14_resnext")
    loaded, info = load_state_dict_file(path)
    assert info["arch"] == "T2t_vit_14_resnext"
    assert keras_t2t.detect_variant(loaded, arch=info["arch"]) == ("t2t_vit_14_resnext", {})
    assert keras_t2t.VARIANTS["t2t_vit_14_resnext"]["num_heads"] == 32


def test_weights_that_fit_no_variant_get_a_value_error_listing_the_known_ones():
    state = ref.make_state_dict(dict(keras_t2t.VARIANTS["t2t_vit_7"], depth=5, image_size=(32, 32)), 0)
    with pytest.raises(ValueError, match=r"No T2T-ViT variant .*depth 5.*known: t2t_vit_7 .*t2t_vit_14_wide"):
        keras_t2t.detect_variant(state)


def test_qkv_bias_is_detected_and_built(tmp_path):
    config = dict(T2T_VIT_7, qkv_bias=True, image_size=(64, 64))
    state = ref.make_state_dict(config, 5)
    assert keras_t2t.detect_variant(state) == ("t2t_vit_7", {"qkv_bias": True})
    path = save_authors_checkpoint(tmp_path / "bias.pth.tar", state, state, "T2t_vit_7", img_size=64)
    model = keras_t2t.from_checkpoint(path)
    assert model.qkv_bias and model.input_shape == (None, 64, 64, 3)
    loaded = model_state_dict(model)
    np.testing.assert_array_equal(loaded["blocks.3.attn.qkv.bias"], state["blocks.3.attn.qkv.bias"])


# === d. hostile and broken files: refused, no code run, nothing written ===


class _RunsCode:
    """Pickles as a call to os.system: an unsafe loader would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _hostile(marker):
    return {"state_dict": {"cls_token": torch.zeros(1, 1, 4)}, "arch": _RunsCode(f"touch '{marker}'"), "epoch": 1}


def _bad_file(kind, folder, t7_path):
    path = folder / f"{kind}.pth.tar"
    marker = folder / "MARKER"
    if kind == "torch_zip_runs_code":
        torch.save(_hostile(marker), path)
    elif kind == "plain_pickle_runs_code":
        with open(path, "wb") as handle:
            pickle.dump(_hostile(marker), handle, protocol=2)
    elif kind == "truncated":
        data = t7_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:  # not a checkpoint at all
        path.write_text("this is a README, not weights\n")
    return path, marker


BAD_FILES = ["torch_zip_runs_code", "plain_pickle_runs_code", "truncated", "not_a_checkpoint"]


def test_the_hostile_files_really_run_code_under_an_unsafe_loader(tmp_path, t7):
    # Guards the safety tests below: the payload is live, so "no marker" means "refused".
    path, marker = _bad_file("torch_zip_runs_code", tmp_path, t7.path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    path, marker = _bad_file("plain_pickle_runs_code", tmp_path, t7.path)
    with open(path, "rb") as handle:
        pickle.load(handle)
    assert marker.exists()


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_checkpoints_are_refused_by_from_checkpoint_and_the_cli(tmp_path, capsys, t7, kind):
    source = tmp_path / "in"
    source.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    path, marker = _bad_file(kind, source, t7.path)

    with pytest.raises(CheckpointError, match=r"\.pth\.tar"):
        keras_t2t.from_checkpoint(path)
    assert not marker.exists()

    for output in ("model.keras", "model.weights.h5"):
        assert convert_cli.main([str(path), "--output", str(out / output)]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
        assert not marker.exists()
        assert os.listdir(out) == []  # neither the output nor a temporary file


# === e. the converter command line ===


def _run_cli(capsys, *argv):
    code = convert_cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _head_logits(model, images):
    """Logits of a model whatever its classifier activation (the head layer's output)."""
    return _logits(keras.Model(model.input, model.get_layer("head").output), images)


def test_cli_converts_to_keras_and_the_file_gives_the_reference_logits(tmp_path, capsys, t7):
    output = tmp_path / "t2t_vit_7.keras"
    code, out, err = _run_cli(capsys, t7.path, "--output", output)
    assert code == 0, err
    for expected in ("variant: t2t_vit_7 (detected)", "performer T2T, embed_dim 256, depth 7", "weights entry: state_dict_ema",
                     "arch 'T2t_vit_7'", "epoch 309", "image size: 224x224", "classes: 1000",
                     f"parameters: {T2T_VIT_7_PARAMS}", "111 tensors equal the checkpoint's"):
        assert expected in out, (expected, out)
    # Identical weights; a fresh torch model may pick other CPU kernels, so not always bit-equal.
    assert _reload_diff(out) <= 1e-6
    assert os.listdir(tmp_path) == ["t2t_vit_7.keras"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    model = keras.saving.load_model(output)
    assert isinstance(model, keras_t2t.T2TViT) and model.name == "t2t_vit_7"
    np.testing.assert_allclose(_head_logits(model, t7.images), t7.logits, atol=ATOL, rtol=ATOL)


def test_cli_converts_to_weights_h5_which_the_builder_loads_and_respects_overwrite(tmp_path, capsys, t7):
    output = tmp_path / "t2t_vit_7.weights.h5"
    output.write_bytes(b"older file")
    code, out, err = _run_cli(capsys, t7.path, "--output", output, "--weights-entry", "state_dict")
    assert code == 2 and err.startswith("error: ") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert output.read_bytes() == b"older file" and os.listdir(tmp_path) == ["t2t_vit_7.weights.h5"]

    code, out, err = _run_cli(capsys, t7.path, "--output", output, "--weights-entry", "state_dict", "--overwrite")
    assert code == 0, err
    assert "weights entry: state_dict," in out
    assert output.read_bytes() != b"older file" and os.listdir(tmp_path) == ["t2t_vit_7.weights.h5"]
    # The builder reads it, and holds the raw weights asked for above.
    model = keras_t2t.t2t_vit_7(weights=output, classifier_activation=None)
    for key, value in model_state_dict(model).items():
        np.testing.assert_array_equal(value, t7.plain[key], err_msg=key)


def test_cli_new_head_and_no_top_keep_every_other_tensor(tmp_path, capsys, t7):
    code, out, err = _run_cli(capsys, t7.path, "-o", tmp_path / "ten.keras", "--classes", "10")
    assert code == 0, err
    assert "classes: 10 (checkpoint: 1000; its head is not used)" in out and "109 tensors equal" in out
    ten = model_state_dict(keras.saving.load_model(tmp_path / "ten.keras"))
    assert ten["head.weight"].shape == (10, 256)
    for key in t7.ema:
        if not key.startswith("head."):
            np.testing.assert_array_equal(ten[key], t7.ema[key], err_msg=key)

    code, out, err = _run_cli(capsys, t7.path, "-o", tmp_path / "features.weights.h5", "--no-top")
    assert code == 0, err
    assert "classes: no head (the checkpoint's 1000-class head is left out)" in out and "109 tensors equal" in out
    with h5py.File(tmp_path / "features.weights.h5", "r") as handle:
        shapes = []
        handle.visititems(lambda name, obj: shapes.append(obj.shape) if hasattr(obj, "shape") else None)
    assert len(shapes) == 109 and (256, 1000) not in shapes and (1000,) not in shapes
    assert sorted(os.listdir(tmp_path)) == ["features.weights.h5", "ten.keras"]


@pytest.mark.parametrize("name", ["model.h5", "model.pth", "model.keras.zip", "model", "model.weights.hdf5"])
def test_cli_refuses_an_unknown_output_suffix_and_writes_nothing(tmp_path, capsys, t7, name):
    code, out, err = _run_cli(capsys, t7.path, "--output", tmp_path / name)
    assert code == 2
    assert err.startswith("error: ") and name in err and ".keras" in err and ".weights.h5" in err
    assert os.listdir(tmp_path) == []


def test_cli_bad_arguments_exit_2_with_one_error_line(tmp_path, capsys, t7):
    cases = [
        ([tmp_path / "missing.pth.tar", "-o", tmp_path / "m.keras"], "does not exist"),
        ([t7.path, "-o", tmp_path / "m.keras", "--variant", "t2t_vit_15"], "invalid choice"),
        ([t7.path, "-o", tmp_path / "m.keras", "--variant", "t2t_vit_10"], "do not fit"),
        ([t7.path, "-o", tmp_path / "m.keras", "--image-size", "0x224"], "HxW"),
        ([t7.path, "-o", tmp_path / "m.keras", "--weights-entry", "model"], "no 'model' state dict"),
        ([t7.path, "-o", tmp_path / "m.keras", "--classes", "10", "--no-top"], "exclude each other"),
        ([t7.path, "-o", tmp_path / "no_such_folder" / "m.keras"], "folder"),
        ([t7.path], "--output"),
    ]
    for argv, message in cases:
        code, out, err = _run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert os.listdir(tmp_path) == []


def test_cli_verification_failure_exits_1_and_leaves_nothing(tmp_path, capsys, monkeypatch, t7):
    original = convert_cli._reload

    def corrupted(*args):  # the reloaded file's weights differ from what was converted
        model = original(*args)
        kernel = model.get_layer("head").kernel
        kernel.assign(keras.ops.add(kernel, 1e-3))
        return model

    monkeypatch.setattr(convert_cli, "_reload", corrupted)
    output = tmp_path / "t2t_vit_7.keras"
    output.write_bytes(b"older file")
    code, out, err = _run_cli(capsys, t7.path, "--output", output, "--overwrite")
    assert code == 1
    assert err.startswith("error: verification failed") and len(err.strip().splitlines()) == 1
    assert output.read_bytes() == b"older file" and os.listdir(tmp_path) == ["t2t_vit_7.keras"]


def _reload_diff(out):
    """The converter's reload check: the reloaded file's predictions against the model's."""
    found = re.search(r"reloaded .*max abs diff ([0-9.e+-]+)", out)
    assert found, out
    return float(found.group(1))


def test_python_dash_m_entry_point_converts(tmp_path, t7):
    output = tmp_path / "cli.weights.h5"
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-m", "keras_t2t.convert_cli", str(t7.path), "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=3600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "variant: t2t_vit_7 (detected)" in result.stdout and f"wrote {output}" in result.stdout
    assert _reload_diff(result.stdout) <= 1e-6 and "111 tensors equal the checkpoint's" in result.stdout
    assert os.listdir(tmp_path) == ["cli.weights.h5"]


def test_a_conversion_removes_what_killed_conversions_to_that_output_left(tmp_path, capsys, t7):
    # Issue 23, item 8: each SIGKILLed convert left a .<name>.keras.partial-*.keras that nothing removed.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".t7.keras.partial-{dead.pid}-abc123.keras"
    leftover.write_bytes(b"half a model")
    alive = tmp_path / f".t7.keras.partial-{os.getpid()}-def456.keras"  # a conversion still running
    alive.write_bytes(b"being written")
    code, out, _ = _run_cli(capsys, t7.path, "-o", tmp_path / "t7.keras")
    assert code == 0 and f"removed {leftover.name}, left by a conversion that was killed" in out
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "t7.keras"])

"""keras_t2t.visualize: token features on the grid and class-token attention, against NumPy."""

import os
import sys

import numpy as np
import pytest
import reference
import reference_vit
from helpers import SMALL_VIT as SMALL
from helpers import assign_vit_state_dict as assign_state_dict
from PIL import Image

from keras_t2t import T2TViT, ViT
from keras_t2t.cli.visualize import main
from keras_t2t.visualize import visualize
from keras_t2t.weights import load_state_dict

# A small T2T-ViT: 16x16 images, soft splits (3, 2, 1) twice -> 8x8 then a 4x4 grid; one T2T layer.
T2T_SMALL = dict(t2t_type="performer", image_size=16, token_dim=8, t2t_stages=[(3, 2, 1), (3, 2, 1)], embed_dim=16,
                 depth=2, num_heads=2, mlp_ratio=2.0, classes=5)


@pytest.fixture(scope="module")
def vit_model():
    model = ViT(input_shape=(8, 8, 3), patch_size=2, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
                qkv_bias=True, classes=5, classifier_activation=None)
    sd = reference_vit.make_state_dict(SMALL, rng=5)
    assign_state_dict(model, sd)
    return model, sd


@pytest.fixture(scope="module")
def t2t_model():
    cfg = T2T_SMALL
    model = T2TViT(input_shape=(16, 16, 3), t2t_type=cfg["t2t_type"], token_dim=cfg["token_dim"],
                   t2t_stages=cfg["t2t_stages"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
                   num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], classes=cfg["classes"],
                   classifier_activation=None)
    sd = reference.make_state_dict(cfg, rng=7)
    load_state_dict(model, sd)
    return model, sd


def image(seed, size):
    return np.random.default_rng(seed).standard_normal((size, size, 3)).astype("float32")


def saved(result):
    return np.load(result["files"]["arrays"])


def test_known_weights_give_known_maps_raw_patches_and_uniform_attention(tmp_path, one_torch_thread):
    # Kernel (2, 2, 3, 16) with kernel[i, j, c, (2i + j) * 3 + c] = 1: token channel (2i + j) * 3 + c is
    # pixel (i, j, c) of its patch; channels 12..15 stay 0.
    model = ViT(input_shape=(8, 8, 3), patch_size=2, embed_dim=16, depth=2, num_heads=4, classes=3)
    kernel = np.zeros((2, 2, 3, 16), "float32")
    for i in range(2):
        for j in range(2):
            for c in range(3):
                kernel[i, j, c, (2 * i + j) * 3 + c] = 1.0
    proj = model.get_layer("patch_embed").proj
    proj.kernel.assign(kernel)
    proj.bias.assign(np.zeros(16, "float32"))
    # qkv = 0 in block 1 -> every logit 0 -> the class token attends 1/17 to each of its 17 tokens
    # (16 patches + itself).
    qkv = model.get_layer("blocks_1").attn.qkv
    qkv.kernel.assign(np.zeros(qkv.kernel.shape, "float32"))
    x = image(0, 8)
    result = visualize(model, x, str(tmp_path), stage="patch_embed", block=1, channels=16, verbose=False)
    expected = np.zeros((4, 4, 16))
    for r in range(4):
        for col in range(4):
            expected[r, col, :12] = x[2 * r:2 * r + 2, 2 * col:2 * col + 2, :].reshape(12)
    np.testing.assert_allclose(saved(result)["features"], expected, atol=1e-6)
    np.testing.assert_allclose(saved(result)["attention"], np.full((4, 4, 4), 1.0 / 17.0), atol=1e-7)


@pytest.mark.parametrize("block", [0, -1])
def test_vit_stage_features_and_attention_equal_the_numpy_reference(vit_model, block, tmp_path, one_torch_thread):
    model, sd = vit_model
    x = image(2, 8)
    ref = reference_vit.forward(sd, x[None], SMALL)
    index = block % 2
    result = visualize(model, x, str(tmp_path), stage=f"block_{block}", block=block, verbose=False)
    arrays = saved(result)
    np.testing.assert_allclose(arrays["features"], ref["blocks"][index][0, 1:].reshape(4, 4, 16), atol=1e-5)
    probs = reference_vit.cls_attention(sd, f"blocks.{index}", ref["block_inputs"][index], num_heads=2)
    np.testing.assert_allclose(arrays["attention"], probs[0, :, 1:].reshape(2, 4, 4), atol=1e-6)
    assert str(arrays["stage"]) == f"block_{index}" and int(arrays["block"]) == index


def test_t2t_soft_split_features_are_the_unfolded_image(t2t_model, tmp_path, one_torch_thread):
    model, _ = t2t_model
    x = image(3, 16)
    result = visualize(model, x, str(tmp_path), stage="soft_split_0", block=0, verbose=False)
    expected = reference.unfold(x[None], 3, 2, 1).reshape(8, 8, 27)  # feature c * 9 + i * 3 + j
    np.testing.assert_allclose(saved(result)["features"], expected, atol=1e-6)


def test_t2t_layer_project_and_attention_equal_the_numpy_reference(t2t_model, tmp_path, one_torch_thread):
    model, sd = t2t_model
    x = image(4, 16)
    ref = reference.forward(sd, x[None], T2T_SMALL, return_features=True)
    layer1 = reference.token_performer(sd, "tokens_to_token.attention1", reference.unfold(x[None], 3, 2, 1))
    result = visualize(model, x, str(tmp_path), stage="t2t_layer_1", block=1, verbose=False)
    arrays = saved(result)
    np.testing.assert_allclose(arrays["features"], layer1.reshape(8, 8, 8), atol=1e-4)
    probs = reference_vit.cls_attention(sd, "blocks.1", ref["blocks"][0], num_heads=2)
    np.testing.assert_allclose(arrays["attention"], probs[0, :, 1:].reshape(2, 4, 4), atol=1e-5)
    project = visualize(model, x, str(tmp_path), stage="project", verbose=False)
    np.testing.assert_allclose(saved(project)["features"], ref["t2t"].reshape(4, 4, 16), atol=1e-4)


def test_pngs_have_the_documented_pixel_size(vit_model, tmp_path, one_torch_thread):
    model, _ = vit_model
    result = visualize(model, image(5, 8), str(tmp_path), stage="patch_embed", channels=5, panel_px=40,
                       prefix="x_", verbose=False)
    # 5 maps -> 3 per row, 2 rows: 3 * 40 wide, 2 * 40 + 32 (title band) high.
    assert Image.open(result["files"]["features"]).size == (120, 112)
    # input + 2 heads = 3 panels -> 2 per row, 2 rows.
    assert Image.open(result["files"]["attention"]).size == (80, 112)
    assert sorted(os.listdir(tmp_path)) == ["x_arrays.npz", "x_attention_block1.png", "x_features_patch_embed.png"]


@pytest.mark.parametrize("which, kwargs, message", [
    ("vit", dict(stage="block_2"), r"stage 'block_2' is out of range: this model has 2 blocks; accepted: patch_embed, "
                                   r"block_0\.\.block_1"),
    ("vit", dict(block=5), r"block 5 is out of range: this model has 2 blocks \(accepted 0\.\.1, or -2\.\.-1"),
    ("vit", dict(block=-3), r"accepted 0\.\.1, or -2\.\.-1"),
    ("vit", dict(stage="soft_split_0"), r"exists in T2T-ViT only; this ViT accepts: patch_embed"),
    ("vit", dict(stage="project"), r"does not exist in this model; accepted: patch_embed"),
    ("t2t", dict(stage="t2t_layer_2"), r"2 soft splits and 1 T2T layers; accepted: soft_split_0\.\.soft_split_1, "
                                      r"t2t_layer_1\.\.t2t_layer_1, project"),
    ("t2t", dict(stage="soft_split_2"), r"out of range"),
    ("t2t", dict(stage="features"), r"Unknown stage 'features'; accepted: soft_split_0"),
    ("t2t", dict(channels=0), r"channels must be a positive integer"),
])
def test_bad_stage_or_block_names_the_accepted_range_and_writes_nothing(which, kwargs, message, vit_model, t2t_model,
                                                                          tmp_path):
    model = (vit_model if which == "vit" else t2t_model)[0]
    size = 8 if which == "vit" else 16
    with pytest.raises(ValueError, match=message):
        visualize(model, image(6, size), str(tmp_path / "out"), verbose=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_command_draws_a_saved_model_on_the_builtin_digit_and_an_image_file(vit_model, tmp_path, capsys,
                                                                            one_torch_thread):
    model, _ = vit_model
    path = str(tmp_path / "vit.keras")
    model.save(path)
    out = tmp_path / "vis"
    assert main(["--model", path, "--output-dir", str(out), "--stage", "block_0", "--block", "1"]) == 0
    printed = capsys.readouterr().out
    assert "built-in validation digit #0" in printed and "wrote" in printed
    assert {"features_block_0.png", "attention_block1.png", "arrays.npz"} <= set(os.listdir(out))
    picture = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(picture)
    assert main(["--model", path, "--image", str(picture), "--output-dir", str(out), "--prefix", "f_"]) == 0
    with np.load(out / "f_arrays.npz") as arrays:
        assert arrays["image"].shape == (8, 8, 3) and str(arrays["stage"]) == "patch_embed"
    assert main(["--model", path, "--output-dir", str(out), "--block", "9"]) == 2
    assert "block 9 is out of range" in capsys.readouterr().err
    assert main(["--model", "vit_99", "--output-dir", str(out)]) == 2
    assert "Unknown model 'vit_99'" in capsys.readouterr().err


def test_command_builds_a_named_model(tmp_path, capsys, one_torch_thread):
    args = ["--model", "vit_mini", "--image-size", "8", "--output-dir", str(tmp_path), "--channels", "4"]
    assert main(args) == 0
    assert "random weights" in capsys.readouterr().out
    with np.load(tmp_path / "arrays.npz") as arrays:
        assert arrays["features"].shape == (2, 2, 128) and arrays["attention"].shape == (4, 2, 2)


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["--model", "vit_mini", "--output-dir", str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not os.listdir(tmp_path)



def test_ghost_blocks_get_a_clear_error_for_class_token_attention():
    from keras_t2t.visualize import cls_attention

    model = T2TViT(input_shape=(32, 32, 3), t2t_stages=((3, 2, 1), (3, 2, 1), (3, 2, 1)), token_dim=8,
                   embed_dim=16, depth=1, num_heads=2, mlp_ratio=3.0, block_type="ghost", classes=3)
    with pytest.raises(ValueError, match=r"fused qkv projection .*block 0 is a GhostBlock"):
        cls_attention(model, np.zeros((1, 32, 32, 3), "float32"), 0)


def test_the_attention_title_names_the_attention_grid_not_the_feature_stages(t2t_model, tmp_path, one_torch_thread):
    # t2t_layer_1 tokens lie on an 8x8 grid; the backbone's class token attends over the final 4x4 grid.
    model, _ = t2t_model
    result = visualize(model, image(7, 16), str(tmp_path), stage="t2t_layer_1", block=1, verbose=False)
    assert result["features"].shape[:2] == (8, 8) and result["attention"].shape == (2, 4, 4)
    titles = {key: Image.open(result["files"][key]).text["Title"] for key in ("features", "attention")}
    assert "on their 8x8 grid" in titles["features"]
    assert titles["attention"].endswith("class-token attention, block 1 (4x4 grid)")


def test_random_weights_are_named_in_the_titles(tmp_path, one_torch_thread):
    assert main(["--model", "vit_mini", "--weights", "none", "--image-size", "8", "--channels", "2",
                 "--output-dir", str(tmp_path)]) == 0
    for name in ("features_patch_embed.png", "attention_block3.png"):
        assert Image.open(tmp_path / name).text["Title"].startswith("vit_mini (random weights): ")


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_an_unwritable_output_dir_fails_in_one_line_before_any_work(where, tmp_path, capsys):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "vis"
    else:
        if os.geteuid() == 0:
            target = "/proc/keras_t2t_vis"  # root writes through permission bits, not into /proc
        else:
            (tmp_path / "ro").mkdir(mode=0o500)
            target = tmp_path / "ro" / "vis"
    assert main(["--model", "vit_mini", "--output-dir", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"error: --output-dir '{target}'")
    assert captured.out == ""  # no model was built


def test_an_unknown_keras_backend_is_one_line_naming_the_valid_ones(tmp_path):
    import subprocess

    from helpers import REPO

    env = dict(os.environ, KERAS_BACKEND="bogus", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-m", "keras_t2t.cli.visualize", "--model", "vit_mini",
                             "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                            timeout=3600, cwd=REPO)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "'bogus'" in result.stderr and "tensorflow, jax, torch" in result.stderr
    assert not (tmp_path / "out").exists()

"""vit_large_patch16 (ViT-L/16, the ViT of the paper's Figure 2): its registry row and its 304M weights.

The full model is 304M float32 weights: building it costs ~45 s and ~2.3 GB here, too much
for a test run three times in CI. Its blocks are identical, so the count is checked on
two cheap builds of the same row (depth 1 and depth 2, everything else as registered,
224x224, 1000 classes): the difference is one block, and depth 24 is the depth-1 model
plus 23 blocks. Both builds and the extrapolation are compared with the count written
out from the architecture below, not from the package's code.
"""

import pytest

import keras_t2t
from keras_t2t.models import presets

D, DEPTH, HEADS, MLP_RATIO, PATCH, IMAGE, CLASSES = 1024, 24, 16, 4, 16, 224, 1000


def vit_l16_weights(depth):
    """ViT-L/16's weights by part, from the architecture (learned positions, qkv bias)."""
    hidden = MLP_RATIO * D
    tokens = (IMAGE // PATCH) ** 2 + 1  # 196 patches + the class token
    block = {
        "norm1": 2 * D,
        "qkv": D * 3 * D + 3 * D,
        "proj": D * D + D,
        "norm2": 2 * D,
        "fc1": D * hidden + hidden,
        "fc2": hidden * D + D,
    }
    return {
        "patch_embed": PATCH * PATCH * 3 * D + D,  # a 16x16 stride-16 convolution, with bias
        "cls_token": D,
        "pos_embed": tokens * D,
        "blocks": depth * sum(block.values()),
        "norm": 2 * D,
        "head": D * CLASSES + CLASSES,
    }


def test_the_registry_row_is_vit_l16():
    preset = presets.get_preset("vit_large_patch16")
    assert (preset.family, preset.group, preset.image_size) == ("vit", "vit", IMAGE)
    assert dict(preset.config) == dict(
        patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, qkv_bias=True
    )
    assert "vit_large_patch16" in keras_t2t.list_models("vit")
    assert keras_t2t.vit_large_patch16.__name__ == "vit_large_patch16"


def test_the_hand_count_is_vit_l16s_published_304m():
    # 304,326,632: the count usually quoted for ViT-L/16 at 224 with 1000 classes.
    assert sum(vit_l16_weights(DEPTH).values()) == 304_326_632


@pytest.fixture(scope="module")
def shallow_counts():
    return {depth: keras_t2t.create_model("vit_large_patch16", depth=depth).count_params() for depth in (1, 2)}


def test_one_block_and_the_depth_one_model_have_the_hand_counted_weights(shallow_counts):
    assert shallow_counts[1] == sum(vit_l16_weights(1).values())
    assert shallow_counts[2] - shallow_counts[1] == vit_l16_weights(1)["blocks"]


def test_vit_large_patch16_has_304m_weights_at_224_with_1000_classes(shallow_counts):
    per_block = shallow_counts[2] - shallow_counts[1]
    assert shallow_counts[1] + (DEPTH - 1) * per_block == sum(vit_l16_weights(DEPTH).values()) == 304_326_632

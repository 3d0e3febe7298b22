"""The benchmark's PyTorch anchor (``benchmarks/authors_torch.py``) is the authors' model: their
state dict keys load into it strictly, and its logits are the NumPy reference's."""

import os
import sys

import numpy as np
import pytest

import reference as ref
from helpers import random_images

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import authors_torch  # noqa: E402


@pytest.mark.parametrize("variant, depth", [("t2t_vit_7", 2), ("t2t_vit_14", 1)])
def test_authors_torch_model_loads_the_authors_keys_and_gives_the_reference_logits(variant, depth):
    embed_dim, _, heads, mlp_ratio = authors_torch.CONFIGS[variant]
    config = dict(t2t_type="performer", embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                  classes=10, image_size=(64, 64))
    state = ref.make_state_dict(config, 3)
    model = authors_torch.T2TViT(variant, image_size=64, classes=10, depth=depth).eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, "float32")) for k, v in state.items()}, strict=True)
    images = random_images(4, 3, 64, 64)
    with torch.no_grad():
        got = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
        mixed = authors_torch.BlocksInBfloat16(model)(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    want = ref.forward(state, images, config)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(mixed.numpy() - want).max() <= 0.05 * np.abs(want).max()


def test_the_benchmark_runs_the_anchor_for_exactly_these_variants():
    from benchmarks import run

    assert set(run.AUTHORS_VARIANTS) == set(authors_torch.CONFIGS)
    assert "authors_b32" in run.select_cases("default", "t2t_vit_14", "torch")
    assert "authors_b32" not in run.select_cases("default", "t2t_vit_14", "jax")
    assert "authors_b32" not in run.select_cases("authors_b32", "t2t_vit_t_14", "torch")

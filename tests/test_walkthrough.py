"""docs/t2t_walkthrough.md states only what T2T-ViT-14 at 224x224 does: every shape and count in it is checked here.

One build of t2t_vit_14 and one image through it (the T2T module step by step, the backbone through one
sub-model), on the backend in use.
"""

import math
import os
import re

import keras
import numpy as np
import pytest
from helpers import REPO

import keras_t2t
from keras_t2t.layers import Restructurize

DOC = os.path.join(REPO, "docs", "t2t_walkthrough.md")
ROW = re.compile(r"^\| `([^`]+)` \|.*\| \(([\d, B]+)\) \|$")


def stated_shapes():
    """``{key: shape}`` of every table row of the walkthrough (``B`` kept as the string "B")."""
    rows = {}
    with open(DOC, encoding="utf-8") as handle:
        for line in handle:
            match = ROW.match(line.strip())
            if match:
                key, shape = match.groups()
                assert key not in rows, f"{key} stated twice"
                rows[key] = tuple(v if v == "B" else int(v) for v in (s.strip() for s in shape.split(",")))
    return rows


@pytest.fixture(scope="module")
def measured(one_torch_thread):
    model = keras_t2t.t2t_vit_14()
    t2t = model.get_layer("tokens_to_token")
    # The T2T module's inner steps are no nodes of the model's graph: they are traced here, one after the
    # other, by the module's own sublayers on a symbolic image (the shapes their call() computes).
    image = keras.KerasTensor((1, 224, 224, 3))
    shapes = {"image": image.shape}
    grids = t2t.stage_grids(224, 224)
    x = t2t.soft_splits[0].compute_output_spec(image)
    shapes["soft_split_0"] = x.shape
    for i, (attention, restructurize) in enumerate(zip(t2t.attentions, t2t.restructurizations, strict=True)):
        x = attention.compute_output_spec(x)
        shapes[f"t2t_layer_{i + 1}"] = x.shape
        # The walkthrough names the layer: keras_t2t.layers.Restructurize, one per T2T layer, onto its grid.
        assert isinstance(restructurize, Restructurize) and restructurize.grid == grids[i]
        x = restructurize.compute_output_spec(x)
        shapes[f"restructurize_{i + 1}"] = x.shape
        x = t2t.soft_splits[i + 1].compute_output_spec(x)
        shapes[f"soft_split_{i + 1}"] = x.shape
    shapes["project"] = t2t.project.compute_output_spec(x).shape
    # The rest from one real image through the model (one compiled run, every backend).
    names = ["tokens_to_token", "cls_token", "pos_embed", "blocks_0", "blocks_13", "norm", "pool", "head"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    pixels = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype("float32")
    outputs = dict(zip(names, probe.predict(pixels, batch_size=1, verbose=0)))
    assert outputs["tokens_to_token"].shape == shapes["project"]
    shapes.update((name, outputs[name].shape) for name in names[1:])
    block = model.get_layer("blocks_0")
    shapes["block_attention"] = block.attn.attention_weights(block.norm1(outputs["pos_embed"])).shape
    shapes = {k: tuple(int(v) for v in s) for k, s in shapes.items()}
    weights = {v.path: tuple(int(d) for d in v.shape) for v in model.weights}
    return model, shapes, weights


def test_every_shape_in_the_walkthrough_is_the_models(measured):
    model, shapes, weights = measured
    stated = stated_shapes()
    assert len(stated) >= 25  # the three tables
    for key, shape in stated.items():
        if "/" in key:
            assert weights.get(key) == shape, f"weight {key}: stated {shape}, the model has {weights.get(key)}"
        else:
            assert key in shapes, f"the walkthrough states {key!r}, which this test does not measure"
            assert shape[0] == "B" and (1,) + shape[1:] == shapes[key], (
                f"{key}: stated {shape}, the model gives {shapes[key]} for one image")


def test_the_token_counts_and_weight_counts_in_the_text_are_the_models(measured):
    model, shapes, weights = measured
    with open(DOC, encoding="utf-8") as handle:
        text = handle.read()
    t2t = model.get_layer("tokens_to_token")
    trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
    fixed_features = sum(math.prod(a.w.shape) for a in t2t.attentions)
    known = {
        model.count_params(), trainable, t2t.count_params(), fixed_features,
        shapes["pos_embed"][1] * shapes["pos_embed"][2],  # the sinusoid table's values
        *(shapes[k][1] for k in shapes if k.startswith("soft_split")),
    }
    for number in re.findall(r"\b\d{1,3}(?:,\d{3})+\b", text):
        assert int(number.replace(",", "")) in known, f"{number} in the walkthrough is none of the model's counts"
    for tokens, values in re.findall(r"([\d,]+) tokens\s+of\s+(\d+) values", text):
        assert (1, int(tokens.replace(",", "")), int(values)) in [shapes[k] for k in shapes if
                                                                   k.startswith("soft_split")], (tokens, values)
    assert model.count_params() - trainable == shapes["pos_embed"][1] * shapes["pos_embed"][2] + fixed_features
    sides = " -> ".join(str(side) for side in [224] + [grid[0] for grid in t2t.stage_grids(224, 224)])
    assert sides in text

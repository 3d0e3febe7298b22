"""The one mapping between this package's T2T-ViT variables and the authors' PyTorch state dict.

All renaming lives in ``torch_key`` (one rule table); all layout changes
(transposes, the depthwise kernels' (C,) <-> (C, 1, 1), the position-table
resize, dropping a head) are applied by ``checkpoint_filter_fn``, a pure function
from the authors' state dict to this model's variables (``to_torch_layout`` goes
back, ``model_state_dict``). Every weights file is loaded through this layout
(``keras_t2t.weights.loading``), so a ``.keras`` file, a ``.weights.h5`` file and
an authors' ``.pth.tar`` load the same way.
"""

import math
import re

import keras
import numpy as np

from keras_t2t.keras_files import few_names
from keras_t2t.weights.torch_pickle import normalize_state_dict

# How one of our arrays becomes the checkpoint's: "same"; "transpose" (a Dense kernel is a
# PyTorch Linear weight transposed); "pointwise" (a CheapOperation's (C,) kernel is the
# reference's depthwise 1x1 Conv1d weight, (C, 1, 1)).
LAYOUTS = ("same", "transpose", "pointwise")
# Variable-path suffix -> (torch suffix, layout).
_LEAF_RULES = {
    "kernel": ("weight", "transpose"),
    "bias": ("bias", "same"),
    "gamma": ("weight", "same"),
    "beta": ("bias", "same"),
    "depthwise_kernel": ("weight", "pointwise"),
}
# Names whose torch spelling differs from ours, per T2T layer type.
_T2T_RENAMES = {
    "performer": {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"},
    "transformer": {"qkv": "attn.qkv", "proj": "attn.proj"},
}
# Backbone names whose torch spelling differs from ours: the SE study's nn.Sequential indices.
_BLOCK_RENAMES = {"attn.se_layer.reduce": "attn.se_layer.fc.0", "attn.se_layer.expand": "attn.se_layer.fc.2"}
# The classifier heads, by the report entry that says when one is left out: the class head and
# Token Labeling's token head (``aux_head``, the 84.2% T2T-ViT-24). A head that does not fit the
# model (another class count, or no such head in the model) keeps the model's fresh one; never an error.
HEADS = {"head_dropped": "head.", "aux_head_dropped": "aux_head."}


def torch_key(path, t2t_type):
    """The authors' state-dict key of one of this package's variables, and its layout (``LAYOUTS``).

    ``tokens_to_token/attention1/kqv/kernel`` -> (``tokens_to_token.attention1.kqv.weight``, "transpose").
    """
    parts = path.split("/")
    if parts[0] == "cls_token":
        return "cls_token", "same"
    if parts[0] == "pos_embed":
        return "pos_embed", "same"
    leaf = parts[-1]
    body = ".".join(parts[:-1])
    body = re.sub(r"^blocks_(\d+)", r"blocks.\1", body)
    if leaf == "w":
        return f"{body}.w", "same"
    if leaf not in _LEAF_RULES:
        raise ValueError(f"No checkpoint name is known for the variable {path!r}.")
    match = re.match(r"^(tokens_to_token\.attention\d+)\.(.+)$", body)
    if match:
        inner = _T2T_RENAMES[t2t_type].get(match.group(2), match.group(2))
        body = f"{match.group(1)}.{inner}"
    match = re.match(r"^(blocks\.\d+)\.(.+)$", body)
    if match:
        body = f"{match.group(1)}.{_BLOCK_RENAMES.get(match.group(2), match.group(2))}"
    suffix, layout = _LEAF_RULES[leaf]
    return f"{body}.{suffix}", layout


def torch_shape(shape, layout):
    """The checkpoint's shape of a variable of ``shape`` stored with ``layout``."""
    shape = tuple(int(n) for n in shape)
    if layout == "transpose":
        return shape[::-1]
    if layout == "pointwise":
        return shape + (1, 1)
    return shape


def to_torch_layout(value, layout):
    """One of this package's arrays in the checkpoint's layout (``LAYOUTS``)."""
    return _relayout(value, layout, lambda shape: shape + (1, 1))


def from_torch_layout(value, layout):
    """The inverse of ``to_torch_layout``; ``value`` must already have the checkpoint's shape."""
    return _relayout(value, layout, lambda shape: shape[:-2])


def _relayout(value, layout, pointwise_shape):
    value = np.asarray(value)
    if layout == "transpose":  # its own inverse
        return value.T
    if layout == "pointwise":
        return value.reshape(pointwise_shape(value.shape))
    return value


def _t2t_type(model):
    t2t_type = getattr(model, "t2t_type", None)
    if t2t_type is None:
        raise ValueError(f"{type(model).__name__} is not a T2T-ViT model (it has no t2t_type).")
    return t2t_type


def variable_map(model):
    """{authors' key: (variable, layout)} for every weight of ``model``."""
    mapping = {}
    t2t_type = _t2t_type(model)
    for variable in model.weights:
        key, layout = torch_key(variable.path, t2t_type)
        if key in mapping:
            raise ValueError(f"Two variables map to the checkpoint key {key!r}: {variable.path!r}.")
        mapping[key] = (variable, layout)
    return mapping


def model_state_dict(model):
    """This model's weights as the authors' state dict (PyTorch names and layouts, NumPy arrays)."""
    state = {}
    for key, (variable, layout) in variable_map(model).items():
        state[key] = to_torch_layout(keras.ops.convert_to_numpy(variable), layout)
    return state


def _cubic_matrix(size_in, size_out, a=-0.75):
    """The (size_out, size_in) matrix of torch's bicubic interpolation (align_corners=False)."""

    def kernel(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    scale = size_in / size_out
    for o in range(size_out):
        source = (o + 0.5) * scale - 0.5
        base = math.floor(source)
        t = source - base
        for offset in range(-1, 3):
            index = min(max(base + offset, 0), size_in - 1)
            matrix[o, index] += kernel(offset - t)
    return matrix


def resize_pos_embed(pos_embed, new_grid, old_grid=None):
    """Resize a (1, 1 + gh*gw, D) position table to ``new_grid`` = (rows, cols).

    As the reference does (spec section 6): the class row is kept, the grid rows
    are resized bicubically (PyTorch's ``F.interpolate(mode="bicubic")``).
    ``old_grid`` defaults to the square grid the table implies.
    """
    pos_embed = np.asarray(pos_embed)
    cls_row, grid_rows = pos_embed[:, :1], pos_embed[0, 1:]
    if old_grid is None:
        side = math.isqrt(len(grid_rows))
        if side * side != len(grid_rows):
            raise ValueError(
                f"A position table with {len(grid_rows)} grid rows is not square; pass old_grid=(rows, cols)."
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != len(grid_rows):
        raise ValueError(f"old_grid {old_grid} does not hold the table's {len(grid_rows)} grid rows.")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    grid = grid_rows.reshape(old_grid[0], old_grid[1], -1).astype(np.float64)
    rows = _cubic_matrix(old_grid[0], new_grid[0])
    cols = _cubic_matrix(old_grid[1], new_grid[1])
    resized = np.einsum("ph,hwd,qw->pqd", rows, grid, cols).reshape(1, -1, grid.shape[-1])
    return np.concatenate([cls_row, resized.astype(pos_embed.dtype)], axis=1)


# What ``skip_mismatch=True`` left out, by kind (``WeightLoadReport["skipped"]``).
SKIPPED_KINDS = {
    "missing": "missing from the weights (the model keeps its own)",
    "unexpected": "not in the model (ignored)",
    "mismatched": "of another shape than the model's (the model keeps its own)",
}


class WeightLoadReport(dict):
    """What a load did: keys loaded, each head (``HEADS``) dropped or not, the table resized or not,
    and what ``skip_mismatch=True`` left out (``skipped``: {kind: keys}, see ``SKIPPED_KINDS``; or None)."""

    def __str__(self):
        lines = [f"loaded {self['loaded']} tensors"]
        for entry, prefix in HEADS.items():
            if self.get(entry):
                lines.append(f"{prefix[:-1]} not loaded ({self[entry]})")
        if self.get("pos_embed_resized"):
            old, new = self["pos_embed_resized"]
            lines.append(f"position table resized from a {old[0]}x{old[1]} to a {new[0]}x{new[1]} grid")
        if self.get("skipped"):
            lines.append(describe_skipped(self["skipped"]))
        return "; ".join(lines)


def describe_skipped(skipped):
    """One line naming what ``skip_mismatch=True`` left out ({kind: names}, kinds of ``SKIPPED_KINDS``)."""
    parts = [f"{len(skipped[kind])} {why}: {few_names(skipped[kind])}" for kind, why in SKIPPED_KINDS.items()
             if skipped.get(kind)]
    return "skip_mismatch: not loaded, " + "; ".join(parts)


def checkpoint_filter_fn(state_dict, model, skip_mismatch=False):
    """The authors' state dict -> {variable path: array in this model's layout}.

    A pure function: transposes Linear weights, resizes the position table to
    the model's grid, and leaves out a head (``HEADS``: the class head and Token
    Labeling's ``aux_head``) when the model has none or has another number of
    classes, saying so in the report. DataParallel's ``module.`` prefix is accepted
    (``normalize_state_dict``). Anything else that does not fit (a weight the
    model has and the dict lacks, a key the model lacks, another shape) is an
    error naming the keys, unless ``skip_mismatch`` (Keras' name): then only what
    fits is returned and the report's ``skipped`` names the rest.
    """
    mapping = variable_map(model)
    state = normalize_state_dict(state_dict)
    report = WeightLoadReport(loaded=0, pos_embed_resized=None, **dict.fromkeys(HEADS), skipped=None)
    model_heads = set()
    for entry, prefix in HEADS.items():
        state, report[entry] = _fit_head(state, mapping, prefix, model)
        model_heads |= {k for k in mapping if k.startswith(prefix)}

    skipped = {
        "missing": sorted(k for k in mapping if k not in state and k not in model_heads),
        "unexpected": sorted(k for k in state if k not in mapping),
        "mismatched": [],
    }
    if (skipped["missing"] or skipped["unexpected"]) and not skip_mismatch:
        raise ValueError(
            "The weights do not fit this model "
            f"({describe_model(model)}). Missing from the weights: {few_names(skipped['missing'])}. "
            f"Not in the model: {few_names(skipped['unexpected'])}. Check the variant (or let "
            "keras_t2t.detect_variant pick it from the checkpoint), or pass skip_mismatch=True to load only "
            "the weights that fit."
        )

    out = {}
    for key, (variable, layout) in mapping.items():
        if key not in state:
            continue
        try:
            value = _fitted(key, np.asarray(state[key]), variable, layout, model, report)
        except ValueError as error:
            if not skip_mismatch:
                raise
            skipped["mismatched"].append(f"{key} {np.shape(state[key])} ({error})")
            continue
        out[variable.path] = value
        report["loaded"] += 1
    if any(skipped.values()):
        report["skipped"] = {kind: names for kind, names in skipped.items() if names}
    return out, report


def _fitted(key, value, variable, layout, model, report):
    """``value`` (the weights' ``key``) in ``variable``'s layout, its position table resized; else a ValueError."""
    if key == "pos_embed" and value.shape != tuple(variable.shape):
        if value.ndim != 3 or value.shape[-1] != variable.shape[-1]:
            raise ValueError(f"pos_embed has shape {value.shape}; the model needs (1, N, {variable.shape[-1]}).")
        old_grid = square_grid(value.shape[1] - 1, model)
        value = resize_pos_embed(value, model.grid_size, old_grid)
        report["pos_embed_resized"] = (old_grid, tuple(model.grid_size))
    expected = torch_shape(variable.shape, layout)
    if value.shape != expected:
        raise ValueError(
            f"{key} has shape {value.shape} in the weights; the model ({describe_model(model)}) needs {expected}."
        )
    return from_torch_layout(value, layout)


def _fit_head(state, mapping, prefix, model):
    """(state without the head ``prefix`` when it cannot load, why not or None)."""
    keys = {k for k in state if k.startswith(prefix)}
    model_keys = {k for k in mapping if k.startswith(prefix)}
    name = prefix[:-1]

    def fits(key):
        variable, layout = mapping[key]
        return tuple(np.shape(state[key])) == torch_shape(variable.shape, layout)

    if keys and keys == model_keys and all(fits(k) for k in keys):
        return state, None
    if not keys:
        why = f"the weights have no {name}; the model's {name} keeps its fresh initialisation" if model_keys else None
        return state, why
    shape = np.shape(state.get(f"{prefix}weight", ()))
    other_classes = f"the weights have {shape[0] if shape else '?'} classes, the model {model.classes}; "
    if not model.include_top:
        why = "the model has no head"
    elif model_keys:
        why = other_classes + f"the new {name} keeps its fresh initialisation"
    else:  # only the token-labeling head can be absent from a model with a top
        why = (other_classes if shape and shape[0] != model.classes else "") + (
            "the model has no token-labeling head (token_labeling_head=False): its scores are the class head's alone"
        )
    return {k: v for k, v in state.items() if k not in keys}, why


def square_grid(num_tokens, model):
    """The (side, side) grid of a position table with ``num_tokens`` grid rows, or a ValueError
    naming ``model``'s grid when the rows are not a square."""
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, side
    raise ValueError(
        f"The weights' position table has {num_tokens} grid rows, which is not a square grid, and the "
        f"model's grid is {model.grid_size[0]}x{model.grid_size[1]}; build the model at the size the "
        "weights were trained at."
    )


def describe_model(model):
    """One line of a T2T-ViT's architecture: "performer T2T, embed_dim 256, depth 7, 224x224 input"."""
    h, w, _ = model.image_shape
    block_type = getattr(model, "block_type", "standard")
    blocks = "" if block_type == "standard" else f"{block_type} blocks, "
    return (
        f"{model.t2t_type} T2T, {blocks}embed_dim {model.embed_dim}, depth {model.depth}, "
        f"{h}x{w} input"
    )



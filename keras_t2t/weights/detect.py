"""Which registered model a state dict is: read from its keys and tensor shapes alone.

``detect_variant`` matches the shapes against the rows of the registry
(``keras_t2t.models.presets``); ``checkpoint_image_size`` reads the image size
a position table was trained at, ``checkpoint_head`` the head's class count.
"""

import math

from keras_t2t.layers import DEFAULT_T2T_STAGES
from keras_t2t.models.base import square_size_for_grid, validate_stages
from keras_t2t.models.presets import ALL_VARIANTS, get_preset
from keras_t2t.weights.torch_pickle import normalize_state_dict


def describe_variant(variant):
    """One line on a registry row, e.g. "performer T2T, ghost blocks, embed_dim 384, depth 16, 6 heads, mlp_ratio 3"."""
    return get_preset(variant).describe()


def checkpoint_image_size(state_dict, stages=DEFAULT_T2T_STAGES):
    """(H, W) a state dict's position table was trained at, or None when it does not say.

    The size is ``keras_t2t.models.base.square_size_for_grid`` of the table's square grid.
    """
    pos = state_dict.get("pos_embed")
    if pos is None or len(pos.shape) != 3:
        return None
    tokens = int(pos.shape[1]) - 1
    side = math.isqrt(tokens)
    if side < 1 or side * side != tokens:
        return None
    size = square_size_for_grid(side, validate_stages(stages))
    return None if size is None else (size, size)


def checkpoint_head(state_dict):
    """(classes, token_labeling) of a state dict's head: ``head.weight``'s rows (None without a head),
    and whether it holds Token Labeling's ``aux_head`` too (the 84.2% T2T-ViT-24)."""
    state = normalize_state_dict(state_dict)
    head = state.get("head.weight")
    classes = int(head.shape[0]) if head is not None and len(head.shape) == 2 else None
    return classes, "aux_head.weight" in state


def _block_type_of(state):
    """Which backbone block a state dict holds, from the keys only the studies have."""
    if any(k.startswith("blocks.") and k.endswith(".dense_linear.weight") for k in state):
        return "dense"
    if any(k.startswith("blocks.") and ".attn.se_layer." in k for k in state):
        return "se"
    if any(k.startswith("blocks.") and k.endswith(".attn.q.weight") for k in state):
        return "ghost"
    return "standard"


def _signature(state_dict):
    """What the tensors' shapes say about the architecture (head count aside: shapes cannot tell)."""
    state = normalize_state_dict(state_dict)
    if "tokens_to_token.attention1.w" in state:
        t2t_type = "performer"
    elif "tokens_to_token.attention1.attn.qkv.weight" in state:
        t2t_type = "transformer"
    else:
        raise ValueError(
            "These weights are not a T2T-ViT state dict: neither 'tokens_to_token.attention1.w' (performer) "
            f"nor 'tokens_to_token.attention1.attn.qkv.weight' (transformer) is present. Keys start: "
            f"{', '.join(sorted(state)[:5])}."
        )
    block_type = _block_type_of(state)
    # Dense checkpoints number blocks and transitions together: blocks.3 may be a transition.
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    blocks = [i for i in indices if f"blocks.{i}.norm1.weight" in state]
    first = blocks[0] if blocks else 0
    found = {"t2t_type": t2t_type, "block_type": block_type, "depth": len(blocks)}
    try:
        found["embed_dim"] = int(state["tokens_to_token.project.weight"].shape[0])
        if blocks:
            width = int(state[f"blocks.{first}.norm1.weight"].shape[0])
            # The ghost MLP's fc1 keeps the width; fc2 reads the 3 x width concatenation.
            hidden = (
                int(state[f"blocks.{first}.mlp.fc2.weight"].shape[1])
                if block_type == "ghost"
                else int(state[f"blocks.{first}.mlp.fc1.weight"].shape[0])
            )
        else:
            width, hidden = found["embed_dim"], 0
        if block_type == "dense":
            found["growth_rate"] = int(state[f"blocks.{first}.dense_linear.weight"].shape[0])
            stages, count = [], 0
            for i in indices:
                if f"blocks.{i}.linear.weight" in state:
                    stages.append(count)
                    count = 0
                elif i in blocks:
                    count += 1
            found["dense_stages"] = tuple(stages + [count])
    except KeyError as error:
        raise ValueError(f"These T2T-ViT weights lack {error.args[0]!r}; the file is incomplete.") from error
    found["mlp_ratio"] = hidden / width if width else 0.0
    found["qkv_bias"] = f"blocks.{first}.attn.qkv.bias" in state or f"blocks.{first}.attn.q.bias" in state
    return found


def _visible_overrides(found):
    return {"qkv_bias": True} if found["qkv_bias"] else {}


def weight_overrides(state_dict):
    """What the weights fix that a registry row leaves open: ``{"qkv_bias": True}`` or ``{}``.

    For a checkpoint of a size no row has, built from a named row overridden
    (``keras_t2t.from_checkpoint(path, variant=...)``).
    """
    return _visible_overrides(_signature(state_dict))


def _row_fits(row, found):
    if (
        row.get("block_type", "standard") != found["block_type"]
        or row["t2t_type"] != found["t2t_type"]
        or row["embed_dim"] != found["embed_dim"]
        or abs(row["mlp_ratio"] - found["mlp_ratio"]) > 1e-6
    ):
        return False
    if found["block_type"] == "dense":
        return tuple(row["dense_stages"]) == found["dense_stages"] and row["growth_rate"] == found["growth_rate"]
    return row["depth"] == found["depth"]


def detect_variant(state_dict, arch=None):
    """The variant whose table row the weights' shapes fit, as ``(name, overrides)``.

    Rows of ``VARIANTS`` and ``STUDY_VARIANTS`` both count; the study blocks
    are told apart by their own keys (``attn.se_layer``, ``attn.q`` and
    ``dense_linear``). ``overrides`` holds what differs from the row but is
    visible in the weights (``qkv_bias``). Shapes cannot tell the head count,
    so t2t_vit_14 and t2t_vit_14_resnext look alike: ``arch`` (the
    checkpoint's own ``arch`` entry, e.g. ``"T2t_vit_14_resnext"``) settles
    it; without it the main family's row wins. DataParallel's ``module.``
    prefix is accepted (``normalize_state_dict``).
    """
    found = _signature(state_dict)
    matches = [name for name, row in ALL_VARIANTS.items() if _row_fits(row, found)]
    if not matches:
        blocks = "" if found["block_type"] == "standard" else f", {found['block_type']} blocks"
        dense = (
            f", dense_stages {found['dense_stages']}, growth_rate {found['growth_rate']}"
            if found["block_type"] == "dense"
            else ""
        )
        raise ValueError(
            f"No T2T-ViT variant has these weights' shapes ({found['t2t_type']} T2T, embed_dim "
            f"{found['embed_dim']}, depth {found['depth']}, mlp_ratio {found['mlp_ratio']:g}{blocks}{dense}); known: "
            + "; ".join(f"{n} ({describe_variant(n)})" for n in ALL_VARIANTS)
            + ". Build a keras_t2t.T2TViT (or T2TViTDense) with matching arguments and use keras_t2t.load_weights."
        )
    name = matches[0]
    if arch and len(matches) > 1:
        wanted = str(arch).lower().replace("-", "_")
        name = next((m for m in matches if m == wanted), name)
    return name, _visible_overrides(found)

"""The T2T-ViT family: one table of configurations, one builder per row.

``VARIANTS`` (the main family, every row the standard ViT block) and
``STUDY_VARIANTS`` (the paper's backbone studies with other blocks) are the
single source of truth: the builders, ``create_model``, variant detection and
the README's tables all come from them. ``ALL_VARIANTS`` is the two together.
"""

import math
import os

from keras_t2t.model import T2TViT, T2TViTDense, square_size_for_grid, validate_stages
from keras_t2t.layers import DEFAULT_T2T_STAGES

# name -> architecture (the reference's model builders, spec section 8).
VARIANTS = {
    "t2t_vit_7": dict(t2t_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_10": dict(t2t_type="performer", embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_12": dict(t2t_type="performer", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_14": dict(t2t_type="performer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_19": dict(t2t_type="performer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_24": dict(t2t_type="performer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_t_14": dict(t2t_type="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_t_19": dict(t2t_type="transformer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_t_24": dict(t2t_type="transformer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_14_resnext": dict(t2t_type="performer", embed_dim=384, depth=14, num_heads=32, mlp_ratio=3.0),
    "t2t_vit_14_wide": dict(t2t_type="performer", embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.0),
}

# The paper's backbone studies (spec sections 8 and 9): the same T2T module, other blocks.
# Apart from VARIANTS so that code reading VARIANTS (FLOP counts, training recipes, the
# converter's --variant) keeps meaning the standard block. ``block_type`` picks the block;
# "dense" builds a ``T2TViTDense``, whose depth is ``sum(dense_stages)``.
STUDY_VARIANTS = {
    "t2t_vit_14_se": dict(
        t2t_type="performer", block_type="se", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0
    ),
    "t2t_vit_16_ghost": dict(
        t2t_type="performer", block_type="ghost", embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0
    ),
    "t2t_vit_dense": dict(
        t2t_type="performer", block_type="dense", embed_dim=128, dense_stages=(3, 6, 6, 4), growth_rate=64,
        num_heads=8, mlp_ratio=2.0,
    ),
}
ALL_VARIANTS = {**VARIANTS, **STUDY_VARIANTS}

# The authors' released ImageNet-1k checkpoints (reported top-1, image size, file name).
RELEASED_WEIGHTS = {
    "t2t_vit_7": [(71.7, 224, "71.7_T2T_ViT_7.pth.tar")],
    "t2t_vit_10": [(75.2, 224, "75.2_T2T_ViT_10.pth.tar")],
    "t2t_vit_12": [(76.5, 224, "76.5_T2T_ViT_12.pth.tar")],
    "t2t_vit_14": [(81.5, 224, "81.5_T2T_ViT_14.pth.tar"), (83.3, 384, "83.3_T2T_ViT_14.pth.tar")],
    "t2t_vit_19": [(81.9, 224, "81.9_T2T_ViT_19.pth.tar")],
    "t2t_vit_24": [(82.3, 224, "82.3_T2T_ViT_24.pth.tar")],
    "t2t_vit_t_14": [(81.7, 224, "81.7_T2T_ViTt_14.pth.tar")],
    "t2t_vit_t_19": [(82.4, 224, "82.4_T2T_ViTt_19.pth.tar")],
    "t2t_vit_t_24": [(82.6, 224, "82.6_T2T_ViTt_24.pth.tar")],
}


def _unknown_variant(name):
    return ValueError(f"Unknown T2T-ViT variant {name!r}; accepted: {', '.join(ALL_VARIANTS)}.")


def describe_variant(variant):
    """One line on a table row, e.g. "performer T2T, ghost blocks, embed_dim 384, depth 16, 6 heads, mlp_ratio 3"."""
    if variant not in ALL_VARIANTS:
        raise _unknown_variant(variant)
    row = ALL_VARIANTS[variant]
    block_type = row.get("block_type", "standard")
    parts = [f"{row['t2t_type']} T2T"]
    if block_type != "standard":
        parts.append(f"{block_type} blocks")
    parts.append(f"embed_dim {row['embed_dim']}")
    if block_type == "dense":
        parts.append(f"dense_stages {tuple(row['dense_stages'])}, growth_rate {row['growth_rate']}")
    else:
        parts.append(f"depth {row['depth']}")
    parts.append(f"{row['num_heads']} heads, mlp_ratio {row['mlp_ratio']:g}")
    return ", ".join(parts)


def _model_class(config):
    """The model class of a row (after overrides); pops ``block_type`` where the class implies it."""
    if config.get("block_type") == "dense":
        config.pop("block_type")
        return T2TViTDense
    return T2TViT


def checkpoint_image_size(state_dict, stages=DEFAULT_T2T_STAGES):
    """(H, W) a state dict's position table was trained at, or None when it does not say.

    The size is ``keras_t2t.model.square_size_for_grid`` of the table's square grid.
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


def build_variant(
    variant,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling="token",
    classes=1000,
    classifier_activation="softmax",
    name=None,
    checkpoint_entry=None,
    verbose=True,
    state_dict=None,
    **kwargs,
):
    """Builds ``variant`` with the ``keras.applications`` keywords; ``kwargs`` override the table.

    ``state_dict`` (already read from ``weights``) saves reading the file twice.
    """
    if variant not in ALL_VARIANTS:
        raise _unknown_variant(variant)
    config = dict(ALL_VARIANTS[variant])
    config.update(kwargs)
    model_class = _model_class(config)
    state = state_dict
    if weights is not None:
        weights = _check_weights_argument(weights, variant)
        from keras_t2t import weights as weight_io

        if state is None and not os.fspath(weights).endswith(".h5"):
            state, _ = weight_io.read_state_dict(weights, which=checkpoint_entry)
        if state is not None:
            size = checkpoint_image_size(state, config.get("t2t_stages", DEFAULT_T2T_STAGES))
            if input_shape is None and size is not None:
                # Build at the resolution the weights were trained at (the 384 checkpoint).
                input_shape = (size[0], size[1], 3)
    model = model_class(
        input_shape=input_shape,
        include_top=include_top,
        classes=classes,
        pooling=pooling,
        classifier_activation=classifier_activation,
        name=name or variant,
        **config,
    )
    if weights is not None:
        from keras_t2t import weights as weight_io

        if state is None:
            report = weight_io.load_weights(model, weights)
        else:
            report = weight_io.load_state_dict(model, state)
        model.weights_report = report
        if verbose and (report.get("head_dropped") or report.get("pos_embed_resized")):
            print(f"keras_t2t: {variant} from {os.fspath(weights)}: {report}")
    return model


def _check_weights_argument(weights, variant):
    if isinstance(weights, str) and weights.lower() in ("imagenet", "imagenet1k"):
        files = RELEASED_WEIGHTS.get(variant)
        hint = (
            f" The authors released {', '.join(f[2] for f in files)} for {variant}."
            if files
            else f" The authors released no weights for {variant}."
        )
        raise ValueError(
            "weights='imagenet' would need a download, which keras_t2t never does. Download the authors' "
            "checkpoint from the releases of github.com/yitu-opensource/T2T-ViT and pass its path, e.g. "
            f"weights='/path/to/file.pth.tar'.{hint}"
        )
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None or a path to a '.pth.tar'/'.pth', '.keras' or '.weights.h5' file; "
            f"got {weights!r}."
        )
    if not os.path.exists(weights):
        raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist.")
    return weights


def _make_builder(variant):

    def builder(
        include_top=True,
        weights=None,
        input_shape=None,
        pooling="token",
        classes=1000,
        classifier_activation="softmax",
        name=None,
        **kwargs,
    ):
        return build_variant(
            variant,
            include_top=include_top,
            weights=weights,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            **kwargs,
        )

    builder.__name__ = builder.__qualname__ = variant
    builder.__doc__ = (
        f"T2T-ViT variant ``{variant}``: {describe_variant(variant)}.\n\n"
        "Args: the keras.applications keywords (include_top, weights, input_shape, pooling, classes,\n"
        "classifier_activation, name). ``weights`` is None or a path to an authors' checkpoint\n"
        "('.pth.tar'), a '.keras' file or a '.weights.h5' file. Other keywords (drop_path_rate,\n"
        "qk_scale, dtype, ...) go to the model class (``keras_t2t.T2TViT``, or ``keras_t2t.T2TViTDense``\n"
        "for the dense study)."
    )
    return builder


BUILDERS = {variant: _make_builder(variant) for variant in ALL_VARIANTS}


def create_model(variant, **kwargs):
    """Builds a variant by name, e.g. ``create_model("t2t_vit_14", classes=10)``."""
    if variant not in BUILDERS:
        raise _unknown_variant(variant)
    return BUILDERS[variant](**kwargs)


def list_variants(studies=False):
    """The main family's names; with ``studies``, the backbone studies' too."""
    return list(ALL_VARIANTS if studies else VARIANTS)


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
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}
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
    found["classes"] = int(state["head.weight"].shape[0]) if "head.weight" in state else None
    return found


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
    it; without it the main family's row wins.
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
    overrides = {"qkv_bias": True} if found["qkv_bias"] else {}
    return name, overrides


def from_checkpoint(path, variant=None, which=None, **kwargs):
    """A model built and loaded from any weights file, detecting the variant when not named.

    ``keras_t2t.from_checkpoint("81.5_T2T_ViT_14.pth.tar", classifier_activation=None)``.
    ``kwargs`` are the builder keywords (input_shape, classes, include_top, ...) and
    overrides of the row (embed_dim, dense_stages, ...), which with ``variant`` load a
    checkpoint of a size no row has.
    """
    from keras_t2t import weights as weight_io

    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {os.fspath(path)!r} does not exist.")
    if os.fspath(path).endswith(".h5"):
        if variant is None:
            raise ValueError("A '.weights.h5' file does not record its variant; pass variant=NAME.")
        return create_model(variant, weights=path, **kwargs)
    state, info = weight_io.read_state_dict(path, which=which)
    try:
        detected, overrides = detect_variant(state, arch=info.get("arch"))
    except ValueError:
        if variant is None:
            raise
        # A checkpoint of a custom size fits no row: the named variant, its row overridden by kwargs.
        detected, overrides = None, {}
    variant = variant or detected
    if variant not in ALL_VARIANTS:
        raise _unknown_variant(variant)
    for key, value in overrides.items():
        kwargs.setdefault(key, value)
    model = build_variant(variant, weights=path, checkpoint_entry=which, state_dict=state, **kwargs)
    model.checkpoint_info = dict(info, variant=variant, detected=detected)
    return model

"""The T2T-ViT family: one table of configurations, one builder per row.

``VARIANTS`` is the single source of truth: the builders, ``create_model``,
variant detection and the README's table all come from it.
"""

import math
import os

from keras_t2t.model import T2TViT, square_size_for_grid, validate_stages
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
    return ValueError(f"Unknown T2T-ViT variant {name!r}; accepted: {', '.join(VARIANTS)}.")


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
    if variant not in VARIANTS:
        raise _unknown_variant(variant)
    config = dict(VARIANTS[variant])
    config.update(kwargs)
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
    model = T2TViT(
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
    spec = VARIANTS[variant]

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
        f"T2T-ViT variant ``{variant}``: {spec['t2t_type']} T2T layers, embed_dim {spec['embed_dim']}, "
        f"depth {spec['depth']}, {spec['num_heads']} heads, mlp_ratio {spec['mlp_ratio']:g}.\n\n"
        "Args: the keras.applications keywords (include_top, weights, input_shape, pooling, classes,\n"
        "classifier_activation, name). ``weights`` is None or a path to an authors' checkpoint\n"
        "('.pth.tar'), a '.keras' file or a '.weights.h5' file. Other keywords (drop_path_rate,\n"
        "qk_scale, dtype, ...) go to ``keras_t2t.T2TViT``."
    )
    return builder


BUILDERS = {variant: _make_builder(variant) for variant in VARIANTS}


def create_model(variant, **kwargs):
    """Builds a variant by name, e.g. ``create_model("t2t_vit_14", classes=10)``."""
    if variant not in BUILDERS:
        raise _unknown_variant(variant)
    return BUILDERS[variant](**kwargs)


def list_variants():
    return list(VARIANTS)


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
    try:
        embed_dim = int(state["tokens_to_token.project.weight"].shape[0])
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.") and k.endswith(".norm1.weight")})
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if depth else 0
    except KeyError as error:
        raise ValueError(f"These T2T-ViT weights lack {error.args[0]!r}; the file is incomplete.") from error
    return {
        "t2t_type": t2t_type,
        "embed_dim": embed_dim,
        "depth": depth,
        "mlp_ratio": hidden / embed_dim if embed_dim else 0.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "classes": int(state["head.weight"].shape[0]) if "head.weight" in state else None,
    }


def detect_variant(state_dict, arch=None):
    """The variant whose table row the weights' shapes fit, as ``(name, overrides)``.

    ``overrides`` holds what differs from the row but is visible in the weights
    (``qkv_bias``). Shapes cannot tell the head count, so t2t_vit_14 and
    t2t_vit_14_resnext look alike: ``arch`` (the checkpoint's own ``arch``
    entry, e.g. ``"T2t_vit_14_resnext"``) settles it; without it the main
    family's row wins.
    """
    found = _signature(state_dict)
    matches = [
        name
        for name, row in VARIANTS.items()
        if row["t2t_type"] == found["t2t_type"]
        and row["embed_dim"] == found["embed_dim"]
        and row["depth"] == found["depth"]
        and abs(row["mlp_ratio"] - found["mlp_ratio"]) < 1e-6
    ]
    if not matches:
        raise ValueError(
            f"No T2T-ViT variant has these weights' shapes ({found['t2t_type']} T2T, embed_dim "
            f"{found['embed_dim']}, depth {found['depth']}, mlp_ratio {found['mlp_ratio']:g}); known: "
            + "; ".join(
                f"{n} ({r['t2t_type']}, {r['embed_dim']}, {r['depth']}, {r['mlp_ratio']:g})" for n, r in VARIANTS.items()
            )
            + ". Build a keras_t2t.T2TViT with matching arguments and use keras_t2t.load_weights."
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
    ``kwargs`` are the builder keywords (input_shape, classes, include_top, ...).
    """
    from keras_t2t import weights as weight_io

    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {os.fspath(path)!r} does not exist.")
    if os.fspath(path).endswith(".h5"):
        if variant is None:
            raise ValueError("A '.weights.h5' file does not record its variant; pass variant=NAME.")
        return create_model(variant, weights=path, **kwargs)
    state, info = weight_io.read_state_dict(path, which=which)
    detected, overrides = detect_variant(state, arch=info.get("arch"))
    variant = variant or detected
    if variant not in VARIANTS:
        raise _unknown_variant(variant)
    for key, value in overrides.items():
        kwargs.setdefault(key, value)
    model = build_variant(variant, weights=path, checkpoint_entry=which, state_dict=state, **kwargs)
    model.checkpoint_info = dict(info, variant=variant, detected=detected)
    return model

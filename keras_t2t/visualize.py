"""What a T2T-ViT or ViT sees: token features on the image grid, and the class token's attention.

For one image and one model this writes

* ``{prefix}features_{stage}.png``: the token features of ``stage`` put back on
  the token grid, one map per channel (the first ``channels`` channels), as in
  Figure 2 of the T2T-ViT paper;
* ``{prefix}attention_block{i}.png``: the input image, then, per head of block
  ``i``, the class token's attention over the patch tokens on the grid;
* ``{prefix}arrays.npz``: the arrays behind both pictures (``image``,
  ``features`` (rows, cols, C), ``attention`` (heads, rows, cols), ``stage``,
  ``block``, ``channels_shown``).

Stages of a T2T-ViT: ``soft_split_{i}`` (the unfolded windows), ``t2t_layer_{i}``
(after the i-th T2T layer), ``project`` (the T2T module's output) and
``block_{i}``; of a ViT: ``patch_embed`` and ``block_{i}``. Block tokens drop
the class token. The attention comes from the block's own weights
(norm1 -> qkv -> softmax(q k^T * scale)), computed with ``keras.ops``, so every
backend gives the same pictures.

Picture size: every map is a square of ``panel_px`` pixels, laid out
``ceil(sqrt(n))`` per row, plus a ``TITLE_PX`` band on top:
``width = cols * panel_px``, ``height = rows * panel_px + TITLE_PX``.

    keras-t2t-visualize --model runs/digits/model.keras --output-dir vis/
    keras-t2t-visualize --model t2t_vit_14 --weights 81.5_T2T_ViT_14.pth.tar \\
        --image cat.jpg --stage t2t_layer_1 --block 13 --output-dir vis/
"""

import math
import os
import runpy
import re
import textwrap

import keras
import numpy as np
from keras import ops

from keras_t2t.data.images import denormalize
from keras_t2t.layers import restructurization
from keras_t2t.io_utils import write_atomic

TITLE_PX = 32
_STAGE = re.compile(r"^(soft_split|t2t_layer|block)_(-?\d+)$")


def require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras-t2t-visualize draws with matplotlib: pip install matplotlib "
            "(or install keras-t2t with the [visualize] or [all] extra)."
        ) from error
    return Figure, FigureCanvasAgg


# --------------------------------------------------------------------------
# which stages a model has
# --------------------------------------------------------------------------
def _is_t2t(model):
    return any(layer.name == "tokens_to_token" for layer in model.layers)


def _depth(model):
    return sum(1 for layer in model.layers if re.fullmatch(r"blocks_\d+", layer.name))


def _t2t_module(model):
    return model.get_layer("tokens_to_token")


def stage_names(model):
    """The accepted stage names of ``model``, in the order the image flows through them."""
    depth = _depth(model)
    if _is_t2t(model):
        splits = len(_t2t_module(model).soft_splits)
        names = []
        for i in range(splits):
            names.append(f"soft_split_{i}")
            if i + 1 < splits:
                names.append(f"t2t_layer_{i + 1}")
        names.append("project")
    else:
        names = ["patch_embed"]
    return names + [f"block_{i}" for i in range(depth)]


def _describe_stages(model):
    depth = _depth(model)
    blocks = f"block_0..block_{depth - 1} (or block_-{depth}..block_-1)"
    if _is_t2t(model):
        splits = len(_t2t_module(model).soft_splits)
        layers_part = f"t2t_layer_1..t2t_layer_{splits - 1}, " if splits > 1 else ""
        return f"soft_split_0..soft_split_{splits - 1}, {layers_part}project, {blocks}"
    return f"patch_embed, {blocks}"


def resolve_block(model, block):
    """A block index in ``0..depth-1`` (negative counts from the end), or a ValueError naming the range."""
    depth = _depth(model)
    try:
        index = int(block)
    except (TypeError, ValueError):
        index = None
    if index is None or isinstance(block, bool) or not -depth <= index < depth:
        raise ValueError(
            f"block {block!r} is out of range: this model has {depth} blocks "
            f"(accepted 0..{depth - 1}, or -{depth}..-1 from the end)."
        )
    return index % depth


def resolve_stage(model, stage):
    """The canonical stage name (``block_-1`` -> ``block_{depth-1}``), or a ValueError naming the accepted ones."""
    stage = str(stage)
    accepted = _describe_stages(model)
    if stage in ("project", "patch_embed"):
        if stage in stage_names(model):
            return stage
        raise ValueError(f"stage {stage!r} does not exist in this model; accepted: {accepted}.")
    match = _STAGE.match(stage)
    if not match:
        raise ValueError(f"Unknown stage {stage!r}; accepted: {accepted}.")
    kind, index = match.group(1), int(match.group(2))
    if kind == "block":
        depth = _depth(model)
        if not -depth <= index < depth:
            raise ValueError(
                f"stage {stage!r} is out of range: this model has {depth} blocks; accepted: {accepted}."
            )
        return f"block_{index % depth}"
    if not _is_t2t(model):
        raise ValueError(f"stage {stage!r} exists in T2T-ViT only; this ViT accepts: {accepted}.")
    splits = len(_t2t_module(model).soft_splits)
    low, high = (0, splits - 1) if kind == "soft_split" else (1, splits - 1)
    if not low <= index <= high:
        raise ValueError(
            f"stage {stage!r} is out of range: this model has {splits} soft splits and {splits - 1} T2T layers; "
            f"accepted: {accepted}."
        )
    return stage


def default_stage(model):
    """The first stage after the tokenizer's own attention: ``t2t_layer_1`` (T2T-ViT) or ``patch_embed`` (ViT)."""
    names = stage_names(model)
    return "t2t_layer_1" if "t2t_layer_1" in names else names[0]


# --------------------------------------------------------------------------
# the arrays
# --------------------------------------------------------------------------
def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def _final_grid(model):
    return tuple(int(v) for v in model.grid_size)


def _submodel_output(model, tensor, images):
    return keras.Model(model.input, tensor)(images, training=False)


def _t2t_steps(t2t, images):
    """(stage name, tokens, grid) after each soft split and T2T layer, in order.

    The T2T module's inner steps are not nodes of the functional graph, so this
    runs its own sublayers in the order its call() does.
    """
    grids = t2t.stage_grids(images.shape[1], images.shape[2])
    x = t2t.soft_splits[0](images)
    yield "soft_split_0", x, grids[0]
    for i, attention in enumerate(t2t.attentions):
        x = attention(x, training=False)
        yield f"t2t_layer_{i + 1}", x, grids[i]
        x = t2t.soft_splits[i + 1](restructurization(x, grids[i]))
        yield f"soft_split_{i + 1}", x, grids[i + 1]


def stage_features(model, images, stage):
    """Token features of ``stage`` on their grid: ``(B, rows, cols, C)`` float32 NumPy."""
    stage = resolve_stage(model, stage)
    images = ops.convert_to_tensor(np.asarray(images, dtype="float32"))
    if stage.startswith("block_"):
        tokens = _submodel_output(model, model.get_layer("blocks_" + stage.split("_")[1]).output, images)
        tokens = tokens[:, 1:]  # the class token has no place on the grid
        grid = _final_grid(model)
    elif stage in ("project", "patch_embed"):
        layer = model.get_layer("tokens_to_token" if stage == "project" else "patch_embed")
        tokens = _submodel_output(model, layer.output, images)
        grid = _final_grid(model)
    else:
        for name, tokens, grid in _t2t_steps(_t2t_module(model), images):
            if name == stage:
                break
    tokens = _numpy(tokens)
    return tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])


def cls_attention(model, images, block):
    """The class token's attention over the patch tokens in block ``block``: ``(B, heads, rows, cols)``.

    The class token's row of the block's own softmax
    (``MultiHeadSelfAttention.attention_weights`` of norm1 of the block input);
    its attention to itself is left out, so a head's map sums to 1 minus that.
    """
    index = resolve_block(model, block)
    layer = model.get_layer(f"blocks_{index}")
    if not hasattr(getattr(layer, "attn", None), "qkv"):
        # Ghost attention has separate half-width q/k/v; a dense model's transitions have none.
        raise ValueError(
            f"cls_attention reads a fused qkv projection (the standard and SE blocks); block {index} "
            f"is a {type(layer).__name__}."
        )
    images = ops.convert_to_tensor(np.asarray(images, dtype="float32"))
    x = ops.cast(_submodel_output(model, layer.input, images), "float32")
    probs = _numpy(layer.attn.attention_weights(layer.norm1(x), queries=[0]))[:, :, 0, 1:]
    rows, cols = _final_grid(model)
    return probs.reshape(probs.shape[0], probs.shape[1], rows, cols)


# --------------------------------------------------------------------------
# the pictures
# --------------------------------------------------------------------------
def panel_layout(count):
    """(rows, cols) of ``count`` panels: ``ceil(sqrt(count))`` per row."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / cols), cols


def figure_size_px(count, panel_px):
    rows, cols = panel_layout(count)
    return cols * panel_px, rows * panel_px + TITLE_PX


def _draw_panels(panels, titles, title, panel_px, dpi, path, cmap="viridis"):
    """One image per panel on a grid; written as an exactly sized PNG."""
    Figure, FigureCanvasAgg = require_matplotlib()
    width, height = figure_size_px(len(panels), panel_px)
    rows, cols = panel_layout(len(panels))
    # A hair over the exact inches: Agg truncates the pixel size, and w/dpi*dpi can land just below w.
    fig = Figure(figsize=((width + 0.01) / dpi, (height + 0.01) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    # At 7 pt a character is about 6 px wide: wrap the title onto (at most) two lines of the band.
    title = "\n".join(textwrap.wrap(title, max(12, int(width / 6)))[:2])
    fig.suptitle(title, fontsize=7, y=1.0 - 0.5 * TITLE_PX / height, va="center")
    top = 1.0 - TITLE_PX / height
    for n, (panel, label) in enumerate(zip(panels, titles)):
        r, c = divmod(n, cols)
        ax = fig.add_axes([c / cols + 0.02 / cols, top - (r + 1) * top / rows + 0.02 * top / rows,
                           0.96 / cols, 0.84 * top / rows])
        ax.imshow(panel, cmap=None if panel.ndim == 3 else cmap, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(label, fontsize=6, pad=1)
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi))
    return path


def _display_image(image):
    """A normalised image back to [0, 1] RGB for display (inverse of preprocess_input when it fits)."""
    image = np.asarray(image, dtype="float32")
    if image.shape[-1] == 3:
        image = denormalize(image) / 255.0
    else:
        image = image[..., 0]
    return np.clip(image, 0.0, 1.0)


def visualize(model, image, output_dir, stage=None, block=-1, channels=16, prefix="", panel_px=96, dpi=100,
              verbose=True):
    """Writes the feature and attention pictures and their arrays for one preprocessed image.

    ``image``: ``(H, W, C)`` already normalised (``keras_t2t.preprocess_input``).
    Returns a dict with the file paths and the arrays.
    """
    stage = resolve_stage(model, default_stage(model) if stage is None else stage)
    index = resolve_block(model, block)
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive integer; got {channels!r}.")
    if panel_px < 8:
        raise ValueError(f"panel_px must be at least 8 pixels; got {panel_px!r}.")
    image = np.asarray(image, dtype="float32")
    expected = tuple(int(v) for v in model.input.shape[1:])
    if image.shape != expected:
        raise ValueError(f"The image has shape {image.shape}; the model takes {expected} (height, width, channels).")
    require_matplotlib()
    os.makedirs(output_dir, exist_ok=True)

    features = stage_features(model, image[None], stage)[0]
    attention = cls_attention(model, image[None], index)[0]
    shown = np.arange(min(int(channels), features.shape[-1]))
    rows, cols = features.shape[:2]
    files = {}
    files["features"] = _draw_panels(
        [features[..., c] for c in shown],
        [f"ch {c}" for c in shown],
        f"{model.name}: {stage} tokens on their {rows}x{cols} grid (first {len(shown)} of {features.shape[-1]} "
        "channels)",
        panel_px,
        dpi,
        os.path.join(output_dir, f"{prefix}features_{stage}.png"),
    )
    files["attention"] = _draw_panels(
        [_display_image(image)] + [attention[h] for h in range(attention.shape[0])],
        ["input"] + [f"head {h}" for h in range(attention.shape[0])],
        f"{model.name}: class-token attention, block {index} ({rows}x{cols} grid)",
        panel_px,
        dpi,
        os.path.join(output_dir, f"{prefix}attention_block{index}.png"),
        cmap="magma",
    )
    arrays = {
        "image": image,
        "features": features,
        "attention": attention,
        "stage": np.asarray(stage),
        "block": np.asarray(index),
        "channels_shown": shown,
    }
    files["arrays"] = write_atomic(os.path.join(output_dir, f"{prefix}arrays.npz"),
                                   lambda handle: np.savez(handle, **arrays))
    if verbose:
        print(f"{model.name}: stage {stage} -> {rows}x{cols} grid x {features.shape[-1]} channels; "
              f"block {index}: {attention.shape[0]} heads, class-token attention to the patches sums to "
              f"{float(attention.sum(axis=(1, 2)).mean()):.3f} per head (mean)")
        for key in ("features", "attention", "arrays"):
            print(f"  wrote {files[key]}")
    return {"files": files, "features": features, "attention": attention, "stage": stage, "block": index}


if __name__ == "__main__":  # python -m keras_t2t.visualize
    # The command lives in keras_t2t.cli.visualize; run it as the main module (no import back up).
    runpy.run_module("keras_t2t.cli.visualize", run_name="__main__")

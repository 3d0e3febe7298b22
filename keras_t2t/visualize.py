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

Any other Keras model whose layers give ``(rows, cols, channels)`` maps (a
``keras.applications`` ResNet-50, say) is a "cnn": its stages are those layers'
names (default: its first ``Conv2D``, ResNet-50's ``conv1_conv``) and it has no
attention picture. ``compare_features`` sets the first-layer maps of several
models (ResNet-50, ViT, T2T-ViT) side by side in one PNG, as in Figure 2 of the
paper: one panel per model, labelled with the model, its stage and its grid.

Picture size: every map is a square of ``panel_px`` pixels, laid out
``ceil(sqrt(n))`` per row, plus a ``TITLE_PX`` band on top:
``width = cols * panel_px``, ``height = rows * panel_px + TITLE_PX``. A
comparison is ``n`` panels of ``panel_px`` pixels each, side by side, plus the
title band and a ``LABEL_PX`` band for the panels' labels:
``(n * panel_px, panel_px + LABEL_PX + TITLE_PX)``.

    keras-t2t-visualize --model runs/digits/model.keras --output-dir vis/
    keras-t2t-visualize --model t2t_vit_14 --weights 81.5_T2T_ViT_14.pth.tar \\
        --image cat.jpg --stage t2t_layer_1 --block 13 --output-dir vis/
    keras-t2t-visualize --model resnet50 --weights imagenet --image cat.jpg --output-dir vis/
    keras-t2t-visualize --compare resnet50=imagenet vit_large_patch16=vit_l16.weights.h5 \\
        t2t_vit_24=82.3_T2T_ViT_24.pth.tar --image cat.jpg --output-dir vis/
    keras-t2t-visualize --compare resnet50=none vit_mini=none t2t_vit_mini=none --output-dir vis/
"""

import collections
import math
import os
import re
import textwrap

from keras_t2t.cli.commands import run_as_main  # noqa: E402

# python -m keras_t2t.visualize: the command of keras_t2t.cli.visualize, parsed before Keras is imported.
run_as_main(__name__, "visualize")

import keras
import numpy as np
from keras import ops

from keras_t2t.data.images import denormalize
from keras_t2t.io_utils import write_atomic

TITLE_PX = 32
LABEL_PX = 36


class KerasApplication(collections.namedtuple("KerasApplication", "constructor module")):
    """A ``keras.applications`` model the visualiser knows by name: ``keras.applications.<constructor>``,
    with ``keras.applications.<module>.preprocess_input``."""


# keras.applications models drawn beside T2T-ViT (the paper's Figure 2 and table use the ResNets).
KERAS_APPLICATIONS = {
    "resnet50": KerasApplication("ResNet50", "resnet"),
    "resnet101": KerasApplication("ResNet101", "resnet"),
    "resnet152": KerasApplication("ResNet152", "resnet"),
}
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
def model_kind(model):
    """``"t2t"`` (a T2T module), ``"vit"`` (a ``patch_embed`` layer) or ``"cnn"`` (any other model,
    e.g. a ``keras.applications`` ResNet: its stages are its layers with a ``(rows, cols, channels)`` output)."""
    names = {layer.name for layer in model.layers}
    if "tokens_to_token" in names:
        return "t2t"
    return "vit" if "patch_embed" in names else "cnn"


def _is_t2t(model):
    return model_kind(model) == "t2t"


def _depth(model):
    return sum(1 for layer in model.layers if re.fullmatch(r"blocks_\d+", layer.name))


def _t2t_module(model):
    return model.get_layer("tokens_to_token")


def _map_layers(model):
    """The layers of a "cnn" whose output is one ``(batch, rows, cols, channels)`` map, in graph order."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4:
            names.append(layer.name)
    return names


def stage_names(model):
    """The accepted stage names of ``model``, in the order the image flows through them."""
    kind = model_kind(model)
    if kind == "cnn":
        return _map_layers(model)
    depth = _depth(model)
    if kind == "t2t":
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
    kind = model_kind(model)
    if kind == "cnn":
        names = _map_layers(model)
        shown = ", ".join(names[:4]) + (f", ..., {names[-1]}" if len(names) > 4 else "")
        return f"a layer with a (rows, cols, channels) output: {shown} ({len(names)} layers)"
    depth = _depth(model)
    blocks = f"block_0..block_{depth - 1} (or block_-{depth}..block_-1)"
    if kind == "t2t":
        splits = len(_t2t_module(model).soft_splits)
        layers_part = f"t2t_layer_1..t2t_layer_{splits - 1}, " if splits > 1 else ""
        return f"soft_split_0..soft_split_{splits - 1}, {layers_part}project, {blocks}"
    return f"patch_embed, {blocks}"


def resolve_block(model, block):
    """A block index in ``0..depth-1`` (negative counts from the end), or a ValueError naming the range."""
    depth = _depth(model)
    if depth == 0:
        raise ValueError(f"{model.name} has no transformer blocks, so no class-token attention to draw.")
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
    if model_kind(model) == "cnn":
        if stage in _map_layers(model):
            return stage
        raise ValueError(f"Unknown stage {stage!r} for {model.name}; accepted: {accepted}.")
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


def _first_conv(model):
    names = _map_layers(model)
    if not names:
        raise ValueError(f"{model.name} has no layer with a (rows, cols, channels) output to draw.")
    convs = [name for name in names if isinstance(model.get_layer(name), keras.layers.Conv2D)]
    return (convs or names)[0]


def default_stage(model):
    """The first stage after the tokenizer's own attention: ``t2t_layer_1`` (T2T-ViT) or ``patch_embed`` (ViT);
    a "cnn"'s first ``Conv2D`` (ResNet-50's ``conv1_conv``)."""
    if model_kind(model) == "cnn":
        return _first_conv(model)
    names = stage_names(model)
    return "t2t_layer_1" if "t2t_layer_1" in names else names[0]


def first_layer_stage(model):
    """The paper's "first layer" of Figure 2: a CNN's first convolution (ResNet-50's conv1), a ViT's or
    T2T-ViT's first block (the paper's "block 1", ``block_0`` here)."""
    return _first_conv(model) if model_kind(model) == "cnn" else "block_0"


# --------------------------------------------------------------------------
# the arrays
# --------------------------------------------------------------------------
def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def _final_grid(model):
    return tuple(int(v) for v in model.grid_size)


def model_input(model, images):
    """Images normalised as this package does (``keras_t2t.preprocess_input``) -> what ``model`` takes:
    unchanged, except for a ``keras.applications`` model of ``KERAS_APPLICATIONS`` (by its name, e.g.
    ``resnet50``), which gets its own ``preprocess_input`` of the same pixels (ResNet: BGR, mean subtracted)."""
    application = KERAS_APPLICATIONS.get(model.name)
    images = np.asarray(images, dtype="float32")
    if application is None or model_kind(model) != "cnn":
        return images
    module = getattr(keras.applications, application.module)
    return np.asarray(module.preprocess_input(np.array(denormalize(images), dtype="float32")), dtype="float32")


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
    for i, (attention, restructurize) in enumerate(zip(t2t.attentions, t2t.restructurizations, strict=True)):
        x = attention(x, training=False)
        yield f"t2t_layer_{i + 1}", x, grids[i]
        x = t2t.soft_splits[i + 1](restructurize(x))
        yield f"soft_split_{i + 1}", x, grids[i + 1]


def stage_features(model, images, stage):
    """Token features of ``stage`` on their grid (a "cnn": the layer's maps): ``(B, rows, cols, C)`` float32 NumPy.

    ``images`` are what the model takes (see ``model_input``).
    """
    stage = resolve_stage(model, stage)
    images = ops.convert_to_tensor(np.asarray(images, dtype="float32"))
    if model_kind(model) == "cnn":
        tokens = _submodel_output(model, model.get_layer(stage).output, images)
        grid = tuple(int(v) for v in tokens.shape[1:3])
    elif stage.startswith("block_"):
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
    # The title also goes into the PNG's "Title" text chunk, where a reader (or a test) finds it as text.
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi,
                                                  metadata={"Title": " ".join(title.split())}))
    return path


def _display_image(image):
    """A normalised image back to [0, 1] RGB for display (inverse of preprocess_input when it fits)."""
    image = np.asarray(image, dtype="float32")
    if image.shape[-1] == 3:
        image = denormalize(image) / 255.0
    else:
        image = image[..., 0]
    return np.clip(image, 0.0, 1.0)


def _check_drawing(channels, panel_px):
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive integer; got {channels!r}.")
    if isinstance(panel_px, bool) or not isinstance(panel_px, (int, np.integer)) or panel_px < 8:
        raise ValueError(f"panel_px must be at least 8 pixels; got {panel_px!r}.")


def _check_image(model, image):
    image = np.asarray(image, dtype="float32")
    expected = tuple(int(v) for v in model.input.shape[1:])
    if image.shape != expected:
        raise ValueError(
            f"The image has shape {image.shape}; {model.name} takes {expected} (height, width, channels)."
        )
    return image


def _named(model, weights_label):
    return f"{model.name} ({weights_label})" if weights_label else model.name


def visualize(model, image, output_dir, stage=None, block=-1, channels=16, prefix="", panel_px=96, dpi=100,
              verbose=True, weights_label=None):
    """Writes the feature and attention pictures and their arrays for one preprocessed image.

    ``image``: ``(H, W, C)`` already normalised (``keras_t2t.preprocess_input``; a
    ``keras.applications`` model gets its own preprocessing of it, see ``model_input``).
    ``weights_label`` (e.g. ``"random weights"``) goes into the titles after the model's name.
    A "cnn" has no class token: it gets the feature picture and the arrays only.
    Returns a dict with the file paths and the arrays.
    """
    stage = resolve_stage(model, default_stage(model) if stage is None else stage)
    attends = model_kind(model) != "cnn"
    index = resolve_block(model, block) if attends else None
    _check_drawing(channels, panel_px)
    image = _check_image(model, image)
    require_matplotlib()
    os.makedirs(output_dir, exist_ok=True)

    inputs = model_input(model, image[None])
    features = stage_features(model, inputs, stage)[0]
    shown = np.arange(min(int(channels), features.shape[-1]))
    rows, cols = features.shape[:2]
    name = _named(model, weights_label)
    files = {}
    files["features"] = _draw_panels(
        [features[..., c] for c in shown],
        [f"ch {c}" for c in shown],
        f"{name}: {stage} {'maps' if not attends else 'tokens'} on their {rows}x{cols} grid "
        f"(first {len(shown)} of {features.shape[-1]} channels)",
        panel_px,
        dpi,
        os.path.join(output_dir, f"{prefix}features_{stage}.png"),
    )
    arrays = {"image": image, "features": features, "stage": np.asarray(stage), "channels_shown": shown}
    if attends:
        attention = cls_attention(model, inputs, index)[0]
        heads, grid_rows, grid_cols = attention.shape
        files["attention"] = _draw_panels(
            [_display_image(image)] + [attention[h] for h in range(heads)],
            ["input"] + [f"head {h}" for h in range(heads)],
            f"{name}: class-token attention, block {index} ({grid_rows}x{grid_cols} grid)",
            panel_px,
            dpi,
            os.path.join(output_dir, f"{prefix}attention_block{index}.png"),
            cmap="magma",
        )
        arrays.update(attention=attention, block=np.asarray(index))
    files["arrays"] = write_atomic(os.path.join(output_dir, f"{prefix}arrays.npz"),
                                   lambda handle: np.savez(handle, **arrays))
    if verbose:
        line = f"{model.name}: stage {stage} -> {rows}x{cols} grid x {features.shape[-1]} channels"
        if attends:
            line += (f"; block {index}: {attention.shape[0]} heads, class-token attention to the patches sums to "
                     f"{float(attention.sum(axis=(1, 2)).mean()):.3f} per head (mean)")
        print(line)
        for path in files.values():
            print(f"  wrote {path}")
    return {"files": files, "features": features, "attention": arrays.get("attention"), "stage": stage,
            "block": index}


def feature_mosaic(features, channels):
    """The first ``channels`` maps of ``features`` ``(rows, cols, C)``, each scaled to [0, 1] on its own
    (a constant map is 0), tiled ``ceil(sqrt(n))`` per row with NaN gaps (1 pixel per 16 of the map's
    side): ``(R, C)`` float32."""
    features = np.asarray(features, dtype="float32")
    count = min(int(channels), features.shape[-1])
    grid_rows, grid_cols = panel_layout(count)
    rows, cols = features.shape[:2]
    gap = max(1, max(rows, cols) // 16)
    mosaic = np.full((grid_rows * (rows + gap) - gap, grid_cols * (cols + gap) - gap), np.nan, "float32")
    for n in range(count):
        plane = features[..., n]
        low, high = float(plane.min()), float(plane.max())
        scaled = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
        r, c = divmod(n, grid_cols)
        mosaic[r * (rows + gap):r * (rows + gap) + rows, c * (cols + gap):c * (cols + gap) + cols] = scaled
    return mosaic


def compare_size_px(count, panel_px):
    """(width, height) of a comparison of ``count`` panels."""
    return count * panel_px, panel_px + LABEL_PX + TITLE_PX


def compare_features(entries, path, channels=16, panel_px=320, dpi=100, title=None, verbose=True):
    """One PNG with the feature maps of several models on the same image, side by side (the paper's Figure 2).

    ``entries``: one dict per panel with ``model``, ``image`` (``(H, W, C)`` normalised as
    ``keras_t2t.preprocess_input`` does, at the model's input size), and optionally ``stage``
    (default ``first_layer_stage``) and ``weights_label`` (``"random weights"``, a file name, ...).
    Each panel is the first ``channels`` maps of that stage, each scaled on its own,
    labelled with the model, the weights, the stage and its grid. Writes ``path`` and the
    shown maps beside it (``<path without .png>_arrays.npz``: ``features_<i>``, ``labels``).
    Returns ``{"path", "arrays", "panels": [{"model", "stage", "grid", "channels", "label"}, ...]}``.
    """
    if not entries:
        raise ValueError("compare_features needs at least one model.")
    _check_drawing(channels, panel_px)
    panels = []
    for entry in entries:
        model = entry["model"]
        stage = resolve_stage(model, entry.get("stage") or first_layer_stage(model))
        image = _check_image(model, entry["image"])
        panels.append((model, stage, image, entry.get("weights_label")))
    Figure, FigureCanvasAgg = require_matplotlib()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    width, height = compare_size_px(len(panels), panel_px)
    # A hair over the exact inches: Agg truncates the pixel size (as in _draw_panels).
    fig = Figure(figsize=((width + 0.01) / dpi, (height + 0.01) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    title = title or "First-layer features of the same image (each map scaled on its own)"
    fig.suptitle(title, fontsize=8, y=1.0 - 0.5 * TITLE_PX / height, va="center")
    described, arrays = [], {}
    for n, (model, stage, image, weights_label) in enumerate(panels):
        features = stage_features(model, model_input(model, image[None]), stage)[0]
        rows, cols, depth = features.shape
        shown = min(int(channels), depth)
        label = (f"{_named(model, weights_label)}\n{stage}: {rows}x{cols} grid, {shown} of {depth} channels")
        ax = fig.add_axes([(n + 0.02) / len(panels), (panel_px * 0.02) / height,
                           0.96 / len(panels), panel_px * 0.96 / height])
        ax.imshow(feature_mosaic(features, shown), cmap="viridis", interpolation="nearest", vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        ax.set_title(label, fontsize=7, pad=3)
        arrays[f"features_{n}"] = features[..., :shown]
        described.append({"model": model.name, "stage": stage, "grid": (rows, cols), "channels": shown,
                          "label": label})
    arrays["labels"] = np.asarray([panel["label"] for panel in described])
    metadata = {"Title": title, "Description": "; ".join(" ".join(p["label"].split()) for p in described)}
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=dpi, metadata=metadata))
    stem = path[:-4] if path.lower().endswith(".png") else path
    arrays_path = write_atomic(stem + "_arrays.npz", lambda handle: np.savez(handle, **arrays))
    if verbose:
        for panel in described:
            print(f"  {' '.join(panel['label'].split())}")
        print(f"  wrote {os.path.abspath(path)}\n  wrote {arrays_path}")
    return {"path": os.path.abspath(path), "arrays": arrays_path, "panels": described}

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

import argparse
import math
import os
import re
import sys
import textwrap

import numpy as np

from keras_t2t.io_utils import write_atomic

TITLE_PX = 32
_STAGE = re.compile(r"^(soft_split|t2t_layer|block)_(-?\d+)$")


def _require_matplotlib():
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
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float32")


def _final_grid(model):
    return tuple(int(v) for v in model.grid_size)


def _submodel_output(model, tensor, images):
    import keras

    return keras.Model(model.input, tensor)(images, training=False)


def _t2t_steps(t2t, images):
    """(stage name, tokens, grid) after each soft split and T2T layer, in order.

    The T2T module's inner steps are not nodes of the functional graph, so this
    runs its own sublayers in the order its call() does.
    """
    from keras import ops

    grids = t2t.stage_grids(images.shape[1], images.shape[2])
    x = t2t.soft_splits[0](images)
    yield "soft_split_0", x, grids[0]
    for i, attention in enumerate(t2t.attentions):
        x = attention(x, training=False)
        yield f"t2t_layer_{i + 1}", x, grids[i]
        x = ops.reshape(x, (-1, grids[i][0], grids[i][1], x.shape[-1]))
        x = t2t.soft_splits[i + 1](x)
        yield f"soft_split_{i + 1}", x, grids[i + 1]


def stage_features(model, images, stage):
    """Token features of ``stage`` on their grid: ``(B, rows, cols, C)`` float32 NumPy."""
    from keras import ops

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

    softmax(q_cls k^T * scale) from the block's own norm1 and qkv weights; the
    class token's attention to itself is left out, so a head's map sums to
    1 minus that.
    """
    from keras import ops

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
    heads = int(layer.num_heads)
    dim = int(x.shape[-1])
    head_dim = dim // heads
    scale = layer.qk_scale if layer.qk_scale is not None else head_dim**-0.5
    qkv = ops.cast(layer.attn.qkv(layer.norm1(x)), "float32")
    qkv = ops.reshape(qkv, (-1, x.shape[1], 3, heads, head_dim))
    query = qkv[:, 0, 0]  # the class token's query, (B, heads, head_dim)
    keys = qkv[:, :, 1]  # (B, T, heads, head_dim)
    logits = ops.einsum("bhd,bthd->bht", query, keys) * scale
    probs = _numpy(ops.softmax(logits, axis=-1))[:, :, 1:]
    rows, cols = _final_grid(model)
    return probs.reshape(probs.shape[0], heads, rows, cols)


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
    Figure, FigureCanvasAgg = _require_matplotlib()
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
    from keras_t2t.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    image = np.asarray(image, dtype="float32")
    if image.shape[-1] == 3:
        image = image * np.asarray(IMAGENET_STD, "float32") + np.asarray(IMAGENET_MEAN, "float32")
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
    _require_matplotlib()
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


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------
def load_image(path, height, width, channels=3):
    """An image file resized (bicubic) to ``height x width`` and normalised by ``preprocess_input``."""
    from PIL import Image

    from keras_t2t.preprocessing import preprocess_input

    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file {os.fspath(path)!r} does not exist.")
    if channels != 3:
        raise ValueError(f"Image files are read as RGB; this model takes {channels} channels.")
    try:
        with Image.open(path) as handle:
            picture = handle.convert("RGB").resize((width, height), Image.BICUBIC)
    except OSError as error:
        raise ValueError(f"{os.fspath(path)!r} is not an image PIL can read ({error}).") from error
    return preprocess_input(np.asarray(picture, dtype="float32"))


def digits_sample(height, width, index=0):
    """Validation digit ``index`` of the built-in digits (as the training command splits them), normalised."""
    from keras_t2t.datasets import load_digits_images
    from keras_t2t.preprocessing import preprocess_input

    if height != width or height % 8:
        raise ValueError(
            f"The built-in digits sample needs a square input of a multiple of 8 pixels; this model takes "
            f"{height}x{width}. Give an image file with --image."
        )
    _, (x_val, y_val) = load_digits_images(image_size=height)
    if not 0 <= index < len(x_val):
        raise ValueError(f"digit index {index} is out of range 0..{len(x_val) - 1}.")
    return preprocess_input(x_val[index]), int(y_val[index])


def load_model(model, weights=None, image_size=None, classes=None):
    """A model from a saved ``.keras`` file, or a name the training command knows (random or ``weights``)."""
    import keras

    from keras_t2t.model import T2TViT
    from keras_t2t.vit import ViT

    if os.fspath(model).endswith(".keras"):
        if weights:
            raise ValueError("--weights goes with a model name; a .keras file already holds its weights.")
        if not os.path.exists(model):
            raise FileNotFoundError(f"Model file {os.fspath(model)!r} does not exist.")
        custom = {"keras_t2t>T2TViT": T2TViT, "keras_t2t>ViT": ViT}
        return keras.saving.load_model(model, compile=False, custom_objects=custom), "saved model"
    from keras_t2t.training.recipe import DIGITS
    from keras_t2t.training.trainer import model_families
    from keras_t2t.vit import DEFAULT_IMAGE_SIZE

    families = model_families()
    if model not in families:
        raise ValueError(f"Unknown model {model!r}; give a .keras file or one of: {', '.join(families)}.")
    digits_sized = model == DIGITS.model or DEFAULT_IMAGE_SIZE.get(model) == DIGITS.image_size
    size = image_size or (DIGITS.image_size if digits_sized else 224)
    classes = classes or (10 if digits_sized else 1000)
    builder, loader = families[model]
    built = builder(input_shape=(size, size, 3), classes=classes)
    if not weights:
        return built, "random weights (no --weights): the pictures show an untrained model"
    if not os.path.exists(weights):
        raise FileNotFoundError(f"Weights file {os.fspath(weights)!r} does not exist.")
    return built, f"weights {os.fspath(weights)}: {loader(built, weights)}"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-t2t-visualize",
        description="Token features on the image grid and class-token attention of a T2T-ViT or ViT "
                    "(PNG pictures plus the arrays as .npz).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--model", required=True,
                        help="a saved .keras file, or a model name of the training command (t2t_vit_mini, "
                             "t2t_vit_14, vit_mini, ...)")
    parser.add_argument("--weights", default=None, help="weights for a model name (.weights.h5, .keras; "
                                                        "T2T-ViT also the authors' .pth.tar)")
    parser.add_argument("--image", default=None, help="an image file (default: a built-in validation digit)")
    parser.add_argument("--digit-index", type=int, default=0, help="which validation digit without --image")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side for a model name (default: 32 for the digits models, else 224)")
    parser.add_argument("--classes", type=int, default=None,
                        help="head size for a model name (default: 10 for the digits models, else 1000)")
    parser.add_argument("--stage", default=None,
                        help="whose tokens to draw: soft_split_i, t2t_layer_i, project, patch_embed or block_i "
                             "(default: t2t_layer_1 for T2T-ViT, patch_embed for ViT)")
    parser.add_argument("--block", type=int, default=-1, help="the block whose class-token attention to draw "
                                                              "(default: the last)")
    parser.add_argument("--channels", type=int, default=16, help="how many channel maps to draw")
    parser.add_argument("--panel-px", type=int, default=96, help="pixels per map")
    parser.add_argument("--prefix", default="", help="file name prefix")
    parser.add_argument("--output-dir", required=True, help="where the PNGs and arrays.npz go")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _require_matplotlib()
        model, source = load_model(args.model, args.weights, args.image_size, args.classes)
        height, width, channels = (int(v) for v in model.input.shape[1:])
        if args.image:
            image = load_image(args.image, height, width, channels)
            what = f"image {args.image}"
        else:
            image, label = digits_sample(height, width, args.digit_index)
            what = f"built-in validation digit #{args.digit_index} (a {label})"
        print(f"model {model.name} ({source}); {what} at {height}x{width}", flush=True)
        visualize(model, image, args.output_dir, stage=args.stage, block=args.block, channels=args.channels,
                  prefix=args.prefix, panel_px=args.panel_px)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

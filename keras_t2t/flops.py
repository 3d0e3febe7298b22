"""Analytic FLOP count of a T2T-ViT forward pass, from its configuration.

Convention (what is counted, and how):

* One multiply-add (MAC) = 2 FLOPs. ``count_flops`` reports FLOPs per part and
  in total, plus ``total_macs`` (= FLOPs / 2) to compare with the paper's
  "MACs" (T2T-ViT-14: 4.8G, T2T-ViT_t-14: 6.1G, T2T-ViT-7: 1.1G at 224x224).
* Only matrix products are counted: every Dense (kernel MACs; bias adds, like
  every other elementwise op, are not counted), and every matmul/einsum of the
  attention. Not counted: LayerNorm, softmax, GELU, ``exp`` and the
  ``||x||^2 / 2`` of the performer's random features, the sum over tokens of
  ``kp``, the division by ``D``, residual adds, dropout, position table, class
  token, pooling. Soft split (an unfold) is a copy: 0 FLOPs. These are the
  ops fvcore/thop-style counters (which the paper's MACs come from) skip or
  count as negligible; they are O(tokens x width), the counted ones
  O(tokens x width x width) or O(tokens^2 x width).
* Per image (batch 1); multiply by the batch size for a batch.
* Training step: ``TRAIN_FLOPS_FACTOR`` (3) x forward, the usual estimate
  (backward = 2 x forward: one product for the input gradient, one for the
  weight gradient of every matmul). The benchmarks use it; it is an
  estimate, not a count.

Per-layer formulas, T tokens, input width d, token width e, m = int(e * kernel_ratio):

* performer T2T layer: kqv T*d*3e; prm (x @ w^T, for k and q) 2*T*e*m;
  normaliser D = qp . sum(kp) T*m; kptv = v^T kp e*T*m; y = qp @ kptv^T T*m*e;
  proj T*e*e; mlp (two Dense e->e) 2*T*e*e.
* transformer T2T layer: qkv T*d*3e; q @ k^T T*T*e; attn @ v T*T*e;
  proj T*e*e; mlp 2*T*e*hidden (hidden = int(e * 1.0)).
* project: N*d_last*D (N tokens after the last soft split).
* backbone block, N' = N + 1 tokens (class token), width D, hidden H:
  qkv N'*D*3D; q @ k^T and attn @ v together 2*N'*N'*D (all heads);
  proj N'*D*D; fc1 N'*D*H; fc2 N'*H*D.
* head: D*classes (when include_top).

All the numbers above are MACs; the returned dict is in FLOPs (x2).

``count_flops`` also gives ``dense_macs``: the MACs of the Dense layers alone
(kqv/qkv, proj, mlp, fc1, fc2, project, head), without the attention's
matmul/einsum products and the performer's random features. That is what a
counter which only hooks layer modules (thop, mmcv's counter) reports: 4.33 G
for both T2T-ViT-14 and T2T-ViT_t-14, where the full count gives 4.78 G and
6.09 G (the T2T-ViT README: 4.8 G and 6.1 G). The difference of _t-14 is its
first T2T layer's softmax attention over 56 x 56 = 3136 tokens: q @ k^T and
attn @ v cost 2 x 3136^2 x 64 = 1.26 G MACs, which the performer replaces by
0.03 G.

``count_layer_macs`` counts any built Keras model (``keras.applications``
ResNets, ...) layer by layer, from the output shapes of its Conv, depthwise,
separable, transposed-conv and Dense layers (kernel MACs per output position,
biases not counted, as above).
"""

import math

import keras

from keras_t2t.layers import DEFAULT_T2T_STAGES, unfold_grid
from keras_t2t.models.presets import get_preset

TRAIN_FLOPS_FACTOR = 3
PERFORMER_KERNEL_RATIO = 0.5
T2T_MLP_RATIO = 1.0
# The parts of count_flops that are Dense layers (the rest are matmul/einsum products).
DENSE_PARTS = ("kqv", "qkv", "proj", "mlp", "fc1", "fc2", "project", "head")


def performer_layer_macs(
    tokens, input_dim, token_dim, kernel_ratio=PERFORMER_KERNEL_RATIO
):
    """MACs of one performer T2T layer, by part."""
    t, d, e = tokens, input_dim, token_dim
    m = int(e * kernel_ratio)
    return {
        "kqv": t * d * 3 * e,
        "prm": 2 * t * e * m,
        "normaliser": t * m,
        "kptv": e * t * m,
        "qp_kptv": t * m * e,
        "proj": t * e * e,
        "mlp": 2 * t * e * e,
    }


def transformer_layer_macs(tokens, input_dim, token_dim, mlp_ratio=T2T_MLP_RATIO):
    """MACs of one transformer T2T layer (one head), by part."""
    t, d, e = tokens, input_dim, token_dim
    hidden = int(e * mlp_ratio)
    return {
        "qkv": t * d * 3 * e,
        "q_kT": t * t * e,
        "attn_v": t * t * e,
        "proj": t * e * e,
        "mlp": 2 * t * e * hidden,
    }


def block_macs(tokens, dim, mlp_ratio):
    """MACs of one backbone block over ``tokens`` tokens (class token included), by part."""
    n, d = tokens, dim
    hidden = int(d * mlp_ratio)
    return {
        "qkv": n * d * 3 * d,
        "attention": 2 * n * n * d,
        "proj": n * d * d,
        "fc1": n * d * hidden,
        "fc2": n * hidden * d,
    }


def _config(model_or_config):
    if isinstance(model_or_config, str):
        preset = get_preset(model_or_config)
        if preset.family == "vit":
            raise ValueError(f"count_flops counts T2T-ViT models; {model_or_config!r} is a ViT.")
        config = dict(preset.config, block_type="dense" if preset.family == "t2t_vit_dense" else
                      preset.config.get("block_type", "standard"))
        config.setdefault("input_shape", (preset.image_size, preset.image_size, 3))
    elif hasattr(model_or_config, "get_config") and not isinstance(model_or_config, dict):
        config = model_or_config.get_config()
    else:
        config = dict(model_or_config)
    block_type = config.get("block_type", "standard")
    if block_type != "standard":
        # The SE, ghost and dense blocks of the backbone study have other matmuls.
        raise ValueError(
            f"count_flops counts the standard T2T-ViT block only; got block_type {block_type!r} "
            "(a backbone-study model). Accepted: the models of keras_t2t.VARIANTS."
        )
    return config


def count_flops(model_or_config, input_shape=None):
    """FLOPs (multiply-add = 2) of one image's forward pass; see the module docstring.

    ``model_or_config``: a ``T2TViT``, its ``get_config()`` dict (or a partial
    dict with the ``T2TViT`` keywords; missing keys take the ``T2TViT``
    defaults), or a registered name (then at its registry image size, 224x224 for the
    paper's models, with 1000 classes unless
    ``input_shape`` says otherwise). Returns::

        {"parts": {"attention1.kqv": flops, ..., "project": ..., "blocks_0.qkv": ..., "head": ...},
         "layers": {"attention1": flops, "attention2": ..., "project": ..., "blocks_0": ..., "head": ...},
         "t2t_flops", "backbone_flops", "head_flops", "total_flops", "total_macs", "dense_macs", "tokens"}
    """
    config = _config(model_or_config)
    height, width, channels = tuple(
        input_shape or config.get("input_shape") or (224, 224, 3)
    )
    t2t_type = config.get("t2t_type", "performer")
    token_dim = int(config.get("token_dim", 64))
    stages = [
        tuple(int(v) for v in s) for s in config.get("t2t_stages", DEFAULT_T2T_STAGES)
    ]
    embed_dim = int(config.get("embed_dim", 768))
    depth = int(config.get("depth", 12))
    mlp_ratio = float(config.get("mlp_ratio", 4.0))
    include_top = bool(config.get("include_top", True))
    classes = config.get("classes", 1000)

    parts, layers = {}, {}

    def add(layer, macs_by_part):
        for part, macs in macs_by_part.items():
            parts[f"{layer}.{part}" if part else layer] = 2 * int(macs)
        layers[layer] = 2 * int(sum(macs_by_part.values()))

    features, h, w = int(channels), int(height), int(width)
    for i, (k, s, p) in enumerate(stages):
        h, w = unfold_grid(h, k, s, p), unfold_grid(w, k, s, p)
        if h < 1 or w < 1:
            raise ValueError(
                f"Image size {height}x{width} is too small for the T2T stages {stages}."
            )
        features = features * k * k  # soft split: 0 FLOPs
        if i < len(stages) - 1:
            layer_macs = (
                performer_layer_macs
                if t2t_type == "performer"
                else transformer_layer_macs
            )
            add(f"attention{i + 1}", layer_macs(h * w, features, token_dim))
            features = token_dim
    tokens = h * w
    add("project", {"": tokens * features * embed_dim})
    for i in range(depth):
        add(f"blocks_{i}", block_macs(tokens + 1, embed_dim, mlp_ratio))
    if include_top:
        add("head", {"": embed_dim * int(classes)})

    t2t = sum(
        v for k, v in layers.items() if k.startswith("attention") or k == "project"
    )
    backbone = sum(v for k, v in layers.items() if k.startswith("blocks_"))
    head = layers.get("head", 0)
    total = t2t + backbone + head
    dense = sum(v for k, v in parts.items() if k.rpartition(".")[2] in DENSE_PARTS)
    return {
        "parts": parts,
        "layers": layers,
        "t2t_flops": t2t,
        "backbone_flops": backbone,
        "head_flops": head,
        "total_flops": total,
        "total_macs": total // 2,
        "dense_macs": dense // 2,
        "tokens": tokens,
    }


def train_step_flops(model_or_config, batch_size=1, input_shape=None):
    """Estimated FLOPs of one training step (forward + backward) on ``batch_size`` images."""
    return (
        TRAIN_FLOPS_FACTOR
        * batch_size
        * count_flops(model_or_config, input_shape)["total_flops"]
    )


# The layer types count_layer_macs counts: MACs = output positions x kernel weights
# (input positions for the transposed convolutions, which scatter each input pixel).
_KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
)
_SEPARABLE_LAYERS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSED_LAYERS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
COUNTED_LAYER_TYPES = tuple(t.__name__ for t in _KERNEL_LAYERS + _SEPARABLE_LAYERS + _TRANSPOSED_LAYERS)


def _positions(layer, tensor, path):
    """Spatial positions (or tokens) of one image in ``tensor``: every axis but batch and channels."""
    shape = tuple(tensor.shape)
    axes = shape[2:] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[1:-1]
    if any(size is None for size in axes):
        raise ValueError(
            f"count_layer_macs: layer {path!r} has an unknown size {shape}; build the model with a fixed "
            "input shape, e.g. keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))."
        )
    return math.prod(int(size) for size in axes)


def _layer_macs(layer, path):
    try:
        if isinstance(layer, _TRANSPOSED_LAYERS):
            return _positions(layer, layer.input, path) * math.prod(layer.kernel.shape)
        output = layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"count_layer_macs: layer {path!r} has no single output shape ({error}); it needs a built functional "
            "or Sequential model whose layers are each called once."
        ) from None
    positions = _positions(layer, output, path)
    if isinstance(layer, _SEPARABLE_LAYERS):
        return positions * (math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape))
    # Dense (in, out), Conv (*k, in / groups, out), DepthwiseConv (*k, in, multiplier): one MAC per kernel weight.
    return positions * math.prod(layer.kernel.shape)


def _calls(container):
    """How many times each layer of a functional model is called, from its (public) config."""
    try:
        config = container.get_config()
    except (NotImplementedError, TypeError):
        return {}
    entries = config.get("layers", ()) if isinstance(config, dict) else ()
    return {e["name"]: len(e["inbound_nodes"]) for e in entries if isinstance(e, dict) and "inbound_nodes" in e}


def count_layer_macs(model):
    """Multiply-adds of one image's forward pass through ``model``'s Conv and Dense layers.

    ``model``: a built functional or Sequential ``keras.Model`` with a fixed input
    size (``keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))``);
    nested functional models are entered. Counted (``COUNTED_LAYER_TYPES``): Dense,
    Conv1D/2D/3D (groups included), DepthwiseConv1D/2D, SeparableConv1D/2D and the
    transposed convolutions, each as kernel weights x output positions (input
    positions for a transposed convolution); biases, normalisation, activations and
    pooling are not counted. Returns::

        {"layers": {"conv1_conv": macs, ...}, "total_macs", "total_flops" (= 2 x MACs),
         "uncounted": [names of other layers holding weights of rank >= 2]}

    ``uncounted`` names what this counter cannot see into: a custom layer's own
    Dense sublayers (T2T-ViT's attention and blocks: count those with
    ``count_flops``), an ``EinsumDense``, an embedding or position table. Their
    MACs, if any, are not in the total.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"count_layer_macs counts a keras.Model; got {type(model).__name__}.")
    layers, uncounted = {}, []

    def visit(container, prefix):
        calls = _calls(container)
        for layer in container.layers:
            path = prefix + layer.name
            if calls.get(layer.name, 1) > 1:
                # A shared layer's output attribute is its first call's: the others would go uncounted.
                raise ValueError(
                    f"count_layer_macs: layer {path!r} is called {calls[layer.name]} times; it counts "
                    "models whose layers are each called once."
                )
            if isinstance(layer, keras.Model):
                visit(layer, path + "/")
            elif isinstance(layer, _KERNEL_LAYERS + _SEPARABLE_LAYERS + _TRANSPOSED_LAYERS):
                layers[path] = _layer_macs(layer, path)
            elif any(len(w.shape) >= 2 for w in layer.weights):
                uncounted.append(path)

    visit(model, "")
    total = sum(layers.values())
    return {"layers": layers, "total_macs": total, "total_flops": 2 * total, "uncounted": uncounted}

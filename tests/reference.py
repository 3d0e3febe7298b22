"""Independent NumPy reference of the T2T-ViT forward pass (inference).

Written from the project's spec (T2T-SPEC.md, sections 1-7 and 10) only; it
imports nothing from ``keras_t2t`` so it can serve as ground truth for the
Keras model and for the checkpoint converter.

Everything is computed in float64.  State dicts use the PyTorch checkpoint key
names and layouts (Linear weights are (out, in)).  Images are channels-last.

Config dict keys (defaults in ``DEFAULT_CONFIG``):
    t2t_type     'performer' | 'transformer'
    image_size   (H, W) or an int for a square image
    in_channels  3
    token_dim    64
    t2t_stages   [(k, s, p), ...], default [(7, 4, 2), (3, 2, 1), (3, 2, 1)];
                 one T2T layer (attention1, attention2, ...) sits between
                 consecutive soft splits
    embed_dim, depth, num_heads, mlp_ratio (required)
    qkv_bias     False
    classes      1000 (0: no head; forward then returns the pooled features)
"""

from __future__ import annotations

import math

import numpy as np

try:  # exact erf, vectorised
    from scipy.special import erf as _erf
except Exception:  # pragma: no cover - scipy is optional
    _erf = np.vectorize(math.erf, otypes=[np.float64])

__all__ = [
    "DEFAULT_CONFIG",
    "normalize_config",
    "grid_size",
    "grid_sizes",
    "unfold",
    "soft_split",
    "sinusoid_table",
    "bicubic_resize_torch",
    "resize_pos_embed",
    "make_state_dict",
    "count_params",
    "linear",
    "layer_norm",
    "gelu",
    "softmax",
    "token_performer",
    "token_transformer",
    "attention",
    "block",
    "t2t_module",
    "forward",
]

LN_EPS = 1e-5
PERFORMER_EPS = 1e-8

DEFAULT_CONFIG = {
    "t2t_type": "performer",
    "image_size": (224, 224),
    "in_channels": 3,
    "token_dim": 64,
    "t2t_stages": [(7, 4, 2), (3, 2, 1), (3, 2, 1)],
    "qkv_bias": False,
    "classes": 1000,
}
_REQUIRED = ("embed_dim", "depth", "num_heads", "mlp_ratio")


# --------------------------------------------------------------------------
# config helpers
# --------------------------------------------------------------------------
def normalize_config(config):
    """Return a copy of ``config`` with defaults filled in and checked."""
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config or {})
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise KeyError(f"config is missing {missing}")
    if cfg["t2t_type"] not in ("performer", "transformer"):
        raise ValueError(f"unknown t2t_type {cfg['t2t_type']!r}")
    size = cfg["image_size"]
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    cfg["image_size"] = (int(size[0]), int(size[1]))
    stages = [tuple(int(v) for v in st) for st in cfg["t2t_stages"]]
    if not stages or any(len(st) != 3 for st in stages):
        raise ValueError("t2t_stages must be a non-empty list of (k, s, p)")
    cfg["t2t_stages"] = stages
    for key in ("in_channels", "token_dim", "embed_dim", "depth", "num_heads", "classes"):
        cfg[key] = int(cfg[key])
    cfg["mlp_ratio"] = float(cfg["mlp_ratio"])
    cfg["qkv_bias"] = bool(cfg["qkv_bias"])
    if cfg["embed_dim"] % cfg["num_heads"]:
        raise ValueError("embed_dim must be divisible by num_heads")
    return cfg


def grid_size(h, w, k, s, p):
    """Output grid (Ho, Wo) of an unfold: floor((n + 2p - k)/s) + 1 per side."""
    ho = (h + 2 * p - k) // s + 1
    wo = (w + 2 * p - k) // s + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} too small for unfold k={k} s={s} p={p}")
    return ho, wo


def grid_sizes(image_hw, stages):
    """Grids after each soft split, e.g. 224x224 -> [(56,56),(28,28),(14,14)]."""
    h, w = image_hw
    out = []
    for k, s, p in stages:
        h, w = grid_size(h, w, k, s, p)
        out.append((h, w))
    return out


def _t2t_layer_dims(cfg):
    """Input feature size of each T2T layer and of the final projection."""
    dims = []
    c = cfg["in_channels"]
    for k, _, _ in cfg["t2t_stages"]:
        dims.append(c * k * k)
        c = cfg["token_dim"]
    return dims[:-1], dims[-1]


# --------------------------------------------------------------------------
# soft split
# --------------------------------------------------------------------------
def unfold(x_nhwc, k, s, p):
    """torch.nn.Unfold on a channels-last batch.

    Returns (B, Ho*Wo, C*k*k); feature index c*k*k + i*k + j, tokens row-major.
    """
    x = np.asarray(x_nhwc)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim != 4:
        raise ValueError(f"expected (B, H, W, C), got shape {x.shape}")
    b, h, w, c = x.shape
    ho, wo = grid_size(h, w, k, s, p)
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.empty((b, ho, wo, c, k, k), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            out[..., i, j] = xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
    return out.reshape(b, ho * wo, c * k * k)


def soft_split(x_nhwc, k, s, p):
    """Unfold and also return the output grid: (tokens, (Ho, Wo))."""
    x = np.asarray(x_nhwc)
    tokens = unfold(x, k, s, p)
    return tokens, grid_size(x.shape[1], x.shape[2], k, s, p)


# --------------------------------------------------------------------------
# position embedding
# --------------------------------------------------------------------------
def sinusoid_table(n_positions, dim, dtype=np.float32):
    """(1, n, dim): angle = p / 10000**(2*(j//2)/dim); even j sin, odd j cos."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2.0 * (j // 2) / dim)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table[None].astype(dtype)


def _cubic_weights(t, a=-0.75):
    """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2."""
    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def _bicubic_matrix(n_in, n_out):
    """(n_out, n_in) matrix of torch's bicubic resize, align_corners=False."""
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5  # not clamped at 0 for cubic
    base = np.floor(src)
    t = src - base
    wts = _cubic_weights(t)
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
        np.add.at(mat, (np.arange(n_out), idx), wts[:, tap])
    return mat


def bicubic_resize_torch(grid_hwc, new_h, new_w):
    """F.interpolate(mode='bicubic', align_corners=False) on (H, W, C) or (B, H, W, C)."""
    g = np.asarray(grid_hwc, dtype=np.float64)
    if g.ndim not in (3, 4):
        raise ValueError(f"expected (H, W, C) or (B, H, W, C), got {g.shape}")
    h, w = g.shape[-3], g.shape[-2]
    mh = _bicubic_matrix(h, int(new_h))
    mw = _bicubic_matrix(w, int(new_w))
    return np.einsum("ah,bw,...hwc->...abc", mh, mw, g)


def resize_pos_embed(pos_embed, new_grid_hw):
    """Keep the cls row, bicubic-resize the square old grid to ``new_grid_hw``.

    pos_embed: (1, 1 + gs*gs, D).  new_grid_hw: int or (h, w).
    Returns (1, 1 + h*w, D) in the input's float dtype.
    """
    pe = np.asarray(pos_embed)
    if isinstance(new_grid_hw, (int, np.integer)):
        new_grid_hw = (int(new_grid_hw), int(new_grid_hw))
    nh, nw = new_grid_hw
    cls_row, grid = pe[:, :1], pe[0, 1:]
    gs = int(math.sqrt(grid.shape[0]))
    if gs * gs != grid.shape[0]:
        raise ValueError(f"old grid of {grid.shape[0]} positions is not square")
    new = bicubic_resize_torch(grid.reshape(gs, gs, -1), nh, nw).reshape(1, nh * nw, -1)
    dtype = pe.dtype if np.issubdtype(pe.dtype, np.floating) else np.float64
    return np.concatenate([cls_row.astype(np.float64), new], axis=1).astype(dtype)


# --------------------------------------------------------------------------
# random state dict
# --------------------------------------------------------------------------
def _orthogonal_rows(rng, rows, cols):
    if rows > cols:
        raise ValueError("need rows <= cols for orthonormal rows")
    q, r = np.linalg.qr(rng.standard_normal((cols, rows)))
    q = q * np.sign(np.diag(r))[None, :]
    return q.T  # (rows, cols), orthonormal rows


def make_state_dict(config, rng=0):
    """Random float32 state dict with the checkpoint's key names and layouts.

    Linear weights ~ N(0, gain/sqrt(fan_in)); the performer kqv uses a small
    gain so ||k||, ||q|| stay O(1) and the random-feature exp() is well
    conditioned.  rng: a numpy Generator or a seed.
    """
    cfg = normalize_config(config)
    rng = np.random.default_rng(rng)
    sd = {}

    def lin(name, n_out, n_in, bias=True, gain=1.0):
        sd[name + ".weight"] = rng.standard_normal((n_out, n_in)) * (gain / math.sqrt(n_in))
        if bias:
            sd[name + ".bias"] = rng.standard_normal(n_out) * 0.02

    def norm(name, n):
        sd[name + ".weight"] = 1.0 + 0.1 * rng.standard_normal(n)
        sd[name + ".bias"] = 0.05 * rng.standard_normal(n)

    emb = cfg["token_dim"]
    d = cfg["embed_dim"]
    layer_dims, proj_dim = _t2t_layer_dims(cfg)
    grids = grid_sizes(cfg["image_size"], cfg["t2t_stages"])
    n_tokens = grids[-1][0] * grids[-1][1]

    sd["cls_token"] = 0.1 * rng.standard_normal((1, 1, d))
    sd["pos_embed"] = sinusoid_table(n_tokens + 1, d)
    for n, dim in enumerate(layer_dims, start=1):
        p = f"tokens_to_token.attention{n}."
        if cfg["t2t_type"] == "performer":
            m = int(emb * 0.5)
            sd[p + "w"] = _orthogonal_rows(rng, m, emb) * math.sqrt(m)
            lin(p + "kqv", 3 * emb, dim, gain=0.3)
            lin(p + "proj", emb, emb)
            norm(p + "norm1", dim)
            norm(p + "norm2", emb)
            lin(p + "mlp.0", emb, emb)
            lin(p + "mlp.2", emb, emb)
        else:
            norm(p + "norm1", dim)
            lin(p + "attn.qkv", 3 * emb, dim, bias=False)
            lin(p + "attn.proj", emb, emb)
            norm(p + "norm2", emb)
            lin(p + "mlp.fc1", emb, emb)
            lin(p + "mlp.fc2", emb, emb)
    lin("tokens_to_token.project", d, proj_dim)
    hidden = int(d * cfg["mlp_ratio"])
    for i in range(cfg["depth"]):
        p = f"blocks.{i}."
        norm(p + "norm1", d)
        lin(p + "attn.qkv", 3 * d, d, bias=cfg["qkv_bias"])
        lin(p + "attn.proj", d, d, gain=0.7)
        norm(p + "norm2", d)
        lin(p + "mlp.fc1", hidden, d)
        lin(p + "mlp.fc2", d, hidden, gain=0.7)
    norm("norm", d)
    if cfg["classes"] > 0:
        lin("head", cfg["classes"], d)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def count_params(state_dict):
    return int(sum(np.asarray(v).size for v in state_dict.values()))


# --------------------------------------------------------------------------
# primitives
# --------------------------------------------------------------------------
def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _key(prefix, name):
    prefix = prefix.rstrip(".")
    return f"{prefix}.{name}" if prefix else name


def linear(x, weight, bias=None):
    """PyTorch Linear: x @ W^T + b with W of shape (out, in)."""
    y = _f64(x) @ _f64(weight).T
    if bias is not None:
        y = y + _f64(bias)
    return y


def _linear_sd(sd, name, x):
    b = sd.get(name + ".bias")
    return linear(x, sd[name + ".weight"], b)


def layer_norm(x, w, b, eps=LN_EPS):
    x = _f64(x)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _f64(w) + _f64(b)


def _ln_sd(sd, name, x):
    return layer_norm(x, sd[name + ".weight"], sd[name + ".bias"])


def gelu(x):
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    x = _f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def softmax(x, axis=-1):
    x = _f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------
def token_performer(sd, prefix, x):
    """Performer-type T2T layer (spec section 3). x: (B, T, dim) -> (B, T, emb)."""
    k_ = lambda n: _key(prefix, n)
    w = _f64(sd[k_("w")])  # (m, emb)
    m, emb = w.shape
    h = _ln_sd(sd, k_("norm1"), x)
    kqv = _linear_sd(sd, k_("kqv"), h)
    if kqv.shape[-1] != 3 * emb:
        raise ValueError("kqv width does not match w")
    k, q, v = kqv[..., :emb], kqv[..., emb:2 * emb], kqv[..., 2 * emb:]

    def prm(t):
        wtx = t @ w.T  # (B, T, m)
        xd = 0.5 * np.sum(t * t, axis=-1, keepdims=True)
        return np.exp(wtx - xd) / math.sqrt(m)

    kp, qp = prm(k), prm(q)
    dnorm = np.einsum("btm,bm->bt", qp, kp.sum(axis=1))[..., None]  # (B, T, 1)
    kptv = np.einsum("btn,btm->bnm", v, kp)  # (B, emb, m)
    y = np.einsum("btm,bnm->btn", qp, kptv) / (dnorm + PERFORMER_EPS)
    y = v + _linear_sd(sd, k_("proj"), y)
    z = _linear_sd(sd, k_("mlp.0"), _ln_sd(sd, k_("norm2"), y))
    z = _linear_sd(sd, k_("mlp.2"), gelu(z))
    return y + z


def token_transformer(sd, prefix, x, qk_scale=None):
    """Transformer-type T2T layer (spec section 4), one head.

    scale = qk_scale or (input dim) ** -0.5  (147 or 576, not token_dim).
    """
    k_ = lambda n: _key(prefix, n)
    x = _f64(x)
    dim = x.shape[-1]
    h = _ln_sd(sd, k_("norm1"), x)
    qkv = _linear_sd(sd, k_("attn.qkv"), h)
    emb = qkv.shape[-1] // 3
    q, k, v = qkv[..., :emb], qkv[..., emb:2 * emb], qkv[..., 2 * emb:]
    scale = qk_scale if qk_scale is not None else dim ** -0.5
    a = softmax((q * scale) @ np.swapaxes(k, -1, -2), axis=-1)
    y = v + _linear_sd(sd, k_("attn.proj"), a @ v)
    z = _linear_sd(sd, k_("mlp.fc1"), _ln_sd(sd, k_("norm2"), y))
    z = _linear_sd(sd, k_("mlp.fc2"), gelu(z))
    return y + z


def attention(sd, prefix, x, num_heads, qk_scale=None):
    """Backbone multi-head self-attention (qkv order q, k, v; proj)."""
    k_ = lambda n: _key(prefix, n)
    x = _f64(x)
    b, n, d = x.shape
    hd = d // num_heads
    qkv = _linear_sd(sd, k_("qkv"), x).reshape(b, n, 3, num_heads, hd)
    qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = qk_scale if qk_scale is not None else hd ** -0.5
    a = softmax((q * scale) @ np.swapaxes(k, -1, -2), axis=-1)
    out = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return _linear_sd(sd, k_("proj"), out)


def block(sd, prefix, x, num_heads, qk_scale=None):
    """Pre-norm ViT block (spec section 5), inference mode."""
    k_ = lambda n: _key(prefix, n)
    x = _f64(x)
    x = x + attention(sd, k_("attn"), _ln_sd(sd, k_("norm1"), x), num_heads, qk_scale)
    z = _linear_sd(sd, k_("mlp.fc1"), _ln_sd(sd, k_("norm2"), x))
    z = _linear_sd(sd, k_("mlp.fc2"), gelu(z))
    return x + z


def t2t_module(sd, images_nhwc, config):
    """Soft splits + T2T layers + project: images -> (B, N, D) and final grid."""
    cfg = normalize_config(config)
    x = _f64(images_nhwc)
    if x.ndim != 4 or x.shape[-1] != cfg["in_channels"]:
        raise ValueError(f"expected (B, H, W, {cfg['in_channels']}) images, got {x.shape}")
    layer = token_performer if cfg["t2t_type"] == "performer" else token_transformer
    stages = cfg["t2t_stages"]
    tokens, (gh, gw) = soft_split(x, *stages[0])
    for n in range(1, len(stages)):
        tokens = layer(sd, f"tokens_to_token.attention{n}", tokens)
        grid = tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[-1])  # row-major
        tokens, (gh, gw) = soft_split(grid, *stages[n])
    tokens = _linear_sd(sd, "tokens_to_token.project", tokens)
    return tokens, (gh, gw)


def forward(state_dict, images_nhwc, config, qk_scale=None, pooling="token",
            return_features=False):
    """Inference forward of T2T-ViT on channels-last images (float64).

    Returns logits (B, classes), or the pooled features (B, D) when the state
    dict has no head.  With return_features=True returns a dict with 'logits',
    'pooled', 'tokens' (B, N+1, D, after the final norm), 'blocks' (each
    block's output, before the final norm), 't2t' (B, N, D after project) and
    'grid' (final (Ho, Wo)).
    """
    if pooling not in ("token", "avg"):
        raise ValueError(f"pooling must be 'token' or 'avg', got {pooling!r}")
    cfg = normalize_config(config)
    sd = state_dict
    tokens, grid = t2t_module(sd, images_nhwc, cfg)
    b, n, d = tokens.shape
    cls = np.broadcast_to(_f64(sd["cls_token"]).reshape(1, 1, d), (b, 1, d))
    x = np.concatenate([cls, tokens], axis=1)
    pos = _f64(sd["pos_embed"])
    if pos.shape[1] != n + 1:
        raise ValueError(
            f"pos_embed has {pos.shape[1]} positions but the input gives {n + 1}; "
            "use resize_pos_embed")
    x = x + pos
    blocks = []
    for i in range(cfg["depth"]):
        x = block(sd, f"blocks.{i}", x, cfg["num_heads"], qk_scale)
        blocks.append(x)
    x = _ln_sd(sd, "norm", x)
    pooled = x[:, 0] if pooling == "token" else x[:, 1:].mean(axis=1)
    logits = _linear_sd(sd, "head", pooled) if "head.weight" in sd else pooled
    if return_features:
        return {"logits": logits, "pooled": pooled, "tokens": x, "blocks": blocks,
                "t2t": tokens, "grid": grid}
    return logits


# --------------------------------------------------------------------------
# backbone studies (spec sections 8 and 9): SE, ghost and dense blocks
# --------------------------------------------------------------------------
# Study config keys, besides those above:
#     block_type   'se' | 'ghost' | 'dense'
#     dense_stages (blocks per stage) and growth_rate, for 'dense' (depth unused)
# Checkpoint keys: SE adds blocks.{i}.attn.se_layer.fc.0/.fc.2 (no bias);
# ghost has blocks.{i}.attn.{q,k,v} and .attn.cheap_operation_{q,k,v} (C,1,1),
# .mlp.fc1 (D,D), .mlp.cheap_operation{2,3} (D,1,1), .mlp.fc2 (D,3D);
# dense numbers blocks and transitions together: blocks.{k}.dense_linear in a
# block, blocks.{k}.linear in a transition.
SE_REDUCTION = 16

__all__ += [
    "normalize_study_config",
    "dense_layout",
    "make_study_state_dict",
    "se_attention",
    "ghost_attention",
    "ghost_mlp",
    "study_block",
    "dense_block",
    "forward_study",
]


def normalize_study_config(config):
    """``normalize_config`` plus the study keys; a dense config gets depth = sum(dense_stages)."""
    cfg = dict(config)
    block_type = cfg.get("block_type")
    if block_type not in ("se", "ghost", "dense"):
        raise ValueError(f"unknown block_type {block_type!r}")
    if block_type == "dense":
        cfg["dense_stages"] = [int(n) for n in cfg["dense_stages"]]
        cfg["growth_rate"] = int(cfg["growth_rate"])
        cfg["depth"] = sum(cfg["dense_stages"])
    out = normalize_config(cfg)
    out["block_type"] = block_type
    if block_type == "ghost" and out["mlp_ratio"] != 3.0:
        raise ValueError("the ghost MLP's fc2 reads 3 x embed_dim features: mlp_ratio must be 3")
    return out


def dense_layout(cfg):
    """[(checkpoint index, 'block' | 'transition', input width)], and the final width."""
    layout, index, width = [], 0, cfg["embed_dim"]
    stages = cfg["dense_stages"]
    for s, n in enumerate(stages):
        for _ in range(n):
            layout.append((index, "block", width))
            index += 1
            width += cfg["growth_rate"]
        if s < len(stages) - 1:
            layout.append((index, "transition", width))
            index += 1
            width //= 2
    return layout, width


def make_study_state_dict(config, rng=0):
    """Random float32 state dict of a study model in the authors' key layout."""
    cfg = normalize_study_config(config)
    rng = np.random.default_rng(rng)
    # The T2T module, class token and position table are those of the main family.
    stem = make_state_dict(dict(cfg, depth=0, classes=0), rng)
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in stem.items() if not k.startswith("norm.")}

    def lin(name, n_out, n_in, bias=True, gain=1.0):
        sd[name + ".weight"] = rng.standard_normal((n_out, n_in)) * (gain / math.sqrt(n_in))
        if bias:
            sd[name + ".bias"] = rng.standard_normal(n_out) * 0.02

    def norm(name, n):
        sd[name + ".weight"] = 1.0 + 0.1 * rng.standard_normal(n)
        sd[name + ".bias"] = 0.05 * rng.standard_normal(n)

    def vit_block(p, d):
        norm(p + "norm1", d)
        lin(p + "attn.qkv", 3 * d, d, bias=cfg["qkv_bias"])
        lin(p + "attn.proj", d, d, gain=0.7)
        norm(p + "norm2", d)
        hidden = int(d * cfg["mlp_ratio"])
        lin(p + "mlp.fc1", hidden, d)
        lin(p + "mlp.fc2", d, hidden, gain=0.7)

    d = cfg["embed_dim"]
    if cfg["block_type"] == "dense":
        layout, final = dense_layout(cfg)
        for index, kind, width in layout:
            p = f"blocks.{index}."
            if kind == "block":
                vit_block(p, width)
                lin(p + "dense_linear", cfg["growth_rate"], width)
            else:
                lin(p + "linear", width // 2, width)
    else:
        final = d
        for i in range(cfg["depth"]):
            p = f"blocks.{i}."
            if cfg["block_type"] == "se":
                vit_block(p, d)
                lin(p + "attn.se_layer.fc.0", d // SE_REDUCTION, d, bias=False)
                lin(p + "attn.se_layer.fc.2", d, d // SE_REDUCTION, bias=False, gain=2.0)
            else:
                norm(p + "norm1", d)
                for name in ("q", "k", "v"):
                    lin(p + "attn." + name, d // 2, d, bias=cfg["qkv_bias"])
                    sd[p + f"attn.cheap_operation_{name}.weight"] = rng.uniform(-1.0, 1.0, (d // 2, 1, 1))
                lin(p + "attn.proj", d, d, gain=0.7)
                norm(p + "norm2", d)
                lin(p + "mlp.fc1", d, d)
                for n in (2, 3):
                    sd[p + f"mlp.cheap_operation{n}.weight"] = rng.uniform(-1.0, 1.0, (d, 1, 1))
                lin(p + "mlp.fc2", d, 3 * d, gain=0.7)
    norm("norm", final)
    if cfg["classes"] > 0:
        lin("head", cfg["classes"], final)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def _heads(x, num_heads):
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def _multi_head(q, k, v, num_heads, qk_scale):
    b, n, d = q.shape
    q, k, v = (_heads(t, num_heads) for t in (q, k, v))
    scale = qk_scale if qk_scale is not None else (d // num_heads) ** -0.5
    a = softmax((q * scale) @ np.swapaxes(k, -1, -2), axis=-1)
    return (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)


def se_attention(sd, prefix, x, num_heads, qk_scale=None):
    """Backbone attention, then SE on its output: x * sigmoid(W2 relu(W1 mean_tokens(x)))."""
    k_ = lambda n: _key(prefix, n)
    y = attention(sd, prefix, x, num_heads, qk_scale)
    s = np.maximum(linear(y.mean(axis=1), sd[k_("se_layer.fc.0.weight")]), 0.0)
    s = 1.0 / (1.0 + np.exp(-linear(s, sd[k_("se_layer.fc.2.weight")])))
    return y * s[:, None, :]


def ghost_attention(sd, prefix, x, num_heads, qk_scale=None):
    """q, k, v at half width, each concatenated with its per-channel cheap copy, then heads."""
    k_ = lambda n: _key(prefix, n)
    x = _f64(x)
    parts = []
    for name in ("q", "k", "v"):
        t = _linear_sd(sd, k_(name), x)
        cheap = t * _f64(sd[k_(f"cheap_operation_{name}.weight")]).reshape(-1)
        parts.append(np.concatenate([t, cheap], axis=-1))
    return _linear_sd(sd, k_("proj"), _multi_head(*parts, num_heads, qk_scale))


def ghost_mlp(sd, prefix, x):
    """h = gelu(fc1 x); fc2 [h, gelu(h * c2), gelu(h * c3)]."""
    k_ = lambda n: _key(prefix, n)
    h = gelu(_linear_sd(sd, k_("fc1"), x))
    copies = [gelu(h * _f64(sd[k_(f"cheap_operation{n}.weight")]).reshape(-1)) for n in (2, 3)]
    return _linear_sd(sd, k_("fc2"), np.concatenate([h] + copies, axis=-1))


def study_block(sd, prefix, x, num_heads, block_type, qk_scale=None):
    """Pre-norm block with the SE or ghost attention (and the ghost MLP)."""
    k_ = lambda n: _key(prefix, n)
    x = _f64(x)
    attn = se_attention if block_type == "se" else ghost_attention
    x = x + attn(sd, k_("attn"), _ln_sd(sd, k_("norm1"), x), num_heads, qk_scale)
    h = _ln_sd(sd, k_("norm2"), x)
    if block_type == "ghost":
        return x + ghost_mlp(sd, k_("mlp"), h)
    z = _linear_sd(sd, k_("mlp.fc2"), gelu(_linear_sd(sd, k_("mlp.fc1"), h)))
    return x + z


def dense_block(sd, prefix, x, num_heads, qk_scale=None):
    """[x, dense_linear(block(x))] on channels."""
    new = _linear_sd(sd, _key(prefix, "dense_linear"), block(sd, prefix, x, num_heads, qk_scale))
    return np.concatenate([_f64(x), new], axis=-1)


def forward_study(state_dict, images_nhwc, config, qk_scale=None, pooling="token", return_features=False):
    """Inference forward of a study model (float64); as ``forward``.

    With return_features, 'blocks' holds every block's output in order (for
    dense: only the blocks, not the transitions).
    """
    if pooling not in ("token", "avg"):
        raise ValueError(f"pooling must be 'token' or 'avg', got {pooling!r}")
    cfg = normalize_study_config(config)
    sd = state_dict
    tokens, grid = t2t_module(sd, images_nhwc, cfg)
    b, n, d = tokens.shape
    cls = np.broadcast_to(_f64(sd["cls_token"]).reshape(1, 1, d), (b, 1, d))
    x = np.concatenate([cls, tokens], axis=1) + _f64(sd["pos_embed"])
    blocks = []
    if cfg["block_type"] == "dense":
        for index, kind, _ in dense_layout(cfg)[0]:
            if kind == "block":
                x = dense_block(sd, f"blocks.{index}", x, cfg["num_heads"], qk_scale)
                blocks.append(x)
            else:
                x = gelu(_linear_sd(sd, f"blocks.{index}.linear", x))
    else:
        for i in range(cfg["depth"]):
            x = study_block(sd, f"blocks.{i}", x, cfg["num_heads"], cfg["block_type"], qk_scale)
            blocks.append(x)
    x = _ln_sd(sd, "norm", x)
    pooled = x[:, 0] if pooling == "token" else x[:, 1:].mean(axis=1)
    logits = _linear_sd(sd, "head", pooled) if "head.weight" in sd else pooled
    if return_features:
        return {"logits": logits, "pooled": pooled, "tokens": x, "blocks": blocks, "t2t": tokens, "grid": grid}
    return logits

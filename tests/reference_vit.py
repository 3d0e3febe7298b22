"""Independent NumPy reference of the plain ViT forward pass (inference, float64).

From the ViT paper's description (Dosovitskiy et al., 2021) with T2T-ViT's
backbone block (spec section 5): cut the image into non-overlapping p x p
patches, row-major; each patch times the patch-embedding weights (a conv with
kernel = stride = p, timm's ``patch_embed.proj``, weight (D, C, p, p)); prepend
the class token; add the position table; blocks; final norm; pool; head.

State dicts use timm's key names and PyTorch layouts. Block and norm maths
come from ``reference`` (the T2T-ViT NumPy reference); nothing here imports
``keras_t2t``.
"""

from __future__ import annotations

import math

import numpy as np

import reference


def patchify(images_nhwc, patch):
    """(B, H, W, C) -> (B, (H/p) * (W/p), p, p, C), patches in row-major order."""
    x = np.asarray(images_nhwc, dtype=np.float64)
    b, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"{h}x{w} is not divisible by the patch {patch}")
    out = []
    for r in range(h // patch):
        for col in range(w // patch):
            out.append(x[:, r * patch:(r + 1) * patch, col * patch:(col + 1) * patch, :])
    return np.stack(out, axis=1)


def patch_embed(sd, images_nhwc, patch):
    """Each patch through the conv weights: sum over (channel, row, column) of W[d, c, i, j] * x[i, j, c]."""
    patches = patchify(images_nhwc, patch)
    weight = np.asarray(sd["patch_embed.proj.weight"], dtype=np.float64)  # (D, C, p, p)
    return np.einsum("bnijc,dcij->bnd", patches, weight) + np.asarray(sd["patch_embed.proj.bias"], np.float64)


def make_state_dict(config, rng=0):
    """Random float32 state dict with timm's ViT key names and layouts.

    config: image_size (int), patch_size, in_channels, embed_dim, depth,
    num_heads, mlp_ratio, qkv_bias, classes.
    """
    rng = np.random.default_rng(rng)
    d, p, c = config["embed_dim"], config["patch_size"], config["in_channels"]
    n = (config["image_size"] // p) ** 2
    hidden = int(d * config["mlp_ratio"])
    sd = {}

    def lin(name, n_out, n_in, bias=True, gain=1.0):
        sd[name + ".weight"] = rng.standard_normal((n_out, n_in)) * (gain / math.sqrt(n_in))
        if bias:
            sd[name + ".bias"] = rng.standard_normal(n_out) * 0.02

    def norm(name, size):
        sd[name + ".weight"] = 1.0 + 0.1 * rng.standard_normal(size)
        sd[name + ".bias"] = 0.05 * rng.standard_normal(size)

    sd["patch_embed.proj.weight"] = rng.standard_normal((d, c, p, p)) / math.sqrt(c * p * p)
    sd["patch_embed.proj.bias"] = rng.standard_normal(d) * 0.02
    sd["cls_token"] = 0.1 * rng.standard_normal((1, 1, d))
    sd["pos_embed"] = 0.1 * rng.standard_normal((1, n + 1, d))
    for i in range(config["depth"]):
        prefix = f"blocks.{i}."
        norm(prefix + "norm1", d)
        lin(prefix + "attn.qkv", 3 * d, d, bias=config["qkv_bias"])
        lin(prefix + "attn.proj", d, d, gain=0.7)
        norm(prefix + "norm2", d)
        lin(prefix + "mlp.fc1", hidden, d)
        lin(prefix + "mlp.fc2", d, hidden, gain=0.7)
    norm("norm", d)
    if config["classes"] > 0:
        lin("head", config["classes"], d)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def cls_attention(sd, prefix, x, num_heads, qk_scale=None):
    """The class token's softmax attention over all tokens in the block at ``prefix``: (B, heads, 1 + N).

    ``x`` is the block's input; the attention reads norm1(x).
    """
    h = reference.layer_norm(x, sd[prefix + ".norm1.weight"], sd[prefix + ".norm1.bias"])
    qkv = reference.linear(h, sd[prefix + ".attn.qkv.weight"], sd.get(prefix + ".attn.qkv.bias"))
    b, n, three_d = qkv.shape
    d = three_d // 3
    hd = d // num_heads
    qkv = qkv.reshape(b, n, 3, num_heads, hd)
    q, k = qkv[:, 0, 0], qkv[:, :, 1]  # (B, heads, hd), (B, N, heads, hd)
    scale = qk_scale if qk_scale is not None else hd ** -0.5
    logits = np.einsum("bhd,bnhd->bhn", q, k) * scale
    return reference.softmax(logits, axis=-1)


def forward(sd, images_nhwc, config, pooling="token"):
    """Inference forward; returns a dict: logits, pooled, tokens (after the final norm),
    patches (the patch embedding), block_inputs and blocks (each block's input / output)."""
    tokens = patch_embed(sd, images_nhwc, config["patch_size"])
    b, n, d = tokens.shape
    cls = np.broadcast_to(np.asarray(sd["cls_token"], np.float64).reshape(1, 1, d), (b, 1, d))
    x = np.concatenate([cls, tokens], axis=1) + np.asarray(sd["pos_embed"], np.float64)
    inputs, outputs = [], []
    for i in range(config["depth"]):
        inputs.append(x)
        x = reference.block(sd, f"blocks.{i}", x, config["num_heads"])
        outputs.append(x)
    x = reference.layer_norm(x, sd["norm.weight"], sd["norm.bias"])
    pooled = x[:, 0] if pooling == "token" else x[:, 1:].mean(axis=1)
    logits = reference.linear(pooled, sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else pooled
    return {"logits": logits, "pooled": pooled, "tokens": x, "patches": tokens, "block_inputs": inputs,
            "blocks": outputs}

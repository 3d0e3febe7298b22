"""Check the NumPy reference (tests/reference.py) against torch primitives and
small torch re-implementations written here from the spec."""

import importlib.util
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _load_reference():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.py")
    spec = importlib.util.spec_from_file_location("t2t_numpy_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ref = _load_reference()


def T(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def tsd(sd):
    return {k: T(v) for k, v in sd.items()}


def close(a, b, atol=1e-10, rtol=1e-9):
    if isinstance(b, torch.Tensor):
        b = b.detach().numpy()
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------
# torch re-implementation from the spec (NCHW unfold, as in the reference code)
# ---------------------------------------------------------------------------
def t_ln(sd, name, x):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)


def t_lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def t_performer(sd, p, x):
    x = t_ln(sd, p + ".norm1", x)
    w = sd[p + ".w"]
    m, emb = w.shape
    k, q, v = torch.split(t_lin(sd, p + ".kqv", x), emb, dim=-1)

    def prm(t):
        xd = (t * t).sum(dim=-1, keepdim=True).repeat(1, 1, m) / 2
        return torch.exp(torch.einsum("bti,mi->btm", t, w) - xd) / math.sqrt(m)

    kp, qp = prm(k), prm(q)
    D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
    kptv = torch.einsum("bin,bim->bnm", v, kp)
    y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, emb) + 1e-8)
    y = v + t_lin(sd, p + ".proj", y)
    return y + t_lin(sd, p + ".mlp.2", F.gelu(t_lin(sd, p + ".mlp.0", t_ln(sd, p + ".norm2", y))))


def t_transformer(sd, p, x):
    dim = x.shape[-1]
    h = t_ln(sd, p + ".norm1", x)
    q, k, v = t_lin(sd, p + ".attn.qkv", h).chunk(3, dim=-1)
    a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=dim ** -0.5)[:, 0]
    y = v + t_lin(sd, p + ".attn.proj", a)
    return y + t_lin(sd, p + ".mlp.fc2", F.gelu(t_lin(sd, p + ".mlp.fc1", t_ln(sd, p + ".norm2", y))))


def t_block(sd, p, x, heads, qk_scale=None):
    b, n, d = x.shape
    h = t_ln(sd, p + ".norm1", x)
    if qk_scale is None:  # torch's own MHA: same (3D, D) q,k,v in-proj layout
        mha = torch.nn.MultiheadAttention(d, heads, bias=True, batch_first=True).double()
        with torch.no_grad():
            mha.in_proj_weight.copy_(sd[p + ".attn.qkv.weight"])
            mha.in_proj_bias.copy_(sd.get(p + ".attn.qkv.bias", torch.zeros(3 * d, dtype=torch.float64)))
            mha.out_proj.weight.copy_(sd[p + ".attn.proj.weight"])
            mha.out_proj.bias.copy_(sd[p + ".attn.proj.bias"])
        mha.eval()
        a = mha(h, h, h, need_weights=False)[0]
    else:
        qkv = t_lin(sd, p + ".attn.qkv", h).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=qk_scale)
        a = t_lin(sd, p + ".attn.proj", a.transpose(1, 2).reshape(b, n, d))
    x = x + a
    return x + t_lin(sd, p + ".mlp.fc2", F.gelu(t_lin(sd, p + ".mlp.fc1", t_ln(sd, p + ".norm2", x))))


def t_forward(sd, images_nhwc, cfg, qk_scale=None, pooling="token"):
    x = T(images_nhwc).permute(0, 3, 1, 2)  # NCHW
    layer = t_performer if cfg["t2t_type"] == "performer" else t_transformer
    stages = cfg["t2t_stages"]
    h, w = x.shape[2:]
    for n, (k, s, p) in enumerate(stages):
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        tok = F.unfold(x, kernel_size=k, stride=s, padding=p).transpose(1, 2)
        if n + 1 < len(stages):
            tok = layer(sd, f"tokens_to_token.attention{n + 1}", tok)
            x = tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[2], h, w)
    x = t_lin(sd, "tokens_to_token.project", tok)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    for i in range(cfg["depth"]):
        x = t_block(sd, f"blocks.{i}", x, cfg["num_heads"], qk_scale)
    x = t_ln(sd, "norm", x)
    x = x[:, 0] if pooling == "token" else x[:, 1:].mean(dim=1)
    return t_lin(sd, "head", x) if "head.weight" in sd else x


# ---------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("hw,c,k,s,p", [
    ((16, 16), 3, 7, 4, 2), ((17, 23), 3, 7, 4, 2), ((12, 9), 5, 3, 2, 1),
    ((11, 14), 4, 3, 1, 0), ((10, 13), 2, 2, 2, 0), ((8, 6), 3, 5, 3, 3),
])
def test_unfold_matches_torch(hw, c, k, s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, hw[0], hw[1], c))
    got = ref.unfold(x, k, s, p)
    want = F.unfold(T(x).permute(0, 3, 1, 2), kernel_size=k, stride=s, padding=p).transpose(1, 2)
    assert got.shape == tuple(want.shape)
    close(got, want, atol=0, rtol=0)
    tokens, grid = ref.soft_split(x, k, s, p)
    assert grid[0] * grid[1] == tokens.shape[1]
    assert grid == ((hw[0] + 2 * p - k) // s + 1, (hw[1] + 2 * p - k) // s + 1)


def test_grid_sizes():
    assert ref.grid_sizes((224, 224), ref.DEFAULT_CONFIG["t2t_stages"]) == [(56, 56), (28, 28), (14, 14)]
    assert ref.grid_sizes((384, 384), ref.DEFAULT_CONFIG["t2t_stages"])[-1] == (24, 24)


@pytest.mark.parametrize("src,dst", [
    ((14, 14), (24, 24)), ((24, 24), (14, 14)), ((7, 9), (5, 13)), ((1, 4), (3, 2)),
    ((6, 6), (6, 6)), ((5, 8), (16, 3)),
])
def test_bicubic_matches_torch(src, dst):
    rng = np.random.default_rng(1)
    g = rng.standard_normal((src[0], src[1], 4))
    got = ref.bicubic_resize_torch(g, *dst)
    want = F.interpolate(T(g).permute(2, 0, 1)[None], size=dst, mode="bicubic",
                         align_corners=False)[0].permute(1, 2, 0)
    assert got.shape == (dst[0], dst[1], 4)
    close(got, want, atol=1e-12)
    got_b = ref.bicubic_resize_torch(np.stack([g, 2 * g]), *dst)
    close(got_b[1], 2 * want.numpy(), atol=1e-12)


def test_sinusoid_and_resize_pos_embed():
    n, d = 197, 32
    table = ref.sinusoid_table(n, d)
    assert table.shape == (1, n, d)
    want = np.array([[p / 10000 ** (2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    want[:, 0::2] = np.sin(want[:, 0::2])
    want[:, 1::2] = np.cos(want[:, 1::2])
    close(table[0], want, atol=1e-6)

    pe = ref.sinusoid_table(n, d, dtype=np.float64)
    out = ref.resize_pos_embed(pe, 24)
    assert out.shape == (1, 577, d)
    close(out[:, :1], pe[:, :1], atol=0, rtol=0)
    grid = T(pe[0, 1:]).reshape(1, 14, 14, d).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(24, 24), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 576, d)
    close(out[:, 1:], want, atol=1e-12)
    assert ref.resize_pos_embed(pe, (10, 16)).shape == (1, 161, d)


def test_layer_norm_gelu_match_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 40)) * 3 + 1
    w, b = rng.standard_normal(40), rng.standard_normal(40)
    close(ref.layer_norm(x, w, b), F.layer_norm(T(x), (40,), T(w), T(b), eps=1e-5), atol=1e-12)
    y = np.linspace(-9, 9, 1001)
    close(ref.gelu(y), F.gelu(T(y)), atol=1e-14)


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------
def _small_cfg(t2t_type, **kw):
    cfg = dict(t2t_type=t2t_type, image_size=(32, 48), token_dim=16, embed_dim=32, depth=2,
               num_heads=4, mlp_ratio=2.0, classes=10)
    cfg.update(kw)
    return cfg


def test_token_performer_layer():
    sd = ref.make_state_dict(_small_cfg("performer", token_dim=64), rng=3)
    w = sd["tokens_to_token.attention1.w"]
    assert w.shape == (32, 64)
    close(w @ w.T, 32 * np.eye(32), atol=1e-4)
    x = np.random.default_rng(4).standard_normal((2, 50, 147))
    got = ref.token_performer(sd, "tokens_to_token.attention1", x)
    assert got.shape == (2, 50, 64)
    close(got, t_performer(tsd(sd), "tokens_to_token.attention1", T(x)), atol=1e-10)
    # trailing dot in the prefix is accepted
    close(ref.token_performer(sd, "tokens_to_token.attention1.", x), got, atol=0, rtol=0)


def test_token_transformer_layer():
    sd = ref.make_state_dict(_small_cfg("transformer", token_dim=64), rng=5)
    assert "tokens_to_token.attention1.attn.qkv.bias" not in sd
    x = np.random.default_rng(6).standard_normal((2, 40, 147))
    got = ref.token_transformer(sd, "tokens_to_token.attention1", x)
    assert got.shape == (2, 40, 64)
    close(got, t_transformer(tsd(sd), "tokens_to_token.attention1", T(x)), atol=1e-10)


@pytest.mark.parametrize("qkv_bias,qk_scale", [(False, None), (True, None), (False, 0.125)])
def test_block(qkv_bias, qk_scale):
    sd = ref.make_state_dict(_small_cfg("performer", qkv_bias=qkv_bias), rng=7)
    assert ("blocks.0.attn.qkv.bias" in sd) == qkv_bias
    x = np.random.default_rng(8).standard_normal((2, 9, 32))
    got = ref.block(sd, "blocks.1", x, 4, qk_scale)
    close(got, t_block(tsd(sd), "blocks.1", T(x), 4, qk_scale), atol=1e-10)


# ---------------------------------------------------------------------------
# whole model
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_kw,pooling,qk_scale", [
    (dict(t2t_type="performer"), "token", None),
    (dict(t2t_type="transformer"), "avg", None),
    (dict(t2t_type="performer", image_size=(37, 29), qkv_bias=True), "token", 0.2),
    (dict(t2t_type="transformer", t2t_stages=[(4, 4, 0)], classes=0), "token", None),
    (dict(t2t_type="performer", t2t_stages=[(3, 2, 1)] * 4, image_size=(40, 56)), "avg", None),
])
def test_forward_matches_torch(cfg_kw, pooling, qk_scale):
    cfg = _small_cfg(**cfg_kw)
    sd = ref.make_state_dict(cfg, rng=9)
    h, w = ref.normalize_config(cfg)["image_size"]
    x = np.random.default_rng(10).standard_normal((2, h, w, 3))
    out = ref.forward(sd, x, cfg, qk_scale=qk_scale, pooling=pooling, return_features=True)
    n_cls = cfg.get("classes", 1000)
    assert out["logits"].shape == (2, n_cls if n_cls else 32)
    assert len(out["blocks"]) == cfg["depth"]
    assert out["tokens"].shape == (2, sd["pos_embed"].shape[1], 32)
    assert np.all(np.isfinite(out["tokens"]))
    assert 0.05 < np.std(out["blocks"][-1]) < 20  # activations stay O(1)
    want = t_forward(tsd(sd), x, ref.normalize_config(cfg), qk_scale, pooling)
    close(out["logits"], want, atol=1e-9, rtol=1e-8)
    close(ref.forward(sd, x, cfg, qk_scale=qk_scale, pooling=pooling), out["logits"], atol=0, rtol=0)


def test_forward_rejects_wrong_pos_embed():
    cfg = _small_cfg("performer")
    sd = ref.make_state_dict(cfg, rng=0)
    with pytest.raises(ValueError):
        ref.forward(sd, np.zeros((1, 64, 64, 3)), cfg)


# ---------------------------------------------------------------------------
# state-dict layout and parameter counts (spec sections 8 and 10)
# ---------------------------------------------------------------------------
def test_t2t_vit_7_state_dict():
    cfg = dict(t2t_type="performer", image_size=(224, 224), embed_dim=256, depth=7,
               num_heads=4, mlp_ratio=2)
    sd = ref.make_state_dict(cfg, rng=0)
    assert ref.count_params(sd) == 4_310_222
    assert all(v.dtype == np.float32 for v in sd.values())
    expect = {
        "cls_token": (1, 1, 256), "pos_embed": (1, 197, 256),
        "tokens_to_token.attention1.w": (32, 64),
        "tokens_to_token.attention1.kqv.weight": (192, 147),
        "tokens_to_token.attention1.kqv.bias": (192,),
        "tokens_to_token.attention1.proj.weight": (64, 64),
        "tokens_to_token.attention1.norm1.weight": (147,),
        "tokens_to_token.attention1.norm2.weight": (64,),
        "tokens_to_token.attention1.mlp.0.weight": (64, 64),
        "tokens_to_token.attention1.mlp.2.bias": (64,),
        "tokens_to_token.attention2.kqv.weight": (192, 576),
        "tokens_to_token.attention2.w": (32, 64),
        "tokens_to_token.project.weight": (256, 576),
        "blocks.6.attn.qkv.weight": (768, 256),
        "blocks.6.mlp.fc1.weight": (512, 256),
        "blocks.6.mlp.fc2.weight": (256, 512),
        "norm.weight": (256,), "head.weight": (1000, 256), "head.bias": (1000,),
    }
    for k, shape in expect.items():
        assert sd[k].shape == shape, k
    assert "blocks.0.attn.qkv.bias" not in sd and "blocks.7.norm1.weight" not in sd
    assert "tokens_to_token.attention3.w" not in sd
    close(sd["pos_embed"], ref.sinusoid_table(197, 256), atol=0, rtol=0)


def test_t2t_vit_t_14_state_dict():
    cfg = dict(t2t_type="transformer", image_size=224, embed_dim=384, depth=14,
               num_heads=6, mlp_ratio=3)
    sd = ref.make_state_dict(cfg, rng=0)
    assert ref.count_params(sd) == 21_541_070
    assert sd["tokens_to_token.attention1.attn.qkv.weight"].shape == (192, 147)
    assert sd["tokens_to_token.attention2.mlp.fc2.weight"].shape == (64, 64)
    assert "tokens_to_token.attention1.attn.qkv.bias" not in sd
    assert not any(k.endswith(".w") for k in sd)
    sd0 = ref.make_state_dict(dict(cfg, classes=0), rng=0)
    assert not any(k.startswith("head") for k in sd0)

"""The authors' T2T-ViT as plain PyTorch modules: the anchor the bfloat16 targets are measured against.

Written from ``../shared/T2T-SPEC.md`` (sections 1-6) with the authors' module and
parameter names, so that their checkpoints' state dicts (and ``tests/reference``'s
synthesised ones) load with ``load_state_dict`` unchanged. Performer T2T layers
only (T2T-ViT-7 ... 24), inference only (dropout and drop path are identities).

``benchmarks/run.py`` times it on the torch backend in float32 (``authors_b32``)
and with its backbone blocks in bfloat16, the T2T module left in float32
(``authors_bf16_blocks_b32``), the fastest form the issue measured for it.
"""

import math

import torch
from torch import nn

# (embed_dim, depth, heads, mlp_ratio) of the performer family (spec section 8).
CONFIGS = {
    "t2t_vit_7": (256, 7, 4, 2.0),
    "t2t_vit_10": (256, 10, 4, 2.0),
    "t2t_vit_12": (256, 12, 4, 2.0),
    "t2t_vit_14": (384, 14, 6, 3.0),
    "t2t_vit_19": (448, 19, 7, 3.0),
    "t2t_vit_24": (512, 24, 8, 3.0),
}
STAGES = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, out):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TokenPerformer(nn.Module):
    """Spec section 3: k, q, v order; prm(x) = exp(x w^T - |x|^2 / 2) / sqrt(m); the skip adds v."""

    def __init__(self, dim, emb=64, kernel_ratio=0.5):
        super().__init__()
        self.emb, self.m = emb, int(emb * kernel_ratio)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(emb)
        # A Sequential in the authors' code: its keys are mlp.0 and mlp.2.
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb))
        w = torch.nn.init.orthogonal_(torch.empty(self.m, emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def prm(self, x):
        half_sq = (x * x).sum(dim=-1, keepdim=True) / 2
        return torch.exp(x @ self.w.t() - half_sq) / math.sqrt(self.m)

    def forward(self, x):
        k, q, v = torch.split(self.kqv(self.norm1(x)), self.emb, dim=-1)
        kp, qp = self.prm(k), self.prm(q)
        normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)          # (B, T, 1)
        kptv = v.transpose(1, 2) @ kp                           # (B, emb, m)
        y = (qp @ kptv.transpose(1, 2)) / (normaliser + 1e-8)    # (B, T, emb)
        y = v + self.proj(y)
        return y + self.mlp(self.norm2(y))


class T2TModule(nn.Module):
    def __init__(self, embed_dim, in_chans=3, token_dim=64):
        super().__init__()
        self.soft_splits = [nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in STAGES]
        self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim)
        self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x):  # x: (B, C, H, W)
        x = self.soft_splits[0](x).transpose(1, 2)
        for attention, split in ((self.attention1, self.soft_splits[1]), (self.attention2, self.soft_splits[2])):
            x = attention(x)
            batch, tokens, channels = x.shape
            side = int(math.isqrt(tokens))
            x = split(x.transpose(1, 2).reshape(batch, channels, side, side)).transpose(1, 2)
        return self.project(x)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sinusoid_table(positions, dim):
    """Spec section 6: angle[p, j] = p / 10000 ** (2 * (j // 2) / dim); sin on even j, cos on odd."""
    p = torch.arange(positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = p / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


class T2TViT(nn.Module):
    def __init__(self, variant="t2t_vit_14", image_size=224, classes=1000, depth=None):
        super().__init__()
        if variant not in CONFIGS:
            raise ValueError(f"Unknown variant {variant!r}; accepted: {', '.join(CONFIGS)}.")
        embed_dim, default_depth, heads, mlp_ratio = CONFIGS[variant]
        depth = default_depth if depth is None else depth
        side = image_size
        for k, s, p in STAGES:
            side = (side + 2 * p - k) // s + 1
        self.tokens_to_token = T2TModule(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed = nn.Parameter(sinusoid_table(side * side + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, classes)

    def forward(self, images):  # (B, C, H, W)
        x = self.tokens_to_token(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class BlocksInBfloat16(nn.Module):
    """The authors' model with its backbone (blocks, norm, head, class token, position table) in
    bfloat16 and its T2T module in float32: the tokens are cast once, after the T2T module."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for part in (*model.blocks, model.norm, model.head):
            part.to(torch.bfloat16)

    def forward(self, images):
        m = self.model
        x = m.tokens_to_token(images).to(torch.bfloat16)
        x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + m.pos_embed.to(x.dtype)
        for block in m.blocks:
            x = block(x)
        return m.head(m.norm(x)[:, 0]).float()

"""Blocks shared by the encoder and the denoiser: masked self-attention, a Transformer layer, sinusoids.

Attribute names follow fairseq's `TransformerSentenceEncoderLayer` / `MultiheadAttention`
(`self_attn.{q,k,v,out}_proj`, `self_attn_layer_norm`, `fc1`, `fc2`, `final_layer_norm`) so that official
AV-HuBERT weights load by name. Everything here is free of Python control flow on tensor values, so the
modules trace to ONNX with symbolic batch and time axes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask from a key-validity mask.

    valid: [B, S] bool, True = a real token -> [B, 1, 1, S] bool, True = may be attended to.
    A row with no valid key at all would give NaN in softmax; such rows attend to everything instead
    (their outputs are padding and get discarded by the caller).
    """
    any_valid = valid.any(dim=1, keepdim=True)
    return (valid | ~any_valid)[:, None, None, :]


class MultiheadSelfAttention(nn.Module):
    """Self-attention with separate q/k/v/out projections (fairseq naming), run by SDPA."""

    def __init__(self, embed_dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, S, D]; mask: [B, 1, 1, S] bool (True = attend, from `attention_mask`) -> [B, S, D]."""
        b, s, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(y.transpose(1, 2).reshape(b, s, d))


class TransformerLayer(nn.Module):
    """fairseq `TransformerSentenceEncoderLayer` (GELU FFN), pre-LN when `layer_norm_first`."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, heads: int, dropout: float = 0.0, layer_norm_first: bool = True
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = MultiheadSelfAttention(embed_dim, heads, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(dropout)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, S, D]; mask: [B, 1, 1, S] bool (True = attend) -> [B, S, D]."""
        if self.layer_norm_first:
            x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x), mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.drop(self.self_attn(x, mask)))
        return self.final_layer_norm(x + self._ffn(x))


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids of (possibly fractional) positions.

    positions: [...] float -> [..., dim] (first half sin, second half cos; dim must be even).
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal embedding needs an even dim, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    )
    angles = positions.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

"""The sequence tower (SASRec-style): causal self-attention over the user's last items."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.history_tower import HistoryTower


class Dropout(nn.Module):
    """``nn.Dropout`` drawn from ``torch.rand_like``: the same distribution, and on a CPU about
    twice as fast as the Bernoulli sampler ``nn.Dropout`` uses; the sequence tower has seven."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        return x * torch.rand_like(x).ge_(self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class SwiGLU(nn.Module):
    """A feed-forward layer with a SiLU-gated hidden layer of ``hidden`` units."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.inner, self.drop, self.outer = nn.Linear(width, 2 * hidden), Dropout(dropout), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.inner(x).split(self.hidden, dim=-1)
        return self.outer(self.drop(value * F.silu(gate)))


class AttentionBlock(nn.Module):
    """Pre-norm causal self-attention and a feed-forward layer (``hidden`` units), each added
    to its input through a residual. gated: each of the two is scaled by a sigmoid gate read
    from its normalised input before it is added, and the feed-forward layer is a SwiGLU (the
    LiGR block of eSASRec)."""

    def __init__(self, width: int, heads: int, dropout: float, hidden: int | None = None, gated: bool = False) -> None:
        super().__init__()
        self.heads, hidden = heads, hidden or width
        self.attention_norm, self.feed_forward_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        if gated:
            self.feed_forward: nn.Module = SwiGLU(width, hidden, dropout)
            self.attention_gate, self.feed_forward_gate = nn.Linear(width, width), nn.Linear(width, width)
        else:
            self.feed_forward = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), Dropout(dropout),
                                              nn.Linear(hidden, width))
        self.gated = gated
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        normed = self.attention_norm(x)
        q, k, v = self.qkv(normed).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        # no dropout on the attention weights: on a CPU drawing that [batch, length, length] mask
        # cost a third of each training step, and dropout elsewhere regularises enough
        attended = self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                            .transpose(1, 2).reshape(batch, length, width))
        if self.gated:
            attended = attended * torch.sigmoid(self.attention_gate(normed))
        x = x + self.drop(attended)
        normed = self.feed_forward_norm(x)
        fed = self.feed_forward(normed)
        if self.gated:
            fed = fed * torch.sigmoid(self.feed_forward_gate(normed))
        return x + self.drop(fed)


class SequenceTower(HistoryTower):
    """Item vectors plus learned position embeddings, ``attention_blocks`` causal
    self-attention blocks; padding is masked out of every attention, so it changes nothing."""

    name = "sequence"

    def __init__(self, user_encoders: list[Encoder], config: TowerConfig) -> None:
        super().__init__(user_encoders, config)
        width = config.tower_dim
        if width % config.attention_heads:
            raise ValueError(f"attention_heads {config.attention_heads} must divide the tower width {width}")
        self.positions = nn.Embedding(config.history_length, width)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList([AttentionBlock(width, config.attention_heads, config.dropout,
                                                    config.feed_forward_mult * width, config.gated_blocks)
                                     for _ in range(config.attention_blocks)])
        self.norm = nn.LayerNorm(width)

    def mix(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        x = items * math.sqrt(items.shape[-1]) + self.positions.weight[-length:][None]
        x = self.drop(x) * real[..., None]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=items.device))
        # A padded position may attend to itself, so that no row of the mask is empty.
        mask = (causal[None] & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=items.device)[None]
        for block in self.blocks:
            x = block(x, mask[:, None])
        return self.norm(x)

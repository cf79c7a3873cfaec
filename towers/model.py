"""The two towers: features in, one L2-normalised vector out.

Each feature becomes a vector (an embedding, a bag of embeddings, or a projected
number); the vectors are concatenated and mapped by an MLP (``hidden_dims``, then a
linear layer to ``tower_dim``) and normalised to unit length.

The query tower is one of three (``TowerConfig.user_tower``): ``id``, a ``Tower`` over the
user's id and features; ``sequence``, causal self-attention over the user's history
(SASRec-style); ``pooled``, a recency-weighted average of the history. The history towers
read the items of the history as the candidate tower embeds them, so both towers share one
item representation, and they need no user-id table: a user unseen in training is served
from their history alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder

Inputs = dict[str, torch.Tensor]


class Tower(nn.Module):
    """Maps a batch of encoded features to ``[batch, tower_dim]`` unit vectors.

    encoders: one per feature, in the spec's order; the id feature's cardinality is the
    entity vocabulary size plus one (index 0: unknown, a zero vector).
    """

    def __init__(self, encoders: list[Encoder], id_cardinality: int, config: TowerConfig) -> None:
        super().__init__()
        width = config.feature_dim
        self.inputs = nn.ModuleDict()
        for encoder in encoders:
            kind, name = encoder.feature.kind, encoder.feature.column
            if kind == "numeric":
                layer: nn.Module = nn.Linear(1, width)
            elif kind in ("multi_hot", "text"):
                layer = nn.EmbeddingBag(encoder.cardinality, width, mode="mean", padding_idx=0,
                                        sparse=config.sparse(encoder.cardinality))
            else:
                rows = id_cardinality if kind == "id" else encoder.cardinality
                layer = nn.Embedding(rows, width, padding_idx=0, sparse=config.sparse(rows))
            if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
                nn.init.normal_(layer.weight, std=0.1)
                with torch.no_grad():
                    layer.weight[0].zero_()
            self.inputs[name] = layer
        layers: list[nn.Module] = []
        previous = width * len(encoders)
        for hidden in config.hidden_dims:
            layers += [nn.Linear(previous, hidden), nn.ReLU()]
            previous = hidden
        layers.append(nn.Linear(previous, config.tower_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        parts = [layer(inputs[name]) for name, layer in self.inputs.items()]
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class Features(nn.Module):
    """The user's features other than the id (age, gender, ...), as one vector added to every
    position of a history tower's output; nothing when there are none."""

    def __init__(self, encoders: list[Encoder], width: int, config: TowerConfig) -> None:
        super().__init__()
        self.tower = Tower(encoders, 0, config) if encoders else None
        self.project = nn.Linear(config.tower_dim, width) if encoders else None

    def forward(self, inputs: Inputs) -> torch.Tensor | float:
        if self.tower is None:
            return 0.0
        return self.project(self.tower(inputs))


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


class AttentionBlock(nn.Module):
    """Pre-norm causal self-attention and a feed-forward layer, each with a residual."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm, self.feed_forward_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.feed_forward = nn.Sequential(nn.Linear(width, width), nn.GELU(), Dropout(dropout),
                                          nn.Linear(width, width))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, width // self.heads) \
            .permute(2, 0, 3, 1, 4)
        # no dropout on the attention weights: on a CPU drawing that [batch, length, length] mask
        # cost a third of each training step, and dropout elsewhere regularises enough
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.drop(self.feed_forward(self.feed_forward_norm(x)))


class HistoryTower(nn.Module):
    """The query tower over a history window: ``[batch, length, tower_dim]`` item vectors (0
    rows for padding, on the left) in, a unit vector per position out, each depending only
    on the items up to it. The last position is the user's query vector.

    sequence: item vectors plus learned position embeddings, ``attention_blocks`` causal
    self-attention blocks; padding is masked out of every attention, so it changes nothing.
    pooled: a recency-weighted average, weight ``decay ** age`` (``decay`` learned, age 0
    for the newest item), then a linear layer."""

    def __init__(self, kind: str, user_encoders: list[Encoder], config: TowerConfig) -> None:
        super().__init__()
        width = config.tower_dim
        self.kind = kind
        self.features = Features(user_encoders, width, config)
        if kind == "sequence":
            if width % config.attention_heads:
                raise ValueError(f"attention_heads {config.attention_heads} must divide the tower width {width}")
            self.positions = nn.Embedding(config.history_length, width)
            nn.init.normal_(self.positions.weight, std=0.02)
            self.drop = Dropout(config.dropout)
            self.blocks = nn.ModuleList([AttentionBlock(width, config.attention_heads, config.dropout)
                                         for _ in range(config.attention_blocks)])
            self.norm = nn.LayerNorm(width)
        else:
            self.decay_logit = nn.Parameter(torch.tensor(2.0))  # decay = sigmoid(2) = 0.88 at the start
            self.project = nn.Linear(width, width)

    def forward(self, items: torch.Tensor, real: torch.Tensor, user_inputs: Inputs | None = None) -> torch.Tensor:
        length = items.shape[1]
        if self.kind == "sequence":
            x = items * math.sqrt(items.shape[-1]) + self.positions.weight[-length:][None]
            x = self.drop(x) * real[..., None]
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=items.device))
            # A padded position may attend to itself, so that no row of the mask is empty.
            mask = (causal[None] & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=items.device)[None]
            for block in self.blocks:
                x = block(x, mask[:, None])
            out = self.norm(x)
        else:
            age = torch.arange(length, device=items.device)
            gap = (age[:, None] - age[None, :]).clamp_min(0).float()  # [query position, item position]
            weights = torch.sigmoid(self.decay_logit) ** gap * torch.tril(torch.ones_like(gap))
            weights = weights[None] * real[:, None, :]
            pooled = weights @ items / weights.sum(-1, keepdim=True).clamp_min(1e-6)
            out = self.project(pooled)
        if user_inputs is not None:
            out = out + (self.features(user_inputs)[:, None, :] if self.features.tower is not None else 0.0)
        return F.normalize(out, dim=-1)


class TwoTowerModel(nn.Module):
    """A user (query) tower and an item (candidate) tower (the history towers read the
    user's features but not the id)."""

    def __init__(self, user_encoders: list[Encoder], item_encoders: list[Encoder],
                 n_users: int, n_items: int, config: TowerConfig) -> None:
        super().__init__()
        if config.user_tower == "id":
            self.user_tower: nn.Module = Tower(user_encoders, n_users + 1, config)
        else:
            self.user_tower = HistoryTower(config.user_tower, [e for e in user_encoders if e.feature.kind != "id"],
                                           config)
        self.item_tower = Tower(item_encoders, n_items + 1, config)

"""The two towers: id embedding, optional MLP, L2-normalised output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from towers.config import TowerConfig


class Tower(nn.Module):
    """Maps vocabulary indices (0 is the out-of-vocabulary bucket) to unit vectors."""

    def __init__(self, vocab_size: int, config: TowerConfig) -> None:
        super().__init__()
        widths = list(config.hidden_dims)
        self.embedding = nn.Embedding(vocab_size, widths[0] if widths else config.tower_dim)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:] + [config.tower_dim]):
            layers += [nn.ReLU(), nn.Linear(width_in, width_out)]
        self.mlp = nn.Sequential(*layers)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: ``[batch]`` int64 -> ``[batch, tower_dim]`` unit vectors."""
        return F.normalize(self.mlp(self.embedding(indices)), dim=-1)


class TwoTowerModel(nn.Module):
    """A user (query) tower and an item (candidate) tower."""

    def __init__(self, n_users: int, n_items: int, config: TowerConfig) -> None:
        super().__init__()
        self.user_tower = Tower(n_users + 1, config)
        self.item_tower = Tower(n_items + 1, config)

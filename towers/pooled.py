"""The pooled tower: a recency-weighted average of the user's last items."""

from __future__ import annotations

import torch
from torch import nn

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.history_tower import HistoryTower


class PooledTower(HistoryTower):
    """A recency-weighted average, weight ``decay ** age`` (``decay`` learned, age 0 for the
    newest item), then a linear layer."""

    name = "pooled"

    def __init__(self, user_encoders: list[Encoder], config: TowerConfig) -> None:
        super().__init__(user_encoders, config)
        width = config.tower_dim
        self.decay_logit = nn.Parameter(torch.tensor(2.0))  # decay = sigmoid(2) = 0.88 at the start
        self.project = nn.Linear(width, width)

    def mix(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        age = torch.arange(length, device=items.device)
        gap = (age[:, None] - age[None, :]).clamp_min(0).float()  # [query position, item position]
        weights = torch.sigmoid(self.decay_logit) ** gap * torch.tril(torch.ones_like(gap))
        weights = weights[None] * real[:, None, :]
        pooled = weights @ items / weights.sum(-1, keepdim=True).clamp_min(1e-6)
        return self.project(pooled)

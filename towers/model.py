"""The two towers: features in, one vector out (of unit length with ``similarity="cosine"``).

Each feature becomes a vector (an embedding, a bag of embeddings, or a projected
number); the vectors are concatenated and mapped by an MLP (``hidden_dims``, then a
linear layer to ``tower_dim``) and, for the cosine similarity, normalised to unit length.

The candidate tower is a ``Tower`` over the item's id and features. The query tower is the
one ``TowerConfig.user_tower`` names in ``towers/registry.py`` (a ``QueryTower``,
towers/query.py): ``id``, a ``Tower`` over the user's id and features; ``sequence`` and
``pooled``, which read the user's history (towers/history_tower.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.registry import query_tower

if TYPE_CHECKING:
    from towerbridge.towers.query import QueryTower

Inputs = dict[str, torch.Tensor]


class Tower(nn.Module):
    """Maps a batch of encoded features to ``[batch, tower_dim]`` vectors (unit vectors with the
    cosine similarity).

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
        self.unit = config.similarity == "cosine"

    def forward(self, inputs: Inputs) -> torch.Tensor:
        parts = [layer(inputs[name]) for name, layer in self.inputs.items()]
        out = self.mlp(torch.cat(parts, dim=-1))
        return F.normalize(out, dim=-1) if self.unit else out


# the lowest a learned temperature goes (CLIP's bound on its logit scale, 100)
MIN_LEARNED_TEMPERATURE = 0.01


class TwoTowerModel(nn.Module):
    """A user (query) tower, chosen by name from the registry, and an item (candidate) tower."""

    def __init__(self, user_encoders: list[Encoder], item_encoders: list[Encoder],
                 n_users: int, n_items: int, config: TowerConfig) -> None:
        super().__init__()
        self.user_tower: QueryTower = query_tower(config.user_tower).build(user_encoders, n_users, config)
        self.item_tower = Tower(item_encoders, n_items + 1, config)
        # learn_temperature: log(1 / temperature), a weight; absent otherwise
        self.log_inverse_temperature = (nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)))
                                        if config.learn_temperature else None)

    def _inverse_temperature(self) -> torch.Tensor:
        # at most 1 / MIN_LEARNED_TEMPERATURE: the loss cannot sharpen the softmax without bound
        return self.log_inverse_temperature.clamp(max=-math.log(MIN_LEARNED_TEMPERATURE)).exp()

    def learned_temperature(self) -> float | None:
        """The temperature learned so far (``learn_temperature``), or None."""
        if self.log_inverse_temperature is None:
            return None
        return float(1.0 / self._inverse_temperature().detach())

    def scaled(self, queries: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
        """The query vectors and the temperature a loss divides their scores by: as given, or with
        a learned temperature the queries times its inverse (so its gradient reaches it) and 1."""
        if self.log_inverse_temperature is None:
            return queries, temperature
        return queries * self._inverse_temperature(), 1.0

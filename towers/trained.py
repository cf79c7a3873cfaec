"""A trained model in memory: the towers with the vocabularies and encoded features they read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder, FeatureSpec
from towerbridge.towers.model import Inputs, TwoTowerModel

if TYPE_CHECKING:
    from towerbridge.towers.warm import Lineage


@dataclass
class TrainedModel:
    """A model with everything needed to embed users and items again.

    user_ids: training users, sorted; item_ids: the whole catalog, sorted. An id at
    position k has vocabulary index k + 1; index 0 is "unknown". item_counts: training
    interactions per catalog item. user_inputs / item_inputs: encoded features per
    vocabulary index (row 0: all zeros), one tensor per feature column.
    """

    config: TowerConfig
    spec: FeatureSpec
    model: TwoTowerModel
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_counts: np.ndarray
    user_encoders: list[Encoder]
    item_encoders: list[Encoder]
    user_inputs: Inputs
    item_inputs: Inputs
    history: list[dict] = field(default_factory=list)
    stop: dict = field(default_factory=dict)
    lineage: Lineage | None = None  # the model it continued (towers/warm.py), None from scratch

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        return lookup(self.user_ids, user_ids)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return lookup(self.item_ids, item_ids)

    def item_log_prior(self) -> np.ndarray:
        """log p(item) from training counts, add-one smoothed so unseen items stay finite."""
        counts = self.item_counts.astype(np.float64) + 1.0
        return np.log(counts / counts.sum())


def lookup(vocabulary: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Vocabulary index of each id (1-based), 0 where the id is unknown."""
    ids = np.asarray(ids)
    position = np.searchsorted(vocabulary, ids).clip(max=max(0, len(vocabulary) - 1))
    found = (vocabulary[position] == ids) if len(vocabulary) else np.zeros(len(ids), dtype=bool)
    return np.where(found, position + 1, 0).astype(np.int64)


def gather(inputs: Inputs, index: torch.Tensor) -> Inputs:
    """The rows ``index`` of every feature tensor."""
    return {name: tensor[index] for name, tensor in inputs.items()}


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    return {name: tensor.to(device) for name, tensor in inputs.items()}

"""What every query tower answers, so that training, embedding and serving never ask which
tower they hold (as RecBole's models answer ``calculate_loss`` and ``full_sort_predict``).

A query tower is an ``nn.Module`` (the model's ``user_tower``) that also knows

    build             how to make itself for a catalog, users and settings
    hold_out          which interactions early stopping sets aside before the vocabularies are fitted
    examples          its training examples and their loss (a ``TrainingTask``)
    histories         what it reads of users' interactions to serve them (None: nothing)
    query_vectors     the users' query vectors, in the layout Milvus searches
    history_query     the query vector of someone who just had some items, when it can read one
    interactions_read how many of one user's last interactions training reads (None: all)

The classes are ``IdTower`` (towers/id_tower.py), ``SequenceTower`` (towers/sequence.py) and
``PooledTower`` (towers/pooled.py); ``towers/registry.py`` picks one by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from towerbridge.errors import ConfigError

if TYPE_CHECKING:
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.features import Encoder
    from towerbridge.towers.history import Histories
    from towerbridge.towers.train import Replica
    from towerbridge.towers.trained import TrainedModel


class TrainingTask(Protocol):
    """A tower's training examples on one device, as the training loop reads them.

    examples: how many there are (on this process); validation_count: how many early-stopping
    examples ``validate`` scores (0: no early stopping)."""

    examples: int
    validation_count: int

    def order(self, generator: np.random.Generator, size: int | None = None) -> np.ndarray:
        """The examples of one epoch, in training order (batches of ``size`` follow each other)."""

    def loss(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        """The summed loss of the examples ``batch``."""

    def validate(self) -> float | None:
        """The early-stopping metric (top-``validation_k`` accuracy), None without early stopping."""


class QueryTower(nn.Module):
    """The base of the query towers; see the module's docstring for what each answers."""

    name: ClassVar[str]
    reads_history: ClassVar[bool] = False

    @classmethod
    def build(cls, user_encoders: list[Encoder], n_users: int, config: TowerConfig) -> QueryTower:
        raise NotImplementedError

    @classmethod
    def hold_out(cls, interactions: pd.DataFrame, config: TowerConfig,
                 limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """``(train, validation)``: the interactions set aside for early stopping before the
        model is prepared. By default nothing: the history towers hold out inside their histories."""
        return interactions, None

    @classmethod
    def interactions_read(cls, config: TowerConfig) -> int | None:
        return None

    def examples(self, trained: TrainedModel, interactions: pd.DataFrame, validation: pd.DataFrame | None,
                 device: torch.device, replica: Replica) -> TrainingTask:
        raise NotImplementedError

    def histories(self, trained: TrainedModel, interactions: pd.DataFrame) -> Histories | None:
        """What serving reads of ``interactions`` (user_id, item_id, timestamp); None: nothing."""
        return None

    def query_vectors(self, trained: TrainedModel, user_ids: np.ndarray, histories: Histories | None) -> np.ndarray:
        raise NotImplementedError

    def history_query(self, trained: TrainedModel, items: list) -> np.ndarray:
        raise ConfigError(f"this model has the {self.name} tower, which cannot read a history; build one with "
                          "--user-tower sequence or pooled")

"""The id tower: the user's id and features in, one vector out; trained on one example per
interaction with the in-batch softmax and the logQ correction (TFRS' retrieval task)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.history import Histories
from towerbridge.towers.loss import retrieval_loss
from towerbridge.towers.metrics import factorized_top_k
from towerbridge.towers.model import Tower
from towerbridge.towers.query import QueryTower
from towerbridge.towers.trained import TrainedModel, gather, to_device
from towerbridge.towers.vectors import BATCH, item_layout, user_layout


class IdTower(Tower, QueryTower):
    """A ``Tower`` over the user's id (a table of the training users; unknown users get row 0,
    a zero vector) and features. It serves the users it was trained on."""

    name = "id"

    @classmethod
    def build(cls, user_encoders: list[Encoder], n_users: int, config: TowerConfig) -> IdTower:
        return cls(user_encoders, n_users + 1, config)

    @classmethod
    def hold_out(cls, interactions: pd.DataFrame, config: TowerConfig,
                 limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return validation_split(interactions, config, limit)

    def examples(self, trained: TrainedModel, interactions: pd.DataFrame, validation: pd.DataFrame | None,
                 device: torch.device, replica) -> InteractionTask:
        return InteractionTask(trained, interactions, validation, device)

    def query_vectors(self, trained: TrainedModel, user_ids: np.ndarray, histories: Histories | None) -> np.ndarray:
        """The users' ids and features (unknown ids get the all-unknown inputs); ``histories``
        are not read."""
        indices = torch.from_numpy(trained.user_index(np.asarray(user_ids)))
        vectors = np.empty((len(indices), trained.config.vector_dim), dtype=np.float32)
        for start in range(0, len(indices), BATCH):
            rows = gather(trained.user_inputs, indices[start:start + BATCH])
            vectors[start:start + BATCH] = user_layout(self(rows)).numpy()
        return vectors


def validation_split(interactions: pd.DataFrame, config: TowerConfig,
                     limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """For early stopping: the last interaction of up to ``validation_users`` (or ``limit``)
    sampled users (with at least two interactions) is set aside. Returns ``(train, validation)``."""
    if not config.early_stopping_patience:
        return interactions, None
    ordered = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    last = ordered[~ordered["user_id"].duplicated(keep="last") & ordered["user_id"].duplicated(keep=False)]
    chosen = np.random.default_rng(config.seed).permutation(last.index.to_numpy())[:limit or config.validation_users]
    return interactions.drop(index=chosen), interactions.loc[np.sort(chosen)]


@torch.inference_mode()
def validation_hit_rate(trained: TrainedModel, validation: pd.DataFrame, device: torch.device) -> float:
    """Factorized top-k accuracy (k = ``validation_k``) of the validation items over the whole
    catalog, scored as served: ``user·item / temperature + prior``."""
    config, model = trained.config, trained.model
    model.eval()
    items = torch.arange(1, len(trained.item_ids) + 1)
    item_vectors = item_layout(model.item_tower(to_device(gather(trained.item_inputs, items), device)),
                               torch.from_numpy(trained.item_log_prior()), config, model.learned_temperature())
    users = torch.from_numpy(trained.user_index(validation["user_id"].to_numpy()))
    queries = user_layout(model.user_tower(to_device(gather(trained.user_inputs, users), device)))
    positive = torch.from_numpy(trained.item_index(validation["item_id"].to_numpy()) - 1).to(device)
    model.train()
    key = f"factorized_top_k/top_{config.validation_k}_categorical_accuracy"
    return factorized_top_k(queries, item_vectors, positive, ks=(config.validation_k,))[key]


class InteractionTask:
    """The id tower's examples: one per training interaction, in-batch softmax with the logQ
    correction (and ``mixed_negatives`` uniform extra negatives)."""

    def __init__(self, trained: TrainedModel, interactions: pd.DataFrame, validation: pd.DataFrame | None,
                 device: torch.device) -> None:
        self.trained, self.validation, self.device = trained, validation, device
        self.user_inputs = to_device(trained.user_inputs, device)
        self.item_inputs = to_device(trained.item_inputs, device)
        self.users = torch.from_numpy(trained.user_index(interactions["user_id"].to_numpy())).to(device)
        self.items = torch.from_numpy(trained.item_index(interactions["item_id"].to_numpy())).to(device)
        # In-batch negatives are drawn in proportion to training frequency: that is their sampling probability.
        self.sampling_probability = torch.from_numpy(
            np.concatenate([[1.0], trained.item_counts]) / max(1, trained.item_counts.sum())).float().to(device)
        self.examples = len(self.users)
        self.validation_count = 0 if validation is None else len(validation)

    def order(self, generator: np.random.Generator, size: int | None = None) -> np.ndarray:
        """The examples of one epoch, shuffled."""
        return generator.permutation(self.examples)

    def loss(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        model, config = self.trained.model, self.trained.config
        user_batch, item_batch = self.users[batch], self.items[batch]
        extra = {}
        if config.mixed_negatives:
            # Mixed negative sampling: items drawn uniformly from the whole catalog.
            n_catalog = len(self.trained.item_ids)
            sampled = torch.from_numpy(generator.integers(1, n_catalog + 1, config.mixed_negatives)).to(self.device)
            extra = {
                "extra_candidate_embeddings": model.item_tower(gather(self.item_inputs, sampled)),
                "extra_sampling_probability": torch.full((len(sampled),), 1.0 / n_catalog, device=self.device),
                "extra_candidate_ids": sampled,
            }
        queries, temperature = model.scaled(model.user_tower(gather(self.user_inputs, user_batch)), config.temperature)
        return retrieval_loss(
            queries,
            model.item_tower(gather(self.item_inputs, item_batch)),
            temperature=temperature,
            candidate_sampling_probability=(
                self.sampling_probability[item_batch] if config.logq_correction else None),
            candidate_ids=item_batch,
            num_hard_negatives=config.num_hard_negatives,
            **extra,
        )

    def validate(self) -> float | None:
        return None if self.validation is None else validation_hit_rate(self.trained, self.validation, self.device)

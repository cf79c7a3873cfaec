"""The training loop: plain code from top to bottom."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from towers.config import TowerConfig
from towers.features import Encoder, FeatureSpec, check_columns, default_spec
from towers.loss import retrieval_loss
from towers.model import Inputs, TwoTowerModel


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


def encode(encoders: list[Encoder], ids: np.ndarray, table: pd.DataFrame | None, id_column: str,
           id_index: np.ndarray) -> Inputs:
    """Feature tensors for the entities ``ids`` (vocabulary order), with a zero row 0.

    id_index: what the id feature holds for each entity (its index, or 0 to hide it).
    """
    rows = table.set_index(id_column).reindex(ids) if table is not None else None
    inputs: Inputs = {}
    for encoder in encoders:
        name = encoder.feature.column
        values = id_index if encoder.feature.kind == "id" else encoder.transform(rows[name])
        padded = np.concatenate([np.zeros((1, *values.shape[1:]), dtype=values.dtype), values])
        inputs[name] = torch.from_numpy(padded)
    return inputs


def fit_encoders(spec_side, table: pd.DataFrame | None) -> list[Encoder]:
    return [Encoder(feature) if feature.kind == "id" else Encoder(feature).fit(table[feature.column])
            for feature in spec_side]


def prepare(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
            config: TowerConfig, spec: FeatureSpec | None = None) -> TrainedModel:
    """Vocabularies, encoders, feature tensors and a freshly initialised model."""
    spec = spec or default_spec([] if users is None else list(users.columns), list(items.columns),
                                config.use_features)
    check_columns(spec.user, users, "user")
    check_columns(spec.item, items, "item")
    user_ids = np.unique(interactions["user_id"].to_numpy())
    item_ids = np.unique(items["item_id"].to_numpy())
    counts = np.bincount(lookup(item_ids, interactions["item_id"].to_numpy()), minlength=len(item_ids) + 1)[1:]
    train_users = None if users is None else users[users["user_id"].isin(user_ids)]
    user_encoders, item_encoders = fit_encoders(spec.user, train_users), fit_encoders(spec.item, items)
    # Items without training interactions hide their id (index 0, a zero vector): their
    # untrained id embedding would be noise, their other features are not.
    item_id_index = np.where(counts > 0, np.arange(1, len(item_ids) + 1), 0)
    torch.manual_seed(config.seed)
    return TrainedModel(
        config=config, spec=spec,
        model=TwoTowerModel(user_encoders, item_encoders, len(user_ids), len(item_ids), config),
        user_ids=user_ids, item_ids=item_ids, item_counts=counts,
        user_encoders=user_encoders, item_encoders=item_encoders,
        user_inputs=encode(user_encoders, user_ids, users, "user_id", np.arange(1, len(user_ids) + 1)),
        item_inputs=encode(item_encoders, item_ids, items, "item_id", item_id_index),
    )


def make_optimizer(model: torch.nn.Module, config: TowerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=config.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def train(interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None,
          config: TowerConfig, spec: FeatureSpec | None = None, progress: bool = True) -> TrainedModel:
    """Train both towers with the in-batch softmax on ``interactions`` (user_id, item_id).

    items: the whole catalog (``item_id`` and feature columns), so that items without
    training interactions still get an embedding from their features.
    users: ``user_id`` and feature columns, or None for id-only users.
    """
    trained = prepare(interactions, items, users, config, spec)
    generator = np.random.default_rng(config.seed)
    users_index = torch.from_numpy(trained.user_index(interactions["user_id"].to_numpy()))
    items_index = torch.from_numpy(trained.item_index(interactions["item_id"].to_numpy()))
    # In-batch negatives are drawn in proportion to training frequency: that is their sampling probability.
    sampling_probability = torch.from_numpy(
        np.concatenate([[1.0], trained.item_counts]) / max(1, trained.item_counts.sum())).float()
    n_catalog = len(trained.item_ids)

    model = trained.model
    optimizer = make_optimizer(model, config)
    n_examples = len(users_index)
    n_batches = -(-n_examples // config.batch_size)
    bar = tqdm(total=config.epochs * n_batches, desc="train", unit="batch", disable=not progress,
               dynamic_ncols=True, leave=False)
    model.train()
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.from_numpy(generator.permutation(n_examples))
        epoch_loss = 0.0
        for start in range(0, n_examples, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2:
                continue  # a softmax over one candidate has nothing to learn from
            user_batch, item_batch = users_index[batch], items_index[batch]
            extra = {}
            if config.mixed_negatives:
                # Mixed negative sampling: items drawn uniformly from the whole catalog.
                sampled = torch.from_numpy(generator.integers(1, n_catalog + 1, config.mixed_negatives))
                extra = {
                    "extra_candidate_embeddings": model.item_tower(gather(trained.item_inputs, sampled)),
                    "extra_sampling_probability": torch.full((len(sampled),), 1.0 / n_catalog),
                    "extra_candidate_ids": sampled,
                }
            loss = retrieval_loss(
                model.user_tower(gather(trained.user_inputs, user_batch)),
                model.item_tower(gather(trained.item_inputs, item_batch)),
                temperature=config.temperature,
                candidate_sampling_probability=(
                    sampling_probability[item_batch] if config.logq_correction else None),
                candidate_ids=item_batch,
                num_hard_negatives=config.num_hard_negatives,
                **extra,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
            bar.update(1)
        seconds = time.perf_counter() - started
        trained.history.append({
            "epoch": epoch + 1,
            "loss_per_example": round(epoch_loss / n_examples, 5),
            "seconds": round(seconds, 3),
            "examples_per_s": round(n_examples / seconds, 1),
        })
        bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss / n_examples:.3f}", ex_s=f"{n_examples / seconds:,.0f}")
    bar.close()
    model.eval()
    return trained

"""The training loop: plain code from top to bottom."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from towers.config import TowerConfig
from towers.loss import retrieval_loss
from towers.model import TwoTowerModel


@dataclass
class TrainedModel:
    """A model with the vocabularies it was trained with.

    user_ids, item_ids: sorted raw ids; id ``user_ids[k]`` has vocabulary index ``k + 1``
    (index 0 is the out-of-vocabulary bucket). item_counts: training interactions per item,
    aligned with item_ids.
    """

    config: TowerConfig
    model: TwoTowerModel
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_counts: np.ndarray
    history: list[dict] = field(default_factory=list)

    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        return _lookup(self.user_ids, user_ids)

    def item_index(self, item_ids: np.ndarray) -> np.ndarray:
        return _lookup(self.item_ids, item_ids)

    def item_log_prior(self) -> np.ndarray:
        """log p(item) from training counts, add-one smoothed so unseen items stay finite."""
        counts = self.item_counts.astype(np.float64) + 1.0
        return np.log(counts / counts.sum())


def _lookup(vocabulary: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Vocabulary index of each id (1-based), 0 where the id is unknown."""
    position = np.searchsorted(vocabulary, ids).clip(max=len(vocabulary) - 1)
    found = vocabulary[position] == ids
    return np.where(found, position + 1, 0).astype(np.int64)


def train(interactions: pd.DataFrame, item_ids: np.ndarray, config: TowerConfig,
          progress: bool = True) -> TrainedModel:
    """Train both towers with the in-batch softmax on ``interactions`` (user_id, item_id).

    item_ids: every candidate item (the whole catalog), so that items without training
    interactions still get a vocabulary slot and an embedding.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    user_vocab = np.unique(interactions["user_id"].to_numpy())
    item_vocab = np.unique(np.asarray(item_ids))
    trained = TrainedModel(
        config=config,
        model=TwoTowerModel(len(user_vocab), len(item_vocab), config),
        user_ids=user_vocab,
        item_ids=item_vocab,
        item_counts=np.zeros(len(item_vocab), dtype=np.int64),
    )
    users = torch.from_numpy(trained.user_index(interactions["user_id"].to_numpy()))
    items_np = trained.item_index(interactions["item_id"].to_numpy())
    trained.item_counts = np.bincount(items_np, minlength=len(item_vocab) + 1)[1:]
    items = torch.from_numpy(items_np)
    # In-batch negatives are drawn in proportion to training frequency: that is their sampling probability.
    sampling_probability = torch.from_numpy(
        np.concatenate([[1.0], trained.item_counts]) / max(1, trained.item_counts.sum())
    ).float()

    model = trained.model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    n_examples = len(users)
    n_batches = -(-n_examples // config.batch_size)
    bar = tqdm(total=config.epochs * n_batches, desc="train", unit="batch", disable=not progress,
               dynamic_ncols=True, leave=False)
    model.train()
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.from_numpy(rng.permutation(n_examples))
        epoch_loss = 0.0
        for start in range(0, n_examples, config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2:
                continue  # a softmax over one candidate has nothing to learn from
            user_batch, item_batch = users[batch], items[batch]
            loss = retrieval_loss(
                model.user_tower(user_batch),
                model.item_tower(item_batch),
                temperature=config.temperature,
                candidate_sampling_probability=(
                    sampling_probability[item_batch] if config.logq_correction else None
                ),
                candidate_ids=item_batch,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
            bar.update(1)
        seconds = time.perf_counter() - started
        trained.history.append({
            "epoch": epoch + 1,
            "loss_per_example": epoch_loss / n_examples,
            "seconds": round(seconds, 3),
            "examples_per_s": round(n_examples / seconds, 1),
        })
        bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss / n_examples:.3f}",
                        ex_s=f"{n_examples / seconds:,.0f}")
    bar.close()
    model.eval()
    return trained

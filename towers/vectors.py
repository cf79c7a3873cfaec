"""The vectors that go to Milvus, in the layout the index expects.

item vector: ``[item_embedding / temperature, prior_weight * log p(item)]``
user vector: ``[user_embedding, 1]``
so their inner product is ``user·item / temperature + prior_weight * log p(item)``:
the trained logit plus the popularity prior that the logQ correction took out.
Without the correction the prior slot is 0 and ranking is by the logit alone.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from towers.train import TrainedModel, gather

BATCH = 65536


@torch.inference_mode()
def item_vectors(trained: TrainedModel, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embed every item of the catalog. Returns ``(item_ids [n], vectors [n, vector_dim])``."""
    config = trained.config
    n_items = len(trained.item_ids)
    prior = trained.item_log_prior() * config.prior_weight if config.logq_correction else np.zeros(n_items)
    vectors = np.empty((n_items, config.vector_dim), dtype=np.float32)
    for start in tqdm(range(0, n_items, BATCH), desc="embed items", unit="batch", disable=not progress, leave=False):
        stop = min(start + BATCH, n_items)
        rows = gather(trained.item_inputs, torch.arange(start + 1, stop + 1))
        vectors[start:stop, :-1] = (trained.model.item_tower(rows) / config.temperature).numpy()
    vectors[:, -1] = prior
    return trained.item_ids, vectors


@torch.inference_mode()
def user_vectors(trained: TrainedModel, user_ids: np.ndarray) -> np.ndarray:
    """Embed users by raw id; unknown ids get the all-unknown inputs. ``[n, vector_dim]``."""
    indices = torch.from_numpy(trained.user_index(np.asarray(user_ids)))
    vectors = np.ones((len(indices), trained.config.vector_dim), dtype=np.float32)
    for start in range(0, len(indices), BATCH):
        rows = gather(trained.user_inputs, indices[start:start + BATCH])
        vectors[start:start + BATCH, :-1] = trained.model.user_tower(rows).numpy()
    return vectors

"""The vectors that go to Milvus, in the layout the index expects.

item vector: ``[item_embedding / temperature, prior_weight * log p(item)]``
user vector: ``[user_embedding, 1]``
so their inner product is ``user·item / temperature + prior_weight * log p(item)``:
the trained logit plus the popularity prior that the logQ correction took out.
Without the correction the prior slot is 0 and ranking is by the logit alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from towerbridge.towers.config import TowerConfig
from towerbridge.towers.history import Histories
from towerbridge.towers.trained import TrainedModel, gather, lookup

BATCH = 65536


def item_layout(embeddings: torch.Tensor, log_prior: torch.Tensor, config: TowerConfig,
                temperature: float | None = None) -> torch.Tensor:
    """Item tower outputs ``[n, vector_dim - 1]`` and their items' log p(item) ``[n]`` as
    stored in Milvus, ``[n, vector_dim]``. temperature: the one learned so far, while a model
    with ``learn_temperature`` trains (a trained one's config records it); None: the config's."""
    prior = log_prior * config.prior_weight if config.logq_correction else torch.zeros_like(log_prior)
    temperature = config.temperature if temperature is None else temperature
    return torch.cat([embeddings / temperature, prior[:, None].to(embeddings)], dim=1)


def user_layout(embeddings: torch.Tensor) -> torch.Tensor:
    """User tower outputs ``[n, vector_dim - 1]`` as the query vectors, ``[n, vector_dim]``."""
    return torch.cat([embeddings, torch.ones(len(embeddings), 1, dtype=embeddings.dtype,
                                             device=embeddings.device)], dim=1)


@torch.inference_mode()
def item_vectors(trained: TrainedModel, progress: bool = False, first: int = 0,
                 stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embed the catalog's items, or those at vocabulary positions ``first`` to ``stop``
    (exclusive; a shard). Returns ``(item_ids [n], vectors [n, vector_dim])``."""
    stop = len(trained.item_ids) if stop is None else stop
    log_prior = torch.from_numpy(trained.item_log_prior())
    vectors = np.empty((stop - first, trained.config.vector_dim), dtype=np.float32)
    for start in tqdm(range(first, stop, BATCH), desc="embed items", unit="batch", disable=not progress, leave=False):
        end = min(start + BATCH, stop)
        rows = gather(trained.item_inputs, torch.arange(start + 1, end + 1))
        vectors[start - first:end - first] = item_layout(trained.model.item_tower(rows), log_prior[start:end],
                                                         trained.config).numpy()
    return trained.item_ids[first:stop], vectors

@torch.inference_mode()
def new_item_vectors(trained: TrainedModel, items: pd.DataFrame) -> np.ndarray:
    """Vectors (``[n, vector_dim]``, as stored in Milvus) of catalog rows ``items`` (``item_id``
    and the model's item feature columns) that the model may not know: embedded from their
    features, as the catalog's items without training interactions are (their id hidden), an
    item the model trained on with its learned row; the popularity prior of an item with no
    training interactions (add-one smoothed)."""
    from towerbridge.towers.train import encode  # train reads the towers, which read this module

    ids = items["item_id"].to_numpy()
    known = lookup(trained.item_ids, ids)
    counts = np.concatenate([[0], trained.item_counts])[known]
    id_index = np.where(counts > 0, known, 0)
    inputs = encode(trained.item_encoders, ids, items, "item_id", id_index)
    total = float((trained.item_counts.astype(np.float64) + 1.0).sum())
    log_prior = torch.from_numpy(np.log((counts.astype(np.float64) + 1.0) / total))
    out = np.empty((len(ids), trained.config.vector_dim), dtype=np.float32)
    for start in range(0, len(ids), BATCH):
        rows = gather(inputs, torch.arange(start + 1, min(start + BATCH, len(ids)) + 1))
        out[start:start + BATCH] = item_layout(trained.model.item_tower(rows), log_prior[start:start + BATCH],
                                               trained.config).numpy()
    return out


@torch.inference_mode()
def user_vectors(trained: TrainedModel, user_ids: np.ndarray, histories: Histories | None = None) -> np.ndarray:
    """Query vectors of users by raw id, ``[n, vector_dim]``, as the model's query tower makes
    them: the id tower from their ids and features, the history towers from each user's last
    ``history_length`` items in ``histories`` (which may be newer than the model)."""
    return trained.model.user_tower.query_vectors(trained, np.asarray(user_ids), histories)


@torch.inference_mode()
def history_vector(trained: TrainedModel, items: list) -> np.ndarray:
    """The query vector ``[vector_dim]`` of someone who just had ``items`` (raw item ids,
    oldest first), with no user id: what `towerbridge recommend --history` searches with."""
    return trained.model.user_tower.history_query(trained, items)

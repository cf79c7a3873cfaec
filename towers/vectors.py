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

from towerbridge.errors import ConfigError, DataError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.history import Histories
from towerbridge.towers.model import Inputs
from towerbridge.towers.trained import TrainedModel, gather

BATCH = 65536


def item_layout(embeddings: torch.Tensor, log_prior: torch.Tensor, config: TowerConfig) -> torch.Tensor:
    """Item tower outputs ``[n, vector_dim - 1]`` and their items' log p(item) ``[n]`` as
    stored in Milvus, ``[n, vector_dim]``."""
    prior = log_prior * config.prior_weight if config.logq_correction else torch.zeros_like(log_prior)
    return torch.cat([embeddings / config.temperature, prior[:, None].to(embeddings)], dim=1)


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


def history_items(trained: TrainedModel, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The items the ``windows`` hold, sorted, and their item-tower vectors (padding, item 0,
    first, as a zero vector): what ``history_queries`` reads."""
    needed = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long, device=windows.device), windows.flatten()]))
    item_inputs = {name: tensor.to(windows.device) for name, tensor in trained.item_inputs.items()}
    vectors = trained.model.item_tower(gather(item_inputs, needed))
    return needed, torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])


def history_queries(trained: TrainedModel, windows: torch.Tensor, user_inputs: Inputs,
                    items: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Query vectors (``user_layout``) of history windows ``[n, length]``: the history tower's
    output at the last position. items: ``history_items`` of these windows or of more, when
    embedding many batches of windows (computed here otherwise)."""
    needed, vectors = items if items is not None else history_items(trained, windows)
    out = trained.model.user_tower(vectors[torch.searchsorted(needed, windows)], windows > 0, user_inputs)
    return user_layout(out[:, -1])


@torch.inference_mode()
def user_vectors(trained: TrainedModel, user_ids: np.ndarray, histories: Histories | None = None) -> np.ndarray:
    """Query vectors of users by raw id, ``[n, vector_dim]``.

    The id tower reads their ids and features (unknown ids get the all-unknown inputs). The
    history towers read each user's last ``history_length`` items in ``histories`` (which
    may be newer than the model) and their features; a user with no history gets the
    vector of an empty one."""
    user_ids = np.asarray(user_ids)
    indices = torch.from_numpy(trained.user_index(user_ids))
    vectors = np.empty((len(indices), trained.config.vector_dim), dtype=np.float32)
    if trained.config.user_tower == "id":
        for start in range(0, len(indices), BATCH):
            rows = gather(trained.user_inputs, indices[start:start + BATCH])
            vectors[start:start + BATCH] = user_layout(trained.model.user_tower(rows)).numpy()
        return vectors
    if histories is None:
        raise ValueError(f"the {trained.config.user_tower} tower builds query vectors from histories; none given")
    windows = torch.from_numpy(histories.windows(histories.rows(user_ids), trained.config.history_length))
    step = max(1, BATCH // trained.config.history_length)
    items = history_items(trained, windows)  # once for all batches
    for start in range(0, len(indices), step):
        vectors[start:start + step] = history_queries(
            trained, windows[start:start + step], gather(trained.user_inputs, indices[start:start + step]),
            items).numpy()
    return vectors


def history_vector(trained: TrainedModel, items: list) -> np.ndarray:
    """The query vector ``[vector_dim]`` of someone who just had ``items`` (raw item ids,
    oldest first), with no user id: what `towerbridge recommend --history` searches with."""
    if trained.config.user_tower == "id":
        raise ConfigError("this model has the id tower, which cannot read a history; build one with "
                          "--user-tower sequence or pooled")
    index = trained.item_index(np.asarray(items, dtype=trained.item_ids.dtype))
    unknown = [item for item, i in zip(items, index) if i == 0]
    if unknown:
        raise DataError(f"history items {unknown[:5]} are not in the model's catalog")
    return user_vectors(trained, np.array([0]), Histories.of([index.tolist()], users=np.array([0])))[0]

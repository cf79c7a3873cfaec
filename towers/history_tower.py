"""What the history towers share: they read the user's last ``history_length`` items, as the
candidate tower embeds them (so both towers share one item representation), and the user's
features other than the id; they need no user-id table, so a user unseen in training is served
from their history alone. They train on next-item prediction at every position of every
history (``HistoryTask``). The towers themselves: ``SequenceTower`` (towers/sequence.py) and
``PooledTower`` (towers/pooled.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from towerbridge.errors import DataError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.history import Histories
from towerbridge.towers.loss import full_softmax_loss, sampled_softmax_bias, uniform_negatives_loss
from towerbridge.towers.metrics import factorized_top_k
from towerbridge.towers.model import Inputs, Tower
from towerbridge.towers.query import QueryTower
from towerbridge.towers.trained import TrainedModel, gather, to_device
from towerbridge.towers.vectors import BATCH, item_layout, user_layout


class Features(nn.Module):
    """The user's features other than the id (age, gender, ...), as one vector added to every
    position of a history tower's output; nothing when there are none."""

    def __init__(self, encoders: list[Encoder], width: int, config: TowerConfig) -> None:
        super().__init__()
        self.tower = Tower(encoders, 0, config) if encoders else None
        self.project = nn.Linear(config.tower_dim, width) if encoders else None

    def forward(self, inputs: Inputs) -> torch.Tensor | float:
        if self.tower is None:
            return 0.0
        return self.project(self.tower(inputs))


class HistoryTower(QueryTower):
    """The query tower over a history window: ``[batch, length, tower_dim]`` item vectors (0
    rows for padding, on the left) in, a vector per position out (unit length with the cosine
    similarity), each depending only on the items up to it. The last position is the user's
    query vector. A subclass says how the positions are mixed (``mix``); the user's features are
    added to every position."""

    reads_history = True

    def __init__(self, user_encoders: list[Encoder], config: TowerConfig) -> None:
        super().__init__()
        self.features = Features(user_encoders, config.tower_dim, config)
        self.unit = config.similarity == "cosine"

    @classmethod
    def build(cls, user_encoders: list[Encoder], n_users: int, config: TowerConfig) -> HistoryTower:
        return cls([encoder for encoder in user_encoders if encoder.feature.kind != "id"], config)

    @classmethod
    def interactions_read(cls, config: TowerConfig) -> int | None:
        if config.earlier_windows:
            return None
        return config.history_length + 1  # the window and the item that follows it

    def mix(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``[batch, length, tower_dim]`` item vectors and the ``[batch, length]`` mask of real
        (not padding) positions in; ``[batch, length, tower_dim]`` out, position t reading
        only the positions up to t."""
        raise NotImplementedError

    def forward(self, items: torch.Tensor, real: torch.Tensor, user_inputs: Inputs | None = None) -> torch.Tensor:
        out = self.mix(items, real)
        if user_inputs is not None:
            out = out + (self.features(user_inputs)[:, None, :] if self.features.tower is not None else 0.0)
        return F.normalize(out, dim=-1) if self.unit else out

    def examples(self, trained: TrainedModel, interactions: pd.DataFrame, validation: pd.DataFrame | None,
                 device: torch.device, replica) -> HistoryTask:
        return HistoryTask(trained, Histories.from_interactions(interactions, trained.item_index), device,
                           validation_users=replica.validation_users(trained.config))

    def histories(self, trained: TrainedModel, interactions: pd.DataFrame) -> Histories:
        return Histories.from_interactions(interactions, trained.item_index)

    def query_vectors(self, trained: TrainedModel, user_ids: np.ndarray, histories: Histories | None) -> np.ndarray:
        """Each user's last ``history_length`` items in ``histories`` (which may be newer than
        the model) and their features; a user with no history gets the vector of an empty one."""
        if histories is None:
            raise ValueError(f"the {self.name} tower builds query vectors from histories; none given")
        user_ids = np.asarray(user_ids)
        indices = torch.from_numpy(trained.user_index(user_ids))
        vectors = np.empty((len(indices), trained.config.vector_dim), dtype=np.float32)
        windows = torch.from_numpy(histories.windows(histories.rows(user_ids), trained.config.history_length))
        step = max(1, BATCH // trained.config.history_length)
        items = history_items(trained, windows)  # once for all batches
        # users in batches of like history lengths: each batch reads only as many columns as its
        # longest history (history_queries), not the whole window
        order = torch.argsort((windows > 0).sum(dim=1), stable=True)
        for start in range(0, len(indices), step):
            rows = order[start:start + step]
            vectors[rows.numpy()] = history_queries(trained, windows[rows], gather(trained.user_inputs, indices[rows]),
                                                    items).numpy()
        return vectors

    def history_query(self, trained: TrainedModel, items: list) -> np.ndarray:
        index = trained.item_index(np.asarray(items, dtype=trained.item_ids.dtype))
        unknown = [item for item, i in zip(items, index) if i == 0]
        if unknown:
            raise DataError(f"history items {unknown[:5]} are not in the model's catalog")
        return self.query_vectors(trained, np.array([0]), Histories.of([index.tolist()], users=np.array([0])))[0]


def first_used_column(windows: torch.Tensor) -> int:
    """The first column of left-padded ``windows`` ``[n, length]`` that holds an item in some
    row (the last column when none does). The columns before it are padding only, which changes
    no output (it is masked out): the towers need not read them."""
    used = (windows > 0).any(dim=0).nonzero()
    return int(used[0]) if len(used) else windows.shape[1] - 1


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
    windows = windows[:, first_used_column(windows):].contiguous()  # searchsorted reads it whole
    out = trained.model.user_tower(vectors[torch.searchsorted(needed, windows)], windows > 0, user_inputs)
    return user_layout(out[:, -1])


def history_exclusions(inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                       mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's own items that leave each position's softmax (``exclude_history``), as
    ``(rows, items)``: ``rows`` index the kept positions (``keep``, ``[B, L]``, row-major, as
    ``queries[keep]`` orders them), ascending; ``items`` are vocabulary indices. ``seen``: the
    items at and before the position; ``window``: every item of the window (its inputs and its
    last target). ``targets``: ``[B, L]``, or ``[B, L, H]`` for several targets a position; a
    position's own targets are never among them, even where they were seen before."""
    batch, length = inputs.shape
    targets = targets if targets.dim() == 3 else targets[:, :, None]
    if mode == "seen":
        items, allowed = inputs, torch.ones(length, length, dtype=torch.bool, device=inputs.device).tril_()
    else:
        items = torch.cat([inputs, targets[:, -1:, 0]], dim=1)
        allowed = torch.ones(length, length + 1, dtype=torch.bool, device=inputs.device)
    own = (items[:, None, :, None] == targets[:, :, None, :]).any(dim=-1)  # [B, L, columns]: a target of the position
    pairs = keep[:, :, None] & allowed[None] & (items[:, None, :] > 0) & ~own
    b, t, s = pairs.nonzero(as_tuple=True)
    row_of = keep.flatten().cumsum(0).view(batch, length) - 1
    return row_of[b, t], items[b, s]


class HistoryTask:
    """The history towers' examples: one per user, predicting the next item at every
    position of the user's last ``history_length + 1`` items (and with ``future_targets`` > 1
    the items after it too, weighted ``future_weight``).

    The loss is the softmax over every catalog item (``full_softmax_items`` at most), or over
    a sample: the distinct items of the batch's histories and targets and ``mixed_negatives``
    uniform draws, with (``logq_correction``) minus the log of each item's chance to be in it.
    With ``uniform_negatives``, whatever the catalog's size, it is over each position's next
    item and that many distinct uniform draws shared by the batch.
    With early stopping, each user's last training item is the validation target, predicted
    from the items before it, and never a training target."""

    def __init__(self, trained: TrainedModel, histories: Histories, device: torch.device,
                 validation_users: int | None = None) -> None:
        config = trained.config
        self.trained, self.histories, self.device = trained, histories, device
        self.user_inputs = to_device(trained.user_inputs, device)
        self.item_inputs = to_device(trained.item_inputs, device)
        hold = 1 if config.early_stopping_patience else 0
        rows, inputs, targets = histories.training_windows(config.history_length, drop_last=hold,
                                                           earlier=config.earlier_windows)
        has_target = (targets > 0).any(axis=1)
        self.inputs = torch.from_numpy(inputs[has_target]).to(device)
        self.targets = torch.from_numpy(targets[has_target]).to(device)
        self.user_rows = torch.from_numpy(trained.user_index(histories.users[rows[has_target]])).to(device)
        self.examples = len(self.inputs)
        self.lengths = (inputs[has_target] > 0).sum(axis=1)
        self.full = len(trained.item_ids) <= config.full_softmax_items
        counts = np.concatenate([[0], trained.item_counts]).astype(np.float64)
        self.sampling_probability = torch.from_numpy(counts / max(1.0, counts.sum())).float().to(device)
        self.validation, self.validation_count = None, 0
        if hold:
            rows = np.flatnonzero(histories.lengths() >= 2)
            rows = np.random.default_rng(config.seed).permutation(rows)[:validation_users or config.validation_users]
            self.validation_count = len(rows)
            rows = np.sort(rows)
            self.validation = (histories.windows(rows, config.history_length, drop_last=1),
                               histories.items[histories.starts[rows + 1] - 1],
                               trained.user_index(histories.users[rows]))

    def order(self, generator: np.random.Generator, size: int | None = None, pool: int = 32) -> np.ndarray:
        """The histories of one epoch: shuffled, then sorted by length within pools of
        ``pool`` batches, cut into batches (of ``size``, default ``batch_size``), and the
        batches shuffled. A batch is padded to its longest history, so batches of like lengths
        skip most of the padding."""
        size = size or self.trained.config.batch_size
        shuffled = generator.permutation(self.examples)
        pools = [shuffled[start:start + size * pool] for start in range(0, self.examples, size * pool)]
        ordered = np.concatenate([p[np.argsort(-self.lengths[p], kind="stable")] for p in pools])
        batches = [ordered[start:start + size] for start in range(0, self.examples, size)]
        return np.concatenate([batches[i] for i in generator.permutation(len(batches))])

    def loss(self, batch: torch.Tensor, generator: np.random.Generator) -> torch.Tensor:
        model, config = self.trained.model, self.trained.config
        inputs, targets = self.inputs[batch], self.targets[batch]
        start = first_used_column(inputs)
        inputs, targets = inputs[:, start:].contiguous(), targets[:, start:].contiguous()
        catalog, drawn, sampled = len(self.trained.item_ids), None, None
        if config.uniform_negatives:
            # the batch's uniform draws (distinct, none of them padding), shared by its positions
            drawn = torch.from_numpy(generator.choice(catalog, min(config.uniform_negatives, catalog), replace=False)
                                     + 1).to(self.device)
        elif not self.full:
            sampled = torch.from_numpy(generator.integers(1, catalog + 1, config.mixed_negatives)).to(self.device)
        whole = self.full and drawn is None  # every catalog item, in vocabulary order
        if whole:
            needed = torch.arange(catalog + 1, device=self.device)
        else:
            needed = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long, device=self.device),
                                             inputs.flatten(), targets.flatten(),
                                             drawn if drawn is not None else sampled]))
        vectors = model.item_tower(gather(self.item_inputs, needed))
        vectors = torch.cat([torch.zeros_like(vectors[:1]), vectors[1:]])  # row 0 (padding) stays 0
        position = inputs if whole else torch.searchsorted(needed, inputs)
        queries = model.user_tower(vectors[position], inputs > 0, gather(self.user_inputs, self.user_rows[batch]))
        keep = targets > 0
        queries, positives, weight = queries[keep], targets[keep], None
        queries, temperature = model.scaled(queries, config.temperature)
        if config.future_targets > 1:
            # each position also predicts the items after the next, each weighted future_weight
            # (0 where the history ends first): [B, L, future_targets] targets
            targets = torch.stack([F.pad(targets[:, ahead:], (0, ahead)) for ahead in range(config.future_targets)],
                                  dim=-1)
            positives = targets[keep]
            weight = (positives > 0).to(queries.dtype)
            weight[:, 1:] *= config.future_weight
            positives = positives.clamp_min(1)  # weight 0 rows point at any item
        excluded = None
        if config.exclude_history != "off":
            # a position's targets (the next item, and with future_targets of some weight those
            # after it) stay in
            rows, items = history_exclusions(inputs, targets if weight is None or config.future_weight > 0 else
                                             targets[..., :1], keep, config.exclude_history)
            excluded = (rows, items if drawn is not None else items - 1 if whole else
                        torch.searchsorted(needed, items) - 1)
        if drawn is not None:
            return uniform_negatives_loss(queries, vectors[torch.searchsorted(needed, positives)],
                                          vectors[torch.searchsorted(needed, drawn)], positives, drawn,
                                          temperature, excluded)
        if whole:
            return full_softmax_loss(queries, vectors[1:], positives - 1, temperature, weight=weight,
                                     excluded=excluded)
        # the sampled softmax: over the distinct items of the batch's histories and targets and the
        # uniform samples, each row's target among them; the logQ correction subtracts the log of
        # each item's chance to be among them, and ranking adds the popularity prior back
        bias = None
        if config.logq_correction:
            draws = int(keep.sum()) + len(batch)  # the batch's interactions: its windows and last targets
            bias = sampled_softmax_bias(self.sampling_probability[needed[1:]], draws, len(sampled),
                                        len(self.trained.item_ids))
        return full_softmax_loss(queries, vectors[1:], torch.searchsorted(needed, positives) - 1, temperature,
                                 bias, weight, excluded)

    @torch.inference_mode()
    def validate(self) -> float | None:
        """Top-``validation_k`` accuracy of each sampled user's last training item over the catalog."""
        if self.validation is None:
            return None
        windows, targets, user_rows = self.validation
        model, config = self.trained.model, self.trained.config
        model.eval()
        queries = history_queries(self.trained, torch.from_numpy(windows).to(self.device),
                                  gather(self.user_inputs, torch.from_numpy(user_rows).to(self.device)))
        items = item_layout(model.item_tower(gather(self.item_inputs, torch.arange(
            1, len(self.trained.item_ids) + 1, device=self.device))),
            torch.from_numpy(self.trained.item_log_prior()).to(self.device), config, model.learned_temperature())
        model.train()
        key = f"factorized_top_k/top_{config.validation_k}_categorical_accuracy"
        return factorized_top_k(queries, items, torch.from_numpy(targets - 1).to(self.device),
                                ks=(config.validation_k,))[key]

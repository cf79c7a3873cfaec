"""Continual training: a new model that starts from a trained one (its parent).

The new model is prepared from today's data as usual (vocabularies of today's users and
items), with the parent's feature encoders, so that a genre or a word keeps the embedding
row it had. Then every weight is carried over: the rows of the id tables by id (an item or
user the parent knew keeps its row; a new one keeps its fresh initialisation, and a new item
without interactions is embedded from its features alone), every other tensor as it is. A
parent whose towers have another shape cannot be continued: the error names what differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from towerbridge.errors import ConfigError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.trained import TrainedModel, lookup

# settings that only steer training: a continued model may change them
TRAINING_ONLY = frozenset({
    "epochs", "batch_size", "learning_rate", "learning_rate_schedule", "optimizer", "seed", "early_stopping_patience",
    "validation_users", "validation_k", "time_budget", "device", "num_hard_negatives", "mixed_negatives",
    "logq_correction", "prior_weight", "full_softmax_items", "sparse_embeddings", "dropout",
})


@dataclass(frozen=True)
class Lineage:
    """Where a continued model came from and what was new to it: its parent's id and directory,
    the items and users its parent did not know (``new_items``, ``new_users``; for a history
    tower a new user is one the parent did not train on), and the training interactions of each."""

    parent_id: str
    parent_dir: str
    new_items: int
    new_users: int
    items: int
    users: int
    parent_interactions: int | None = None
    interactions: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Lineage | None:
        if not values:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def describe(self) -> str:
        grown = (f", {self.interactions - self.parent_interactions:+,} training interactions"
                 if self.interactions is not None and self.parent_interactions is not None else "")
        return (f"continued from model {self.parent_id}: {self.new_items:,} new items (of {self.items:,}), "
                f"{self.new_users:,} new users (of {self.users:,}){grown}")


def check_compatible(config: TowerConfig, parent: TowerConfig, source: str) -> None:
    """Refuse to continue ``parent`` with ``config`` when they differ in a setting that shapes
    the towers; ``source`` names the parent in the message."""
    differ = [f"{f.name} {getattr(parent, f.name)!r} -> {getattr(config, f.name)!r}" for f in fields(TowerConfig)
              if f.name not in TRAINING_ONLY and getattr(parent, f.name) != getattr(config, f.name)]
    if differ:
        raise ConfigError(f"cannot continue training from {source}: its towers have another shape "
                          f"({'; '.join(differ)}); train from scratch instead")


def carry_weights(child: TrainedModel, parent: TrainedModel, source: str) -> None:
    """Copy ``parent``'s weights into ``child``'s freshly initialised model (in place): id
    tables row by row for the ids both know, every other tensor whole."""
    tables = id_tables(child)
    theirs = parent.model.state_dict()
    ours = child.model.state_dict()
    if set(theirs) != set(ours):
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        raise ConfigError(f"cannot continue training from {source}: its weights are not this model's "
                          f"(only in the parent: {extra[:3]}; only here: {missing[:3]}); train from scratch instead")
    with torch.no_grad():
        for name, tensor in ours.items():
            source_tensor = theirs[name]
            if name in tables:
                ids, parent_ids = (child.item_ids, parent.item_ids) if tables[name] == "item" \
                    else (child.user_ids, parent.user_ids)
                rows = lookup(parent_ids, ids)  # the parent's row of each of our ids (0: new)
                known = np.flatnonzero(rows) + 1
                tensor[torch.from_numpy(known)] = source_tensor[torch.from_numpy(rows[known - 1])]
            elif source_tensor.shape == tensor.shape:
                tensor.copy_(source_tensor)
            else:
                raise ConfigError(f"cannot continue training from {source}: {name} has shape "
                                  f"{tuple(source_tensor.shape)} there and {tuple(tensor.shape)} here; "
                                  "train from scratch instead")


def id_tables(trained: TrainedModel) -> dict[str, str]:
    """The state-dict names of the embedding tables indexed by vocabulary position: ``item`` or
    ``user`` for each."""
    tables = {}
    for side, tower, encoders in (("item", trained.model.item_tower, trained.item_encoders),
                                  ("user", trained.model.user_tower, trained.user_encoders)):
        layers = getattr(tower, "inputs", None)
        for encoder in encoders:
            if encoder.feature.kind == "id" and layers is not None and encoder.feature.column in layers:
                prefix = "item_tower" if side == "item" else "user_tower"
                tables[f"{prefix}.inputs.{encoder.feature.column}.weight"] = side
    return tables


def lineage(child: TrainedModel, parent: TrainedModel, parent_id: str, parent_dir: str,
            parent_interactions: int | None, interactions: int | None = None) -> Lineage:
    return Lineage(parent_id=parent_id, parent_dir=parent_dir,
                   new_items=int((lookup(parent.item_ids, child.item_ids) == 0).sum()),
                   new_users=int((lookup(parent.user_ids, child.user_ids) == 0).sum()),
                   items=len(child.item_ids), users=len(child.user_ids),
                   parent_interactions=parent_interactions, interactions=interactions)

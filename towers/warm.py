"""Continual training: a new model that starts from a trained one (its parent).

The new model is prepared from today's data as usual (vocabularies of today's users and
items, and of today's genres, words and other vocabulary values; numbers and buckets keep the
parent's scale). Then every weight is carried over: the rows of the id and vocabulary tables
by key (an item, user or genre the parent knew keeps its row; a new one keeps its fresh
initialisation, and a new item without interactions is embedded from its features alone),
every other tensor as it is. A parent whose towers have another shape cannot be continued:
the error names what differs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import torch

from towerbridge.errors import ConfigError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.features import Encoder
from towerbridge.towers.model import Tower
from towerbridge.towers.trained import TrainedModel, lookup

# settings that only steer training: a continued model may change them
TRAINING_ONLY = frozenset({
    "epochs", "batch_size", "learning_rate", "learning_rate_schedule", "optimizer", "seed", "early_stopping_patience",
    "validation_users", "validation_k", "time_budget", "device", "num_hard_negatives", "mixed_negatives",
    "logq_correction", "prior_weight", "full_softmax_items", "sparse_embeddings", "dropout", "replay",
    "future_targets", "future_weight", "uniform_negatives", "earlier_windows", "ema_decay",
})


@dataclass(frozen=True)
class Lineage:
    """Where a continued model came from and what was new to it: its parent's id and directory,
    the items and users its parent did not know (``new_items``, ``new_users``; for a history
    tower a new user is one the parent did not train on), and the training interactions of each;
    ``replay``: what it trained on when not the whole log (``Replay.to_dict``)."""

    parent_id: str
    parent_dir: str
    new_items: int
    new_users: int
    items: int
    users: int
    parent_interactions: int | None = None
    interactions: int | None = None
    replay: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Lineage | None:
        if not values:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def what_was_new(self) -> str:
        """``40 items (of 1,100), 30 users (of 600), +2,113 training interactions (59,002 in all)``."""
        grown = ""
        if self.interactions is not None and self.parent_interactions is not None:
            grown = (f", {self.interactions - self.parent_interactions:+,} training interactions "
                     f"({self.interactions:,} in all)")
        trained_on = f"; trained on {Replay(**self.replay).describe()}" if self.replay else ""
        return (f"{self.new_items:,} items (of {self.items:,}), {self.new_users:,} users (of {self.users:,})"
                f"{grown}{trained_on}")


@dataclass(frozen=True)
class Replay:
    """What a continued training trained on instead of the whole log: the ``changed`` examples
    (``unit``: users whose training history grew since the parent, for the history towers;
    interactions new since the parent, for the id tower) and ``replayed`` of the ``unchanged``
    others, a ``fraction`` of them drawn by a hash of each one (the same draw in every process)."""

    unit: str
    changed: int
    replayed: int
    unchanged: int
    fraction: float

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``120 users whose history grew and 82 of the 823 others (a 10% replay)``."""
        changed = "users whose history grew" if self.unit == "users" else "new interactions"
        return (f"{self.changed:,} {changed} and {self.replayed:,} of the {self.unchanged:,} others "
                f"(a {self.fraction:.0%} replay)")


def replay(interactions: pd.DataFrame, parent_train: pd.DataFrame, fraction: float, seed: int,
           by_user: bool) -> tuple[pd.DataFrame, Replay]:
    """The part of today's training ``interactions`` a continued model trains on: what changed
    since its parent's training data (``parent_train``) and a ``fraction`` of the rest.

    by_user (the history towers, whose example is a user's history): every interaction of each
    user with more training interactions than the parent saw (a new user included), and of
    a ``fraction`` of the others; else (the id tower, one example per interaction): the
    interactions the parent did not train on, and a ``fraction`` of those it did. Drawn by a
    seeded hash of the user (or interaction), so the draw does not depend on how the data is
    sharded over processes."""
    if by_user:
        today = interactions["user_id"].value_counts()
        before = parent_train["user_id"].value_counts().reindex(today.index, fill_value=0)
        grew = today.index[today.to_numpy() > before.to_numpy()]
        users = today.index.to_numpy()
        kept = np.isin(users, grew.to_numpy()) | _drawn(pd.Series(users), fraction, seed)
        chosen = interactions["user_id"].isin(users[kept]).to_numpy()
        changed, total = len(grew), len(users)
        replayed = int(kept.sum()) - changed
        unit = "users"
    else:
        keys = ["user_id", "item_id", "timestamp"]
        seen = interactions[keys].merge(parent_train[keys].drop_duplicates(), how="left", on=keys, indicator=True)
        new = (seen["_merge"] == "left_only").to_numpy()
        chosen = new | _drawn(interactions[keys], fraction, seed)
        changed, total = int(new.sum()), len(interactions)
        replayed = int(chosen.sum()) - changed
        unit = "interactions"
    return interactions[chosen], Replay(unit=unit, changed=changed, replayed=replayed, unchanged=total - changed,
                                        fraction=fraction)


def _drawn(keys: pd.Series | pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """A seeded, order-free draw of about ``fraction`` of ``keys`` (rows): by a hash of each."""
    hashed = pd.util.hash_pandas_object(keys, index=False).to_numpy()  # numbers are hashed without a key:
    salt = np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % 2**64)  # the seed is mixed in here
    hashed = pd.util.hash_array(hashed ^ salt)
    return (hashed >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def check_compatible(config: TowerConfig, parent: TowerConfig, source: str) -> None:
    """Refuse to continue ``parent`` with ``config`` when they differ in a setting that shapes
    the towers; ``source`` names the parent in the message."""
    # a learned temperature is a weight, carried over like the others (from a parent with a fixed
    # one, its value is where it starts: carry_weights): the value given to start from is not used
    learned = {"temperature", "learn_temperature"} if config.learn_temperature else set()
    differ = [f"{f.name} {getattr(parent, f.name)!r} -> {getattr(config, f.name)!r}" for f in fields(TowerConfig)
              if f.name not in TRAINING_ONLY | learned and getattr(parent, f.name) != getattr(config, f.name)]
    if differ:
        raise ConfigError(f"cannot continue training from {source}: its towers have another shape "
                          f"({'; '.join(differ)}); train from scratch instead")


VOCABULARY_KINDS = ("categorical", "multi_hot", "text")


def encoders(parent: list[Encoder], fitted: list[Encoder]) -> list[Encoder]:
    """The encoders of a continued model: today's vocabularies (``fitted``) for the features
    with one (a genre or a word new today gets a row; the ones the parent knew keep theirs),
    the parent's for the others (numbers and buckets keep the scale the weights learned)."""
    theirs = {encoder.feature.column: encoder for encoder in parent}
    return [encoder if encoder.feature.kind in VOCABULARY_KINDS + ("id",) else theirs[encoder.feature.column]
            for encoder in fitted]


def carry_weights(child: TrainedModel, parent: TrainedModel, source: str) -> None:
    """Copy ``parent``'s weights into ``child``'s freshly initialised model (in place): the
    tables indexed by an id or a vocabulary row by row for the keys both know, every other
    tensor whole."""
    ours_keys, theirs_keys = keyed_tables(child), keyed_tables(parent)
    theirs = parent.model.state_dict()
    ours = child.model.state_dict()
    if "log_inverse_temperature" in ours and "log_inverse_temperature" not in theirs:
        # a parent with a fixed temperature: the learned one starts from it
        theirs = {**theirs, "log_inverse_temperature": torch.tensor(math.log(1.0 / parent.config.temperature))}
    if set(theirs) != set(ours):
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        raise ConfigError(f"cannot continue training from {source}: its weights are not this model's "
                          f"(only in the parent: {extra[:3]}; only here: {missing[:3]}); train from scratch instead")
    with torch.no_grad():
        for name, tensor in ours.items():
            source_tensor = theirs[name]
            if name in ours_keys and name in theirs_keys:
                rows = lookup(theirs_keys[name], ours_keys[name])  # the parent's row of each of our keys (0: new)
                known = np.flatnonzero(rows) + 1
                tensor[torch.from_numpy(known)] = source_tensor[torch.from_numpy(rows[known - 1])]
            elif source_tensor.shape == tensor.shape:
                tensor.copy_(source_tensor)
            else:
                raise ConfigError(f"cannot continue training from {source}: {name} has shape "
                                  f"{tuple(source_tensor.shape)} there and {tuple(tensor.shape)} here; "
                                  "train from scratch instead")


def keyed_tables(trained: TrainedModel) -> dict[str, np.ndarray]:
    """The state-dict names of the embedding tables whose rows are keyed (row k + 1: key k):
    the id tables by the model's sorted user or item ids, the vocabulary features' tables by
    their sorted vocabularies; each with its keys."""
    tables: dict[str, np.ndarray] = {}
    for side, encoders_of_side, ids in (("item", trained.item_encoders, trained.item_ids),
                                        ("user", trained.user_encoders, trained.user_ids)):
        by_column = {encoder.feature.column: encoder for encoder in encoders_of_side}
        for path, module in trained.model.named_modules():
            if not path.startswith(f"{side}_tower") or not isinstance(module, Tower):
                continue
            for column in module.inputs:
                encoder = by_column.get(column)
                if encoder is None:
                    continue
                name = f"{path}.inputs.{column}.weight"
                if encoder.feature.kind == "id":
                    tables[name] = ids
                elif encoder.feature.kind in VOCABULARY_KINDS:
                    tables[name] = np.asarray(encoder.state["vocabulary"], dtype=str)
    return tables


def lineage(child: TrainedModel, parent: TrainedModel, parent_id: str, parent_dir: str,
            parent_interactions: int | None, interactions: int | None = None) -> Lineage:
    return Lineage(parent_id=parent_id, parent_dir=parent_dir,
                   new_items=int((lookup(parent.item_ids, child.item_ids) == 0).sum()),
                   new_users=int((lookup(parent.user_ids, child.user_ids) == 0).sum()),
                   items=len(child.item_ids), users=len(child.user_ids),
                   parent_interactions=parent_interactions, interactions=interactions)

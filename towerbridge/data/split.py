"""Held-out splits for evaluation, one per protocol.

leave-last-out  per user, the last ``holdout`` interactions by time are held out (users
                with no more than that stay in training only); ranking excludes the items
                the user saw in training (the usual next-item protocol)
time-cutoff     interactions at or after ``cutoff`` (unix seconds) are held out; ranking
                excludes seen items, as for leave-last-out
tfrs            a seeded random split (``test_fraction``, default 20%) of interactions,
                ranked over all items with seen items not excluded (comparable with the
                TFRS tutorials' numbers)

After the split, held-out interactions that cannot be scored are removed and counted by
reason (``scorable``): a user with no training interactions, or, where seen items are
excluded, an item the user already had in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from towerbridge.errors import ConfigError, DataError

PROTOCOLS = ("leave-last-out", "tfrs", "time-cutoff")


@dataclass(frozen=True)
class SplitOptions:
    holdout: int = 1
    test_fraction: float = 0.2
    cutoff: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.holdout < 1:
            raise ConfigError(f"holdout must be at least 1, got {self.holdout}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")


def leave_last_one_out(interactions: pd.DataFrame, holdout: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, hold out the last ``holdout`` interactions by time; return ``(train, held_out)``.

    Users with ``holdout`` interactions or fewer stay in training only. Ties in time are
    broken by row order, so the split is deterministic.
    """
    ordered = interactions.reset_index(drop=True)
    ordered = ordered.iloc[ordered.sort_values(["user_id", "timestamp"], kind="stable").index]
    per_user = ordered.groupby("user_id", sort=False)["user_id"].transform("size")
    from_end = ordered.groupby("user_id", sort=False).cumcount(ascending=False)
    held = (from_end < holdout) & (per_user > holdout)
    return ordered[~held].reset_index(drop=True), ordered[held].reset_index(drop=True)


def random_split(interactions: pd.DataFrame, test_fraction: float = 0.2,
                 seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random split of interactions into ``(train, held_out)``."""
    order = np.random.default_rng(seed).permutation(len(interactions))
    cut = int(round(len(interactions) * (1.0 - test_fraction)))
    ordered = interactions.reset_index(drop=True)
    return ordered.iloc[np.sort(order[:cut])].reset_index(drop=True), \
        ordered.iloc[np.sort(order[cut:])].reset_index(drop=True)


def time_cutoff(interactions: pd.DataFrame, cutoff: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions before ``cutoff`` train, the rest is held out."""
    later = interactions["timestamp"] >= cutoff
    if later.all() or not later.any():
        first, last = interactions["timestamp"].min(), interactions["timestamp"].max()
        raise DataError(f"cutoff {cutoff} leaves {'no training' if later.all() else 'no held-out'} interactions; "
                        f"timestamps run from {first} to {last}")
    return interactions[~later].reset_index(drop=True), interactions[later].reset_index(drop=True)


def split(interactions: pd.DataFrame, protocol: str,
          options: SplitOptions | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    options = options or SplitOptions()
    if protocol == "leave-last-out":
        return leave_last_one_out(interactions, options.holdout)
    if protocol == "tfrs":
        return random_split(interactions, options.test_fraction, options.seed)
    if protocol == "time-cutoff":
        if options.cutoff is None:
            raise ConfigError("the time-cutoff protocol needs a cutoff (--cutoff, unix seconds or a date)")
        return time_cutoff(interactions, options.cutoff)
    raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def excludes_seen(protocol: str) -> bool:
    """Whether ranking for this protocol removes the items a user saw in training."""
    return protocol in ("leave-last-out", "time-cutoff")


def scorable(train: pd.DataFrame, held_out: pd.DataFrame, protocol: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Held-out interactions that can be scored, and how many were removed for which reason."""
    reasons: dict[str, int] = {}
    cold_user = ~held_out["user_id"].isin(train["user_id"])
    reasons["user has no training interactions"] = int(cold_user.sum())
    keep = ~cold_user
    if excludes_seen(protocol):
        pairs = pd.MultiIndex.from_frame(train[["user_id", "item_id"]])
        seen = pd.MultiIndex.from_frame(held_out[["user_id", "item_id"]]).isin(pairs)
        reasons["item already seen in training (excluded from ranking)"] = int((seen & keep).sum())
        keep &= ~seen
    return held_out[keep].reset_index(drop=True), {reason: n for reason, n in reasons.items() if n}

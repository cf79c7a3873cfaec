"""Held-out splits for evaluation, one per protocol.

leave-last-out  per user, the last interaction by time is held out; ranking excludes
                the items the user saw in training (the usual next-item protocol)
tfrs            a seeded random 80/20 split of interactions, ranked over all items with
                seen items not excluded (comparable with the TFRS tutorials' numbers)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from towerbridge.errors import ConfigError

PROTOCOLS = ("leave-last-out", "tfrs")


def leave_last_one_out(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, hold out the last interaction by time; return ``(train, held_out)``.

    Users with a single interaction stay in training only. Ties in time are broken
    by row order, so the split is deterministic.
    """
    ordered = interactions.reset_index(drop=True)
    ordered = ordered.iloc[ordered.sort_values(["user_id", "timestamp"], kind="stable").index]
    per_user = ordered.groupby("user_id", sort=False)["user_id"].transform("size")
    is_last = ~ordered["user_id"].duplicated(keep="last")
    held = is_last & (per_user > 1)
    return ordered[~held].reset_index(drop=True), ordered[held].reset_index(drop=True)


def random_split(interactions: pd.DataFrame, test_fraction: float = 0.2,
                 seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded random split of interactions into ``(train, held_out)``."""
    order = np.random.default_rng(seed).permutation(len(interactions))
    cut = int(round(len(interactions) * (1.0 - test_fraction)))
    ordered = interactions.reset_index(drop=True)
    return ordered.iloc[np.sort(order[:cut])].reset_index(drop=True), \
        ordered.iloc[np.sort(order[cut:])].reset_index(drop=True)


def split(interactions: pd.DataFrame, protocol: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    if protocol == "leave-last-out":
        return leave_last_one_out(interactions)
    if protocol == "tfrs":
        return random_split(interactions)
    raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def excludes_seen(protocol: str) -> bool:
    """Whether ranking for this protocol removes the items a user saw in training."""
    return protocol == "leave-last-out"

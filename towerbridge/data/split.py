"""Held-out splits for evaluation."""

from __future__ import annotations

import pandas as pd


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

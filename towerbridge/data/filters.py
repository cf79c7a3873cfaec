"""Implicit-feedback options, applied before the split; every step reports its counts.

min_rating             keep interactions with rating >= this (needs a rating column)
deduplicate            keep-all (default) or keep-last: one interaction per (user, item), the latest
min_item_interactions  drop items with fewer interactions (after the steps above)
min_user_interactions  drop users with fewer interactions (after the steps above)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pandas as pd

from towerbridge.errors import ConfigError, DataError

DEDUPLICATE = ("keep-all", "keep-last")


@dataclass(frozen=True)
class Filters:
    min_rating: float | None = None
    deduplicate: str = "keep-all"
    min_item_interactions: int = 1
    min_user_interactions: int = 1

    def __post_init__(self) -> None:
        if self.deduplicate not in DEDUPLICATE:
            raise ConfigError(f"deduplicate must be one of {', '.join(DEDUPLICATE)}, got {self.deduplicate!r}")
        if self.min_item_interactions < 1 or self.min_user_interactions < 1:
            raise ConfigError("min_item_interactions and min_user_interactions must be at least 1, got "
                              f"{self.min_item_interactions} and {self.min_user_interactions}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "filters") -> Filters:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown filter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def apply(interactions: pd.DataFrame, filters: Filters) -> tuple[pd.DataFrame, list[dict]]:
    """Apply the filters in order; return the kept interactions and one report row per step."""
    report = []

    def step(name: str, kept: pd.DataFrame, before: pd.DataFrame) -> pd.DataFrame:
        report.append({"step": name, "interactions_before": len(before), "removed": len(before) - len(kept),
                       "interactions_after": len(kept)})
        return kept

    if filters.min_rating is not None:
        if "rating" not in interactions.columns:
            raise DataError(f"min_rating={filters.min_rating} needs a rating column, and this dataset has none")
        interactions = step(f"rating >= {filters.min_rating:g}",
                            interactions[interactions["rating"] >= filters.min_rating], interactions)
    if filters.deduplicate == "keep-last":
        latest = interactions.sort_values("timestamp", kind="stable").drop_duplicates(
            ["user_id", "item_id"], keep="last").sort_index()
        interactions = step("deduplicate (keep last)", latest, interactions)
    if filters.min_item_interactions > 1:
        counts = interactions["item_id"].map(interactions["item_id"].value_counts())
        interactions = step(f"items with >= {filters.min_item_interactions} interactions",
                            interactions[counts >= filters.min_item_interactions], interactions)
    if filters.min_user_interactions > 1:
        counts = interactions["user_id"].map(interactions["user_id"].value_counts())
        interactions = step(f"users with >= {filters.min_user_interactions} interactions",
                            interactions[counts >= filters.min_user_interactions], interactions)
    if interactions.empty:
        raise DataError("no interactions are left after the filters: "
                        + "; ".join(f"{r['step']} removed {r['removed']}" for r in report))
    return interactions.reset_index(drop=True), report

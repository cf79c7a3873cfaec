import pandas as pd
import pytest

from towerbridge.data.filters import Filters, apply
from towerbridge.errors import ConfigError, DataError

LOG = pd.DataFrame({
    "user_id": [1, 1, 1, 2, 2, 3],
    "item_id": [10, 10, 11, 10, 12, 12],
    "timestamp": [1, 5, 2, 3, 4, 6],
    "rating": [5.0, 2.0, 4.0, 4.0, 1.0, 5.0],
})


def test_filters_in_order():
    kept, report = apply(LOG, Filters(min_rating=4, deduplicate="keep-last", min_item_interactions=2))
    assert kept[["user_id", "item_id"]].values.tolist() == [[1, 10], [2, 10]]
    assert [(r["step"], r["removed"]) for r in report] == [
        ("rating >= 4", 2), ("deduplicate (keep last)", 0), ("items with >= 2 interactions", 2)]


def test_keep_last_keeps_the_latest_of_each_pair():
    kept, report = apply(LOG, Filters(deduplicate="keep-last"))
    assert kept.loc[(kept.user_id == 1) & (kept.item_id == 10), "timestamp"].tolist() == [5]
    assert report == [{"step": "deduplicate (keep last)", "interactions_before": 6, "removed": 1,
                       "interactions_after": 5}]


def test_nothing_left_is_an_error_naming_the_steps():
    with pytest.raises(DataError, match=r"no interactions are left after the filters: rating >= 6 removed 6"):
        apply(LOG, Filters(min_rating=6))


def test_bad_settings():
    with pytest.raises(ConfigError, match="deduplicate must be one of keep-all, keep-last"):
        Filters(deduplicate="keep-first")
    with pytest.raises(ConfigError, match=r"unknown filter\(s\) \['min_stars'\]"):
        Filters.from_dict({"min_stars": 3})
    with pytest.raises(DataError, match="needs a rating column"):
        apply(LOG.drop(columns="rating"), Filters(min_rating=3))

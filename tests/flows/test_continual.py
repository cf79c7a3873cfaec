"""Continual nightly rebuilds (issue 31) on the real embedded Milvus under Prefect's test
harness: the second day's rebuild continues the serving model and records its lineage; new
items get vectors and can be recommended; new users are served from their histories; a
continued training that fails leaves the serving version as it was; --from-scratch starts
from random weights; a replay trains on what grew; the budget stops a continued training; the
next rebuild keeps the catalog changes made since the last one."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LIGHT_TOWER, run_rebuild
from towerbridge import settings
from towerbridge.api import Client
from towerbridge.data.dataset import write_parquet
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.towers import artifact

ALIAS = "continual_test"


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Yesterday's catalog and log, and today's: 40 new items, and 30 new users."""
    interactions, items = generate(SyntheticSpec(n_users=600, n_items=1100, n_topics=12, seed=41))
    new_items = items["item_id"].to_numpy()[-40:]
    new_users = np.unique(interactions["user_id"])[-30:]
    yesterday = interactions[~interactions["item_id"].isin(new_items) & ~interactions["user_id"].isin(new_users)]
    new_users = np.setdiff1d(interactions["user_id"].unique(), yesterday["user_id"].unique())
    root = tmp_path_factory.mktemp("continual")
    for name, log, catalog in (("yesterday", yesterday, items[~items["item_id"].isin(new_items)]),
                               ("today", interactions, items)):
        (root / name).mkdir()
        write_parquet(log, root / name / "interactions.parquet")
        write_parquet(catalog, root / name / "items.parquet")
    return str(root / "yesterday"), str(root / "today"), new_items, new_users, interactions


def rebuild(uri, data_dir, **options):
    return run_rebuild(data_dir, ALIAS, uri, **{"epochs": 2, "tolerance": 0.05, **options})


@pytest.fixture(scope="module")
def two_days(milvus_uri, prefect_harness, days):
    yesterday, today, *_ = days
    return rebuild(milvus_uri, yesterday), rebuild(milvus_uri, today)


def test_the_first_rebuild_trains_from_scratch_the_next_continues_the_serving_model(two_days, days, store):
    (first_state, first), (second_state, second) = two_days
    _, _, new_items, new_users, today = days
    assert first_state.is_completed() and second_state.is_completed(), second.get("error")
    assert first["training"] == "from scratch: no version serves yet" and "lineage" not in first
    serving_model = store.record(first["serving_after"]).model_id
    assert second["training"] == f"continued from the serving model {serving_model} ({first['serving_after']})"
    # the lineage: the parent and what was new to it
    lineage = second["lineage"]
    parent = store.record(first["serving_after"])
    assert (lineage["parent_id"], lineage["parent_dir"]) == (serving_model, parent.model_dir)
    assert (lineage["new_items"], lineage["new_users"], lineage["items"]) == (len(new_items), len(new_users), 1100)
    assert lineage["interactions"] - lineage["parent_interactions"] > 0
    manifest = artifact.read_manifest(Path(second["model_dir"]))
    assert manifest.lineage.to_dict() == lineage and len(manifest.history) == 2  # its own 2 epochs
    text = (settings.state_dir("rebuilds") / str(second_state.state_details.flow_run_id) / "rebuild.md").read_text()
    assert f"- training: continued from the serving model {serving_model}" in text
    assert f"- what was new: {len(new_items)} items (of 1,100), {len(new_users)} users" in text
    assert second["outcome"] == "swapped" and store.alias_target(ALIAS) == second["serving_after"]


def test_new_items_get_vectors_and_can_be_recommended(two_days, days, milvus_uri):
    _, _, new_items, new_users, today = days
    with Client(milvus_uri, alias=ALIAS) as client:
        stored = client.query(f"item_id in {[int(i) for i in new_items]}", fields=["item_id"], limit=None)
        assert sorted(stored["item_id"]) == sorted(int(i) for i in new_items)
        # a user who had new items: the answer among the new items is one of them
        fan = today[today["item_id"].isin(new_items)]["user_id"].iloc[0]
        picks = client.recommend(fan, k=5, filter=f"item_id in {[int(i) for i in new_items]}")
        assert len(picks) == 5 and set(picks["item_id"]) <= set(int(i) for i in new_items)
        assert client.similar(int(new_items[0]), k=3)["item_id"].tolist()  # neighbours of a new item


def test_new_users_are_served_from_their_histories(two_days, days, milvus_uri):
    _, _, _, new_users, today = days
    with Client(milvus_uri, alias=ALIAS) as client:
        user = int(new_users[0])
        picks = client.recommend(user, k=10)
    assert len(picks) == 10 and not set(picks["item_id"]) & set(today[today["user_id"] == user]["item_id"])


def test_a_continued_training_that_fails_leaves_the_serving_version(two_days, days, milvus_uri, store):
    _, (_, second) = two_days
    _, today, *_ = days
    def serving():
        return store.versions(ALIAS), store.alias_target(ALIAS), store.record(second["serving_after"])

    before = serving()
    weights = Path(second["model_dir"]) / "weights.pt"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # the serving model's weights, cut short
    try:
        state, summary = rebuild(milvus_uri, today)
    finally:
        weights.write_bytes(good)
    assert state.is_failed() and summary["outcome"] == "failed"
    assert summary["training"].startswith("continued from the serving model")
    assert "cannot load weights" in summary["error"]
    assert serving() == before


def test_from_scratch_trains_a_new_model(two_days, days, milvus_uri):
    _, today, *_ = days
    state, summary = rebuild(milvus_uri, today, from_scratch=True)
    assert state.is_completed(), summary.get("error")
    assert summary["training"] == "from scratch (--from-scratch)" and "lineage" not in summary
    assert artifact.read_manifest(Path(summary["model_dir"])).lineage is None


def test_a_replay_trains_on_the_users_whose_history_grew_and_the_rebuild_keeps_the_catalog_changes(
        two_days, days, milvus_uri, store, tmp_path):
    from towerbridge import steps

    _, today_dir, _, _, today = days
    # tomorrow: 50 users have two interactions more; nobody and nothing else is new
    rng = np.random.default_rng(5)
    grown = rng.choice(np.unique(today["user_id"]), 50, replace=False)
    last = today["timestamp"].max()
    more = [{"user_id": user, "item_id": item, "timestamp": last + step}
            for user in grown for step, item in enumerate(rng.choice(
                np.setdiff1d(np.arange(1, 1101), today.loc[today["user_id"] == user, "item_id"]), 2, replace=False), 1)]
    tomorrow = pd.concat([today, pd.DataFrame(more).astype(today.dtypes.to_dict())], ignore_index=True)
    write_parquet(tomorrow, tmp_path / "interactions.parquet")
    write_parquet(pd.read_parquet(Path(today_dir) / "items.parquet"), tmp_path / "items.parquet")

    # and since the last rebuild, two items were added to the serving version and some retired
    serving = store.alias_target(ALIAS)
    added = pd.DataFrame({"item_id": [5001, 5002], "title": ["A Film Added Today (2026)"] * 2,
                          "genres": ["Comedy", "Drama"]})
    assert steps.add_items(milvus_uri, ALIAS, added).collection == serving
    retired = [int(item) for item in store.held(serving, [1, 2, 3])]
    assert steps.retire_items(milvus_uri, ALIAS, ids=retired).retired == len(retired) > 0

    state, summary = rebuild(milvus_uri, str(tmp_path), replay=0.25)
    assert state.is_completed() and summary["outcome"] == "swapped", summary.get("error")
    new = summary["serving_after"]
    assert new != serving and sorted(store.held(new, [5001, 5002])) == [5001, 5002]
    assert store.held(new, retired) == [] and store.record(new).catalog.through >= 2
    assert summary["training"].startswith("continued from the serving model")
    replay = summary["lineage"]["replay"]
    users = today["user_id"].nunique()
    assert (replay["unit"], replay["changed"], replay["unchanged"], replay["fraction"]) == (
        "users", 50, users - 50, 0.25)
    assert 0.15 * (users - 50) < replay["replayed"] < 0.35 * (users - 50)
    manifest = artifact.read_manifest(Path(summary["model_dir"]))
    assert manifest.lineage.replay == replay
    text = (settings.state_dir("rebuilds") / str(state.state_details.flow_run_id) / "rebuild.md").read_text()
    assert (f"; trained on 50 users whose history grew and {replay['replayed']} of the {users - 50} others "
            "(a 25% replay)") in text


def test_the_budget_stops_a_continued_training_and_keeps_the_best_weights(two_days, days, tmp_path):
    from towerbridge.data.options import DataOptions
    from towerbridge.flows.train import train as train_flow
    from towerbridge.options import TrainOptions

    _, (_, second) = two_days
    _, today, *_ = days
    options = TrainOptions(data=DataOptions("synthetic", today), epochs=500, time_budget=4,
                           early_stopping_patience=500, continue_from=second["model_dir"], tower_settings=LIGHT_TOWER)
    model_dir = train_flow(options, run_dir=str(tmp_path)).model_dir
    manifest = artifact.read_manifest(Path(model_dir))
    metrics = [epoch["validation_hit_rate@50"] for epoch in manifest.history]
    assert manifest.stop["reason"] == "time" and 1 <= manifest.stop["epochs"] == len(metrics) < 500
    assert manifest.stop["kept_epoch"] == int(np.argmax(metrics)) + 1
    assert manifest.stop["best_metric"] == round(max(metrics), 5)
    assert manifest.lineage.parent_dir == second["model_dir"]


"""The rebuild's gate on the real embedded Milvus and real flows: the candidate and the serving
model rank the same users, and only a candidate worse with confidence is rejected."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import towerbridge.steps as steps
from tests.conftest import run_rebuild, towerbridge, write_synthetic
from towerbridge import rebuild as decide
from towerbridge.data.options import DataOptions
from towerbridge.results import Comparison
from towerbridge.towers import artifact

ALIAS = "gate_test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("gate-data"), n_users=900, n_items=1200, n_topics=12, seed=31)


def run(uri, data_dir, **options):
    # models of a chosen quality: each trained from scratch (not continuing the serving one)
    return run_rebuild(data_dir, ALIAS, uri, **{"from_scratch": True, **options})


def gate_of(summary: dict) -> Comparison:
    return Comparison.from_dict(summary["comparison"])


@pytest.fixture(scope="module")
def weak_then_strong(milvus_uri, prefect_harness, data_dir):
    """A model trained for one epoch serves first; then one trained for four epochs is built."""
    return [run(milvus_uri, data_dir, epochs=epochs) for epochs in (1, 4)]


def test_a_genuinely_better_candidate_swaps_and_its_version_records_the_comparison(weak_then_strong, store):
    (_, first), (state, second) = weak_then_strong
    assert first["outcome"] == "swapped" and not gate_of(first).compared
    assert state.is_completed() and second["outcome"] == "swapped"
    gate = gate_of(second)
    assert gate.compared and gate.serving == first["serving_after"] and gate.users == 898
    hit_rate = gate.metrics[0]
    assert hit_rate.metric == "hit_rate@10" and hit_rate.low > 0  # better with confidence, not only not worse
    assert hit_rate.candidate == pytest.approx(second["report"]["model"]["hit_rate@10"])
    assert gate.serving_metrics["hit_rate@10"] == hit_rate.serving < hit_rate.candidate
    assert second["decision"]["checks"][2]["detail"].startswith(
        f"candidate is not shown to be worse, on the same 898 users (serving {gate.serving}): "
        f"hit_rate@10 {hit_rate.candidate:.4f} vs serving {hit_rate.serving:.4f}")
    assert store.record(second["serving_after"]).gate == gate
    listed = json.loads(towerbridge("collections", "--alias", ALIAS, "--json").stdout)
    assert Comparison.from_dict(listed[0]["gate"]) == gate and listed[1]["gate"]["compared"] is False
    table = towerbridge("collections", "--alias", ALIAS).stdout
    assert f"hit_rate@10 {hit_rate.difference:+.4f} [{hit_rate.low:+.4f}, {hit_rate.high:+.4f}] n=898" in table


def test_a_candidate_trained_for_one_epoch_is_rejected_naming_both_figures_and_the_interval(
        weak_then_strong, milvus_uri, data_dir, store):
    before = (store.versions(ALIAS), store.alias_target(ALIAS))
    state, summary = run(milvus_uri, data_dir, epochs=1)
    assert state.is_failed() and summary["outcome"] == "rejected"
    gate = gate_of(summary)
    worse = {metric.metric for metric in gate.worse}
    assert worse == {"hit_rate@10", "ndcg@10"}
    hit_rate = gate.metrics[0]
    assert hit_rate.high < -0.005 and hit_rate.candidate < hit_rate.serving
    named = (f"hit_rate@10 {hit_rate.candidate:.4f} vs serving {hit_rate.serving:.4f}, difference "
             f"{hit_rate.difference:+.4f} (95% interval {hit_rate.low:+.4f} to {hit_rate.high:+.4f})")
    assert named in summary["error"]
    assert "on the same 898 users" in summary["error"]
    text = (Path(summary["report_dir"]) / "rebuild.md").read_text()
    assert "## Candidate against serving, on the same 898 users" in text
    assert (f"| hit_rate@10 | {hit_rate.serving:.4f} | {hit_rate.candidate:.4f} | {hit_rate.difference:+.4f} | "
            f"{hit_rate.low:+.4f} to {hit_rate.high:+.4f} | **worse** |") in text
    assert (store.versions(ALIAS), store.alias_target(ALIAS)) == before


def test_a_build_with_shuffled_item_vectors_is_rejected(weak_then_strong, milvus_uri, data_dir, store, monkeypatch):
    # The serving model, re-indexed with each item given another item's vector: every item is
    # indexed and the index finds the exact neighbours (the row count and recall checks pass),
    # but the neighbours are the wrong items. Only the comparison can see it.
    before = (store.versions(ALIAS), store.alias_target(ALIAS))
    embed = steps.item_vectors

    def shuffled(trained, **options):
        ids, vectors = embed(trained, **options)
        return ids, vectors[np.random.default_rng(0).permutation(len(vectors))]

    serving_model = store.record(before[1]).model_dir
    monkeypatch.setattr(decide, "latest_model", lambda: serving_model)  # re-index the serving model itself
    monkeypatch.setattr(steps, "item_vectors", shuffled)
    state, summary = run(milvus_uri, data_dir, reuse_model=True)
    assert summary["model_dir"] == serving_model
    assert state.is_failed() and summary["outcome"] == "rejected"
    checks = summary["decision"]["checks"]
    assert [check["passed"] for check in checks] == [True, True, False]
    assert {metric.metric for metric in gate_of(summary).worse} == {"hit_rate@10", "ndcg@10"}
    assert (store.versions(ALIAS), store.alias_target(ALIAS)) == before


def test_a_serving_model_whose_files_are_gone_is_not_compared(weak_then_strong, milvus_uri, data_dir, store,
                                                             monkeypatch):
    (_, weak), _ = weak_then_strong
    monkeypatch.setattr(decide, "latest_model", lambda: weak["model_dir"])  # the one-epoch model, re-indexed
    serving = store.alias_target(ALIAS)
    model_dir = Path(store.record(serving).model_dir)
    moved = model_dir.with_name(model_dir.name + ".moved")
    model_dir.rename(moved)
    try:
        state, summary = run(milvus_uri, data_dir, reuse_model=True)
    finally:
        moved.rename(model_dir)
    gate = gate_of(summary)
    assert not gate.compared and gate.serving == serving and gate.metrics == ()
    assert gate.note.startswith(f"the model of {serving} cannot be loaded from {model_dir} (")
    assert gate.note.endswith("not compared; the candidate serves on its other checks")
    # judged on its other checks (it is indexed whole and its index finds what exact search finds),
    # so even this weaker model serves: nothing tells the gate it is weaker
    assert state.is_completed() and summary["outcome"] == "swapped"
    assert summary["decision"]["checks"][2] == {"check": "metrics vs serving", "passed": True, "detail": gate.note}
    assert "Not compared with a serving model: the model of" in (Path(summary["report_dir"]) / "rebuild.md").read_text()


def test_users_and_items_new_since_the_serving_id_tower_are_counted_as_its_misses(milvus_uri, tmp_path, store):
    # Yesterday's data lacked 60 users and 30 items; the serving id tower was trained on it. Today's
    # candidate, a sequence tower, knows them all. The serving model cannot answer the new users
    # (as `recommend` refuses them) nor find the new items: both count as its misses, and the
    # report says how many. Each model ranks with its own tower.
    (tmp_path / "today").mkdir()
    today = Path(write_synthetic(tmp_path / "today", n_users=600, n_items=1200, n_topics=12, seed=5))
    interactions = pd.read_parquet(today / "interactions.parquet")
    new_users = np.unique(interactions["user_id"])[:60]
    new_items = np.unique(interactions["item_id"])[-30:]
    (tmp_path / "yesterday").mkdir()
    items = pd.read_parquet(today / "items.parquet")
    items[~items["item_id"].isin(new_items)].to_parquet(tmp_path / "yesterday" / "items.parquet", index=False)
    old = interactions[~interactions["user_id"].isin(new_users) & ~interactions["item_id"].isin(new_items)]
    old.to_parquet(tmp_path / "yesterday" / "interactions.parquet", index=False)

    def model(day: str, tower: str) -> str:
        prepared = steps.prepare_data(DataOptions("synthetic", str(tmp_path / day)), str(tmp_path / day / "prepared"))
        return steps.train_model(prepared, str(tmp_path / "models"), {"user_tower": tower, "epochs": 3},
                                 progress=False)

    serving = steps.index_model(model("yesterday", "id"), milvus_uri, "gate_new_users", progress=False).collection
    candidate_dir = model("today", "sequence")
    candidate = steps.build_version(store, candidate_dir, "gate_new_users", progress=False, complete=False)
    report_dir = str(tmp_path / "report")
    report = steps.evaluate_model(candidate_dir, milvus_uri, candidate.collection, report_dir)
    gate = steps.compare_with_serving(candidate_dir, report_dir, milvus_uri, serving)
    held_out = pd.read_parquet(Path(artifact.read_manifest(Path(candidate_dir)).prepared_dir)
                               / "held_out.parquet")
    assert gate.compared and gate.users == report.users_evaluated == held_out["user_id"].nunique()
    assert (gate.serving_tower, store.record(candidate.collection).user_tower) == ("id", "sequence")
    assert gate.unknown_users == held_out["user_id"].isin(new_users).sum() > 0
    assert gate.new_items == held_out["item_id"].isin(new_items).sum() > 0
    assert f"{gate.unknown_users} users the serving model was not trained on" in gate.note
    assert f"{gate.new_items} held-out interactions with items the serving model does not know" in gate.note
    # the candidate's figures are its evaluation's; the serving model scores nothing for the new users
    assert gate.candidate_metrics["hit_rate@10"] == pytest.approx(report.model["hit_rate@10"])
    per_query = pd.read_parquet(Path(report_dir) / steps.PER_QUERY)
    assert list(per_query["user_id"]) == sorted(held_out["user_id"].unique())
    served = pd.read_parquet(Path(report_dir) / steps.SERVING_PER_QUERY)
    assert list(served["user_id"]) == list(per_query["user_id"])
    new = served["user_id"].isin(new_users)
    assert (served.loc[new, "hit_rate@100"] == 0).all() and served.loc[~new, "hit_rate@100"].mean() > 0.2
    assert gate.excluded_queries == 0  # leave-last-out: today's held-out items were never yesterday's training
    decision = decide.validate(candidate, gate, 0.5)
    assert decision.checks[2].detail == gate.describe() and "counted as its misses" in gate.describe()


def test_under_tfrs_queries_the_serving_model_trained_on_are_left_out(milvus_uri, tmp_path, store):
    # tfrs splits at random: as the log grows, some of today's held-out interactions were in
    # yesterday's training data, where the serving model would be scored on what it memorised.
    (tmp_path / "today").mkdir()
    today = Path(write_synthetic(tmp_path / "today", n_users=300, n_items=500, n_topics=8, seed=9))
    interactions = pd.read_parquet(today / "interactions.parquet")
    (tmp_path / "yesterday").mkdir()
    pd.read_parquet(today / "items.parquet").to_parquet(tmp_path / "yesterday" / "items.parquet", index=False)
    interactions.iloc[: int(len(interactions) * 0.9)].to_parquet(tmp_path / "yesterday" / "interactions.parquet",
                                                                 index=False)

    def model(day: str) -> str:
        prepared = steps.prepare_data(DataOptions("synthetic", str(tmp_path / day), protocol="tfrs"),
                                      str(tmp_path / day / "prepared"))
        return steps.train_model(prepared, str(tmp_path / "models"), {"user_tower": "id", "epochs": 1},
                                 progress=False)

    serving = steps.index_model(model("yesterday"), milvus_uri, "gate_tfrs", progress=False).collection
    candidate_dir = model("today")
    candidate = steps.build_version(store, candidate_dir, "gate_tfrs", progress=False, complete=False)
    report_dir = str(tmp_path / "report")
    report = steps.evaluate_model(candidate_dir, milvus_uri, candidate.collection, report_dir)
    gate = steps.compare_with_serving(candidate_dir, report_dir, milvus_uri, serving)
    per_query = pd.read_parquet(Path(report_dir) / steps.PER_QUERY)
    assert report.query_unit == "interaction" and len(per_query) == report.queries  # one query per held-out row
    yesterday_train = pd.read_parquet(tmp_path / "yesterday" / "prepared" / "train.parquet")
    trained_on = pd.MultiIndex.from_frame(per_query[["user_id", "item_id"]]).isin(
        pd.MultiIndex.from_frame(yesterday_train[["user_id", "item_id"]]))
    assert gate.compared and gate.excluded_queries == trained_on.sum() > 0
    assert gate.queries == report.queries - gate.excluded_queries
    assert f"{gate.excluded_queries:,} queries left out: the serving model was trained on" in gate.note

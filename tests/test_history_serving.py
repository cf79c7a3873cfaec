"""Serving a history tower from Milvus: recommendations from a user's latest items or from a
history given by hand, checked against the tower applied directly; and the id tower's models
still serve beside them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_doc_snippets, towerbridge, write_synthetic
from towerbridge import analyst, steps
from towerbridge.data.options import DataOptions
from towerbridge.errors import ConfigError, DataError
from towerbridge.milvus.store import ItemStore
from towerbridge.towers import artifact
from towerbridge.towers.history import Histories
from towerbridge.towers.vectors import item_vectors, user_vectors

ALIAS = "history_test"
ID_ALIAS = "history_test_id"


@pytest.fixture(scope="module")
def built(milvus_uri, tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    (root / "data").mkdir()
    data = DataOptions("synthetic", write_synthetic(root / "data", n_users=600, n_items=400, n_topics=12, seed=31,
                                                    stickiness=0.7, sequels=0.3))
    prepared = steps.prepare_data(data, str(root / "prepared"))
    models = {}
    for tower, alias in (("sequence", ALIAS), ("id", ID_ALIAS)):
        model_dir = steps.train_model(prepared, str(root / "models"),
                                      {"user_tower": tower, "epochs": 2, "history_length": 30}, progress=False)
        version = steps.index_model(model_dir, milvus_uri, alias=alias, progress=False)
        models[tower] = {"dir": model_dir, "model": artifact.load(model_dir), "collection": version.collection}
    store = ItemStore(milvus_uri)
    yield {"store": store, "models": models, "data_dir": Path(data.data_dir),
           "train": steps.read_part(prepared, "train"), "held_out": steps.read_part(prepared, "held_out")}
    store.close()


def _exact(model, query: np.ndarray, leave_out: set, k: int) -> list:
    ids, vectors = item_vectors(model)
    return [i for i in ids[np.argsort(-(vectors @ query))] if i not in leave_out][:k]


def test_recommend_after_a_history_is_the_tower_applied_to_that_history(built):
    model = built["models"]["sequence"]["model"]
    history = [int(i) for i in model.item_ids[[5, 17, 42]]]
    got = analyst.recommend(built["store"], ALIAS, history=[str(i) for i in history], k=10)
    windows = Histories.of([model.item_index(np.array(history)).tolist()], users=np.array([0]))
    query = user_vectors(model, np.array([0]), windows)[0]
    exact = _exact(model, query, set(history), 10)
    assert len(got) == 10 and not set(history) & {row["item_id"] for row in got}
    assert len(set(exact) & {row["item_id"] for row in got}) >= 9  # through IVF_PQ, tuned to recall 0.95
    np.testing.assert_allclose(got[0]["score"], float(query @ item_vectors(model)[1][
        model.item_index(np.array([got[0]["item_id"]]))[0] - 1]), rtol=0.05)


def test_a_users_query_reads_their_latest_items_including_one_newer_than_the_model(built):
    model, store = built["models"]["sequence"]["model"], built["store"]
    log = pd.concat([built["train"], built["held_out"]], ignore_index=True)
    user = int(log["user_id"].iloc[0])
    before = analyst.recommend(store, ALIAS, str(user), k=10)
    mine = log[log["user_id"] == user]
    # the user's log as analyst.recommend reads it by default: training and held-out parts
    expected = _exact(model, user_vectors(model, np.array([user]), Histories.from_interactions(
        mine, model.item_index))[0], set(mine["item_id"]), 10)
    assert len(set(expected) & {row["item_id"] for row in before}) >= 9
    newer = pd.DataFrame({"user_id": [user], "item_id": [before[0]["item_id"]],
                          "timestamp": [int(mine["timestamp"].max()) + 3600]})
    after = analyst.recommend(store, ALIAS, str(user), k=10, interactions=pd.concat([log, newer]))
    assert before[0]["item_id"] not in {row["item_id"] for row in after}  # now seen
    assert [row["score"] for row in after] != [row["score"] for row in before[1:11]]  # a new query vector


def test_an_id_tower_model_still_serves_and_refuses_a_history(built):
    model = built["models"]["id"]["model"]
    user = int(model.user_ids[0])
    got = analyst.recommend(built["store"], ID_ALIAS, str(user), k=5)
    assert len(got) == 5
    newer = pd.DataFrame({"user_id": [user], "item_id": [got[0]["item_id"]], "timestamp": [0]})
    log = pd.concat([built["train"], newer], ignore_index=True)  # newer data: the first item is now seen
    assert [row["item_id"] for row in analyst.recommend(built["store"], ID_ALIAS, str(user), k=4,
                                                        interactions=log)] == [row["item_id"] for row in got[1:]]
    assert built["store"].record(built["models"]["id"]["collection"]).user_tower == "id"
    assert built["store"].record(built["models"]["sequence"]["collection"]).user_tower == "sequence"
    with pytest.raises(ConfigError, match="has the id tower, which cannot read a history"):
        analyst.recommend(built["store"], ID_ALIAS, history=["1", "2"])
    with pytest.raises(DataError, match="user 999999 is not known to model"):
        analyst.recommend(built["store"], ID_ALIAS, "999999")


def test_unknown_history_items_and_users_without_history_are_named(built):
    with pytest.raises(DataError, match=r"history items \[999999\] are not in the model's catalog"):
        analyst.recommend(built["store"], ALIAS, history=["999999"])
    with pytest.raises(DataError, match="user 987654 has no interactions"):
        analyst.recommend(built["store"], ALIAS, "987654")


def test_the_command_takes_a_history(built, milvus_uri):
    model = built["models"]["sequence"]["model"]
    items = ",".join(str(i) for i in model.item_ids[[5, 17, 42]])
    result = towerbridge("recommend", "--history", items, "--alias", ALIAS, "--milvus-uri", milvus_uri, "-k", "3",
                         "--json")
    assert result.returncode == 0, result.stderr
    both = towerbridge("recommend", "--history", items, "--user", "1", "--alias", ALIAS, "--milvus-uri", milvus_uri)
    assert both.returncode == 1 and "recommend needs --user or --history (one of them)" in both.stderr


def test_the_command_reads_a_users_latest_items_from_newer_data(built, milvus_uri, tmp_path):
    """`recommend --user U --data-dir DIR`: the newest log, with an interaction the model never
    saw, answers as analyst.recommend given that log."""
    log = pd.read_parquet(built["data_dir"] / "interactions.parquet")
    user = int(log["user_id"].iloc[0])
    before = analyst.recommend(built["store"], ALIAS, str(user), k=5)
    newer = log[log["user_id"] == user].tail(1).assign(item_id=before[0]["item_id"],
                                                       timestamp=log["timestamp"].max() + 3600)
    latest = pd.concat([log, newer], ignore_index=True)
    latest.to_parquet(tmp_path / "interactions.parquet")
    shutil.copy(built["data_dir"] / "items.parquet", tmp_path / "items.parquet")
    args = ("recommend", "--user", str(user), "--alias", ALIAS, "--milvus-uri", milvus_uri, "-k", "5", "--json")
    result = towerbridge(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    got = [row["item_id"] for row in json.loads(result.stdout)]
    expected = analyst.recommend(built["store"], ALIAS, str(user), k=5, interactions=latest)
    assert got == [row["item_id"] for row in expected] and before[0]["item_id"] not in got
    missing = towerbridge(*args, "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "--data-dir " in missing.stderr and "not a directory" in missing.stderr


def test_the_documented_python_snippets_answer_as_recommend_does(built, monkeypatch):
    """docs/history-queries.md, run as a reader pastes it, against this module's version."""
    printed = run_doc_snippets(monkeypatch, "history-queries.md", alias=ALIAS)
    assert printed[0].split()[0] == "sequence"
    got = [int(line.split()[0]) for line in printed[1:]]
    expected = analyst.recommend(built["store"], ALIAS, history=["50", "172", "133"], k=10)
    assert len(got) == 10 and got == [row["item_id"] for row in expected]

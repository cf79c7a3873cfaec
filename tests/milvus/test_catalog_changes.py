"""Catalog changes between rebuilds (issue 32) on the real embedded Milvus: items added to the
serving version are recommended and found similar; retired ones are never returned again by
any reader; a kill -9 in the middle of an add loses nothing and repeats nothing; the next
build keeps the changes, and changes logged while it builds are applied to it as it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from pymilvus import MilvusClient

from tests.conftest import towerbridge, train_synthetic
from towerbridge import analyst, steps
from towerbridge.catalog import ChangeLog
from towerbridge.errors import DataError

ALIAS = "changes_test"
NEW = np.arange(100_001, 100_101)  # 100 new items: 50 documentaries, 50 comedies


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("changes")
    model_dir = train_synthetic(root, epochs=3, n_users=600, n_items=1200, n_topics=8, seed=3)
    return model_dir, pd.read_parquet(root / "data" / "items.parquet")


@pytest.fixture(scope="module")
def serving(milvus_uri, model):
    return steps.index_model(model[0], milvus_uri, alias=ALIAS, progress=False).collection


def new_items(ids=NEW) -> pd.DataFrame:
    half = len(ids) // 2
    return pd.DataFrame({"item_id": ids, "title": [f"The New Film {i} (2026)" for i in range(len(ids))],
                         "genres": ["Documentary"] * half + ["Comedy"] * (len(ids) - half)})


@pytest.fixture(scope="module")
def added(serving, milvus_uri, tmp_path_factory):
    """The 100 items, added with the command."""
    path = tmp_path_factory.mktemp("new-items") / "items.parquet"
    new_items().to_parquet(path)
    done = towerbridge("items", "add", "--items", str(path), "--alias", ALIAS, "--milvus-uri", milvus_uri, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_added_items_are_recommended_after_a_history_of_their_topic_and_found_similar(added, store, model):
    _, items = model
    assert (added["added"], added["updated"], added["collection"]) == (100, 0, store.alias_target(ALIAS))
    assert store.record(added["collection"]).catalog.added == 100
    history = items[items["genres"] == "Documentary"]["item_id"].tolist()[:10]
    # among the new items, a documentary history gets the new documentaries
    among_new = analyst.recommend(store, ALIAS, history=history, k=10, expression=f"item_id >= {NEW[0]}")
    assert len(among_new) == 10 and {hit["genres"] for hit in among_new} == {"Documentary"}
    # and in the whole catalog, the new documentaries come in beside the known ones (no interactions yet)
    top = analyst.recommend(store, ALIAS, history=history, k=100)
    assert sum(hit["item_id"] in set(NEW[:50].tolist()) for hit in top) >= 5
    assert not any(hit["item_id"] in set(NEW[50:].tolist()) for hit in top[:20])
    neighbours = analyst.similar(store, ALIAS, int(NEW[0]), k=10)
    assert sum(hit["genres"] == "Documentary" for hit in neighbours) >= 8
    rows = analyst.query(store, ALIAS, f"item_id in {NEW[:3].tolist()}", ["item_id", "title", "genres"])
    assert [row["title"] for row in rows] == [f"The New Film {i} (2026)" for i in range(3)]


def test_adding_the_same_items_twice_adds_nothing_twice(added, store, milvus_uri):
    before = store.wait_visible(added["collection"])
    again = steps.add_items(milvus_uri, ALIAS, new_items())
    assert (again.added, again.updated, again.collection) == (0, 100, added["collection"])
    assert store.wait_visible(added["collection"]) == before
    assert again.record.added == 100  # items new to the version, not rows written


@pytest.mark.parametrize("change, message", [
    (lambda table: table.drop(columns="genres"), "the items lack the column(s) the model reads: genres"),
    (lambda table: pd.concat([table, table.head(2)]), "item ids given more than once: 300001, 300002"),
    (lambda table: table.assign(item_id=[" 300001"] + [str(i) for i in table["item_id"][1:-1]] + ["300001"]),
     "item ids given more than once: 300001"),  # as the collection reads them
    (lambda table: table.assign(item_id=[f"x{i}" for i in range(len(table))]), "this collection's ids are integers"),
    (lambda table: table.drop(columns="item_id"), "the items have no item_id column"),
])
def test_items_the_model_cannot_read_are_refused_and_named_before_anything_is_written(
        added, store, milvus_uri, change, message):
    logged = ChangeLog(ALIAS).last()
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        steps.add_items(milvus_uri, ALIAS, change(new_items(np.arange(300_001, 300_011))))
    assert ChangeLog(ALIAS).last() == logged and not store.held(added["collection"], [300_001])


def test_a_retired_item_is_never_returned_again_by_any_reader(added, store, milvus_uri, model):
    _, items = model
    history = items[items["genres"] == "Documentary"]["item_id"].tolist()[:10]
    top = [hit["item_id"] for hit in analyst.recommend(store, ALIAS, history=history, k=5)]
    retired_ids = [top[0], int(NEW[1])]
    collection = store.alias_target(ALIAS)
    # each retired item's own vector: before, the item is its own nearest neighbour
    own = {row["item_id"]: list(row["embedding"]) for row in store.rows(
        collection, f"item_id in {retired_ids + [int(NEW[9])]}", ["item_id", "embedding"])}
    done = towerbridge("items", "retire", "--ids", ",".join(map(str, retired_ids)), "--alias", ALIAS,
                       "--milvus-uri", milvus_uri)
    assert done.returncode == 0, done.stderr
    assert "2 item(s) retired" in done.stdout
    by_filter = steps.retire_items(milvus_uri, ALIAS, expression='title like "The New Film 9%"')
    assert by_filter.retired == 11  # 9 and 90..99
    gone = set(retired_ids) | {int(NEW[9]), *NEW[90:].tolist()}
    after = [hit["item_id"] for hit in analyst.recommend(store, ALIAS, history=history, k=5)]
    assert len(after) == 5 and top[0] not in after  # (the rest may move: the index's approximate scores)
    assert not gone & {hit["item_id"] for hit in analyst.similar(store, ALIAS, int(NEW[2]), k=100)}
    assert analyst.query(store, ALIAS, f"item_id in {sorted(gone)}", ["item_id"]) == []
    with pytest.raises(DataError, match="is not in collection"):
        analyst.similar(store, ALIAS, retired_ids[0], k=5)
    # the docs' own pymilvus query and search, through the alias, with no filter to remember
    client = MilvusClient(uri=milvus_uri)
    try:
        assert client.query(ALIAS, filter=f"item_id in {sorted(gone)}", output_fields=["item_id"]) == []
        properties = client.describe_collection(collection)["properties"]
        search = {"nprobe": int(json.loads(properties["towerbridge.nprobe"]))}
        for item, vector in own.items():
            hits = client.search(ALIAS, data=[vector], limit=20, search_params={"metric_type": "IP", "params": search})
            assert len(hits[0]) == 20 and item not in {hit["id"] for hit in hits[0]}
    finally:
        client.close()
    record = store.record(collection).catalog
    assert (record.added, record.retired) == (100, 13)
    listed = towerbridge("collections", "--alias", ALIAS, "--milvus-uri", milvus_uri)
    assert listed.returncode == 0 and "+100/-13" in listed.stdout
    # retiring again (a retry, an inbox file read twice) is done already: nothing changes
    again = steps.retire_items(milvus_uri, ALIAS, ids=[retired_ids[0]])
    assert (again.applied, again.retired) == ((), 0) and store.record(collection).catalog == record
    with pytest.raises(DataError, match="not in the serving version.*987654321"):
        steps.retire_items(milvus_uri, ALIAS, ids=[retired_ids[1], 987654321])
    assert store.record(collection).catalog == record


def test_a_kill_in_the_middle_of_an_add_loses_nothing_and_repeats_nothing(added, store, milvus_uri, tmp_path):
    ids = np.arange(500_001, 512_001)  # 12,000 items: an add that takes a few seconds
    path = tmp_path / "items.parquet"
    new_items(ids).to_parquet(path)
    collection = store.alias_target(ALIAS)
    before = store.wait_visible(collection)
    logged = ChangeLog(ALIAS).last()
    process = subprocess.Popen([sys.executable, "-m", "towerbridge.cli", "items", "add", "--items", str(path),
                                "--alias", ALIAS, "--milvus-uri", milvus_uri], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while ChangeLog(ALIAS).last() == logged and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the upserts
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert ChangeLog(ALIAS).last() == logged + 1  # the change was logged before any row was written
    # readers see the version as it was, or with whole rows added
    present = store.held(collection, ids.tolist())
    assert before <= store.wait_visible(collection) == before + len(present) <= before + len(ids)
    if present:
        rows = store.rows(collection, f"item_id in {present[:50]}", ["title", "genres", "embedding"])
        assert all(row["title"] and row["genres"] and len(row["embedding"]) for row in rows)
    # the next change applies the one the killed add logged, then its own: each item once (a
    # retirement of an item the killed add had not reached yet included)
    more = steps.retire_items(milvus_uri, ALIAS, ids=[int(ids[-1])])
    assert more.applied == (logged + 1, logged + 2)
    assert (more.added, more.retired) == (len(ids) - len(present), 1)
    assert store.wait_visible(collection) == before + len(ids) - 1
    assert sorted(store.held(collection, ids.tolist())) == ids[:-1].tolist()


def test_the_next_build_keeps_the_changes_and_gets_those_logged_while_it_builds(added, store, milvus_uri, model):
    model_dir, items = model
    log = ChangeLog(ALIAS)
    old = store.alias_target(ALIAS)
    # an item of the model's own catalog, updated (renamed, another genre) in the serving version
    known = int(items[items["genres"] != "Documentary"]["item_id"].iloc[0])
    renamed = pd.DataFrame({"item_id": [known], "title": ["Renamed (2026)"], "genres": ["Documentary"]})
    assert steps.add_items(milvus_uri, ALIAS, renamed).updated == 1
    fields = ["item_id", "title", "genres", "embedding"]
    served = store.rows(old, f"item_id in [{known}]", fields, consistency="Strong")
    state = log.state()
    candidate = steps.build_version(store, model_dir, ALIAS, progress=False)  # no other builder here: no lock
    built = store.rows(candidate.collection, f"item_id in [{known}]", fields, consistency="Strong")
    assert [(row["title"], row["genres"]) for row in built] == [("Renamed (2026)", "Documentary")]
    # the same item vector, without the zero a SCANN version (chosen where IVF_PQ falls short) puts first
    np.testing.assert_allclose(built[0]["embedding"][store.record(candidate.collection).search_params().pad:],
                               served[0]["embedding"][store.record(old).search_params().pad:], atol=1e-5)
    assert store.record(candidate.collection).catalog.through == state.through
    kept = set(store.held(candidate.collection, state.added["item_id"].tolist()))
    assert kept == set(state.added["item_id"].tolist())
    assert not store.held(candidate.collection, list(state.retired))
    # while the candidate waits to serve, an item is added to the version serving now, and one retired
    late = steps.add_items(milvus_uri, ALIAS, new_items(np.arange(700_001, 700_005)))
    retired = steps.retire_items(milvus_uri, ALIAS, ids=[700_004])
    assert (late.collection, retired.collection) == (old, old)
    applied = steps.serve_version(store, ALIAS, candidate.collection)
    assert applied == (late.change, retired.change) and store.alias_target(ALIAS) == candidate.collection
    assert sorted(store.held(candidate.collection, list(range(700_001, 700_005)))) == [700_001, 700_002, 700_003]
    assert store.record(candidate.collection).catalog.through == retired.change


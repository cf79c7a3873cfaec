"""The item store against the real embedded Milvus."""

import json

import numpy as np
import pytest

from towerbridge.errors import CollectionError
from towerbridge.milvus.index import SearchParams, choose_ivf_pq
from towerbridge.milvus.record import Tuning, VersionEvaluation, VersionRecord

N, DIM = 2000, 16


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, DIM))
    return (centers[rng.integers(0, 20, N)] + 0.3 * rng.normal(size=(N, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def built(store, vectors):
    params = choose_ivf_pq(N, DIM)
    name = store.create_version("test_items", "model-abc123", DIM, VersionRecord(model_id="model-abc123"))
    ids = np.arange(100, 100 + N)
    store.insert(name, ids, vectors, [f"title {i}" for i in ids], ["Drama"] * N)
    store.build_index(name, params)
    yield name, params, ids
    store.drop(name)


def test_collection_holds_every_row_under_ivf_pq(store, built):
    name, params, _ = built
    info = store.describe_index(name)
    assert info["index_type"] == "IVF_PQ" and info["metric_type"] == "IP"
    assert {key: int(info[key]) for key in ("nlist", "m", "nbits")} == params.build_params()
    assert info["indexed_rows"] == info["total_rows"] == N
    assert store.count(name) == N
    assert store.record(name) == VersionRecord(model_id="model-abc123", id_type="int64")


def test_search_agrees_with_brute_force(store, built, vectors):
    name, params, ids = built
    queries = vectors[:200]
    found, scores = store.search(name, queries, limit=10, search=params.nlist)
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    recall = np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact)])
    assert recall > 0.7  # PQ with 2 dims per code; measured about 0.9
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first


def test_alias_moves_between_versions(store, built, vectors):
    name, params, ids = built
    assert store.alias_target("test_alias") is None
    store.point_alias("test_alias", name)
    assert store.alias_target("test_alias") == name
    other = store.create_version("test_items", "model-def456", DIM, VersionRecord())
    try:
        store.insert(other, ids[:300], vectors[:300], ["t"] * 300, ["g"] * 300)
        store.build_index(other, choose_ivf_pq(300, DIM))
        store.point_alias("test_alias", other)
        assert store.alias_target("test_alias") == other
        found, _ = store.search("test_alias", vectors[:1], limit=5, search=4)
        assert set(found[0]) <= set(ids[:300])
    finally:
        store.client.drop_alias("test_alias")
        store.drop(other)


def test_a_version_recorded_before_the_format_reads_with_its_defaults(store):
    """A version as towerbridge wrote it before its record had a format: the build's dict plus
    ``id_type`` as the description (an id-tower model: no ``user_tower``; IVF_PQ: no
    ``pad_dims``), and each value set later as one JSON property."""
    from pymilvus import DataType

    from tests.milvus.test_record import EVALUATION

    description = {"model_id": "m-old", "model_dir": "/models/m-old", "alias": "old_items",
                   "dataset": "movielens-100k", "created_at": "2026-11-01T02:00:00Z", "index_type": "IVF_PQ",
                   "metric_type": "IP", "params": {"nlist": 43, "m": 4, "nbits": 8, "nprobe": 16}}
    schema = store.client.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description=json.dumps({**description, "id_type": "int64"}, sort_keys=True))
    schema.add_field("item_id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=4)
    name = "old_items_v20261101_020000_m_old"
    store.client.create_collection(name, schema=schema)
    try:
        later = {"nprobe": 8, "tuning": {"target_recall": 0.95, "k": 100, "queries": 943, "recall": 0.9712},
                 "evaluation": EVALUATION}
        store.client.alter_collection_properties(
            name, properties={f"towerbridge.{key}": json.dumps(value) for key, value in later.items()})
        store.mark_complete(name)  # a later value, written by the current writer, beside the old ones
        record = store.record(name)
        assert record == VersionRecord(
            **description, user_tower="id", id_type="int64", pad_dims=0, nprobe=8,
            tuning=Tuning(target_recall=0.95, k=100, queries=943, recall=0.9712), complete=True,
            completed_at=record.completed_at, evaluation=VersionEvaluation(**EVALUATION))
        assert record.completed_at and record.search_params() == SearchParams(8)
        with pytest.raises(ValueError, match="model_dir: not a field set after a version is created"):
            store.set_record(name, model_dir="/elsewhere")
        assert store.record(name).model_dir == "/models/m-old"
    finally:
        store.client.drop_collection(name)


def test_nan_vectors_are_rejected_before_any_write(store):
    name = store.create_version("test_items", "model-nan000", 4, VersionRecord())
    try:
        bad = np.ones((3, 4), dtype=np.float32)
        bad[1, 2] = np.nan
        with pytest.raises(CollectionError, match="1 item vector\\(s\\) contain NaN or infinity"):
            store.insert(name, np.arange(3), bad, ["a"] * 3, ["g"] * 3)
        assert store.count(name) == 0
    finally:
        store.drop(name)


def test_parallel_inserts_from_processes_write_every_row_once(store, vectors):
    # two insert processes, each with its own connection, four batches between them
    name = store.create_version("test_parallel", "model-par", DIM, VersionRecord())
    try:
        ids = np.arange(7, 7 + N)
        assert store.insert(name, ids, vectors, [f"title {i}" for i in ids], ["Drama|Comedy"] * N, workers=2) == N
        store.build_index(name, choose_ivf_pq(N, DIM))  # loads it, for the query
        rows = store.rows(name, "item_id >= 0", ["item_id", "title", "genre_list"])
        assert sorted(row["item_id"] for row in rows) == ids.tolist()
        assert all(row["title"] == f"title {row['item_id']}" and list(row["genre_list"]) == ["Drama", "Comedy"]
                   for row in rows)
        # what a process is refused comes back as the one error the caller sees
        other = store.create_version("test_parallel", "model-bad", DIM, VersionRecord())
        try:
            with pytest.raises(CollectionError, match=f"Milvus refused insert into {other}: "):
                store.insert(other, np.array([f"id{i}" for i in range(N)]), vectors, ["t"] * N, ["g"] * N, workers=2)
        finally:
            store.drop(other)
    finally:
        store.drop(name)


def test_insert_workers_by_catalog_size():
    from towerbridge.milvus import store as module

    assert module.insert_workers(module.PARALLEL_INSERT_ROWS - 1) == 1
    assert 1 <= module.insert_workers(10**6) <= module.MAX_INSERT_WORKERS


def test_replicas_are_asked_of_milvus_and_a_standalone_refuses_two(store, vectors, monkeypatch):
    # MILVUS_REPLICAS reaches Milvus' load: the embedded standalone server has one query node,
    # so it cannot hold two replicas, and says so (a cluster with two query nodes would load them).
    monkeypatch.setenv("MILVUS_REPLICAS", "2")
    name = store.create_version("test_replicas", "model-rep", DIM, VersionRecord())
    try:
        store.insert(name, np.arange(N), vectors, ["t"] * N, [""] * N)
        with pytest.raises(CollectionError) as refused:
            store.build_index(name, choose_ivf_pq(N, DIM))
        assert str(refused.value).startswith(f"Milvus refused load {name}: ")
        assert str(refused.value).endswith("(MILVUS_REPLICAS=2: this Milvus needs at least 2 query nodes to hold "
                                           "that many replicas)")
        monkeypatch.setenv("MILVUS_REPLICAS", "1")
        store.build_index(name, choose_ivf_pq(N, DIM))  # one replica: loads and answers
        found, _ = store.search(name, vectors[:5], limit=1, search=8)
        assert found.shape == (5, 1)
    finally:
        store.drop(name)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_replica_count_is_refused(value, monkeypatch):
    from towerbridge import settings
    from towerbridge.errors import ConfigError

    monkeypatch.setenv("MILVUS_REPLICAS", value)
    with pytest.raises(ConfigError, match=f"MILVUS_REPLICAS '{value}': expected a whole number of replicas, 1 or more"):
        settings.milvus_replicas()

"""Versioned collections behind an alias, on the real embedded Milvus: retention, cleanup of
half-built versions, index parameter checks, and readers that never see a gap."""

import threading

import numpy as np
import pytest

from tests.conftest import train_synthetic
from towerbridge import steps
from towerbridge.errors import CollectionError, ConfigError
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.store import ItemStore
from towerbridge.towers.vectors import item_vectors

ALIAS = "versions_test"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_synthetic(tmp_path_factory.mktemp("versions"), n_users=500, n_items=400, n_topics=12, seed=8)


def build(milvus_uri, model_dir, **options):
    return steps.index_model(model_dir, milvus_uri, alias=ALIAS, progress=False, **options)


def test_retention_keeps_exactly_n_and_the_alias_serves_the_newest(milvus_uri, model_dir, store):
    built = [build(milvus_uri, model_dir, keep_versions=2) for _ in range(3)]
    assert store.versions(ALIAS) == sorted(b.collection for b in built[1:])
    assert store.alias_target(ALIAS) == built[-1].collection
    assert built[-1].previous == built[-2].collection
    assert built[-1].dropped_versions == (built[0].collection,)
    record = store.record(built[-1].collection)
    assert record.complete is True and record.model_dir == model_dir
    assert record.nprobe == record.params["nlist"]  # fewer items than MIN_SCANNED: tuning searches every list


def test_a_half_built_version_is_removed_by_the_next_build(milvus_uri, model_dir, store):
    orphan = store.create_version(ALIAS, "crashed0", 32, VersionRecord(model_id="crashed"))
    store.insert(orphan, np.arange(3), np.ones((3, 32), np.float32), ["a"] * 3, ["g"] * 3)
    built = build(milvus_uri, model_dir, keep_versions=2)
    assert built.removed_half_built == (orphan,)
    assert orphan not in store.versions(ALIAS)


def test_bad_index_params_are_refused_before_any_write(milvus_uri, model_dir, store):
    before = (store.versions(ALIAS), store.alias_target(ALIAS))
    with pytest.raises(ConfigError, match="m=7 must divide the vector dimension 65"):
        build(milvus_uri, model_dir, index_params={"m": 7})
    with pytest.raises(ConfigError, match="nlist=100000 must be between 1 and min"):
        build(milvus_uri, model_dir, index_params={"nlist": 100_000})
    assert (store.versions(ALIAS), store.alias_target(ALIAS)) == before


def test_overridden_params_are_what_milvus_builds(milvus_uri, model_dir, store):
    built = build(milvus_uri, model_dir, index_params={"nlist": 8, "m": 13, "nbits": 6}, keep_versions=2)
    index = store.describe_index(built.collection)
    assert (index["index_type"], int(index["nlist"]), int(index["m"]), int(index["nbits"])) == ("IVF_PQ", 8, 13, 6)


def test_readers_of_the_alias_see_no_failure_while_versions_swap(milvus_uri, model_dir, store):
    from towerbridge.towers import artifact

    trained = artifact.load(model_dir)
    queries = item_vectors(trained)[1][:20]  # any vectors of the collection's dimension
    reader = ItemStore(milvus_uri)
    results, failures, stop = [], [], threading.Event()

    def read_loop():
        while not stop.is_set():
            try:
                ids, scores = reader.search(ALIAS, queries, limit=10, search=4)
                results.append(int(np.isfinite(scores).all()))
            except Exception as error:  # any failure is what this test counts
                failures.append(repr(error))

    build(milvus_uri, model_dir, keep_versions=2)  # make sure the alias exists first
    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for _ in range(2):
            build(milvus_uri, model_dir, keep_versions=2)
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert failures == []
    assert len(results) > 20 and all(results)


def test_a_wrong_dimension_is_rejected_before_writing(store):
    name = store.create_version("dim_test", "model1", 4, VersionRecord())
    try:
        with pytest.raises(CollectionError, match="holds 4-dimensional vectors, these are 8-dimensional"):
            store.insert(name, np.arange(2), np.ones((2, 8), np.float32), ["a", "b"], ["g", "g"])
        assert store.count(name) == 0
    finally:
        store.drop(name)


@pytest.mark.parametrize("id_type", ["int64", "string"])
def test_search_read_as_columns_matches_pymilvus_hits(store, id_type):
    from towerbridge.milvus.index import IvfPqParams

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    ids = np.arange(300) * 7 if id_type == "int64" else np.array([f"sku-{i}" for i in range(300)], dtype=object)
    name = store.create_version(f"columns_{id_type}", "model1", 8, VersionRecord(id_type=id_type))
    try:
        store.insert(name, ids, vectors, [""] * 300, [""] * 300)
        store.build_index(name, IvfPqParams(nlist=4, m=4, nbits=8, nprobe=4))
        queries = rng.standard_normal((5, 8)).astype(np.float32)
        found, scores = store.search(name, queries, 400, 4)  # more than there are rows: padded
        hits = store.client.search(name, data=queries, limit=400, anns_field="embedding",
                                   search_params={"metric_type": "IP", "params": {"nprobe": 4}})
        assert found.shape == scores.shape == (5, 400)
        for row, answer in enumerate(hits):
            n = len(answer)
            assert list(found[row, :n]) == [hit["id"] for hit in answer]
            np.testing.assert_allclose(scores[row, :n], [hit["distance"] for hit in answer], rtol=1e-6)
            assert np.isneginf(scores[row, n:]).all() and n == 300
            assert all(value == (None if id_type == "string" else -1) for value in found[row, n:])
    finally:
        store.drop(name)


def test_a_versions_text_limits_come_from_its_data_and_long_text_is_clipped_by_bytes(store):
    """Milvus sizes segments by the schema's declared row size, so a version declares what its
    data needs (next power of two), not the caps; text over a limit is cut on a character
    boundary by UTF-8 bytes, Milvus' unit (a character cut would overflow with accents)."""
    from towerbridge.milvus.index import choose_ivf_pq
    from towerbridge.milvus.schema import TextLimits

    titles = ["Toy Story (1995)", "Amélie " * 3]
    genres = ["Animation|Children's|Comedy", "Comedy|Romance"]
    ids = np.array(["sku-1", "sku-22"], dtype=object)
    limits = TextLimits.of(titles, genres, ids)
    assert limits == TextLimits(title=32, genres=32, genre_count=4, genre=16, item_id=16)
    name = store.create_version("limits_test", "model1", 4, VersionRecord(id_type="string"), limits=limits)
    try:
        assert store.text_limits(name) == limits
        long_title = "é" * 20  # 40 bytes, 20 characters: over the title's 32 bytes
        store.insert(name, ids, np.ones((2, 4), dtype=np.float32), [long_title, titles[1]], genres)
        store.build_index(name, choose_ivf_pq(2, 4))
        fields = ["item_id", "title", "genre_list"]
        rows = {row["item_id"]: row for row in store.rows(name, 'item_id like "sku%"', fields)}
        assert rows["sku-1"]["title"] == "é" * 16 and rows["sku-22"]["title"] == titles[1]
        assert rows["sku-1"]["genre_list"] == ["Animation", "Children's", "Comedy"]
    finally:
        store.drop(name)

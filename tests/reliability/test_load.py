"""Analysts' queries under load while the nightly rebuild replaces what they query.

Four threads run `similar` (an id lookup, then an ANN search through the alias) against
the real embedded Milvus, bounded in count and time, while a rebuild builds, validates,
swaps the alias and applies retention. Not one query may fail; p50/p99 latency is printed
(run with -s to see it) and recorded as test properties.
"""

import json
import threading

import pytest

from milvus.store import ItemStore
from tests.conftest import run_rebuild, write_synthetic
from towerbridge import perf

ALIAS = "load_test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("load-data"), n_users=700, n_items=1100, n_topics=10, seed=61)


def rebuild(uri, data_dir, **options):
    return run_rebuild(data_dir, ALIAS, uri, **{"epochs": 1, "tolerance": 1.0, **options})


def test_no_analyst_query_fails_while_a_rebuild_swaps_the_alias(milvus_uri, prefect_harness, data_dir,
                                                                record_property):
    first_state, first = rebuild(milvus_uri, data_dir)
    assert first_state.is_completed()
    store = ItemStore(milvus_uri)
    items = [row["item_id"] for row in store.rows(ALIAS, "item_id >= 0", ["item_id"], limit=500)]
    store.close()

    done, result = threading.Event(), {}
    load = threading.Thread(target=lambda: result.update(perf.query_load(
        milvus_uri, ALIAS, items, threads=4, seconds=600, max_queries=20_000, stop=done)))
    load.start()
    try:
        state, summary = rebuild(milvus_uri, data_dir, reuse_model=True, keep_versions=1)
    finally:
        done.set()
        load.join()
    print(f"\nload during a rebuild: {json.dumps(result)}")
    for key in ("queries", "failures", "p50_ms", "p99_ms", "max_ms", "queries_per_s"):
        record_property(key, result[key])
    assert state.is_completed() and summary["serving_after"] != first["serving_after"]
    assert summary["dropped_versions"] == [first["serving_after"]]  # retention ran under the load too
    assert result["failures"] == 0, result["failure_examples"]
    assert result["queries"] >= 50 and result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_the_load_generator_refuses_a_remote_milvus():
    with pytest.raises(ValueError, match="on this machine only"):
        perf.query_load("https://milvus.example.com:19530", ALIAS, [1], seconds=1)

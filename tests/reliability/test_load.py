"""Analysts' queries under load while the nightly rebuild replaces what they query.

Four threads run `similar` (an id lookup, then an ANN search through the alias) against
the real embedded Milvus, bounded in count and time, while a rebuild builds, validates,
swaps the alias and applies retention. Not one query may fail; p50/p99 latency is printed
(run with -s to see it) and recorded as test properties.
"""

import json
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.conftest import run_rebuild, write_synthetic
from towerbridge import analyst, settings
from towerbridge.milvus.store import ItemStore

ALIAS = "load_test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("load-data"), n_users=700, n_items=1100, n_topics=10, seed=61)


def query_load(uri: str, alias: str, items: list, threads: int = 4, seconds: float = 60.0,
               max_queries: int = 20_000, k: int = 10, stop: threading.Event | None = None) -> dict:
    """Analysts' queries against ``alias`` from ``threads`` threads, each its own connection:
    ``similar`` for a random item of ``items`` (an id lookup, then an ANN search), the way
    `towerbridge similar` runs it. Ends when ``stop`` is set, ``seconds`` pass or
    ``max_queries`` are done. Only a Milvus on this machine (loopback) is loaded.

    Returns counts, failures (with the first few messages) and latency percentiles in ms."""
    host = urlparse(uri).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"query_load runs against a Milvus on this machine only, not {settings.redact(uri)}")
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures: list[str] = []
    budget = threading.Semaphore(max_queries)

    def analyst_thread(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with ItemStore(uri) as store:
            while not stop.is_set() and time.monotonic() < deadline and budget.acquire(blocking=False):
                started = time.perf_counter()
                try:
                    hits = analyst.similar(store, alias, str(items[rng.integers(len(items))]), k)
                    if len(hits) != k:
                        failures.append(f"{len(hits)} hits instead of {k}")
                except Exception as error:  # every failure counts, whatever it is
                    failures.append(f"{type(error).__name__}: {error}")
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    workers = [threading.Thread(target=analyst_thread, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"threads": threads, "queries": len(latencies), "failures": len(failures),
            "failure_examples": failures[:5], "seconds": round(wall, 1),
            "queries_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def rebuild(uri, data_dir, **options):
    return run_rebuild(data_dir, ALIAS, uri, **{"epochs": 1, "tolerance": 1.0, **options})


def test_no_analyst_query_fails_while_a_rebuild_swaps_the_alias(milvus_uri, prefect_harness, data_dir,
                                                                record_property):
    first_state, first = rebuild(milvus_uri, data_dir)
    assert first_state.is_completed()
    with ItemStore(milvus_uri) as store:
        items = [row["item_id"] for row in store.rows(ALIAS, "item_id >= 0", ["item_id"], limit=500)]

    done, result = threading.Event(), {}
    load = threading.Thread(target=lambda: result.update(query_load(
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
        query_load("https://milvus.example.com:19530", ALIAS, [1], seconds=1)

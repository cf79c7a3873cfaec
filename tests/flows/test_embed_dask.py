"""The item embedding on Dask through Prefect's DaskTaskRunner, against the real embedded
Milvus: a local cluster of two worker processes builds the same version as one process, and
a worker killed mid-shard fails the flow with nothing half-built left serving."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.conftest import train_synthetic
from towerbridge import settings, steps
from towerbridge.errors import EmbeddingError
from towerbridge.flows.embed import ShutdownNoise, dask_runner
from towerbridge.flows.index import index
from towerbridge.milvus.schema import VECTOR_FIELD
from towerbridge.milvus.store import ItemStore
from towerbridge.options import IndexOptions
from towerbridge.towers import artifact
from towerbridge.towers.vectors import item_vectors

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return train_synthetic(tmp_path_factory.mktemp("dask"), epochs=1, n_users=900, n_items=1500, n_topics=12,
                           seed=5)


def stored_vectors(store: ItemStore, collection: str) -> tuple[np.ndarray, np.ndarray]:
    rows = store.rows(collection, "", ["item_id", VECTOR_FIELD])
    ids = np.array([row["item_id"] for row in rows])
    return ids, np.array([row[VECTOR_FIELD] for row in rows], dtype=np.float32)


def test_shards_cover_the_catalog_once(model_dir, tmp_path):
    ranges = steps.embedding_shards(model_dir, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1500 and len(ranges) == 7
    assert all(stop == first for (_, stop), (first, _) in zip(ranges, ranges[1:]))
    files = [steps.embed_shard(model_dir, first, stop, str(tmp_path)) for first, stop in ranges[:3]]
    with pytest.raises(Exception, match=r"the embedded shards cover \d+ of 1500 items; nothing was indexed"):
        steps.read_embedded(files, 1500, 65)
    with pytest.raises(Exception, match="does not continue the catalog at position 0"):
        steps.read_embedded(files[1:], 1500, 65)


def test_two_dask_workers_build_the_version_one_process_builds(model_dir, store, milvus_uri, prefect_harness):
    single = index(model_dir, IndexOptions(alias="dask_one"), milvus_uri=milvus_uri)
    sharded = index(model_dir, IndexOptions(alias="dask_two", embed_workers=2, embed_shards=5), milvus_uri=milvus_uri)
    ids_one, vectors_one = stored_vectors(store, single.collection)
    ids_two, vectors_two = stored_vectors(store, sharded.collection)
    assert len(ids_two) == sharded.items == 1500
    assert np.array_equal(ids_one, ids_two)
    np.testing.assert_allclose(vectors_two, vectors_one, atol=1e-6, rtol=0)
    expected_ids, expected = item_vectors(artifact.load(model_dir))
    assert np.array_equal(ids_two, expected_ids)
    np.testing.assert_allclose(vectors_two, expected, atol=1e-6, rtol=0)
    assert not any(settings.state_dir("embeddings").iterdir())  # the shard files are removed


def test_a_worker_killed_mid_shard_fails_the_flow_and_nothing_half_built_serves(model_dir, store, milvus_uri,
                                                                                prefect_harness):
    import dask
    from distributed import Client, LocalCluster

    alias = "dask_killed"
    serving = index(model_dir, IndexOptions(alias=alias), milvus_uri=milvus_uri).collection
    # a cluster of our own, that gives up on a task at the first worker lost while running it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        killed: list[int] = []

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                busy = [worker for worker, keys in client.processing().items() if keys]
                if busy:  # a worker's first shard imports torch and loads the model: seconds
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(pids[busy[0]])
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        with pytest.raises(EmbeddingError) as failure:
            index(model_dir, IndexOptions(alias=alias, dask_address=cluster.scheduler_address, embed_shards=4),
                  milvus_uri=milvus_uri)
        killer.join()
    assert killed, "no worker was seen running a shard"
    message = str(failure.value)
    assert message.startswith("embedding items "), message
    assert " on Dask: a Dask worker died while embedding it (KilledWorker: " in message, message
    assert message.endswith("); nothing was written to Milvus"), message
    assert store.alias_target(alias) == serving  # serving is as it was
    assert store.versions(alias) == [serving]  # nothing was half-built: Milvus is written after every shard
    assert not any(settings.state_dir("embeddings").iterdir())
    # and the next build, on a local cluster, serves
    built = index(model_dir, IndexOptions(alias=alias, embed_workers=2), milvus_uri=milvus_uri)
    assert store.alias_target(alias) == built.collection != serving


def test_a_local_cluster_drops_its_own_shutdown_noise_and_nothing_else(prefect_harness):
    # what a busy machine printed when the CLI's cluster closed: a worker's heartbeat cut by the
    # closing scheduler (ERROR, with a traceback), a nanny stopping a slow worker (WARNING)
    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", level, __file__, 1, message, (), None)

    noise = ShutdownNoise()
    assert not noise.filter(record(logging.ERROR, "Failed to communicate with scheduler during heartbeat."))
    assert not noise.filter(record(logging.WARNING, "Worker process still alive after 4.0 seconds, killing"))
    assert noise.filter(record(logging.ERROR, "Unexpected exception during heartbeat. Closing worker."))
    assert noise.filter(record(logging.WARNING, "Unmanaged memory use is high. This may indicate a memory leak"))
    # installed in this process and, by the cluster's preload, in each worker process
    with dask_runner(2, None) as runner:
        installed = runner.client.run(
            lambda: [type(f).__name__ for f in logging.getLogger("distributed.worker").filters])
    assert sorted(installed.values()) == [["ShutdownNoise"], ["ShutdownNoise"]]
    assert [type(f) for f in logging.getLogger("distributed.nanny").filters].count(ShutdownNoise) == 1

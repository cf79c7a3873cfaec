"""Item embedding on Dask, through Prefect's task runner (``prefect-dask``'s ``DaskTaskRunner``):
the catalog is cut into shards, each shard embedded by a task on a Dask worker and written as a
``.npy`` file; the index and rebuild flows then load those files into Milvus.

A local cluster of ``embed_workers`` processes by default; ``dask_address`` (``tcp://HOST:8786``)
uses a Dask cluster you run, whose workers must read the model directory and write the shards
(shared storage: set ``TOWERBRIDGE_HOME`` or ``embed_dir`` there); both are ``IndexOptions``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped

from towerbridge import settings, steps
from towerbridge.errors import ConfigError, EmbeddingError, TowerbridgeError
from towerbridge.options import IndexOptions

SHARDS_PER_WORKER = 4  # a worker that dies or lags costs a quarter of its share, not all of it
REMOTE_SHARDS = 32


@task(name="embed-shard", retries=1, retry_delay_seconds=2)
def embed_shard(model_dir: str, first: int, stop: int, out_dir: str, threads: int | None) -> str:
    return steps.embed_shard(model_dir, first, stop, out_dir, threads)


@flow(name="embed-items")
def embed_items(model_dir: str, out_dir: str, shards: int, threads: int | None = None) -> list[str]:
    """Embed the model's catalog in ``shards`` tasks (on the flow's task runner), one ``.npy``
    file per shard in ``out_dir``; returns the files."""
    ranges = steps.embedding_shards(model_dir, shards)
    futures = embed_shard.map(unmapped(model_dir), [first for first, _ in ranges], [stop for _, stop in ranges],
                              unmapped(out_dir), unmapped(threads))
    files = []
    for (first, stop), future in zip(ranges, futures):
        try:
            files.append(future.result())
        except TowerbridgeError:
            raise
        except Exception as error:  # a worker lost (KilledWorker), a scheduler gone, a bug in a shard
            what = "a Dask worker died while embedding it" if type(error).__name__ == "KilledWorker" else "it failed"
            detail = (str(error).strip().splitlines() or [""])[0][:300]
            raise EmbeddingError(f"embedding items {first}-{stop} (of {ranges[-1][1]}) on Dask: {what} "
                                 f"({type(error).__name__}: {detail}); nothing was written to Milvus") from error
    return files


class ShutdownNoise(logging.Filter):
    """Drops what a local cluster's own shutdown logs, and nothing else: a worker's heartbeat
    cut by the closing scheduler (an ERROR with a traceback) and a nanny stopping a worker that
    was slow to stop (a WARNING), both routine on a busy machine. Were the scheduler lost while
    shards were still embedding, the shard fails and ``embed_items`` says so."""

    ROUTINE = ("Failed to communicate with scheduler during heartbeat",
               "Worker process still alive after")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.ROUTINE)


def quiet(*_: object) -> None:
    """Installs ``ShutdownNoise`` in this process (idempotent); also a Dask preload's
    ``dask_setup``, so that the local cluster's worker processes install it on start."""
    for name in ("distributed.worker", "distributed.nanny"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, ShutdownNoise) for f in logger.filters):
            logger.addFilter(ShutdownNoise())


dask_setup = quiet


def dask_runner(workers: int, address: str | None):
    """Prefect's Dask task runner: on the cluster at ``address``, or on a local cluster of
    ``workers`` processes with one thread each (torch in each takes its share of the cores)."""
    # Dask logs every connection it opens and closes at INFO, with a traceback for those a closing
    # cluster cuts: noise on a user's terminal. Warnings and errors still show (workers read the
    # environment variable, this process the logger's level), less the local cluster's shutdown.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("distributed").level))
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("embedding on Dask (--embed-workers, --dask-address) needs prefect-dask: "
                          "pip install 'towerbridge[dask]'") from None

    if address:
        return DaskTaskRunner(address=address)
    quiet()
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "preload": [__name__]})


@contextmanager
def embedded(model_dir: str, options: IndexOptions) -> Iterator[list[str] | None]:
    """The catalog's vectors as files embedded on Dask as ``options`` say (``embed_workers``,
    ``dask_address``, ``embed_shards``, ``embed_dir``), removed on leaving; None (embed in this
    process, as before) without workers or an address."""
    workers, address = options.embed_workers, options.dask_address
    if not workers and not address:
        yield None
        return
    shards = options.embed_shards or (workers * SHARDS_PER_WORKER if not address else REMOTE_SHARDS)
    out_dir = Path(options.embed_dir) if options.embed_dir else settings.state_dir("embeddings")
    out_dir = out_dir / settings.new_id()
    out_dir.mkdir(parents=True)
    threads = None if address else max(1, (os.cpu_count() or 1) // workers)
    where = address or f"a local Dask cluster of {workers} workers"
    get_run_logger().info("embedding the catalog in %d shards on %s", shards, where)
    try:
        yield embed_items.with_options(task_runner=dask_runner(workers, address))(
            model_dir, str(out_dir), shards, threads)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

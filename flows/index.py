"""The index flow: embed every item into a new Milvus version and point the alias at it."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from milvus import server
from milvus.store import DEFAULT_ALIAS
from towerbridge import steps


@task(name="build-collection", retries=1, retry_delay_seconds=5)
def build_collection(model_dir: str, uri: str, alias: str) -> dict:
    return steps.index_model(model_dir, uri, alias)


@flow(name="index")
def index(model_dir: str, milvus_uri: str | None = None, alias: str = DEFAULT_ALIAS) -> dict:
    """Batch-embed all items of the model's catalog into an IVF_PQ collection.

    Returns ``{"collection", "alias", "rows", "index"}``.
    """
    logger = get_run_logger()
    with server.endpoint(milvus_uri, log=logger.info) as uri:
        built = build_collection(model_dir, uri, alias)
    logger.info("alias %s -> %s (%d rows, IVF_PQ %s)", built["alias"], built["collection"],
                built["rows"], built["index"]["params"])
    return built

"""The index flow: embed every item into a new Milvus version and point the alias at it."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from towerbridge import steps
from towerbridge.flows.embed import embedded
from towerbridge.milvus import server
from towerbridge.milvus.index import Fallback
from towerbridge.options import IndexOptions
from towerbridge.results import BuiltVersion


@task(name="build-collection", retries=1, retry_delay_seconds=5)
def build_collection(model_dir: str, uri: str, alias: str, index_params: dict, keep_versions: int,
                     target_recall: float, vectors: list[str] | None = None) -> BuiltVersion:
    return steps.index_model(model_dir, uri, alias, index_params=index_params, keep_versions=keep_versions,
                             target_recall=target_recall, embedded=vectors)


@flow(name="index")
def index(model_dir: str, options: IndexOptions = IndexOptions(), milvus_uri: str | None = None) -> BuiltVersion:
    """Batch-embed all items of the model's catalog in ``model_dir`` into a new IVF_PQ (or
    SCANN) version, tune its search to ``options.target_recall``, move ``options.alias`` to it,
    keep the newest ``options.keep_versions``. ``options.embed_workers`` /
    ``options.dask_address``: embed the catalog on Dask (``flows/embed.py``); default: in this
    process. ``milvus_uri``: the Milvus to use (default: MILVUS_URI, else the embedded server).
    Returns the ``BuiltVersion`` now serving.
    """
    logger = get_run_logger()
    with server.endpoint(milvus_uri, log=logger.info) as uri, embedded(model_dir, options) as vectors:
        built = build_collection(model_dir, uri, options.alias, options.index_params.overrides(),
                                 options.keep_versions, options.target_recall, vectors)
    # the tuned search settings, not the build's starting values that index["params"] keeps
    tuned = {"nprobe": built.nprobe, **({} if built.reorder_k is None else {"reorder_k": built.reorder_k})}
    logger.info("alias %s -> %s (%d rows, %s %s, recall@100 %.3f against exact search)", built.alias,
                built.collection, built.rows, built.index["index_type"], {**built.index["params"], **tuned},
                built.index_recall)
    if built.index_fallback:
        logger.info("index: %s", Fallback.from_dict(built.index_fallback).describe())
    return built

"""The index flow: embed every item into a new Milvus version and point the alias at it."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from towerbridge import defaults, steps
from towerbridge.flows.embed import embedded
from towerbridge.milvus import server
from towerbridge.milvus.schema import DEFAULT_ALIAS, check_name
from towerbridge.results import BuiltVersion


@task(name="build-collection", retries=1, retry_delay_seconds=5)
def build_collection(model_dir: str, uri: str, alias: str, index_params: dict, keep_versions: int,
                     target_recall: float, vectors: list[str] | None = None) -> BuiltVersion:
    return steps.index_model(model_dir, uri, alias, index_params=index_params, keep_versions=keep_versions,
                             target_recall=target_recall, embedded=vectors)


@flow(name="index")
def index(model_dir: str, milvus_uri: str | None = None, alias: str = DEFAULT_ALIAS,
          index_params: dict | None = None, keep_versions: int = defaults.KEEP_VERSIONS,
          target_recall: float = defaults.TARGET_RECALL, embed_workers: int = 0, dask_address: str | None = None,
          embed_shards: int | None = None, embed_dir: str | None = None) -> BuiltVersion:
    """Batch-embed all items of the model's catalog into a new IVF_PQ (or SCANN) version, tune
    its search to ``target_recall``, move ``alias`` to it, keep the newest ``keep_versions``.

    index_params: ``index_type`` (``IVF_PQ``, the default, or ``SCANN``) and ``nlist``, ``m``,
    ``nbits`` overriding the ones chosen from the data.
    embed_workers / dask_address: embed the catalog on a local Dask cluster of that many
    workers, or on the Dask cluster at that address, in ``embed_shards`` tasks writing files
    under ``embed_dir`` (``flows/embed.py``); default: in this process.
    Returns the ``BuiltVersion`` now serving.
    """
    logger = get_run_logger()
    check_name(alias)
    with server.endpoint(milvus_uri, log=logger.info) as uri, \
            embedded(model_dir, embed_workers, dask_address, embed_shards, embed_dir) as vectors:
        built = build_collection(model_dir, uri, alias, index_params or {}, keep_versions, target_recall, vectors)
    # the tuned search settings, not the build's starting values that index["params"] keeps
    tuned = {"nprobe": built.nprobe, **({} if built.reorder_k is None else {"reorder_k": built.reorder_k})}
    logger.info("alias %s -> %s (%d rows, %s %s, recall@100 %.3f against exact search)", built.alias,
                built.collection, built.rows, built.index["index_type"], {**built.index["params"], **tuned},
                built.index_recall)
    return built

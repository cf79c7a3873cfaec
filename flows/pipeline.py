"""The whole job: train, index, evaluate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger

from towerbridge import defaults, settings, steps
from towerbridge.data.options import DataOptions
from towerbridge.flows.evaluate import evaluate
from towerbridge.flows.index import index
from towerbridge.flows.train import train
from towerbridge.milvus import server
from towerbridge.milvus.schema import DEFAULT_ALIAS, check_name
from towerbridge.results import EvaluationReport
from towerbridge.towers.config import TowerConfig


@flow(name="pipeline")
def pipeline(
    data: DataOptions | None = None,
    report_dir: str | None = None,
    milvus_uri: str | None = None,
    alias: str = DEFAULT_ALIAS,
    index_params: dict | None = None,
    keep_versions: int = defaults.KEEP_VERSIONS,
    user_tower: str | None = None,
    epochs: int | None = None,
    use_features: bool = TowerConfig.use_features,
    early_stopping_patience: int = TowerConfig.early_stopping_patience,
    seed: int = TowerConfig.seed,
    ks: list[int] | None = None,
    eval_users: int | None = None,
    prepared_dir: str | None = None,
    train_processes: int = 1,
    embed_workers: int = 0,
    dask_address: str | None = None,
) -> EvaluationReport:
    """Train the towers, build a new IVF_PQ version behind ``alias``, evaluate it.

    Returns the evaluation report; it is also written to ``report_dir`` (default:
    the run's directory under TOWERBRIDGE_HOME/runs). ks and eval_users: see the evaluate flow;
    prepared_dir (data prepared already, instead of ``data``) and train_processes: see the train flow;
    embed_workers and dask_address (the item embedding on Dask): see the index flow.
    """
    check_name(alias)
    steps.check_ks(ks)
    defaults.check_eval_users(eval_users)
    run_dir = settings.state_dir("runs") / settings.new_id()
    report_dir = report_dir or str(run_dir / "report")
    with server.endpoint(milvus_uri, log=get_run_logger().info) as uri:
        trained = train(data=data, run_dir=str(run_dir), user_tower=user_tower, epochs=epochs,
                        use_features=use_features,
                        early_stopping_patience=early_stopping_patience, seed=seed, prepared_dir=prepared_dir,
                        train_processes=train_processes)
        built = index(model_dir=trained["model_dir"], milvus_uri=uri, alias=alias, index_params=index_params,
                      keep_versions=keep_versions, embed_workers=embed_workers, dask_address=dask_address)
        report = evaluate(model_dir=trained["model_dir"], collection=built.collection,
                          report_dir=report_dir, milvus_uri=uri, ks=ks, eval_users=eval_users)
    return replace(report, report_dir=str(Path(report_dir).resolve()))

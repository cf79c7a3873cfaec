"""The whole job: train, index, evaluate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger

from towerbridge import settings
from towerbridge.flows.evaluate import evaluate
from towerbridge.flows.index import index
from towerbridge.flows.train import train
from towerbridge.milvus import server
from towerbridge.options import PipelineOptions
from towerbridge.results import EvaluationReport


@flow(name="pipeline")
def pipeline(options: PipelineOptions = PipelineOptions()) -> EvaluationReport:
    """Train the towers, build a new IVF_PQ version behind the alias, evaluate it: the train,
    index and evaluate flows with ``options.train``, ``options.index`` and ``options.evaluate``.

    Returns the evaluation report; it is also written to ``options.report_dir`` (default: the
    run's directory under TOWERBRIDGE_HOME/runs).
    """
    run_dir = settings.state_dir("runs") / settings.new_id()
    report_dir = options.report_dir or str(run_dir / "report")
    with server.endpoint(options.milvus_uri, log=get_run_logger().info) as uri:
        trained = train(options.train, run_dir=str(run_dir))
        built = index(trained.model_dir, options.index, milvus_uri=uri)
        report = evaluate(trained.model_dir, built.collection, report_dir, options.evaluate, milvus_uri=uri)
    return replace(report, report_dir=str(Path(report_dir).resolve()))

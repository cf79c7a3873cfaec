"""The evaluation flow: query Milvus per user and compute top-k hit rate."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from milvus import server
from towerbridge import steps


@task(name="evaluate-collection", retries=1, retry_delay_seconds=5)
def evaluate_collection(model_dir: str, uri: str, collection: str, report_dir: str) -> dict:
    return steps.evaluate_model(model_dir, uri, collection, report_dir)


@flow(name="evaluate")
def evaluate(model_dir: str, collection: str, report_dir: str, milvus_uri: str | None = None) -> dict:
    """Hit rate at k = 10, 50, 100 through Milvus, with exact search and popularity beside it.

    Writes ``evaluation.json`` and ``evaluation.md`` to ``report_dir`` and publishes the
    table as Prefect artifacts. Returns the report.
    """
    with server.endpoint(milvus_uri, log=get_run_logger().info) as uri:
        report = evaluate_collection(model_dir, uri, collection, report_dir)
    create_table_artifact(key="evaluation", table=steps.report_table(report),
                          description=f"Hit rate on {report['dataset']} ({report['protocol']})")
    create_markdown_artifact(key="evaluation-report", markdown=steps.report_markdown(report))
    return report

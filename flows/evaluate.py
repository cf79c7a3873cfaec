"""The evaluation flow: query Milvus per user and compute top-k hit rate."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from towerbridge import steps
from towerbridge.milvus import server
from towerbridge.options import EvaluateOptions
from towerbridge.report import report_markdown, report_table
from towerbridge.results import EvaluationReport


@task(name="evaluate-collection", retries=1, retry_delay_seconds=5)
def evaluate_collection(model_dir: str, uri: str, collection: str, report_dir: str, ks: list[int],
                        eval_users: int | None, seed: int) -> EvaluationReport:
    return steps.evaluate_model(model_dir, uri, collection, report_dir, ks=tuple(ks), eval_users=eval_users,
                                seed=seed)


@flow(name="evaluate")
def evaluate(model_dir: str, collection: str, report_dir: str, options: EvaluateOptions = EvaluateOptions(),
             milvus_uri: str | None = None) -> EvaluationReport:
    """Hit rate, recall, NDCG, MRR, coverage and mean popularity at each of ``options.ks`` for
    the model in ``model_dir`` through its version ``collection`` in Milvus, with exact search,
    popularity and random beside it; for every user, or a seeded sample of ``options.eval_users``.

    Writes ``evaluation.json``, ``evaluation.md`` and ``hit_rate.png`` to ``report_dir`` and
    publishes the table and the summary as Prefect artifacts. Returns the report.
    """
    with server.endpoint(milvus_uri, log=get_run_logger().info) as uri:
        report = evaluate_collection(model_dir, uri, collection, report_dir, list(options.ks), options.eval_users,
                                     options.seed)
    create_table_artifact(key="evaluation", table=report_table(report),
                          description=f"Hit rate on {report.dataset} ({report.protocol})")
    create_markdown_artifact(key="evaluation-report", markdown=report_markdown(report, plot=None))
    return report

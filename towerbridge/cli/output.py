"""What the commands print: the evaluation table, result rows, and quieter Prefect logs."""

from __future__ import annotations

import json
import logging

from towerbridge.errors import TowerbridgeError
from towerbridge.report import temperature_text
from towerbridge.results import EvaluationReport


def print_report(report: EvaluationReport) -> None:
    from towerbridge.report import report_table

    print()
    print(f"{report.dataset} ({report.protocol}), {report.users_evaluated} users, "
          f"collection {report.collection}")
    print(f"hit rate {'k':>4}  {'model':>8}  {'exact':>8}  {'popularity':>10}  {'random':>8}")
    for row in report_table(report):
        print(f"{'':>8} {row['k']:>4}  {row['model']:>8.4f}  {row['exact']:>8.4f}  {row['popularity']:>10.4f}"
              f"  {row['random']:>8.4f}")
    model = report.model
    at = 10 if "ndcg@10" in model else max(report.ks)
    print(f"model @{at}: recall {model[f'recall@{at}']:.4f}, NDCG {model[f'ndcg@{at}']:.4f}, "
          f"MRR {model[f'mrr@{at}']:.4f}, coverage {model[f'coverage@{at}']:.3f}")
    recall = ", ".join(f"{key} {value:.3f}" for key, value in report.index_recall.items())
    print(f"index recall vs exact search: {recall}")
    training = report.training
    print(f"training: {training['seconds']:.1f} s, {training['epochs']} epochs, "
          f"{training['examples_per_s']:,.0f} examples/s{temperature_text(training)}"
          f"{'; ' + training['stopped'] if training.get('stopped') else ''}")
    print(f"report: {report.report_dir}/ (evaluation.json, evaluation.md, hit_rate.png)")


def records(frame) -> list[dict]:
    """A DataFrame's rows as plain Python values for JSON: numpy scalars unboxed, NaN as None."""
    def plain(value):
        value = value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value
        return None if isinstance(value, float) and value != value else value

    return [{key: plain(value) for key, value in row.items()} for row in frame.to_dict("records")]


def print_frame(frame, as_json: bool, columns: list[str] | None = None) -> None:
    """An answer of towerbridge.api: JSON (a list of rows, nothing else on stdout), or a table
    with, below it, what its score is (``attrs["score"]``)."""
    print_rows(records(frame), columns or list(frame.columns), as_json)
    if not as_json and len(frame) and frame.attrs.get("score"):
        print(frame.attrs["score"])


def print_rows(rows: list[dict], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(no results)")
        return
    shown = [[f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [min(48, max(len(c), *(len(r[i]) for r in shown))) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in shown:
        print("  ".join((v if len(v) <= w else v[:w - 1] + "…").ljust(w) for v, w in zip(row, widths)))


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a flow's exception with its traceback; ours need only the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TowerbridgeError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_prefect_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.addFilter(_NoTracebackForUserErrors())

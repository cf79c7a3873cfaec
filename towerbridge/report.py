"""Evaluation reports a person can read: JSON, Markdown and a PNG plot.

evaluation.json holds, under ``model`` (through Milvus), ``exact`` (brute force, same
model), ``popularity`` and ``random``, the keys ``hit_rate@K``, ``recall@K``, ``ndcg@K``,
``mrr@K``, ``coverage@K`` and ``mean_popularity@K`` for every evaluated K.
"""

from __future__ import annotations

import json
from pathlib import Path

from towerbridge import settings
from towerbridge.results import SOURCES, EvaluationReport

SOURCE_LABELS = {"model": "model (Milvus IVF_PQ)", "exact": "model (exact search)", "popularity": "popularity",
                 "random": "random"}


def ks_of(report: EvaluationReport) -> list[int]:
    return sorted({int(key.split("@")[1]) for key in report.model})


def report_table(report: EvaluationReport) -> list[dict]:
    """Hit rate per k for every source (the Prefect table artifact and the CLI's table)."""
    return [{"k": k, **{source: round(report.source(source)[f"hit_rate@{k}"], 4) for source in SOURCES}}
            for k in ks_of(report)]


def label(report: EvaluationReport, source: str) -> str:
    """A source's name in tables and plots; the model through Milvus names its index."""
    if source == "model":
        return f"model (Milvus {report.index.get('index_type') or 'IVF_PQ'})"
    return SOURCE_LABELS[source]


def _sampled(report: EvaluationReport) -> str:
    if not report.users_eligible or report.users_eligible <= report.users_evaluated:
        return ""
    return (f" (a seeded sample of the {report.users_eligible:,} with held-out interactions; "
            "--eval-users sets its size, all ranks every one)")


def report_markdown(report: EvaluationReport, plot: str | None = "hit_rate.png") -> str:
    ks = ks_of(report)
    model = report.model
    lines = [
        f"# Evaluation: {report.dataset} ({report.protocol})",
        "",
        f"{report.users_evaluated:,} users{_sampled(report)}, {report.queries:,} queries "
        f"(one per {report.query_unit}); "
        f"collection `{report.collection}`, {report.index.get('index_type') or 'IVF_PQ'} {report.index['params']}"
        + (f" ({report.index['fallback']})." if report.index.get("fallback") else "."),
        "",
        "## Hit rate",
        "",
        "| k | " + " | ".join(label(report, s) for s in SOURCES) + " |",
        "|---:|" + "---:|" * len(SOURCES),
        *[f"| {k} | " + " | ".join(f"{report.source(s)[f'hit_rate@{k}']:.4f}" for s in SOURCES) + " |" for k in ks],
        "",
        "## The model through Milvus",
        "",
        "| k | hit rate | recall | NDCG | MRR | coverage | mean popularity |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {k} | {model[f'hit_rate@{k}']:.4f} | {model[f'recall@{k}']:.4f} | {model[f'ndcg@{k}']:.4f} | "
          f"{model[f'mrr@{k}']:.4f} | {model[f'coverage@{k}']:.4f} | {model[f'mean_popularity@{k}']:.1f} |"
          for k in ks],
        "",
        "## What the approximate index costs",
        "",
        "| k | index recall vs exact | hit rate gap (Milvus − exact) | NDCG gap |",
        "|---:|---:|---:|---:|",
        *[f"| {k} | {report.index_recall[f'recall@{k}']:.4f} | {report.ann_gap[f'hit_rate@{k}']:+.4f} | "
          f"{report.ann_gap[f'ndcg@{k}']:+.4f} |" for k in ks],
        "",
        f"Training: {report.training['seconds']:.1f} s, {report.training['epochs']} epochs"
        f"{_processes(report.training.get('processes', 1))}{temperature_text(report.training)}"
        f"{'; ' + report.training['stopped'] if report.training.get('stopped') else ''}. "
        f"Ranking: Milvus {report.timing['milvus_users_per_s']:,.0f} users/s, exact "
        f"{report.timing['exact_users_per_s']:,.0f} users/s.",
    ]
    if plot:
        lines += ["", f"![hit rate against k]({plot})"]
    return "\n".join(lines) + "\n"


def plot_hit_rate(report: EvaluationReport, path: Path) -> None:
    """Hit rate against k (log scale) for the model through Milvus, exact search and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = ks_of(report)
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {"model": ("o-", 2.2), "exact": ("s--", 1.4), "popularity": ("^-", 1.4), "random": ("x:", 1.2)}
    for source in SOURCES:
        marker, width = styles[source]
        axes.plot(ks, [report.source(source)[f"hit_rate@{k}"] for k in ks], marker, linewidth=width,
                  label=label(report, source))
    axes.set_xscale("log")
    axes.set_xticks(ks, [str(k) for k in ks])
    axes.set_xlabel("k (top-k cut-off, log scale)")
    axes.set_ylabel("hit rate @ k")
    axes.set_ylim(0, max(1e-3, max(report.source(s)[f"hit_rate@{ks[-1]}"] for s in SOURCES)) * 1.1)
    axes.set_title(f"{report.dataset} ({report.protocol}): hit rate against k")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


_write = settings.write_atomic


def write_report(report: EvaluationReport, directory: Path) -> None:
    """evaluation.json, evaluation.md and hit_rate.png, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "evaluation.json", lambda p: p.write_text(json.dumps(report.to_dict(), indent=2)))
    _write(directory / "hit_rate.png", lambda p: plot_hit_rate(report, p))
    _write(directory / "evaluation.md", lambda p: p.write_text(report_markdown(report)))


def temperature_text(training: dict) -> str:
    """", temperature 0.0552 (learned), weights averaged over steps (decay 0.98), the items the
    user had up to it left out of each position's softmax": the softmax temperature the model was
    trained with, whether the model is the moving average of its weights, and which of the user's
    own items its softmax left out (reports written before these were recorded: nothing)."""
    text = ""
    if training.get("temperature") is not None:
        learned = " (learned)" if training.get("temperature_learned") else ""
        text = f", temperature {training['temperature']:.4g}{learned}"
    if training.get("ema_decay"):
        text += f", weights averaged over steps (decay {training['ema_decay']:g})"
    excluded = EXCLUDED.get(training.get("exclude_history"))
    if excluded:
        text += f", {excluded} left out of each position's softmax"
    return text


EXCLUDED = {"seen": "the items the user had up to it", "window": "the items of the user's window"}


def _processes(processes: int) -> str:
    return f", {processes} data-parallel processes (PyTorch DDP)" if processes > 1 else ", one process"

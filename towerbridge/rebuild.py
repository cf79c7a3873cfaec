"""The nightly rebuild's decisions, as plain functions: which model to reuse, whether a
candidate version may serve, and the report a person reads in the morning.

The flow that runs them is ``flows/rebuild.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from towerbridge import defaults, settings
from towerbridge.errors import ConfigError
from towerbridge.milvus.index import SearchParams
from towerbridge.report import compare
from towerbridge.results import BuiltVersion, EvaluationReport
from towerbridge.towers import artifact


@dataclass
class Decision:
    """Each check with its outcome; the candidate serves only when every check passed."""

    checks: list[dict] = field(default_factory=list)

    def add(self, check: str, passed: bool, detail: str) -> None:
        self.checks.append({"check": check, "passed": bool(passed), "detail": detail})

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)

    @property
    def reason(self) -> str:
        failed = [f"{c['check']}: {c['detail']}" for c in self.checks if not c["passed"]]
        return "; ".join(failed) if failed else "every check passed"


@dataclass
class RebuildSummary:
    """What a rebuild did, filled in as it goes; rebuild.json and rebuild.md are written from
    ``to_dict`` (optional fields still None are left out). outcome: ``swapped``, ``rejected``
    or ``failed``."""

    alias: str
    started_at: str
    outcome: str = "failed"
    serving_before: str | None = None
    serving_after: str | None = None
    removed_half_built: list[str] | None = None
    serving_evaluation: dict | None = None
    serving_damaged: list[str] | None = None
    model_dir: str | None = None
    built: BuiltVersion | None = None
    report: dict | None = None
    decision: Decision | None = None
    candidate_dropped: bool | None = None
    dropped_versions: list[str] | None = None
    warnings: list[str] | None = None
    error: str | None = None
    seconds: float | None = None
    report_dir: str | None = None

    def warn(self, warning: str) -> None:
        self.warnings = [*(self.warnings or []), warning]

    def to_dict(self) -> dict:
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["built"] = self.built.to_dict() if self.built else None
        record["decision"] = decision_dict(self.decision) if self.decision else None
        kept = ("alias", "started_at", "outcome", "serving_before", "serving_after")  # null says "nothing serves"
        return {key: value for key, value in record.items() if value is not None or key in kept}


def latest_model(models_dir: Path | None = None) -> str:
    """The most recently trained model under TOWERBRIDGE_HOME/models (for ``--reuse-model``)."""
    root = models_dir or settings.state_dir("models")
    found = []
    for directory in root.iterdir() if root.is_dir() else []:
        try:
            manifest = artifact.read_manifest(directory)
        except Exception:  # a partial or foreign directory: not a model to reuse
            continue
        found.append((manifest.created_at, directory.name, directory))
    if not found:
        raise ConfigError(f"--reuse-model: no trained model under {root}; run a rebuild without it first")
    return str(max(found)[2])


def serving_evaluation(record: dict) -> dict | None:
    """The evaluation recorded with a version (by the evaluate step), if any."""
    evaluation = record.get("evaluation")
    return evaluation if isinstance(evaluation, dict) and isinstance(evaluation.get("model"), dict) else None


def validate(built: BuiltVersion, report: EvaluationReport, serving: str | None, serving_record: dict | None,
             target_recall: float, metrics: tuple[str, ...] = defaults.GATE_METRICS,
             tolerance: float = defaults.GATE_TOLERANCE, serving_damaged: bool = False) -> Decision:
    """May the candidate ``built`` (with its evaluation ``report``) replace ``serving``?

    1. every item is in the collection (rows == items of the model's catalog);
    2. Milvus' recall against exact search, after tuning the search, reaches ``target_recall``;
    3. the chosen metrics are not worse than the serving version's recorded ones beyond
       ``tolerance`` (skipped, and said so, when nothing serves yet, or the serving version
       is damaged and cannot load, or has no evaluation, or was evaluated on another dataset
       or protocol).
    """
    decision = Decision()
    decision.add("row count", built.rows == built.items, f"{built.rows:,} rows indexed for {built.items:,} items")
    recall = built.index_recall
    decision.add("index recall", recall >= target_recall,
                 f"recall@100 against exact search {recall:.4f} at "
                 f"{SearchParams(built.nprobe, built.reorder_k).describe()} (target {target_recall})")
    previous = serving_evaluation(serving_record or {})
    if serving is None:
        decision.add("metrics vs serving", True, "no version serves yet: the first one serves on its own checks")
    elif serving_damaged:
        decision.add("metrics vs serving", True, f"{serving} is damaged (files missing) and serves nothing: "
                                                 "not compared")
    elif previous is None:
        decision.add("metrics vs serving", True, f"{serving} has no recorded evaluation: not compared")
    elif (previous.get("dataset"), previous.get("protocol")) != (report.dataset, report.protocol):
        decision.add("metrics vs serving", True,
                     f"{serving} was evaluated on {previous.get('dataset')} ({previous.get('protocol')}), "
                     f"the candidate on {report.dataset} ({report.protocol}): not compared")
    else:
        passed, reason = compare(report.model, previous.get("model", {}), metrics, tolerance)
        decision.add("metrics vs serving", passed, f"{reason} (serving: {serving})")
    return decision


def markdown(summary: dict) -> str:
    """The morning report: what was built, the checks, old and new metrics, the decision."""
    built, decision = summary.get("built") or {}, summary.get("decision") or {"checks": []}
    new = (summary.get("report") or {}).get("model", {})
    old = (summary.get("serving_evaluation") or {}).get("model", {})
    lines = [
        f"# Rebuild of `{summary['alias']}`: {summary['outcome']}",
        "",
        f"- started {summary['started_at']}, {summary.get('seconds', 0):.0f} s",
        f"- serving before: `{summary.get('serving_before') or 'nothing'}`; "
        f"serving now: `{summary.get('serving_after') or 'nothing'}`",
    ]
    if built:
        params = ", ".join(f"{key} {value}" for key, value in built["index"]["params"].items()
                           if key not in ("nprobe", "reorder_k"))
        tuned = SearchParams(built["nprobe"], built.get("reorder_k")).describe()
        index_type = built["index"].get("index_type", "IVF_PQ")
        lines.append(f"- candidate: `{built['collection']}` ({built['rows']:,} rows, {index_type} {params}, "
                     f"tuned {tuned}), model `{built['model_id']}`")
        if built.get("timing"):
            t = built["timing"]
            lines.append(f"- build time: embedding {t['embed_s']:.0f} s, inserts {t['insert_s']:.0f} s "
                         f"({built.get('insert_workers', 1)} process(es)), index build and load {t['index_s']:.0f} s, "
                         f"search tuning {t['tune_s']:.0f} s")
    if summary.get("error"):
        lines += ["", "## Error", "", "```", summary["error"], "```"]
    if decision["checks"]:
        lines += ["", "## Checks", "", "| check | passed | detail |", "|---|---|---|",
                  *[f"| {c['check']} | {'yes' if c['passed'] else '**no**'} | {c['detail']} |"
                    for c in decision["checks"]]]
    names = ("hit_rate", "recall", "ndcg", "mrr")
    keys = sorted((key for key in new if key.split("@")[0] in names),
                  key=lambda key: (names.index(key.split("@")[0]), int(key.split("@")[1])))
    if keys:
        lines += ["", "## Metrics (model through Milvus)", "", "| metric | serving | candidate | change |",
                  "|---|---:|---:|---:|"]
        for key in keys:
            before = old.get(key)
            change = f"{new[key] - before:+.4f}" if before is not None else ""
            lines.append(f"| {key} | {'' if before is None else f'{before:.4f}'} | {new[key]:.4f} | {change} |")
    if summary.get("serving_damaged"):
        lines += ["", f"The version serving before was damaged: {len(summary['serving_damaged'])} of its files "
                      f"were missing from the server's disk (e.g. `{summary['serving_damaged'][0]}`)."]
    if summary.get("dropped_versions"):
        lines += ["", f"Retention dropped: {', '.join(summary['dropped_versions'])}."]
    if summary.get("warnings"):
        lines += ["", *[f"Warning: {warning}" for warning in summary["warnings"]]]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, directory: Path) -> None:
    """rebuild.json and rebuild.md in the rebuild's directory, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("rebuild.json", json.dumps(summary, indent=2, default=str)), ("rebuild.md", markdown(summary))):
        settings.write_atomic(directory / name, text)


def decision_dict(decision: Decision) -> dict:
    return {**asdict(decision), "passed": decision.passed, "reason": decision.reason}

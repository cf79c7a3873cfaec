"""The nightly rebuild's decisions, as plain functions: which model to reuse, whether a
candidate version may serve, and the report a person reads in the morning.

The flow that runs them is ``flows/rebuild.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from towerbridge import defaults, settings
from towerbridge.errors import ConfigError
from towerbridge.milvus.index import SearchParams
from towerbridge.milvus.record import VersionEvaluation, VersionRecord
from towerbridge.milvus.store import ItemStore
from towerbridge.report import compare
from towerbridge.results import BuiltVersion, EvaluationReport
from towerbridge.towers import artifact


@dataclass(frozen=True)
class Check:
    """One check of a candidate: what was checked, whether it passed, and the numbers."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"check": self.name, "passed": bool(self.passed), "detail": self.detail}


@dataclass(frozen=True)
class Decision:
    """Each check with its outcome; the candidate serves only when every check passed."""

    checks: tuple[Check, ...] = ()

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def reason(self) -> str:
        failed = [f"{check.name}: {check.detail}" for check in self.checks if not check.passed]
        return "; ".join(failed) if failed else "every check passed"

    def to_dict(self) -> dict:
        return {"checks": [check.to_dict() for check in self.checks], "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Serving:
    """What an alias serves as a rebuild starts: the collection (None: nothing), its record,
    the files it lacks from the server's disk (damaged: it can never load), and the
    half-built versions removed before."""

    collection: str | None
    record: VersionRecord | None = None
    missing_files: tuple[str, ...] = ()
    removed_half_built: tuple[str, ...] = ()

    @property
    def evaluation(self) -> VersionEvaluation | None:
        """The evaluation recorded with the serving version, if any."""
        return self.record.evaluation if self.record else None


def find_serving(store: ItemStore, alias: str) -> Serving:
    """Remove the half-built versions of ``alias``, then say what it serves. Call it holding
    the alias' build lock."""
    removed = tuple(store.remove_half_built(alias))
    collection = store.alias_target(alias)
    if collection is None:
        return Serving(None, removed_half_built=removed)
    return Serving(collection, store.record(collection), tuple(store.missing_files(collection)), removed)


# What rebuild.json keeps of the candidate's evaluation (evaluation.json, beside it, has all of it).
REPORT_FIELDS = ("dataset", "protocol", "users_evaluated", "model", "ann_gap", "index_recall")


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
    serving_evaluation: VersionEvaluation | None = None
    serving_damaged: list[str] | None = None
    model_dir: str | None = None
    built: BuiltVersion | None = None
    report: EvaluationReport | None = None
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
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(
            serving_evaluation=self.serving_evaluation.to_dict() if self.serving_evaluation else None,
            built=self.built.to_dict() if self.built else None,
            report={name: getattr(self.report, name) for name in REPORT_FIELDS} if self.report else None,
            decision=self.decision.to_dict() if self.decision else None)
        kept = ("alias", "started_at", "outcome", "serving_before", "serving_after")  # null says "nothing serves"
        return {key: value for key, value in values.items() if value is not None or key in kept}


def attach(error: BaseException, summary: RebuildSummary) -> None:
    """Let whoever ran a rebuild that raised ``error`` read what it did (``summary_of``):
    a failed flow returns no value, only its error."""
    error.rebuild_summary = summary  # type: ignore[attr-defined]


def summary_of(error: BaseException | None) -> RebuildSummary | None:
    """The summary a failed rebuild attached to its error; None when it failed before it had one."""
    summary = getattr(error, "rebuild_summary", None)
    return summary if isinstance(summary, RebuildSummary) else None


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


def validate(built: BuiltVersion, report: EvaluationReport, serving: str | None,
             serving_evaluation: VersionEvaluation | None, target_recall: float,
             metrics: tuple[str, ...] = defaults.GATE_METRICS, tolerance: float = defaults.GATE_TOLERANCE,
             serving_damaged: bool = False) -> Decision:
    """May the candidate ``built`` (with its evaluation ``report``) replace ``serving`` (whose
    recorded evaluation is ``serving_evaluation``)?

    1. every item is in the collection (rows == items of the model's catalog);
    2. Milvus' recall against exact search, after tuning the search, reaches ``target_recall``;
    3. the chosen metrics are not worse than the serving version's recorded ones beyond
       ``tolerance`` (skipped, and said so, when nothing serves yet, or the serving version
       is damaged and cannot load, or has no evaluation, or was evaluated on another dataset
       or protocol).
    """
    recall = built.index_recall
    checks = [
        Check("row count", built.rows == built.items, f"{built.rows:,} rows indexed for {built.items:,} items"),
        Check("index recall", recall >= target_recall,
              f"recall@100 against exact search {recall:.4f} at "
              f"{SearchParams(built.nprobe, built.reorder_k).describe()} (target {target_recall})"),
    ]
    if serving is None:
        checks.append(Check("metrics vs serving", True,
                            "no version serves yet: the first one serves on its own checks"))
    elif serving_damaged:
        checks.append(Check("metrics vs serving", True,
                            f"{serving} is damaged (files missing) and serves nothing: not compared"))
    elif serving_evaluation is None:
        checks.append(Check("metrics vs serving", True, f"{serving} has no recorded evaluation: not compared"))
    elif (serving_evaluation.dataset, serving_evaluation.protocol) != (report.dataset, report.protocol):
        checks.append(Check("metrics vs serving", True,
                            f"{serving} was evaluated on {serving_evaluation.dataset} ({serving_evaluation.protocol}), "
                            f"the candidate on {report.dataset} ({report.protocol}): not compared"))
    else:
        passed, reason = compare(report.model, serving_evaluation.model, metrics, tolerance)
        checks.append(Check("metrics vs serving", passed, f"{reason} (serving: {serving})"))
    return Decision(tuple(checks))


def markdown(summary: RebuildSummary) -> str:
    """The morning report: what was built, the checks, old and new metrics, the decision."""
    built, checks = summary.built, summary.decision.checks if summary.decision else ()
    new = summary.report.model if summary.report else {}
    old = summary.serving_evaluation.model if summary.serving_evaluation else {}
    lines = [
        f"# Rebuild of `{summary.alias}`: {summary.outcome}",
        "",
        f"- started {summary.started_at}, {summary.seconds or 0:.0f} s",
        f"- serving before: `{summary.serving_before or 'nothing'}`; "
        f"serving now: `{summary.serving_after or 'nothing'}`",
    ]
    if built:
        params = ", ".join(f"{key} {value}" for key, value in built.index["params"].items()
                           if key not in ("nprobe", "reorder_k"))
        tuned = SearchParams(built.nprobe, built.reorder_k).describe()
        index_type = built.index.get("index_type", "IVF_PQ")
        lines.append(f"- candidate: `{built.collection}` ({built.rows:,} rows, {index_type} {params}, "
                     f"tuned {tuned}), model `{built.model_id}`")
        if built.timing:
            t = built.timing
            lines.append(f"- build time: embedding {t['embed_s']:.0f} s, inserts {t['insert_s']:.0f} s "
                         f"({built.insert_workers} process(es)), index build and load {t['index_s']:.0f} s, "
                         f"search tuning {t['tune_s']:.0f} s")
    if summary.error:
        lines += ["", "## Error", "", "```", summary.error, "```"]
    if checks:
        lines += ["", "## Checks", "", "| check | passed | detail |", "|---|---|---|",
                  *[f"| {check.name} | {'yes' if check.passed else '**no**'} | {check.detail} |" for check in checks]]
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
    if summary.serving_damaged:
        lines += ["", f"The version serving before was damaged: {len(summary.serving_damaged)} of its files "
                      f"were missing from the server's disk (e.g. `{summary.serving_damaged[0]}`)."]
    if summary.dropped_versions:
        lines += ["", f"Retention dropped: {', '.join(summary.dropped_versions)}."]
    if summary.warnings:
        lines += ["", *[f"Warning: {warning}" for warning in summary.warnings]]
    return "\n".join(lines) + "\n"


def write_summary(summary: RebuildSummary, directory: Path) -> None:
    """rebuild.json and rebuild.md in the rebuild's directory, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("rebuild.json", json.dumps(summary.to_dict(), indent=2, default=str)),
                       ("rebuild.md", markdown(summary))):
        settings.write_atomic(directory / name, text)

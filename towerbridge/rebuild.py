"""The nightly rebuild's decisions, as plain functions: which model to reuse, whether a
candidate version may serve, and the report a person reads in the morning.

The flow that runs them is ``flows/rebuild.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from towerbridge import settings
from towerbridge.errors import ArtifactError, ConfigError
from towerbridge.milvus.index import Fallback, SearchParams
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.store import ItemStore
from towerbridge.results import BuiltVersion, Comparison, EvaluationReport
from towerbridge.towers import artifact, warm
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.warm import Lineage


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
    or ``failed``. training: how the candidate's model was trained (continued from the serving
    model, from scratch and why, or reused); lineage: the continued model's ``Lineage``."""

    alias: str
    started_at: str
    outcome: str = "failed"
    serving_before: str | None = None
    serving_after: str | None = None
    removed_half_built: list[str] | None = None
    serving_damaged: list[str] | None = None
    model_dir: str | None = None
    training: str | None = None
    lineage: dict | None = None
    built: BuiltVersion | None = None
    report: EvaluationReport | None = None
    comparison: Comparison | None = None
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
            comparison=self.comparison.to_dict() if self.comparison else None,
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


@dataclass(frozen=True)
class Start:
    """Where a rebuild's training starts: ``parent_dir``, the serving version's model to
    continue, or None (from scratch); ``why`` says which and why, for the report."""

    parent_dir: str | None
    why: str


def training_start(serving: Serving, config: TowerConfig, from_scratch: bool, data: dict,
                   features: dict | None = None) -> Start:
    """Continue the serving version's model when it can be (``towers/warm.py``): something
    serves, its model is on disk, it was trained on the same dataset (the prepared ``data``'s
    summary: name, id type and split), with a split that holds out the same kind of items
    (not ``tfrs``'s random split, which reshuffles every day: the parent would have trained on
    today's held-out items), on the same features (``features``: ``FeatureSpec.to_dict`` of
    today's data, when known), and its towers have the shape ``config`` trains; otherwise from
    scratch, saying why."""
    if from_scratch:
        return Start(None, "from scratch (--from-scratch)")
    if serving.collection is None or serving.record is None:
        return Start(None, "from scratch: no version serves yet")
    model_dir = serving.record.model_dir
    if not model_dir:
        return Start(None, f"from scratch: {serving.collection}'s record names no model")
    try:
        manifest = artifact.read_manifest(Path(model_dir))
        warm.check_compatible(config, manifest.config, f"the serving model {manifest.model_id}")
    except (ArtifactError, ConfigError) as error:
        return Start(None, f"from scratch: {str(error).removesuffix('; train from scratch instead')}")
    model = f"the serving model {manifest.model_id}"
    differs = [f"{what} {theirs!r} there, {ours!r} here" for what, theirs, ours in (
        ("dataset", manifest.dataset, data.get("dataset", "unknown")),
        ("id type", manifest.id_type, data.get("id_type", "int64")),
        ("split", manifest.protocol, data.get("protocol", "leave-last-out")))
        if theirs != ours]
    if differs:
        return Start(None, f"from scratch: {model} was trained on other data ({'; '.join(differs)})")
    if data.get("protocol") == "tfrs":
        return Start(None, f"from scratch: the tfrs split is random and reshuffled with the data, so {model} "
                           "trained on some of today's held-out interactions")
    if features is not None and manifest.features.get("spec") != features:
        return Start(None, f"from scratch: {model} read other features ({_feature_names(manifest.features.get('spec'))}"
                           f" there, {_feature_names(features)} here)")
    return Start(model_dir, f"continued from {model} ({serving.collection})")


def _feature_names(spec: dict | None) -> str:
    """``user: age (bucketized); item: genres (multi_hot), title (text)`` for a spec's dict."""
    sides = spec or {}
    parts = []
    for side in ("user", "item"):
        named = ", ".join(f"{feature['column']} ({feature['kind']})" for feature in sides.get(side, ()))
        parts.append(f"{side}: {named or 'none'}")
    return "; ".join(parts)


def not_compared(serving: Serving, gate_confidence: float, margin: float) -> Comparison | None:
    """The gate's verdict when there is no serving model to compare with (nothing serves, or
    what serves is damaged); None when there is one (``steps.compare_with_serving``)."""
    if serving.collection is None:
        note = "no version serves yet: the first one serves on its own checks"
    elif serving.missing_files:
        note = f"{serving.collection} is damaged (files missing) and serves nothing: not compared"
    else:
        return None
    return Comparison.not_compared(serving.collection, note, gate_confidence, margin)


def validate(built: BuiltVersion, comparison: Comparison, target_recall: float) -> Decision:
    """May the candidate ``built`` serve?

    1. every item is in the collection (rows == items of the model's catalog);
    2. Milvus' recall against exact search, after tuning the search, reaches ``target_recall``;
    3. against the serving model on the same users (``comparison``), no gated metric is worse
       with confidence (its interval wholly below minus the margin); passed, and said why,
       when the two could not be compared.
    """
    recall = built.index_recall
    return Decision((
        Check("row count", built.rows == built.items, f"{built.rows:,} rows indexed for {built.items:,} items"),
        Check("index recall", recall >= target_recall,
              f"recall@100 against exact search {recall:.4f} at "
              f"{SearchParams(built.nprobe, built.reorder_k).describe()} (target {target_recall})"),
        Check("metrics vs serving", comparison.passed, comparison.describe()),
    ))


def markdown(summary: RebuildSummary) -> str:
    """The morning report: what was built, the checks, the candidate against the serving model
    on the same users, the decision."""
    built, checks = summary.built, summary.decision.checks if summary.decision else ()
    lines = [
        f"# Rebuild of `{summary.alias}`: {summary.outcome}",
        "",
        f"- started {summary.started_at}, {summary.seconds or 0:.0f} s",
        f"- serving before: `{summary.serving_before or 'nothing'}`; "
        f"serving now: `{summary.serving_after or 'nothing'}`",
    ]
    if summary.training:
        lines.append(f"- training: {summary.training}")
    if summary.lineage:
        lines.append(f"- what was new: {Lineage.from_dict(summary.lineage).what_was_new()}")
    if built:
        params = ", ".join(f"{key} {value}" for key, value in built.index["params"].items()
                           if key not in ("nprobe", "reorder_k"))
        tuned = SearchParams(built.nprobe, built.reorder_k).describe()
        index_type = built.index.get("index_type", "IVF_PQ")
        lines.append(f"- candidate: `{built.collection}` ({built.rows:,} rows, {index_type} {params}, "
                     f"tuned {tuned}), model `{built.model_id}`")
        if built.index_fallback:
            lines.append(f"- index: {Fallback.from_dict(built.index_fallback).describe()}")
        if built.timing:
            t = built.timing
            lines.append(f"- build time: embedding {t['embed_s']:.0f} s, inserts {t['insert_s']:.0f} s "
                         f"({built.insert_workers} process(es)), index build and load {t['index_s']:.0f} s, "
                         f"search tuning {t['tune_s']:.0f} s")
            if "ivf_pq_index_s" in t:
                spent = sum(value for key, value in t.items() if key.startswith("ivf_pq_"))
                lines.append(f"- the IVF_PQ version dropped for falling short took {spent:.0f} s")
    if summary.error:
        lines += ["", "## Error", "", "```", summary.error, "```"]
    if checks:
        lines += ["", "## Checks", "", "| check | passed | detail |", "|---|---|---|",
                  *[f"| {check.name} | {'yes' if check.passed else '**no**'} | {check.detail} |" for check in checks]]
    lines += _comparison_lines(summary.comparison, summary.report)
    if summary.serving_damaged:
        lines += ["", f"The version serving before was damaged: {len(summary.serving_damaged)} of its files "
                      f"were missing from the server's disk (e.g. `{summary.serving_damaged[0]}`)."]
    if summary.dropped_versions:
        lines += ["", f"Retention dropped: {', '.join(summary.dropped_versions)}."]
    if summary.warnings:
        lines += ["", *[f"Warning: {warning}" for warning in summary.warnings]]
    return "\n".join(lines) + "\n"


RANKING_NAMES = ("hit_rate", "recall", "ndcg", "mrr")


def _ordered(keys) -> list[str]:
    return sorted((key for key in keys if key.split("@")[0] in RANKING_NAMES),
                  key=lambda key: (RANKING_NAMES.index(key.split("@")[0]), int(key.split("@")[1])))


def _comparison_lines(comparison: Comparison | None, report: EvaluationReport | None) -> list[str]:
    """The gate's table (each gated metric: both models, the difference, its interval, the
    verdict), how it decided, and every ranking metric of both on the same users."""
    if comparison is None or not comparison.compared:
        if report is None:
            return []
        return ["", "## Metrics (model through Milvus)", "",
                *([f"Not compared with a serving model: {comparison.note}.", ""] if comparison else []),
                "| metric | candidate |", "|---|---:|",
                *[f"| {key} | {report.model[key]:.4f} |" for key in _ordered(report.model)]]
    level = f"{comparison.confidence:.0%}"
    lines = ["", f"## Candidate against serving, on the same {comparison.users:,} users", "",
             f"Both models ranked the same {comparison.queries:,} held-out queries of today's data through "
             f"Milvus: the serving `{comparison.serving}` (model `{comparison.serving_model}`, "
             f"{comparison.serving_tower} tower) and the candidate. Rule: {comparison.rule}; the interval is the "
             f"{comparison.method}. Scoring the serving model took {comparison.seconds:.1f} s.", "",
             f"| metric | serving | candidate | difference | {level} interval | verdict |",
             "|---|---:|---:|---:|---|---|"]
    for metric in comparison.metrics:
        verdict = "**worse**" if metric.worse(comparison.margin) else "not worse"
        lines.append(f"| {metric.metric} | {metric.serving:.4f} | {metric.candidate:.4f} | {metric.difference:+.4f} "
                     f"| {metric.low:+.4f} to {metric.high:+.4f} | {verdict} |")
    if comparison.note:
        lines += ["", f"Counted: {comparison.note}."]
    keys = _ordered(comparison.candidate_metrics)
    if keys:
        lines += ["", "## Metrics on the same users (through Milvus)", "", "| metric | serving | candidate | change |",
                  "|---|---:|---:|---:|"]
        for key in keys:
            old, new = comparison.serving_metrics[key], comparison.candidate_metrics[key]
            lines.append(f"| {key} | {old:.4f} | {new:.4f} | {new - old:+.4f} |")
    return lines


def write_summary(summary: RebuildSummary, directory: Path) -> None:
    """rebuild.json and rebuild.md in the rebuild's directory, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("rebuild.json", json.dumps(summary.to_dict(), indent=2, default=str)),
                       ("rebuild.md", markdown(summary))):
        settings.write_atomic(directory / name, text)

"""What the steps and the flows hand back: small frozen records, written as JSON in one place (``to_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class ModelArtifact:
    """A model the train flow saved: its directory (manifest, weights, vocabularies) and the
    prepared data it was trained on."""

    model_dir: str
    prepared_dir: str


@dataclass(frozen=True)
class BuiltVersion:
    """A version built from a model: a collection behind ``alias`` with every item embedded,
    its index (IVF_PQ or SCANN) built, loaded and its search tuned.

    index: the index type, metric and parameters recorded with the version;
    nprobe, reorder_k: the tuned search settings (reorder_k: SCANN's candidates re-scored
    exactly; None for IVF_PQ);
    index_recall: recall@100 of Milvus against exact search over the same vectors at those settings;
    previous, dropped_versions, removed_half_built: what serving the version changed (set by
    ``steps.index_model``, which also points the alias at it; empty for a candidate);
    insert_workers: processes that inserted the rows; index_fallback: why an index left to
    towerbridge is SCANN (``milvus.index.Fallback`` as a dict; None: not a fallback); timing:
    seconds to embed (or read the embedded shards), insert and flush, build and load the index,
    tune nprobe (``ivf_pq_*``: the IVF_PQ version dropped for falling short)."""

    collection: str
    alias: str
    rows: int
    items: int
    segments: tuple[int, ...]
    index: dict
    nprobe: int
    index_recall: float
    model_id: str
    model_dir: str
    reorder_k: int | None = None
    previous: str | None = None
    dropped_versions: tuple[str, ...] = ()
    removed_half_built: tuple[str, ...] = ()
    insert_workers: int = 1
    index_fallback: dict | None = None
    timing: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["index_recall@100"] = record.pop("index_recall")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}


SOURCES = ("model", "exact", "popularity", "random")


@dataclass(frozen=True)
class EvaluationReport:
    """One evaluation of a version: every metric at every k for each source.

    model, exact, popularity, random: ``{"hit_rate@K": ..., "recall@K": ..., "ndcg@K": ...,
    "mrr@K": ..., "coverage@K": ..., "mean_popularity@K": ...}`` for the model through Milvus,
    the same model by exact search, and the two baselines;
    ann_gap: model minus exact for the ranking metrics; index_recall: overlap of Milvus' top k
    with exact search's; index: index type, metric, parameters and nprobe tuning of the version;
    report_dir: where the files were written (set by the pipeline; not part of evaluation.json).
    """

    dataset: str
    protocol: str
    ks: tuple[int, ...]
    users_evaluated: int
    interactions_evaluated: int
    queries: int
    query_unit: str
    model: dict[str, float]
    exact: dict[str, float]
    popularity: dict[str, float]
    random: dict[str, float]
    ann_gap: dict[str, float]
    index_recall: dict[str, float]
    index: dict
    collection: str
    alias: str | None
    model_id: str
    model_dir: str
    training: dict
    timing: dict
    report_dir: str | None = None
    users_eligible: int | None = None  # users with held-out interactions; users_evaluated a sample if fewer

    def source(self, name: str) -> dict[str, float]:
        """The metrics of one of ``SOURCES``."""
        if name not in SOURCES:
            raise ValueError(f"unknown source {name!r}; one of {', '.join(SOURCES)}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        """The evaluation.json record (``report_dir`` only when set)."""
        record = asdict(self)
        record["ks"] = list(self.ks)
        if record["report_dir"] is None:
            del record["report_dir"]
        return record

    @classmethod
    def from_dict(cls, record: dict) -> EvaluationReport:
        """Read an evaluation.json record; keys this version does not know are ignored."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in record and name not in ("report_dir", "users_eligible")]
        if missing:
            raise ValueError(f"evaluation record lacks {', '.join(missing)}")
        values = {name: record[name] for name in names if name in record}
        values["ks"] = tuple(int(k) for k in values["ks"])
        return cls(**values)


# How the rebuild's gate decides, as its reports say it.
GATE_METHOD = "normal approximation of the mean per-user difference (paired: the same users, the same queries)"


@dataclass(frozen=True)
class MetricComparison:
    """One gated metric of the candidate against the serving version on the same queries:
    each one's mean, the mean difference (candidate - serving) and its interval ``low``..``high``."""

    metric: str
    serving: float
    candidate: float
    difference: float
    low: float
    high: float

    def worse(self, margin: float) -> bool:
        """Worse with confidence: the whole interval lies below ``-margin``."""
        return self.high < -margin

    def describe(self, confidence: float) -> str:
        return (f"{self.metric} {self.candidate:.4f} vs serving {self.serving:.4f}, difference "
                f"{self.difference:+.4f} ({confidence:.0%} interval {self.low:+.4f} to {self.high:+.4f})")

    def to_dict(self) -> dict:
        return {name: getattr(self, name) if name == "metric" else _finite(getattr(self, name))
                for name in ("metric", "serving", "candidate", "difference", "low", "high")}

    @classmethod
    def from_dict(cls, values: dict) -> MetricComparison:
        def number(name: str, unbounded: float = float("nan")) -> float:
            return unbounded if values.get(name) is None else float(values[name])

        return cls(metric=values["metric"], serving=number("serving"), candidate=number("candidate"),
                   difference=number("difference"), low=number("low", -float("inf")),
                   high=number("high", float("inf")))


@dataclass(frozen=True)
class Comparison:
    """The rebuild's gate: the candidate against the version serving (``serving``, a
    collection; None: nothing served), both ranking the same held-out queries through Milvus.

    compared: False when the two could not be compared; ``note`` then says why, and the
    candidate serves on its other checks. When compared: ``users`` (the evaluation's users,
    all or its seeded sample) and ``queries`` (one per user, or per held-out interaction under
    tfrs); ``metrics``: each gated metric with its interval at ``confidence``; the candidate
    is rejected when any interval lies wholly below ``-margin`` (absolute). ``serving_metrics``
    and ``candidate_metrics``: every ranking metric of both on those queries.
    ``unknown_users``: users the serving model cannot answer (an id tower's users it was not
    trained on), counted as misses for it; ``new_items``: held-out interactions with an item
    the serving model does not know, which it can never find; ``excluded_queries``: queries
    left out because the serving model trained on their held-out interactions; ``seconds``:
    what scoring the serving model took.
    """

    serving: str | None
    compared: bool
    note: str
    confidence: float
    margin: float
    serving_model: str | None = None
    serving_tower: str | None = None
    users: int = 0
    queries: int = 0
    metrics: tuple[MetricComparison, ...] = ()
    serving_metrics: dict[str, float] = field(default_factory=dict)
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    unknown_users: int = 0
    new_items: int = 0
    excluded_queries: int = 0
    seconds: float = 0.0
    method: str = GATE_METHOD

    @classmethod
    def not_compared(cls, serving: str | None, note: str, confidence: float, margin: float) -> Comparison:
        return cls(serving=serving, compared=False, note=note, confidence=confidence, margin=margin)

    @property
    def worse(self) -> tuple[MetricComparison, ...]:
        """The gated metrics on which the candidate is worse with confidence."""
        return tuple(metric for metric in self.metrics if metric.worse(self.margin))

    @property
    def passed(self) -> bool:
        return not self.worse

    @property
    def rule(self) -> str:
        return (f"rejected when a metric's {self.confidence:.0%} interval for candidate - serving lies wholly "
                f"below -{self.margin:g}")

    def describe(self) -> str:
        """One line: the verdict, both figures on the same users and the interval of each metric."""
        if not self.compared:
            return self.note
        shown = self.worse or self.metrics
        verdict = ("candidate is worse with confidence" if self.worse
                   else "candidate is not shown to be worse")
        counted = f"; {self.note}" if self.note else ""
        return (f"{verdict}, on the same {self.users:,} users (serving {self.serving}): "
                + "; ".join(metric.describe(self.confidence) for metric in shown) + f" ({self.rule}{counted})")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["metrics"] = [metric.to_dict() for metric in self.metrics]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Comparison:
        known = {f.name for f in fields(cls)}
        chosen = {key: value for key, value in values.items() if key in known}
        chosen["metrics"] = tuple(MetricComparison.from_dict(metric) for metric in values.get("metrics", ()))
        return cls(**chosen)


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded end of an interval is written as null."""
    return float(value) if value == value and abs(value) != float("inf") else None

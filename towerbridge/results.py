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
    insert_workers: processes that inserted the rows; timing: seconds to embed (or read the
    embedded shards), insert and flush, build and load the index, tune nprobe."""

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
        missing = [name for name in names if name not in record and name != "report_dir"]
        if missing:
            raise ValueError(f"evaluation record lacks {', '.join(missing)}")
        values = {name: record[name] for name in names if name in record}
        values["ks"] = tuple(int(k) for k in values["ks"])
        return cls(**values)

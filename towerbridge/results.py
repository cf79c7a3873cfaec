"""What the steps hand back: small frozen records, written as JSON in one place (``to_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BuiltVersion:
    """A version built from a model: a collection behind ``alias`` with every item embedded,
    IVF_PQ built, loaded and nprobe tuned.

    index: the index type, metric and parameters recorded with the version;
    index_recall: recall@100 of Milvus against exact search over the same vectors at ``nprobe``;
    previous, dropped_versions, removed_half_built: what serving the version changed (set by
    ``steps.index_model``, which also points the alias at it; empty for a candidate)."""

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
    previous: str | None = None
    dropped_versions: tuple[str, ...] = ()
    removed_half_built: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        record = asdict(self)
        record["index_recall@100"] = record.pop("index_recall")
        return {key: list(value) if isinstance(value, tuple) else value for key, value in record.items()}

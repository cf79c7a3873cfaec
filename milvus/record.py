"""What a version records about itself, as one typed record: ``VersionRecord``.

A version keeps its record in Milvus in two parts: the fields fixed when it is created
(model, dataset, index) as JSON in its collection's description, and the fields set later
(the tuned search, the evaluation, when it was completed and served) as ``towerbridge.*``
collection properties, each a JSON value. ``VersionRecord.description`` and
``VersionRecord.properties`` are the only writers of the two, ``VersionRecord.read`` their
only reader; everything else reads attributes.

Records written before this one existed have no ``format`` and load unchanged; they may
lack keys that have defaults: no ``user_tower`` is the id tower (the only one then), no
``id_type`` int64 ids, no ``pad_dims`` no padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from towerbridge import defaults
from towerbridge.catalog import CatalogRecord
from towerbridge.errors import CollectionError
from towerbridge.milvus.index import Fallback, SearchParams
from towerbridge.milvus.schema import PROPERTY_PREFIX
from towerbridge.results import Comparison, EvaluationReport

FORMAT = "towerbridge-version/2"
READABLE_FORMATS = (None, FORMAT)  # None: written before the format was


@dataclass(frozen=True)
class Tuning:
    """How a version's search settings were tuned: on ``queries`` users' top ``k``, the
    recall against exact search they reached, and whether that reached ``target_recall``
    (None in records written before that was recorded)."""

    target_recall: float
    k: int
    queries: int
    recall: float
    reached_target: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"target_recall": float(self.target_recall), "k": int(self.k),
                                  "queries": int(self.queries), "recall": float(self.recall)}
        if self.reached_target is not None:
            values["reached_target"] = bool(self.reached_target)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Tuning:
        return cls(target_recall=values["target_recall"], k=values["k"], queries=values["queries"],
                   recall=values["recall"], reached_target=values.get("reached_target"))


@dataclass(frozen=True)
class VersionEvaluation:
    """What a version keeps of its evaluation, for the next rebuild to compare against:
    the dataset and protocol, the users evaluated and the model's metrics through Milvus
    (``{"hit_rate@10": ...}``)."""

    dataset: str | None
    protocol: str | None
    users: int | None
    model: dict[str, float]
    evaluated_at: str | None = None

    @classmethod
    def of(cls, report: EvaluationReport) -> VersionEvaluation:
        return cls(dataset=report.dataset, protocol=report.protocol, users=report.users_evaluated,
                   model=report.model, evaluated_at=defaults.utc_now())

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "protocol": self.protocol, "users": self.users, "model": self.model,
                "evaluated_at": self.evaluated_at}

    @classmethod
    def from_dict(cls, values: Any) -> VersionEvaluation | None:
        """The recorded evaluation; None when there is none with the model's metrics."""
        if not isinstance(values, dict) or not isinstance(values.get("model"), dict):
            return None
        return cls(dataset=values.get("dataset"), protocol=values.get("protocol"), users=values.get("users"),
                   model=values["model"], evaluated_at=values.get("evaluated_at"))


@dataclass(frozen=True)
class VersionRecord:
    """A version's record.

    Fixed at creation: the model (``model_id``, ``model_dir``, its ``user_tower``), the
    ``alias`` and ``dataset`` it was built for, ``created_at``, the catalog's ``id_type``
    (``int64`` or ``string``), the index (``index_type``, ``metric_type``, build ``params``)
    and ``pad_dims`` (zero dimensions before each vector: 1 for SCANN on an odd dimension);
    ``index_fallback``: why a version left to choose its index (``AUTO``) has SCANN, not IVF_PQ.
    Set later (``UPDATED``): the tuned search (``nprobe``, ``reorder_k``, ``tuning``),
    ``complete`` / ``completed_at`` (built, indexed, loaded and tuned), the ``evaluation``,
    the rebuild's ``gate`` (its comparison with the version it replaced, on the same users),
    ``served_since`` (when the rebuild's check after the swap passed) and ``catalog`` (the
    catalog changes applied to it, ``towerbridge.catalog``). A collection not
    built by towerbridge reads as a record without a model."""

    UPDATED: ClassVar[dict[str, type]] = {"nprobe": int, "reorder_k": int, "tuning": Tuning, "complete": bool,
                                          "completed_at": str, "evaluation": VersionEvaluation,
                                          "gate": Comparison, "served_since": str, "catalog": CatalogRecord}

    model_id: str | None = None
    model_dir: str | None = None
    alias: str | None = None
    dataset: str | None = None
    created_at: str | None = None
    user_tower: str = "id"
    id_type: str = "int64"
    index_type: str | None = None
    metric_type: str | None = None
    params: dict | None = None
    pad_dims: int = 0
    index_fallback: Fallback | None = None
    nprobe: int | None = None
    reorder_k: int | None = None
    tuning: Tuning | None = None
    complete: bool = False
    completed_at: str | None = None
    evaluation: VersionEvaluation | None = None
    gate: Comparison | None = None
    served_since: str | None = None
    catalog: CatalogRecord | None = None

    def search_params(self) -> SearchParams:
        """The settings a search of this version sends: the tuned ``nprobe`` and
        ``reorder_k``, else the build's (an IVF_PQ version has no reorder_k), and its padding."""
        params = self.params or {}
        nprobe = self.nprobe if self.nprobe is not None else params.get("nprobe", 1)
        reorder_k = self.reorder_k if self.reorder_k is not None else params.get("reorder_k")
        if reorder_k is None:
            return SearchParams(int(nprobe), None, int(self.pad_dims))
        # SCANN: nlist caps the lists a search wider than the tuned re-ranking probes
        nlist = params.get("nlist")
        return SearchParams(int(nprobe), int(reorder_k), int(self.pad_dims), None if nlist is None else int(nlist))

    def evaluated_metric(self, name: str) -> float | None:
        """A metric of the model through Milvus (``hit_rate@10``) in the recorded evaluation."""
        return None if self.evaluation is None else self.evaluation.model.get(name)

    def description(self) -> str:
        """The collection description that records the fields fixed at creation."""
        updated = [name for name in self.UPDATED if getattr(self, name) != _DEFAULTS[name]]
        if updated:
            raise ValueError(f"{', '.join(updated)}: set after a version is created (ItemStore.set_record), "
                             "not in its description")
        values = {name: getattr(self, name) for name in _CREATED if getattr(self, name) is not None}
        values = {name: value.to_dict() if hasattr(value, "to_dict") else value for name, value in values.items()}
        return json.dumps({"format": FORMAT, **values}, sort_keys=True)

    @classmethod
    def properties(cls, **values: Any) -> dict[str, str]:
        """The collection properties that record ``values``, fields set after creation, each
        of its type (``UPDATED``: a ``Tuning``, a ``VersionEvaluation``, ...)."""
        unknown = sorted(set(values) - set(cls.UPDATED))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a field set after a version is created "
                             f"(one of {', '.join(cls.UPDATED)})")
        for name, value in values.items():
            wanted = cls.UPDATED[name]
            if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
                raise TypeError(f"{name} is recorded as {wanted.__name__}, got {value!r}")
        return {PROPERTY_PREFIX + name: json.dumps(value.to_dict() if hasattr(value, "to_dict") else value)
                for name, value in values.items()}

    @classmethod
    def read(cls, description: str | None, properties: dict[str, str] | None, source: str = "") -> VersionRecord:
        """The record of a collection with this ``description`` and ``properties``, the
        properties over the description; ``source`` names the collection in errors."""
        try:
            values = json.loads(description or "{}")
        except ValueError:
            values = {}
        if not isinstance(values, dict):  # a description someone else wrote
            values = {}
        for key, value in (properties or {}).items():
            if key.startswith(PROPERTY_PREFIX):
                values[key[len(PROPERTY_PREFIX):]] = json.loads(value)
        return cls.from_dict(values, source)

    @classmethod
    def from_dict(cls, values: dict, source: str = "") -> VersionRecord:
        """A record from its fields as JSON holds them (description and properties merged);
        keys it does not know are ignored."""
        if values.get("format") not in READABLE_FORMATS:
            raise CollectionError(f"{source or 'a version'}: record format {values.get('format')!r}, this towerbridge "
                                  f"reads {FORMAT} (and records written before it)")

        def number(name: str) -> int | None:
            return None if values.get(name) is None else int(values[name])

        tuning, gate, fallback = values.get("tuning"), values.get("gate"), values.get("index_fallback")
        catalog = values.get("catalog")
        return cls(
            model_id=values.get("model_id"), model_dir=values.get("model_dir"), alias=values.get("alias"),
            dataset=values.get("dataset"), created_at=values.get("created_at"),
            user_tower=values.get("user_tower", "id"), id_type=values.get("id_type", "int64"),
            index_type=values.get("index_type"), metric_type=values.get("metric_type"), params=values.get("params"),
            pad_dims=int(values.get("pad_dims", 0)),
            index_fallback=Fallback.from_dict(fallback) if isinstance(fallback, dict) else None,
            nprobe=number("nprobe"), reorder_k=number("reorder_k"),
            tuning=Tuning.from_dict(tuning) if isinstance(tuning, dict) else None,
            complete=bool(values.get("complete", False)), completed_at=values.get("completed_at"),
            evaluation=VersionEvaluation.from_dict(values.get("evaluation")),
            gate=Comparison.from_dict(gate) if isinstance(gate, dict) else None,
            served_since=values.get("served_since"),
            catalog=CatalogRecord.from_dict(catalog) if isinstance(catalog, dict) else None)


_DEFAULTS = {field.name: field.default for field in fields(VersionRecord)}
_CREATED = [name for name in _DEFAULTS if name not in VersionRecord.UPDATED]

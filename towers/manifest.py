"""What a model directory says about its model: ``manifest.json``, as one typed record.

``ModelManifest.to_dict`` is the only writer of manifest.json and ``ModelManifest.from_dict``
its only reader; everything else reads attributes. Manifests of format 2 written before
this record existed load unchanged: the format number says the layout, and the layout has
not changed (a model/2 manifest whose config has no ``user_tower`` predates the history
towers and has the id tower).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from towerbridge.errors import ArtifactError
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.warm import Lineage

FORMAT = "towerbridge-model/2"
READABLE_FORMATS = (FORMAT,)
# the sequence tower's blocks in models written before they had these settings: SASRec's; and
# their temperature, fixed; their weights, the last step's; their softmax, over every item
OLDER_MODELS = {"gated_blocks": False, "feed_forward_mult": 1, "learn_temperature": False, "ema_decay": 0.0,
                "exclude_history": "off"}


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained: on how many data-parallel processes, and for several, the
    backend, the device and each process's shard (``interactions``, ``users``,
    ``weights_sha256``)."""

    processes: int = 1
    backend: str | None = None
    device: str | None = None
    shards: tuple[dict, ...] = ()

    def to_dict(self) -> dict:
        if self.processes == 1 and self.backend is None:
            return {"processes": 1}
        return {"processes": self.processes, "backend": self.backend, "device": self.device,
                "shards": list(self.shards)}

    @classmethod
    def from_dict(cls, values: dict | None) -> TrainingRecord:
        values = values or {}
        return cls(processes=int(values.get("processes", 1)), backend=values.get("backend"),
                   device=values.get("device"), shards=tuple(values.get("shards", ())))


@dataclass(frozen=True)
class TrainingRun:
    """What the train step knows beyond the model: the prepared data it read (its directory
    and ``summary.json``), the seconds training took and how it ran."""

    prepared_dir: str | None = None
    data: dict = field(default_factory=dict)
    seconds: float | None = None
    training: TrainingRecord = TrainingRecord()


@dataclass(frozen=True)
class ModelManifest:
    """A trained model's record.

    features: the feature spec and fitted encoders (``FeatureSpec.to_dict``,
    ``Encoder.to_dict``); history: one record per trained epoch (loss, seconds, examples per
    second, the validation hit rate with early stopping); stop: why training ended and the epoch
    it kept (``TrainingState.stop``; empty for models trained before it was kept); lineage: the
    model it continued and what was new to it (``towers/warm.py``; None from scratch); data: the prepared data's
    ``summary.json``; prepared_dir: where that data is (the evaluation and the index read it)."""

    model_id: str
    created_at: str
    config: TowerConfig
    features: dict
    n_users: int
    n_items: int
    history: tuple[dict, ...] = ()
    prepared_dir: str | None = None
    data: dict = field(default_factory=dict)
    train_seconds: float | None = None
    training: TrainingRecord = TrainingRecord()
    stop: dict = field(default_factory=dict)
    lineage: Lineage | None = None
    format: str = FORMAT

    @property
    def dataset(self) -> str:
        return self.data.get("dataset", "unknown")

    @property
    def protocol(self) -> str:
        return self.data.get("protocol", "leave-last-out")

    @property
    def id_type(self) -> str:
        """``int64`` or ``string``: the type of the catalog's ids."""
        return self.data.get("id_type", "int64")

    @property
    def train_interactions(self) -> int | None:
        return self.data.get("train")

    @property
    def epochs(self) -> int:
        """Epochs trained (with early stopping, the ones run, not only up to the best)."""
        return len(self.history)

    def mean_examples_per_s(self) -> float:
        return round(sum(epoch["examples_per_s"] for epoch in self.history) / max(1, len(self.history)), 1)

    def to_dict(self) -> dict[str, Any]:
        """manifest.json's content."""
        record: dict[str, Any] = {
            "format": self.format, "model_id": self.model_id, "created_at": self.created_at,
            "config": self.config.to_dict(), "features": self.features,
            "n_users": self.n_users, "n_items": self.n_items, "history": list(self.history),
        }
        if self.prepared_dir is not None:
            record.update(prepared_dir=self.prepared_dir, data=self.data)
        if self.train_seconds is not None:
            record["train_seconds"] = self.train_seconds
        record["training"] = self.training.to_dict()
        if self.stop:
            record["stop"] = self.stop
        if self.lineage is not None:
            record["lineage"] = self.lineage.to_dict()
        return record

    @classmethod
    def from_dict(cls, values: dict, source: str = "manifest.json") -> ModelManifest:
        """Read manifest.json's content; ``source`` names the file in errors."""
        if values.get("format") not in READABLE_FORMATS:
            expected = " or ".join(repr(name) for name in READABLE_FORMATS)
            raise ArtifactError(f"{source}: format {values.get('format')!r}, expected {expected}")
        try:
            return cls(
                model_id=values["model_id"], created_at=values.get("created_at", ""),
                # written before the history towers existed: the id tower; before the gated
                # blocks: SASRec's
                config=TowerConfig.from_dict({"user_tower": "id", **OLDER_MODELS, **values["config"]}),
                features=values["features"], n_users=int(values["n_users"]), n_items=int(values["n_items"]),
                history=tuple(values.get("history", ())), prepared_dir=values.get("prepared_dir"),
                data=values.get("data", {}), train_seconds=values.get("train_seconds"),
                training=TrainingRecord.from_dict(values.get("training")), stop=dict(values.get("stop") or {}),
                lineage=Lineage.from_dict(values.get("lineage")), format=values["format"])
        except KeyError as error:
            raise ArtifactError(f"{source}: the manifest lacks {error}") from None

"""What each flow is asked to do: one typed, frozen object per flow. The command line builds it,
Prefect validates a deployment's parameters into it (and shows it as a form), and the flows
pass it down whole. Each value is checked here, once, by its field's validator; the flows and
the steps they call trust what they are given.

    TrainOptions     the train flow: the data (or data prepared already), the query tower, training
    IndexOptions     the index flow: alias, index (IndexSettings), retention, recall target, embedding
    EvaluateOptions  the evaluate flow: the cut-offs, a sample of users and its seed
    PipelineOptions  the pipeline flow: train + index + evaluate, the report's directory, the Milvus
    GateOptions      the rebuild's comparison of a candidate with the serving version
    RebuildOptions   the rebuild flow: train + index + evaluate + gate, reuse, lock and retries

A refused value raises pydantic's ``ValidationError`` at its field; the message is an
``OptionError``'s, which names the field, and the command line prints the same message with
its own option's name (``--keep-versions``, not ``keep_versions``). Defaults come from
``towerbridge.defaults``, the model's settings from ``TowerConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from towerbridge import defaults
from towerbridge.data.options import DataOptions
from towerbridge.errors import ConfigError
from towerbridge.milvus.index import INDEX_CHOICES
from towerbridge.milvus.schema import DEFAULT_ALIAS, MAX_LIMIT, check_name
from towerbridge.towers.config import USER_TOWERS, TowerConfig

# The metrics the rebuild may compare, each at one of the report's cut-offs (hit_rate@10).
GATE_METRIC_NAMES = ("hit_rate", "recall", "ndcg", "mrr")

Namer = Callable[[str], str]
MILVUS_URI = "the Milvus to use (default: MILVUS_URI, else the embedded server)"


class OptionError(ValueError):
    """A refused value. ``says(name)`` is the message, naming each field it is about as
    ``name(field)``: the field itself here, the option that sets it on the command line."""

    def __init__(self, says: Callable[[Namer], str]):
        super().__init__(says(lambda field: field))
        self.says = says


def _checked(check: Callable[[object, str], object], value, field: str):
    """``value`` if ``check(value, name)``, a check that raises a ConfigError naming ``name``, accepts it."""
    def says(name: Namer) -> str:
        try:
            check(value, name(field))
        except ConfigError as error:
            return str(error)
        return ""

    if says(lambda same: same):
        raise OptionError(says)
    return value


def _at_least(field: str, least: int, wording: str):
    """A validator refusing ``field`` below ``least``, saying ``{field} {wording}, got {value}``
    (None passes: the default applies)."""
    def check(cls, value):
        if value is not None and value < least:
            raise OptionError(lambda name: f"{name(field)} {wording}, got {value}")
        return value
    return field_validator(field)(check)


def _listed(values) -> str:
    """1, 5, 10 or 20."""
    *most, last = map(str, values)
    return f"{', '.join(most)} or {last}" if most else last



_UNITS = {"h": 3600, "m": 60, "s": 1}


def duration_seconds(text: str) -> float:
    """Seconds in a duration: a number of seconds ("900", "900s"), or hours, minutes and seconds
    in that order ("45m", "1h30m", "2h15m30s")."""
    value = text.strip().lower()
    try:
        seconds = float(value)
        if math.isfinite(seconds):
            return seconds
    except ValueError:
        pass
    total, number, last = 0.0, "", -1
    for char in value:
        if char.isdigit() or char == ".":
            number += char
            continue
        order = "hms".find(char)
        if order <= last or not number:
            break
        total, number, last = total + float(number) * _UNITS[char], "", order
    else:
        if not number and last >= 0:
            return total
    raise ValueError(f"{text!r} is not a duration: give seconds (900) or hours, minutes and seconds such as "
                     "45m, 1h30m or 2h15m30s")


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainOptions(_Options):
    """The train flow's options: the data, the query tower and its training. What is left out
    takes the tower's defaults (``TowerConfig``)."""

    data: DataOptions | None = Field(None, description=(
        "the dataset, its filters and its split (default: the built-in synthetic log); leave it out with "
        "prepared_dir"))
    prepared_dir: str | None = Field(None, description=(
        "data prepared already (towerbridge.data.prepare, `towerbridge data check --out DIR`), trained on "
        "instead of data"))
    user_tower: Literal[USER_TOWERS] | None = Field(None, description=(
        f"the query tower: sequence, pooled or id (default {defaults.DEFAULT_USER_TOWER}, or "
        f"{defaults.RANDOM_SPLIT_USER_TOWER} for the tfrs protocol)"))
    epochs: int | None = Field(None, description="training epochs (default: the tower's)")
    time_budget: float | None = Field(None, description=(
        "seconds of training at most (a number, or a duration such as \"45m\" or \"1h30m\"): training stops "
        "when it is spent, in the middle of an epoch if need be, keeping the best weights (default: no limit)"))
    vector_dim: int | None = Field(None, description="length of the vectors stored in Milvus (default: the tower's)")
    temperature: float | None = Field(None, description=(
        "the softmax temperature (default: the tower's; where it is learned, the sequence tower's "
        "default, the value it starts from)"))
    use_features: bool = Field(TowerConfig.use_features, description=(
        "feed the users' and items' features (genres, title, age, ...) besides their ids"))
    early_stopping_patience: int = Field(TowerConfig.early_stopping_patience, description=(
        "stop when the validation hit rate has not improved for this many epochs, keeping the best (0: off)"))
    seed: int = Field(TowerConfig.seed, description="random seed for training")
    train_processes: int = Field(defaults.TRAIN_PROCESSES, description=(
        "data-parallel training processes on this machine (PyTorch DDP)"))
    continue_from: str | None = Field(None, description=(
        "a trained model's directory to continue (continual training): its weights are the start, new items "
        "and users start fresh, and the new model records it as its parent (default: from scratch)"))
    replay: float | None = Field(None, description=(
        "with continue_from: train only on what changed since the parent's training data and this fraction "
        "of the rest (default: the whole log)"))

    tower_settings: dict[str, Any] = Field(default_factory=dict, description=(
        "further model settings by name (TowerConfig, towers/config.py), such as attention_blocks, dropout or "
        "gated_blocks (default: the tower's); the options above set their own"))

    _epochs = _at_least("epochs", 1, "must be at least 1")
    _budget = _at_least("time_budget", 1, "must be at least 1 second")

    @field_validator("time_budget", mode="before")
    @classmethod
    def _a_duration(cls, value):
        return duration_seconds(value) if isinstance(value, str) else value
    _patience = _at_least("early_stopping_patience", 0, "must be 0 (off) or a positive patience")
    _processes = _at_least("train_processes", 1, "must be a whole number of processes, 1 or more")

    @model_validator(mode="after")
    def _one_source_and_a_model_to_train(self) -> TrainOptions:
        if self.data is not None and self.prepared_dir is not None:
            raise OptionError(lambda name: f"give the train flow {name('data')} or {name('prepared_dir')}, not both")
        if self.continue_from is not None and not Path(self.continue_from).is_dir():
            raise OptionError(lambda name: f"{name('continue_from')} {self.continue_from}: no model directory there")
        own = sorted(set(self.tower_settings) & set(type(self).model_fields))
        if own:
            raise OptionError(lambda name: f"{name('tower_settings')} cannot set {', '.join(own)}: "
                                           f"give {', '.join(name(field) for field in own)} instead")
        try:  # the tower's own checks (vector_dim, temperature, ...), before any data is read
            self.tower_config(self.protocol or defaults.PROTOCOL)
        except ConfigError as error:
            message = str(error)
            raise OptionError(lambda name: message) from None
        return self

    @property
    def protocol(self) -> str | None:
        """The data's evaluation split, unless the data is prepared already (its summary says)."""
        return None if self.prepared_dir is not None else (self.data or DataOptions()).protocol

    def tower_config(self, protocol: str) -> TowerConfig:
        """The model to train on data split by ``protocol``: the chosen tower (else the protocol's
        default) with the settings chosen here over that tower's defaults."""
        chosen = {name: value for name, value in (("epochs", self.epochs), ("vector_dim", self.vector_dim),
                                                   ("temperature", self.temperature),
                                                   ("time_budget", self.time_budget),
                                                   ("replay", self.replay)) if value is not None}
        return TowerConfig.for_tower(defaults.user_tower_for(protocol, self.user_tower), **self.tower_settings,
                                     **chosen, use_features=self.use_features,
                                     early_stopping_patience=self.early_stopping_patience, seed=self.seed)


class IndexSettings(_Options):
    """The index of a new version; what is left out is chosen from the data (``milvus/index.py``)."""

    index_type: Literal[INDEX_CHOICES] = Field(defaults.INDEX_TYPE, description=(
        "AUTO (IVF_PQ, and SCANN where IVF_PQ's tuned search falls short of the target recall; setting m or "
        "nbits chooses IVF_PQ), IVF_PQ (product quantization, 8-bit codes) or SCANN (4-bit fast-scan codes, "
        "the best candidates re-scored exactly on the raw vectors)"))
    nlist: int | None = Field(None, description="inverted lists (default about 4·sqrt(items), at most items/39)")
    m: int | None = Field(None, description=(
        "IVF_PQ: sub-quantizers; must divide the vector dimension (default: the dimension)"))
    nbits: int | None = Field(None, description="IVF_PQ: bits per code (default 8)")

    @field_validator("index_type", mode="before")
    @classmethod
    def _any_case(cls, index_type):
        return index_type.upper() if isinstance(index_type, str) else index_type

    _nlist = _at_least("nlist", 1, "must be at least 1")

    @field_validator("nbits")
    @classmethod
    def _nbits(cls, nbits: int | None) -> int | None:
        if nbits is not None and not 1 <= nbits <= 16:
            raise OptionError(lambda name: f"{name('nbits')} must be between 1 and 16, got {nbits}")
        return nbits

    @model_validator(mode="after")
    def _codes_of_the_index(self) -> IndexSettings:
        if self.index_type == "SCANN" and (self.m is not None or self.nbits is not None):
            raise OptionError(lambda name: f"{name('m')} and {name('nbits')} set IVF_PQ's codes; "
                                           f"{name('index_type')} scann has fixed 4-bit codes (leave them out)")
        return self

    def overrides(self) -> dict:
        """As ``steps.index_model`` takes them: the index type and the parameters chosen."""
        return self.model_dump(exclude_none=True)


class IndexOptions(_Options):
    """The index flow's options: the alias a new version goes behind, its index, the versions
    kept, the recall its search is tuned to, and where the catalog is embedded."""

    alias: str = Field(DEFAULT_ALIAS, description="the alias readers query; it moves to the new version")
    index_params: IndexSettings = Field(IndexSettings(), description=(
        "the index (default: IVF_PQ with parameters chosen from the data)"))
    keep_versions: int = Field(defaults.KEEP_VERSIONS, description=(
        "complete versions of the alias kept; older ones are dropped (the serving one always kept)"))
    target_recall: float = Field(defaults.TARGET_RECALL, description=(
        "recall@100 against exact search that the search settings are tuned to reach (and that the "
        "rebuild's candidate must reach)"))
    embed_workers: int = Field(defaults.EMBED_WORKERS, description=(
        "embed the catalog on a local Dask cluster of this many worker processes (0: in this process)"))
    dask_address: str | None = Field(None, description=(
        "embed the catalog on the Dask cluster at this address (tcp://HOST:8786) instead"))
    embed_shards: int | None = Field(None, description=(
        "shards the catalog is embedded in on Dask (default: 4 per local worker, 32 on a cluster)"))
    embed_dir: str | None = Field(None, description=(
        "where the embedded shards are written (default: under TOWERBRIDGE_HOME; shared storage for a cluster)"))

    @field_validator("alias")
    @classmethod
    def _alias(cls, alias: str) -> str:
        return _checked(check_name, alias, "alias")

    @field_validator("keep_versions")
    @classmethod
    def _keep_versions(cls, keep_versions: int) -> int:
        return _checked(defaults.check_keep_versions, keep_versions, "keep_versions")

    @field_validator("target_recall")
    @classmethod
    def _target_recall(cls, target: float) -> float:
        if not 0 < target <= 1:
            raise OptionError(lambda name: f"{name('target_recall')} must be in (0, 1], got {target}")
        return target

    _embed_workers = _at_least("embed_workers", 0, "must be 0 (embed in this process) or more")

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, address: str | None) -> str | None:
        if address is not None and "://" not in address:
            raise OptionError(lambda name: f"{name('dask_address')} {address!r}: expected a scheduler address "
                                           "such as tcp://10.0.0.5:8786")
        return address

    _embed_shards = _at_least("embed_shards", 1, "must be 1 or more")


class EvaluateOptions(_Options):
    """The evaluate flow's options: the cut-offs every metric is reported at, and the users."""

    ks: tuple[int, ...] = Field(defaults.REPORT_KS, description="top-k cut-offs every metric is reported at")
    eval_users: int | None = Field(defaults.EVAL_USERS, description=(
        "evaluate a seeded random sample of this many users where more have held-out interactions "
        f"(default {defaults.EVAL_USERS:,}; None: every user)"))
    seed: int = Field(defaults.EVALUATION_SEED, description="seed of that sample and of the random baseline")

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        ks = tuple(sorted(set(ks)))
        if not ks or ks[0] < 1 or ks[-1] > MAX_LIMIT:
            raise OptionError(lambda name: f"every k must be between 1 and {MAX_LIMIT} (Milvus' search limit), "
                                           f"got {list(ks)}")
        return ks

    @field_validator("eval_users")
    @classmethod
    def _eval_users(cls, users: int | None) -> int | None:
        if users is not None and users < 1:
            raise OptionError(lambda name: f"eval_users (--eval-users) must be at least 1, got {users}")
        return users


class GateOptions(_Options):
    """The rebuild's comparison: the candidate and the serving model rank the same users, and
    the candidate is rejected only when a metric is worse with confidence: the ``confidence``
    interval of its mean per-user difference lies wholly below ``-tolerance`` (besides every
    item indexed and its index recall at the index options' ``target_recall``)."""

    metrics: tuple[str, ...] = Field(defaults.GATE_METRICS, description=(
        f"metrics compared with the serving model's on the same users: {', '.join(GATE_METRIC_NAMES)} at a k "
        "the report has (hit_rate@10)"))
    tolerance: float = Field(defaults.GATE_TOLERANCE, description=(
        "the margin (absolute): reject only when the interval of candidate - serving lies wholly below -tolerance"))
    confidence: float = Field(defaults.GATE_CONFIDENCE, description=(
        "the level of that interval, between 0 and 1 (0.95: a 95% interval)"))

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, metrics: tuple[str, ...]) -> tuple[str, ...]:
        if not metrics:
            raise OptionError(lambda name: f"{name('metrics')}: name at least one metric, e.g. hit_rate@10")
        for metric in metrics:
            kind, _, k = metric.partition("@")
            if kind not in GATE_METRIC_NAMES or not k.isdigit() or int(k) not in defaults.REPORT_KS:
                raise OptionError(lambda name, metric=metric: (
                    f"{name('metrics')}: {metric!r} is not one of {', '.join(GATE_METRIC_NAMES)} at k "
                    f"{_listed(defaults.REPORT_KS)} (e.g. hit_rate@10)"))
        return metrics

    _tolerance = _at_least("tolerance", 0, "must be 0 or more")

    @field_validator("confidence")
    @classmethod
    def _confidence(cls, confidence: float) -> float:
        if not 0 < confidence < 1:
            raise OptionError(lambda name: f"{name('confidence')} must be between 0 and 1 (exclusive, e.g. 0.95), "
                                           f"got {confidence}")
        return confidence


class _TrainAndIndex(_Options):
    """What the pipeline and the rebuild share: a model trained, then indexed."""

    train: TrainOptions = Field(TrainOptions(), description="the train flow's options")
    index: IndexOptions = Field(IndexOptions(), description="the index flow's options")

    @model_validator(mode="after")
    def _codes_fit_the_vectors(self) -> _TrainAndIndex:
        """IVF_PQ's m must divide the dimension of the vectors trained, where the tower is known
        before the data is prepared."""
        m = self.index.index_params.m
        if m is None or (self.train.protocol is None and self.train.user_tower is None):
            return self
        config = self.train.tower_config(self.train.protocol or defaults.PROTOCOL)
        if m < 1 or config.vector_dim % m:
            raise OptionError(lambda name: f"{name('m')} {m} must divide the vector dimension {config.vector_dim} "
                                           f"(of the {config.user_tower} tower)")
        return self

    def with_prepared(self, prepared_dir: str) -> Self:
        """The same options, training on the data prepared in ``prepared_dir`` (the command line
        prepares it before any server starts, so that bad data fails in seconds)."""
        train = self.train.model_copy(update={"data": None, "prepared_dir": prepared_dir})
        return self.model_copy(update={"train": train})


class PipelineOptions(_TrainAndIndex):
    """The pipeline flow's options: train, index, evaluate; where the report goes; which Milvus."""

    evaluate: EvaluateOptions = Field(EvaluateOptions(), description="the evaluate flow's options")
    report_dir: str | None = Field(None, description=(
        "where evaluation.json, evaluation.md and hit_rate.png go (default: the run's directory under "
        "TOWERBRIDGE_HOME/runs)"))
    milvus_uri: str | None = Field(None, description=MILVUS_URI)


class RebuildOptions(_TrainAndIndex):
    """The rebuild flow's options: train (or reuse the latest model), index a candidate, evaluate
    it, and let it serve only if it passes the gate."""

    evaluate: EvaluateOptions = Field(EvaluateOptions(), description="how the candidate is evaluated")
    gate: GateOptions = Field(GateOptions(), description="the candidate's comparison with the serving version")
    reuse_model: bool = Field(False, description=(
        "skip training: index the latest model under TOWERBRIDGE_HOME/models"))
    from_scratch: bool = Field(False, description=(
        "train a new model from random weights; by default the serving version's model is continued on "
        "today's data when its towers have the same shape"))
    continual_epochs: int = Field(defaults.CONTINUAL_EPOCHS, description=(
        "epochs of a continued training over the whole log, unless train.epochs says otherwise"))
    replay: float | None = Field(None, description=(
        "a continued training learns only from what changed since the serving model's training data and "
        "this fraction of the rest (default: the whole log)"))
    continual_budget: float = Field(defaults.CONTINUAL_BUDGET_S, description=(
        "seconds a continued training may take, unless train.time_budget says otherwise (a number, or a "
        "duration such as \"30m\")"))
    milvus_uri: str | None = Field(None, description=MILVUS_URI)
    lock_timeout_s: float = Field(defaults.REBUILD_LOCK_TIMEOUT_S, description=(
        "seconds to wait for another rebuild of the same alias to finish (a lock in TOWERBRIDGE_HOME)"))
    retries: int = Field(defaults.REBUILD_RETRIES, description=(
        "retries of a Milvus task after a transient failure, with backoff"))

    _lock_timeout = _at_least("lock_timeout_s", 0, "must be 0 or more")
    _retries = _at_least("retries", 0, "must be 0 or more")
    _continual_epochs = _at_least("continual_epochs", 1, "must be at least 1")
    _continual_budget = _at_least("continual_budget", 1, "must be at least 1 second")

    @field_validator("continual_budget", mode="before")
    @classmethod
    def _continual_duration(cls, value):
        return duration_seconds(value) if isinstance(value, str) else value

    @field_validator("replay")
    @classmethod
    def _replay_fraction(cls, replay: float | None) -> float | None:
        if replay is not None and not 0 <= replay <= 1:
            raise OptionError(lambda name: f"{name('replay')} must be a fraction between 0 and 1, got {replay}")
        return replay

    @model_validator(mode="after")
    def _gate_at_evaluated_ks(self) -> RebuildOptions:
        missing = [metric for metric in self.gate.metrics if int(metric.partition("@")[2]) not in self.evaluate.ks]
        if missing:
            raise OptionError(lambda name: f"{name('metrics')} {', '.join(missing)}: the evaluation does not report "
                                           f"that k ({name('ks')} {list(self.evaluate.ks)})")
        return self


class CatalogOptions(_Options):
    """The catalog flow's options: changes to the version serving ``alias``, given now (``add``,
    ``retire_ids``, ``retire_filter``) or dropped as files into an ``inbox`` directory, which a
    scheduled run picks up."""

    alias: str = Field(DEFAULT_ALIAS, description="the alias whose serving version changes")
    add: str | None = Field(None, description="a Parquet or CSV file of items to add (item_id and features)")
    retire_ids: list[str] | None = Field(None, description="item ids to retire")
    retire_filter: str | None = Field(None, description="a Milvus filter selecting items to retire")
    inbox: str | None = Field(None, description=(
        "a directory whose add/ (items files) and retire/ (item id files: an item_id column, or one id per "
        "line) are applied oldest first; each file then moves to done/, or to failed/ with the reason"))
    milvus_uri: str | None = Field(None, description=MILVUS_URI)

    @field_validator("retire_ids", mode="before")
    @classmethod
    def _ids_as_text(cls, ids):
        return [str(item) for item in ids] if isinstance(ids, list | tuple) else ids

    @model_validator(mode="after")
    def _something_to_do(self) -> CatalogOptions:
        if self.retire_ids is not None and self.retire_filter is not None:
            raise OptionError(lambda name: f"give {name('retire_ids')} or {name('retire_filter')}, not both")
        if not any((self.add, self.retire_ids, self.retire_filter, self.inbox)):
            raise OptionError(lambda name: f"nothing to do: give {name('add')}, {name('retire_ids')}, "
                                           f"{name('retire_filter')} or {name('inbox')}")
        return self

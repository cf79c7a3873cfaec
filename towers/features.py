"""Features for the towers: a spec says which columns feed each tower and how.

Kinds:
    id           the entity's own id; ids never seen in training map to 0 (a zero vector),
                 so a cold item is represented by its other features alone
    categorical  one value per row (gender, occupation); unseen values map to 0
    multi_hot    ``|``-separated values (genres), averaged
    text         words of a string (title), averaged
    numeric      a number, standardised
    bucketized   a number cut at training quantiles (age)
    time         unix seconds cut at training quantiles (release date)
Missing values map to 0 everywhere. Encoders are fitted once and saved with the model,
so the same rows always encode the same way.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from towerbridge.data.kinds import KINDS
from towerbridge.errors import ConfigError

MAX_TOKENS = 16
_WORD = re.compile(r"[a-z0-9]+")

# Columns we recognise when no spec is given: column -> kind.
KNOWN_USER_COLUMNS = {"age": "bucketized", "gender": "categorical", "occupation": "categorical"}
KNOWN_ITEM_COLUMNS = {"genres": "multi_hot", "title": "text", "release_date": "time", "year": "bucketized"}


@dataclass(frozen=True)
class Feature:
    column: str
    kind: str
    buckets: int = 10

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"feature {self.column!r}: unknown kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.buckets < 2:
            raise ConfigError(f"feature {self.column!r}: buckets must be at least 2, got {self.buckets}")


@dataclass(frozen=True)
class FeatureSpec:
    """Which features each tower reads. The first feature of each side is its id."""

    user: tuple[Feature, ...]
    item: tuple[Feature, ...]

    def to_dict(self) -> dict:
        return {"user": [asdict(f) for f in self.user], "item": [asdict(f) for f in self.item]}

    @classmethod
    def from_dict(cls, values: dict) -> FeatureSpec:
        return cls(tuple(Feature(**f) for f in values["user"]), tuple(Feature(**f) for f in values["item"]))


def default_spec(user_columns: list[str], item_columns: list[str], use_features: bool = True,
                 declared: dict[str, dict[str, str]] | None = None) -> FeatureSpec:
    """Ids, plus every recognised column present and every column ``declared`` with its
    kind (``{"user": {column: kind}, "item": {...}}``, from a dataset spec); only ids when
    ``use_features`` is off."""
    declared = declared or {}
    sides = []
    for side, columns, known in (("user", user_columns, KNOWN_USER_COLUMNS),
                                 ("item", item_columns, KNOWN_ITEM_COLUMNS)):
        features = [Feature(f"{side}_id", "id")]
        if use_features:
            kinds = {**{c: k for c, k in known.items() if c in columns}, **declared.get(side, {})}
            features += [Feature(column, kind) for column, kind in kinds.items()]
        sides.append(tuple(features))
    return FeatureSpec(*sides)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class Encoder:
    """Turns one column into model inputs. ``state`` is JSON-serialisable."""

    feature: Feature
    state: dict = field(default_factory=dict)

    @property
    def cardinality(self) -> int:
        """Number of embedding rows, index 0 included (0 for numeric features)."""
        kind = self.feature.kind
        if kind in ("categorical", "multi_hot", "text"):
            return len(self.state["vocabulary"]) + 1
        if kind in ("bucketized", "time"):
            return len(self.state["boundaries"]) + 2
        return 0

    def fit(self, values: pd.Series) -> Encoder:
        kind = self.feature.kind
        if kind == "categorical":
            self.state = {"vocabulary": sorted(values.dropna().astype(str).unique().tolist())}
        elif kind in ("multi_hot", "text"):
            split = self._split(values)
            counts = pd.Series([t for row in split for t in row], dtype=object).value_counts()
            # words seen once are noise for a text bag; every listed value counts for multi-hot
            keep = counts[counts >= (2 if kind == "text" else 1)].index
            self.state = {"vocabulary": sorted(map(str, keep))}
        elif kind == "numeric":
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            std = float(numbers.std()) if numbers.notna().sum() > 1 else 1.0
            self.state = {"mean": float(numbers.mean()) if numbers.notna().any() else 0.0, "std": std or 1.0}
        elif kind in ("bucketized", "time"):
            numbers = pd.to_numeric(values, errors="coerce").dropna().astype(float)
            cuts = np.linspace(0, 1, self.feature.buckets + 1)[1:-1]
            quantiles = np.quantile(numbers, cuts) if len(numbers) else []
            self.state = {"boundaries": sorted(set(float(q) for q in quantiles))}
        return self

    def _split(self, values: pd.Series) -> list[list[str]]:
        texts = values.fillna("").astype(str)
        if self.feature.kind == "text":
            return [tokens(text) for text in texts]
        return [[part for part in text.split("|") if part] for text in texts]

    def transform(self, values: pd.Series) -> np.ndarray:
        """int64 ``[n]`` (one index), int64 ``[n, MAX_TOKENS]`` (bags, 0-padded) or float32 ``[n, 1]``."""
        kind = self.feature.kind
        if kind == "categorical":
            index = {value: i + 1 for i, value in enumerate(self.state["vocabulary"])}
            return values.astype("string").map(index).fillna(0).astype(np.int64).to_numpy()
        if kind in ("multi_hot", "text"):
            index = {value: i + 1 for i, value in enumerate(self.state["vocabulary"])}
            out = np.zeros((len(values), MAX_TOKENS), dtype=np.int64)
            for row, parts in enumerate(self._split(values)):
                known = [index[p] for p in parts if p in index][:MAX_TOKENS]
                out[row, :len(known)] = known
            return out
        numbers = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        if kind == "numeric":
            standard = (numbers - self.state["mean"]) / self.state["std"]
            return np.nan_to_num(standard, nan=0.0).astype(np.float32)[:, None]
        buckets = np.searchsorted(np.asarray(self.state["boundaries"]), numbers, side="right") + 1
        return np.where(np.isnan(numbers), 0, buckets).astype(np.int64)

    def to_dict(self) -> dict:
        return {"feature": asdict(self.feature), "state": self.state}

    @classmethod
    def from_dict(cls, values: dict) -> Encoder:
        return cls(Feature(**values["feature"]), values["state"])


def check_columns(spec_side: tuple[Feature, ...], table: pd.DataFrame | None, side: str) -> None:
    for feature in spec_side:
        if feature.kind == "id":
            continue
        if table is None or feature.column not in table.columns:
            found = [] if table is None else list(table.columns)
            raise ConfigError(f"{side} feature {feature.column!r} ({feature.kind}) needs a {side} table "
                              f"column of that name; found: {found}")

"""Catalog changes between rebuilds: items added and retired, kept as a log per alias.

Every change is first written to the alias' log (``TOWERBRIDGE_HOME/catalog/<alias>/``, one
Parquet file per change, numbered in order, written whole or not at all), then applied to the
serving version (``steps.add_items``, ``steps.retire_items``), whose record says how far
through the log it is (``CatalogRecord.through``). So a change that was logged but not
applied (a crash between the two) is applied by the next one, applying a change twice
changes nothing (an upsert of the same rows; a delete of deleted rows), and the next rebuild
builds its version from the dataset plus the log: added items in its catalog, retired ones
left out of its collection, and the changes logged while it was building applied to it right
after its swap. Writers of the log and the rebuild's swap hold the alias' catalog lock, so a
change lands either in the version a rebuild builds or on it after the swap, never in a
version that no longer serves.

Retired items are deleted from the serving collection, not flagged: every reader, including
a pymilvus query written by hand, stops seeing them, with no filter to remember.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from towerbridge import defaults, settings
from towerbridge.errors import DataError

KINDS = ("add", "retire")


@dataclass(frozen=True)
class Change:
    """One logged change: its number in the alias' log, ``add`` (a file of item rows) or
    ``retire`` (a file of item ids), and where the file is."""

    seq: int
    kind: str
    path: Path

    def items(self) -> pd.DataFrame:
        """The added items' rows, or the retired items' ids (one ``item_id`` column)."""
        return pd.read_parquet(self.path)


@dataclass(frozen=True)
class CatalogRecord:
    """What a version's record keeps of the catalog changes: the last change of the log applied
    to it (``through``; a rebuild's version starts at the last one its catalog included), the
    items added and retired since it was built, and when the last change was applied."""

    through: int = 0
    added: int = 0
    retired: int = 0
    updated_at: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CatalogRecord:
        return cls(through=int(values.get("through", 0)), added=int(values.get("added", 0)),
                   retired=int(values.get("retired", 0)), updated_at=values.get("updated_at"))

    def after(self, change: Change, items: int) -> CatalogRecord:
        """This record once ``change`` (of ``items`` items) is applied."""
        added, retired = (items, 0) if change.kind == "add" else (0, items)
        return CatalogRecord(through=change.seq, added=self.added + added, retired=self.retired + retired,
                             updated_at=defaults.utc_now())


@dataclass(frozen=True)
class CatalogState:
    """The log replayed in order up to a change: the rows of the items added and not retired
    since (the latest row of each), and the ids retired and not added again since."""

    through: int
    added: pd.DataFrame | None
    retired: np.ndarray


class ChangeLog:
    """The catalog change log of one alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.directory = settings.confined(settings.state_dir("catalog"), alias)

    @contextlib.contextmanager
    def locked(self, timeout_s: float | None = None, log=None) -> Iterator[ChangeLog]:
        """Hold the alias' catalog lock: one writer of the log, and no swap of the alias, at a time."""
        with settings.lock(f"catalog-{self.alias}", timeout_s=timeout_s, log=log):
            yield self

    def changes(self, after: int = 0) -> list[Change]:
        """The logged changes numbered above ``after``, in order (files being written are not
        changes yet)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("*.parquet"):
            number, _, kind = path.stem.partition("-")
            if number.isdigit() and kind in KINDS and int(number) > after:
                found.append(Change(int(number), kind, path))
        return sorted(found, key=lambda change: change.seq)

    def last(self) -> int:
        changes = self.changes()
        return changes[-1].seq if changes else 0

    def append(self, kind: str, table: pd.DataFrame, after: int = 0) -> Change:
        """Log a change (call it holding ``locked``): ``add`` with the items' rows, ``retire``
        with their ids (an ``item_id`` column). Written whole under its final name, or not at all.
        after: the last change the serving version has had; the new one is numbered above it
        even when this log is missing or was cleared (it would be skipped otherwise)."""
        if kind not in KINDS:
            raise ValueError(f"a catalog change is one of {KINDS}, got {kind!r}")
        if table.empty:
            raise DataError(f"nothing to {kind}: no items given")
        self.directory.mkdir(parents=True, exist_ok=True)
        seq = max(self.last(), after) + 1
        path = self.directory / f"{seq:08d}-{kind}.parquet"
        partial = path.with_name(path.name + ".partial")
        table.reset_index(drop=True).to_parquet(partial, index=False)
        partial.replace(path)
        return Change(seq, kind, path)

    def state(self, through: int | None = None) -> CatalogState:
        """The catalog changes up to change ``through`` (default: all), replayed in order."""
        changes = [c for c in self.changes() if through is None or c.seq <= through]
        added: dict = {}
        retired: set = set()
        frames = []
        for change in changes:
            table = change.items()
            ids = table["item_id"].tolist()
            if change.kind == "add":
                retired.difference_update(ids)
                frames.append(table.assign(_seq=change.seq))
                added.update(dict.fromkeys(ids, change.seq))
            else:
                retired.update(ids)
                for item in ids:
                    added.pop(item, None)
        rows = None
        if added:
            every = pd.concat(frames, ignore_index=True)
            latest = every.drop_duplicates("item_id", keep="last")
            rows = latest[latest["item_id"].map(added).eq(latest["_seq"])].drop(columns="_seq").reset_index(drop=True)
        return CatalogState(through=changes[-1].seq if changes else 0, added=rows,
                            retired=np.array(sorted(retired, key=str), dtype=object))

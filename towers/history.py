"""What each user did, in time order: the input of the history towers.

A history is a row of item vocabulary indices (1..n_items), oldest first, right-aligned in a
window of fixed length and padded with 0 on the left: the most recent item is always in the
last column, which is where the towers read the query vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Histories:
    """Every user's items in time order, flat: user ``users[u]`` had
    ``items[starts[u]:starts[u + 1]]``. ``users`` are sorted raw ids."""

    users: np.ndarray
    starts: np.ndarray
    items: np.ndarray

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, item_index) -> Histories:
        """From ``user_id``, ``item_id`` and ``timestamp`` columns; ``item_index`` maps raw item
        ids to vocabulary indices (0 for unknown items, which are left out). Ties in time
        keep the order of the rows."""
        ordered = interactions.sort_values(["user_id", "timestamp"], kind="stable")
        items = item_index(ordered["item_id"].to_numpy())
        users = ordered["user_id"].to_numpy()[items > 0]
        items = items[items > 0].astype(np.int64)
        unique, first = np.unique(users, return_index=True)
        return cls(unique, np.append(first, len(items)).astype(np.int64), items)

    @classmethod
    def of(cls, histories: list[list[int]], users: np.ndarray | None = None) -> Histories:
        """From lists of vocabulary indices (one per user, oldest first); ``users``: their raw
        ids (default 0, 1, ...), in any order."""
        if users is not None:
            order = np.argsort(users, kind="stable")
            histories, users = [histories[i] for i in order], np.asarray(users)[order]
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else \
            np.zeros(0, dtype=np.int64)
        users = np.arange(len(histories)) if users is None else np.asarray(users)
        return cls(users, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items)

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each raw user id, -1 for users without a history."""
        user_ids = np.asarray(user_ids)
        if not len(self.users):
            return np.full(len(user_ids), -1, dtype=np.int64)
        position = np.searchsorted(self.users, user_ids).clip(max=len(self.users) - 1)
        return np.where(self.users[position] == user_ids, position, -1).astype(np.int64)

    def windows(self, rows: np.ndarray, length: int, drop_last: int | np.ndarray = 0) -> np.ndarray:
        """``[len(rows), length]``: the last ``length`` items of each row's history, after
        leaving out its last ``drop_last`` items (one number, or one per row), right-aligned and
        0-padded on the left.
        A row of -1 (no history) is all padding."""
        rows = np.asarray(rows, dtype=np.int64)
        known = rows >= 0
        ends = np.where(known, self.starts[np.where(known, rows + 1, 0)] - drop_last, 0)
        begins = np.where(known, self.starts[np.where(known, rows, 0)], 0)
        ends = np.maximum(ends, begins)
        taken = np.minimum(ends - begins, length)
        out = np.zeros((len(rows), length), dtype=np.int64)
        columns = np.arange(length)[None, :]
        offset = columns - (length - taken)[:, None]  # position within the taken part, < 0: padding
        source = (ends - taken)[:, None] + offset
        real = offset >= 0
        out[real] = self.items[source[real]]
        return out

    def training_pairs(self, length: int, drop_last: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Next-item prediction at every position: ``(inputs, targets)``, both
        ``[n_users, length]``; targets[u, t] is the item that followed inputs[u, :t + 1] (0
        where inputs[u, t] is padding). Each user's last ``drop_last`` items are left out
        (they are kept for validation or evaluation)."""
        _, inputs, targets = self.training_windows(length, drop_last)
        return inputs, targets

    def training_windows(self, length: int, drop_last: int = 0,
                         earlier: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``training_pairs`` with the row of each window: ``(rows, inputs, targets)``. With
        ``earlier``, a history longer than one window also gives the windows before its last,
        each ``length`` items earlier than the next (so every item but the first is a target
        once), after the last windows of every row."""
        rows = np.arange(len(self.users))
        drops = np.full(len(rows), drop_last, dtype=np.int64)
        if earlier:
            # a window ending k * length items before the last one, where it still has an input
            available = self.lengths() - drop_last
            more = np.maximum(0, (available - 2) // length)
            rows = np.concatenate([rows, np.repeat(rows, more)])
            steps = np.arange(more.sum()) - np.repeat(np.cumsum(more) - more, more) + 1  # 1..more per row
            drops = np.concatenate([drops, drop_last + steps * length])
        inputs, targets = self.windows(rows, length, drops + 1), self.windows(rows, length, drops)
        targets[inputs == 0] = 0
        return rows, inputs, targets

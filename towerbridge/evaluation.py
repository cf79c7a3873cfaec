"""Top-k hit rate against held-out interactions, for the model and its baselines.

Each evaluated user is ranked against the whole catalog, minus the items that user
saw in training when the protocol says so (leave-last-out); a hit at k means the
held-out item is among the first k. Items are vocabulary indices here
(1..n_items; 0 means "no item", e.g. padding when a search returned fewer rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

KS = (10, 50, 100)
CHUNK = 2048


@dataclass
class Seen:
    """Training items per evaluated user, as CSR: row r's items are
    ``indices[indptr[r]:indptr[r + 1]]`` (vocabulary indices)."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> Seen:
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]), items[order].astype(np.int64))

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def keys(self, rows: np.ndarray, width: int) -> np.ndarray:
        """``row * width + item`` for every seen pair of the given rows (sorted)."""
        parts = [r * width + self.indices[self.indptr[r]:self.indptr[r + 1]] for r in rows]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def hit_rates(top: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Share of rows whose target appears in the first k columns of ``top`` ([n, >= max(ks)])."""
    if len(targets) == 0:
        return {f"hit_rate@{k}": 0.0 for k in ks}
    hits = top == targets[:, None]
    return {f"hit_rate@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def overlap(approximate: np.ndarray, exact: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Index recall: mean share of the exact top-k that the approximate top-k also holds."""
    result = {}
    for k in ks:
        shared = [len(np.intersect1d(a[:k][a[:k] > 0], e[:k][e[:k] > 0])) / max(1, (e[:k] > 0).sum())
                  for a, e in zip(approximate, exact)]
        result[f"recall@{k}"] = float(np.mean(shared)) if shared else 0.0
    return result


def _chunks(n: int, size: int = CHUNK) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


def top_k_by_scores(score_rows: Callable[[np.ndarray], torch.Tensor], seen: Seen, k: int) -> np.ndarray:
    """Exact top-k per row of a dense score matrix, seen items excluded.

    score_rows(rows) returns ``[len(rows), n_items + 1]`` scores (column 0 is ignored).
    Computed in chunks of rows so memory stays bounded. Returns ``[n_rows, k]`` indices.
    """
    n_rows = len(seen.indptr) - 1
    out = np.zeros((n_rows, k), dtype=np.int64)
    for rows in _chunks(n_rows):
        scores = score_rows(rows).clone()
        scores[:, 0] = -torch.inf
        starts, stops = seen.indptr[rows], seen.indptr[rows + 1]
        local = np.repeat(np.arange(len(rows)), stops - starts)
        items = np.concatenate([seen.indices[a:b] for a, b in zip(starts, stops)]) if len(rows) else []
        scores[torch.from_numpy(local), torch.as_tensor(items, dtype=torch.int64)] = -torch.inf
        kk = min(k, scores.shape[1])
        values, indices = torch.topk(scores, kk, dim=1)
        indices[values == -torch.inf] = 0
        out[rows, :kk] = indices.numpy()
    return out


def exact_top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, seen: Seen, k: int) -> np.ndarray:
    """Brute-force inner-product top-k; item_vectors row j is vocabulary index j + 1."""
    items = torch.from_numpy(np.vstack([np.zeros((1, item_vectors.shape[1]), np.float32), item_vectors]))
    users = torch.from_numpy(user_vectors)
    return top_k_by_scores(lambda rows: users[rows] @ items.T, seen, k)


def popularity_top_k(item_counts: np.ndarray, seen: Seen, k: int) -> np.ndarray:
    """Most-trained-on items first; ties broken towards the lower index."""
    counts = np.concatenate([[0], item_counts]).astype(np.float64)
    scores = torch.from_numpy(counts - np.arange(len(counts)) * 1e-9)  # stable tie-break
    return top_k_by_scores(lambda rows: scores.expand(len(rows), -1), seen, k)


def drop_seen(candidates: np.ndarray, rows: np.ndarray, seen: Seen, k: int) -> np.ndarray:
    """Keep, per row, the first k candidates that row has not seen (0 pads short rows).

    candidates: ``[len(rows), L]`` vocabulary indices in rank order, 0 for "none".
    """
    width = int(max(candidates.max(initial=0), seen.indices.max(initial=0))) + 1
    keys = rows[:, None] * width + candidates
    drop = np.isin(keys, seen.keys(rows, width)) | (candidates <= 0)
    order = np.argsort(drop, axis=1, kind="stable")  # kept candidates first, rank order preserved
    kept = np.take_along_axis(candidates, order, axis=1)
    kept[np.take_along_axis(drop, order, axis=1)] = 0
    out = np.zeros((len(rows), k), dtype=np.int64)
    out[:, :min(k, kept.shape[1])] = kept[:, :k]
    return out


def search_top_k(search: Callable[[np.ndarray, int], np.ndarray], user_vectors: np.ndarray,
                 seen: Seen, k: int, max_limit: int, batch: int = 1024) -> np.ndarray:
    """Top-k through an ANN search, seen items excluded on the client.

    search(vectors, limit) returns ``[len(vectors), limit]`` vocabulary indices (0 pads).
    Each user needs ``k + n_seen`` results, so users are sorted by how much they have
    seen and searched in batches that share one limit (capped at ``max_limit``).
    """
    n_seen = seen.counts()
    order = np.argsort(n_seen, kind="stable")
    out = np.zeros((len(order), k), dtype=np.int64)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        limit = int(min(max_limit, k + n_seen[rows].max()))
        out[rows] = drop_seen(search(user_vectors[rows], limit), rows, seen, k)
    return out

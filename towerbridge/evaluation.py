"""Top-k hit rate against held-out interactions, for the model and its baselines.

Each evaluated user is ranked against the whole catalog, minus the items that user
saw in training when the protocol says so (leave-last-out); a hit at k means the
held-out item is among the first k. Items are vocabulary indices here
(1..n_items; 0 means "no item", e.g. padding when a search returned fewer rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

KS = (10, 50, 100)
CHUNK = 2048


@dataclass
class ItemSets:
    """A set of items per row (the items a user saw in training, or the held-out items a
    ranking should find), as CSR: row r's items are ``indices[indptr[r]:indptr[r + 1]]``
    (vocabulary indices)."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> ItemSets:
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=n_rows)
        return cls(np.concatenate([[0], np.cumsum(counts)]), items[order].astype(np.int64))

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def keys(self, rows: np.ndarray, width: int) -> np.ndarray:
        """``position * width + item`` for every pair of the given rows (sorted), where
        position is the row's place in ``rows``."""
        lengths = self.counts()[rows]
        starts = self.indptr[rows]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = self.indices[np.repeat(starts, lengths) + offsets]
        return np.sort(np.repeat(np.arange(len(rows)), lengths) * width + items)

    @classmethod
    def empty(cls, n_rows: int) -> ItemSets:
        return cls(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))


METRICS = ("hit_rate", "recall", "ndcg", "mrr", "coverage", "mean_popularity")


RANKING = ("hit_rate", "recall", "ndcg", "mrr")  # the metrics each query scores on its own


def per_query_metrics(top: np.ndarray, relevant: ItemSets, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Each query's hit_rate, recall, ndcg and mrr at every k, ``{"ndcg@10": [n_queries]}``,
    for rankings ``top`` (``[n_queries, >= max(ks)]`` vocabulary indices, 0 = no item) against
    each query's ``relevant`` items (index 0 counts as relevant but can never be found: an
    item the ranking model does not know). Their means are ``ranking_metrics``' values."""
    n_queries, width = len(top), int(max(top.max(initial=0), relevant.indices.max(initial=0))) + 1
    hits = np.isin(np.arange(n_queries)[:, None] * width + top, relevant.keys(np.arange(n_queries), width))
    hits &= top > 0
    n_relevant = relevant.counts()
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    result = {}
    for k in ks:
        hits_k = hits[:, :k]
        ideal = np.cumsum(discounts)[np.clip(n_relevant, 1, hits_k.shape[1]) - 1]
        found_first = (first >= 0) & (first < k)
        result.update({
            f"hit_rate@{k}": hits_k.any(axis=1).astype(np.float64),
            f"recall@{k}": hits_k.sum(axis=1) / np.maximum(n_relevant, 1),
            f"ndcg@{k}": (hits_k * discounts[:hits_k.shape[1]]).sum(axis=1) / ideal,
            f"mrr@{k}": found_first / np.maximum(first + 1, 1),
        })
    return result


def ranking_metrics(top: np.ndarray, relevant: ItemSets, ks: tuple[int, ...], item_counts: np.ndarray) -> dict:
    """Every metric at every k for rankings ``top`` (``[n_queries, >= max(ks)]`` vocabulary
    indices, 0 = no item) against each query's ``relevant`` items.

    hit_rate@k         share of queries with at least one relevant item in the top k
    recall@k           relevant items found in the top k / relevant items, averaged
    ndcg@k             DCG of the top k (gain 1 per relevant item, discount log2(rank + 1))
                       over the best possible DCG for that query, averaged
    mrr@k              1 / rank of the first relevant item in the top k (0 if none), averaged
    coverage@k         distinct items recommended in any top k / catalog size
    mean_popularity@k  mean training interactions of the recommended items (padding excluded)
    """
    each = per_query_metrics(top, relevant, ks)
    counts = np.concatenate([[0], item_counts]).astype(np.float64)
    result = {}
    for k in ks:
        top_k = top[:, :k]
        real = top_k > 0
        result.update({f"{name}@{k}": float(each[f"{name}@{k}"].mean()) for name in RANKING})
        result.update({
            f"coverage@{k}": float(len(np.unique(top_k[real])) / len(item_counts)),
            f"mean_popularity@{k}": float(counts[top_k[real]].mean()) if real.any() else 0.0,
        })
    return result


def paired_interval(candidate: np.ndarray, serving: np.ndarray, users: np.ndarray,
                    confidence: float, min_users: int = 2) -> tuple[float, float, float]:
    """The mean of ``candidate - serving`` over queries (both ``[n_queries]``, one metric's
    value per query, from the same queries) and its two-sided ``confidence`` interval:
    ``(difference, low, high)``.

    The interval is the normal approximation of the paired difference, with the user as the
    unit: a user's queries are not independent draws (under tfrs each held-out interaction is
    a query), so the variance is that of a ratio of per-user sums (the cluster-robust, or
    linearised, variance; with one query per user it is the usual ``s^2 / n``). With fewer than
    ``min_users`` users (at least 2) the interval is unbounded: the approximation needs a few
    dozen, and nothing can be said with confidence of fewer.
    """
    differences = np.asarray(candidate, dtype=np.float64) - np.asarray(serving, dtype=np.float64)
    if len(differences) == 0:
        return 0.0, -np.inf, np.inf
    mean = float(differences.mean())
    _, user_row = np.unique(np.asarray(users), return_inverse=True)
    n_users = int(user_row.max()) + 1
    if n_users < max(2, min_users):
        return mean, -np.inf, np.inf
    residuals = np.bincount(user_row, weights=differences - mean, minlength=n_users)
    variance = n_users / (n_users - 1) * float((residuals ** 2).sum()) / len(differences) ** 2
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * variance ** 0.5
    return mean, mean - half, mean + half


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


SCORE_BUDGET = 1 << 28  # scores held at once (1 GiB of float32), whatever the catalog size


def top_k_by_scores(score_rows: Callable[[np.ndarray], torch.Tensor], seen: ItemSets, k: int,
                    n_columns: int) -> np.ndarray:
    """Exact top-k per row of a dense score matrix, seen items excluded.

    score_rows(rows) returns ``[len(rows), n_columns]`` scores, column j for vocabulary
    index j (column 0 is ignored). Rows are scored in chunks of at most ``CHUNK`` and at
    most ``SCORE_BUDGET / n_columns``, so memory stays bounded for any catalog (100k users
    against 1M items are scored 268 rows at a time). Returns ``[n_rows, k]`` indices.
    """
    n_rows = len(seen.indptr) - 1
    out = np.zeros((n_rows, k), dtype=np.int64)
    for rows in _chunks(n_rows, max(1, min(CHUNK, SCORE_BUDGET // n_columns))):
        scores = score_rows(rows).contiguous()  # a copy only for views (popularity's expand)
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


def exact_top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, seen: ItemSets, k: int) -> np.ndarray:
    """Brute-force inner-product top-k; item_vectors row j is vocabulary index j + 1."""
    items = torch.from_numpy(np.vstack([np.zeros((1, item_vectors.shape[1]), np.float32), item_vectors]))
    users = torch.from_numpy(user_vectors)
    return top_k_by_scores(lambda rows: users[rows] @ items.T, seen, k, len(items))


def popularity_top_k(item_counts: np.ndarray, seen: ItemSets, k: int) -> np.ndarray:
    """Most-trained-on items first; ties broken towards the lower index."""
    counts = np.concatenate([[0], item_counts]).astype(np.float64)
    scores = torch.from_numpy(counts - np.arange(len(counts)) * 1e-9)  # stable tie-break
    return top_k_by_scores(lambda rows: scores.expand(len(rows), -1), seen, k, len(scores))


def random_top_k(n_items: int, seen: ItemSets, k: int, seed: int = 0) -> np.ndarray:
    """A random ranking per row (seeded), seen items excluded: the floor any model must beat."""
    generator = torch.Generator().manual_seed(seed)
    return top_k_by_scores(lambda rows: torch.rand(len(rows), n_items + 1, generator=generator), seen, k,
                           n_items + 1)


def drop_seen(candidates: np.ndarray, rows: np.ndarray, seen: ItemSets, k: int) -> np.ndarray:
    """Keep, per row, the first k candidates that row has not seen (0 pads short rows).

    candidates: ``[len(rows), L]`` vocabulary indices in rank order, 0 for "none".
    """
    width = int(max(candidates.max(initial=0), seen.indices.max(initial=0))) + 1
    keys = np.arange(len(rows))[:, None] * width + candidates
    drop = np.isin(keys, seen.keys(rows, width)) | (candidates <= 0)
    order = np.argsort(drop, axis=1, kind="stable")  # kept candidates first, rank order preserved
    kept = np.take_along_axis(candidates, order, axis=1)
    kept[np.take_along_axis(drop, order, axis=1)] = 0
    out = np.zeros((len(rows), k), dtype=np.int64)
    out[:, :min(k, kept.shape[1])] = kept[:, :k]
    return out


def search_top_k(search: Callable[[Iterable[tuple[np.ndarray, int]]], Iterable[np.ndarray]],
                 user_vectors: np.ndarray, seen: ItemSets, k: int, max_limit: int, batch: int = 16384,
                 max_results: int = 65536) -> np.ndarray:
    """Top-k through an ANN search, seen items excluded on the client.

    search(requests) takes ``(vectors, limit)`` requests and answers each, in order, with
    ``[len(vectors), limit]`` vocabulary indices (0 pads); it may keep several on the wire.
    Each user needs ``k + n_seen`` results, so users are sorted by how much they have seen
    and searched in requests that share one limit (capped at ``max_limit``), each with at
    most ``batch`` users and, past its first user, at most ``max_results`` results in all:
    light users are not made to fetch as much as the heaviest user of a large batch.
    """
    n_seen = seen.counts()
    order = np.argsort(n_seen, kind="stable")
    limits = np.minimum(max_limit, k + n_seen[order])  # non-decreasing along order
    plan = []  # (rows, limit) per request
    start = 0
    while start < len(order):
        # Users start..stop-1 share limits[stop - 1]; grow while the request stays in budget.
        fits = np.arange(1, len(order) - start + 1) * limits[start:] <= max_results
        stop = start + max(1, min(batch, int(np.argmin(fits)) if not fits.all() else len(fits)))
        plan.append((order[start:stop], int(limits[stop - 1])))
        start = stop
    out = np.zeros((len(order), k), dtype=np.int64)
    answers = search((user_vectors[rows], limit) for rows, limit in plan)
    for (rows, _), found in zip(plan, answers, strict=True):
        out[rows] = drop_seen(found, rows, seen, k)
    return out

"""Search answers as ``[nq, limit]`` arrays, read from Milvus' response as columns.

pymilvus turns a search response into one Python object per hit, which costs about three
times the search itself for bulk evaluation. ``read`` takes the gRPC response that an
``_async=True`` search keeps (pymilvus' ``SearchFuture._future``, not a public attribute)
and decodes its flat id and score arrays with numpy; where a pymilvus has no such
attribute it falls back to the parsed answer, with the same result.
"""

from __future__ import annotations

import grpc
import numpy as np
from pymilvus.client.utils import check_status
from pymilvus.exceptions import MilvusException


def read(future, nq: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The answer of a search sent with ``_async=True`` (or the MilvusException raised when
    sending it) as ``(ids, scores)``, both ``[nq, limit]``, padded as ``columns_from_flat``
    says. A gRPC failure becomes a MilvusException, transient (code 2) when the server was
    unavailable or slow, so that the store's retries apply."""
    if isinstance(future, MilvusException):
        raise future
    raw = getattr(future, "_future", None)
    if raw is None:  # a pymilvus without the raw answer: read the parsed one
        hits = future.result()
        return columns([list(h.ids) for h in hits], [list(h.distances) for h in hits], nq, limit)
    try:
        response = raw.result()
    except grpc.RpcError as error:
        code = error.code() if callable(getattr(error, "code", None)) else None
        transient = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        raise MilvusException(code=2 if transient else 1, message=f"{code}: {error.details()}") from None
    check_status(response.status)
    results = response.results
    topks = np.asarray(results.topks, dtype=np.int64)
    if results.ids.HasField("str_id"):
        found = np.asarray(results.ids.str_id.data, dtype=object)
    else:
        found = np.asarray(results.ids.int_id.data, dtype=np.int64)
    return columns_from_flat(found, np.asarray(results.scores, dtype=np.float32), topks, nq, limit)


def columns_from_flat(found: np.ndarray, scores: np.ndarray, topks: np.ndarray, nq: int,
                      limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Milvus' flat answer (every query's hits one after another, ``topks[q]`` of them for
    query q) as ``[nq, limit]`` arrays padded with -1 / None and -inf."""
    strings = found.dtype == object
    ids = np.full((nq, limit), None if strings else -1, dtype=object if strings else np.int64)
    out = np.full((nq, limit), -np.inf, dtype=np.float32)
    if len(topks) != nq or topks.sum() != len(found):
        raise MilvusException(code=1, message=f"search answered {len(topks)} queries with {len(found)} hits, "
                                              f"expected {nq} queries")
    if (topks == limit).all():  # the usual case: every query has its full answer
        return found.reshape(nq, limit), scores.reshape(nq, limit)
    rows = np.repeat(np.arange(nq), topks)
    columns = np.arange(len(found)) - np.repeat(np.cumsum(topks) - topks, topks)
    ids[rows, columns] = found
    out[rows, columns] = scores
    return ids, out


def columns(id_lists: list[list], score_lists: list[list], nq: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query lists of ids and scores (pymilvus' parsed answer) as ``columns_from_flat`` does."""
    topks = np.array([len(row) for row in id_lists], dtype=np.int64)
    flat = [value for row in id_lists for value in row]
    strings = any(isinstance(value, str) for value in flat)
    found = np.array(flat, dtype=object if strings else np.int64)
    scores = np.array([value for row in score_lists for value in row], dtype=np.float32)
    return columns_from_flat(found, scores, topks, nq, limit)

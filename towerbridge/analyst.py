"""Ad-hoc questions to the item collection, as analysts ask them.

Every function takes a name that is an alias (the served version) or a version's
collection name, and uses the model that built that version (recorded with it), so the
user tower always matches the item vectors it is compared with.

    recommend    top-k items for a user (items the user already had are left out)
    similar      items nearest to an item, by the cosine of their trained embeddings
    query        rows matching a filter expression
    versions     every version of an alias, with what serves, sizes, index and model
    interactions the log a version's model knows (users to ask about, item popularity)
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from towerbridge.errors import CollectionError, ConfigError, DataError, TowerbridgeError
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.schema import MAX_LIMIT, VECTOR_FIELD, id_filter
from towerbridge.milvus.store import ItemStore
from towerbridge.towers import artifact
from towerbridge.towers.vectors import history_vector, user_vectors

RESULT_FIELDS = ("title", "genres")


ASKED_AT_MOST = 3
# Milvus answers a question about a version whose segments are being released (retention
# dropping the version an alias served a moment ago) with an internal error, not "not found".
INTERNAL = ("service internal error", "unknownerror")


def _again_if_swapped(function):
    """A question asked through an alias is answered by one version. When the rebuild moves
    the alias (and retention drops the old version) between finding the version and asking
    it, the question is asked again, of the version served now; an internal error of the
    server is asked again after a short pause. At most ASKED_AT_MOST times in all."""
    @functools.wraps(function)
    def asked(store: ItemStore, name: str, *args, **kwargs):
        for attempt in range(1, ASKED_AT_MOST + 1):
            before = store.resolve(name)
            try:
                return function(store, name, *args, **kwargs)
            except (CollectionError, DataError) as error:  # e.g. the item's row is gone with its version
                if store.resolve(name) != before and attempt < ASKED_AT_MOST:
                    continue
                if isinstance(error, DataError):
                    # an answer about the data (an item not in the version), not a failure to read
                    # it: nothing to diagnose (a look for missing files would race the compaction
                    # that retiring items sets off)
                    raise
                try:
                    missing = store.missing_files(before)
                except CollectionError:  # the version itself is gone: the first error says more
                    missing = []
                if missing:
                    raise CollectionError(damaged_message(before, missing)) from None
                if attempt == ASKED_AT_MOST or not any(sign in str(error).lower() for sign in INTERNAL):
                    raise
                time.sleep(0.2 * attempt)
    return asked


def damaged_message(collection: str, missing: list[str]) -> str:
    return (f"{collection} is damaged: {len(missing)} of its files are missing from the Milvus server's disk "
            f"(e.g. {missing[0]}), so Milvus cannot load it; `towerbridge rebuild` builds a version to replace it")


def _typed_id(value: str, record: VersionRecord, what: str):
    """An id from the command line as the collection stores it."""
    if record.id_type == "string":
        return str(value)
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{what} id {value!r}: this collection's ids are integers") from None


def _version(store: ItemStore, name: str) -> tuple[str, VersionRecord]:
    collection = store.resolve(name)
    record = store.record(collection)
    if not record.model_dir:
        raise CollectionError(f"{collection} was not built by towerbridge (no model recorded with it)")
    return collection, record


def _known_interactions(model_dir: Path) -> pd.DataFrame:
    """Every interaction the model's prepared data holds (training and held out), the
    freshest log towerbridge has for that model."""
    manifest = artifact.read_manifest(model_dir)
    parts = [Path(manifest.prepared_dir) / f"{name}.parquet" for name in ("train", "held_out")]
    return pd.concat([pd.read_parquet(part, columns=["user_id", "item_id", "timestamp"])
                      for part in parts if part.exists()], ignore_index=True)


def interactions(store: ItemStore, name: str) -> pd.DataFrame:
    """The interactions the model of the version behind ``name`` knows (user_id, item_id,
    timestamp; its training and held-out data): what `recommend` reads users' items from."""
    _, record = _version(store, name)
    return _known_interactions(Path(record.model_dir))


@_again_if_swapped
def recommend(store: ItemStore, name: str, user: str | None = None, k: int = 10, expression: str = "",
              include_seen: bool = False, history: list | None = None,
              interactions: pd.DataFrame | None = None) -> list[dict]:
    """Top ``k`` items by the model of the version behind ``name``, for a ``user``, or for
    someone who just had the items ``history`` (oldest first; history towers only).

    The history towers read the user's last items in ``interactions`` (user_id, item_id,
    timestamp; default: the model's prepared data, training and held-out parts), so an
    interaction newer than the model changes the answer. Items the user (or the history)
    already had are left out unless ``include_seen``: for the id tower, those in
    ``interactions`` when given, else its training data."""
    collection, record = _version(store, name)
    if expression:
        store.check_filter(collection, expression)
    if (user is None) == (history is None):
        raise ConfigError("recommend needs a user or a history (one of them)")
    model_dir = Path(record.model_dir)
    trained = artifact.load(model_dir)
    if history is not None:
        items = [_typed_id(str(item), record, "item") for item in history]
        try:
            query = history_vector(trained, items)
        except TowerbridgeError as error:
            raise type(error)(f"model {record.model_id} (collection {collection}): {error}") from None
        seen = set() if include_seen else set(items)
    else:
        user_id = _typed_id(user, record, "user")
        if not trained.model.user_tower.reads_history:
            # the id tower knows the users it trained on; newer data only adds seen items
            if trained.user_index(np.array([user_id], dtype=trained.user_ids.dtype))[0] == 0:
                raise DataError(f"user {user_id!r} is not known to model {record.model_id} (collection "
                                f"{collection}); it was trained on {len(trained.user_ids):,} users")
            prepared = Path(artifact.read_manifest(model_dir).prepared_dir)
            log = interactions if interactions is not None else pd.read_parquet(
                prepared / "train.parquet", columns=["user_id", "item_id"])
            mine, histories = log[log["user_id"] == user_id], None
        else:
            log = _known_interactions(model_dir) if interactions is None else interactions
            mine = log[log["user_id"] == user_id]
            if mine.empty:
                raise DataError(f"user {user_id!r} has no interactions in the data of model {record.model_id} "
                                f"(collection {collection}); ask with a history of items instead")
            histories = trained.model.user_tower.histories(trained, mine)
        query = user_vectors(trained, np.array([user_id], dtype=trained.user_ids.dtype), histories)[0]
        seen = set() if include_seen else set(mine["item_id"].tolist())
    hits = store.search_rows(collection, query, min(MAX_LIMIT, k + len(seen)), record.search_params(), expression,
                             RESULT_FIELDS)
    return [hit for hit in hits if hit["item_id"] not in seen][:k]


@_again_if_swapped
def similar(store: ItemStore, name: str, item: str, k: int = 10, expression: str = "") -> list[dict]:
    """The ``k`` items whose trained embeddings are nearest the item's, with their ``cosine``
    similarity in [-1, 1], best first.

    The stored vector is ``[embedding / temperature, popularity prior]`` (towers/vectors.py).
    With the cosine similarity (``TowerConfig.similarity``) every embedding has unit length, so
    an inner-product search with the prior set to 0 ranks by cosine; with ``dot`` it ranks by
    inner product, and longer vectors come first among the candidates. The index may only
    estimate that product (PQ codes), so the cosine of each hit is computed exactly from the
    stored vectors, and the hits are ordered by it."""
    collection, record = _version(store, name)
    if expression:
        store.check_filter(collection, expression)
    item_id = _typed_id(item, record, "item")
    id_type = record.id_type
    rows = store.rows(collection, id_filter([item_id], id_type), [VECTOR_FIELD])
    if not rows:
        raise DataError(f"item {item_id!r} is not in collection {collection}")
    tuned = record.search_params()
    query = np.asarray(rows[0][VECTOR_FIELD][tuned.pad:], dtype=np.float32)  # without a SCANN version's padding
    query[-1] = 0.0
    nearest = store.search_rows(collection, query, k + 1, tuned, expression, RESULT_FIELDS)
    hits = [hit for hit in nearest if hit["item_id"] != item_id][:k]
    if not hits:
        return []
    stored = {row["item_id"]: row[VECTOR_FIELD] for row in store.rows(
        collection, id_filter([hit["item_id"] for hit in hits], id_type), ["item_id", VECTOR_FIELD])}
    cosines = cosine(query[:-1], np.array([stored[hit["item_id"]] for hit in hits],
                                          dtype=np.float32)[:, tuned.pad:-1])
    found = [{"item_id": hit["item_id"], "cosine": float(value), **{field: hit[field] for field in RESULT_FIELDS}}
             for hit, value in zip(hits, cosines)]
    return sorted(found, key=lambda row: -row["cosine"])


def cosine(vector: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``vector`` [d] with each row of ``vectors`` [n, d], in [-1, 1]."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(vector)
    return np.clip(vectors @ vector / np.maximum(norms, 1e-12), -1.0, 1.0)


@_again_if_swapped
def query(store: ItemStore, name: str, expression: str, fields: list[str] | None = None,
          limit: int | None = 100) -> list[dict]:
    """Rows matching ``expression`` (a Milvus boolean expression), ``fields`` of each."""
    collection = store.resolve(name)
    known = store.field_names(collection)
    fields = fields or ["item_id", *RESULT_FIELDS]
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}; {collection} has {', '.join(known)}")
    if not expression:
        raise ConfigError("a filter expression is needed, e.g. 'genres like \"%Comedy%\"' or 'item_id in [1, 2]'")
    store.check_filter(collection, expression)
    return store.rows(collection, expression, fields, limit)


VERSION_COLUMNS = ["collection", "serving", "alias_target", "damaged", "missing_files", "complete", "rows",
                   "index_type", "params", "nprobe", "reorder_k", "model_id", "dataset", "created_at", "served_since",
                   "hit_rate@10", "gate", "index_fallback", "catalog"]


def versions(store: ItemStore, alias: str) -> list[dict]:
    """Every version of ``alias``, newest first. A version whose files are missing from the
    server's disk is ``damaged``, never ``serving``, even while the alias still points at it."""
    target = store.alias_target(alias)
    listed = []
    for name in reversed(store.versions(alias)):
        record = store.record(name)
        missing = store.missing_files(name)
        listed.append({
            "collection": name,
            "serving": name == target and not missing,
            "alias_target": name == target,
            "damaged": bool(missing),
            "missing_files": missing,
            "complete": record.complete,
            "rows": store.count(name),
            "index_type": record.index_type,
            "params": record.params,
            "index_fallback": record.index_fallback.describe() if record.index_fallback else None,
            "nprobe": record.nprobe,
            "reorder_k": record.reorder_k,
            "model_id": record.model_id,
            "dataset": record.dataset,
            "created_at": record.created_at,
            "served_since": record.served_since,
            "hit_rate@10": record.evaluated_metric("hit_rate@10"),
            "gate": record.gate.to_dict() if record.gate else None,
            "catalog": record.catalog.to_dict() if record.catalog else None,
        })
    return listed

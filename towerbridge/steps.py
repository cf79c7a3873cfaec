"""The pipeline's steps as plain functions: paths and small values in, paths and small values out.

Prefect tasks in ``flows/`` are thin wrappers over these; each can be called and
tested without Prefect.

    prepare_data   dataset -> prepared directory (items, train, held_out Parquet + summary);
                   in towerbridge.data.prepare, so that data is checked without torch or servers
    train_model    prepared directory -> model artifact directory
    embed_shard    model directory + a range of its catalog -> the range's item vectors as a .npy file
    index_model    model directory -> Milvus collection (new version) behind the alias
    evaluate_model model + prepared data + collection -> evaluation.json / evaluation.md / per_query.parquet
    compare_with_serving  the evaluated candidate + the serving version -> a Comparison on the same users
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from towerbridge import defaults, settings
from towerbridge import evaluation as ev
from towerbridge.catalog import CatalogRecord, ChangeLog
from towerbridge.data.prepare import prepare_data, read_summary  # noqa: F401  (prepare_data: the train flow's first step)
from towerbridge.data.split import excludes_seen
from towerbridge.errors import CollectionError, ConfigError, DataError, TowerbridgeError
from towerbridge.milvus.index import (
    PLATEAU,
    Fallback,
    IvfPqParams,
    ScannParams,
    SearchParams,
    auto_index,
    choose_index,
    fallback_index,
    min_nprobe,
    pad_dims,
    pad_vectors,
    params_record,
    tune_search,
)
from towerbridge.milvus.record import Tuning, VersionEvaluation, VersionRecord
from towerbridge.milvus.schema import DEFAULT_ALIAS, TextLimits
from towerbridge.milvus.store import ItemStore
from towerbridge.milvus.store import insert_workers as store_insert_workers
from towerbridge.report import write_report
from towerbridge.results import BuiltVersion, Comparison, EvaluationReport, MetricComparison
from towerbridge.towers import artifact, distributed
from towerbridge.towers.checkpoint import describe_stop
from towerbridge.towers.config import TowerConfig
from towerbridge.towers.manifest import TrainingRecord, TrainingRun
from towerbridge.towers.train import read_parent, train
from towerbridge.towers.vectors import item_vectors, new_item_vectors, user_vectors

log = logging.getLogger("towerbridge")


def read_part(prepared_dir: str, name: str) -> pd.DataFrame:
    path = Path(prepared_dir) / f"{name}.parquet"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the train flow (which prepares the data) first")
    return pd.read_parquet(path)


def train_model(prepared_dir: str, models_dir: str, config: dict | None = None, progress: bool = True,
                checkpoint_dir: str | None = None, processes: int = defaults.TRAIN_PROCESSES,
                parent_dir: str | None = None) -> str:
    """Train the towers on the prepared training split; return the model directory.

    With ``checkpoint_dir``, a run interrupted after some epochs resumes from there.
    processes: data-parallel training processes on this machine (PyTorch DDP,
    ``towerbridge.towers.distributed``), 1 or more (``TrainOptions`` checks it); 1: this process.
    parent_dir: a model to continue (``towers/warm.py``): its weights are the start, and the new
    model's manifest records it and what was new (``lineage``)."""
    tower_config = TowerConfig.from_dict(config or {})
    started = time.perf_counter()
    summary = read_summary(prepared_dir)
    if processes > 1:
        trained, training = distributed.train_processes(prepared_dir, tower_config, processes,
                                                        checkpoint_dir=checkpoint_dir, progress=progress,
                                                        parent_dir=parent_dir)
    else:
        items, users, spec = distributed.read_catalog(prepared_dir, tower_config)
        trained = train(read_part(prepared_dir, "train"), items, users, tower_config, spec=spec,
                        progress=progress, checkpoint_dir=checkpoint_dir, parent=read_parent(parent_dir))
        training = TrainingRecord()
    seconds = time.perf_counter() - started
    directory = Path(models_dir) / settings.new_id()
    artifact.save(trained, directory, TrainingRun(prepared_dir=str(Path(prepared_dir).resolve()), data=summary,
                                                  seconds=round(seconds, 2), training=training))
    if checkpoint_dir:  # the artifact supersedes it
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return str(directory)


def embedding_shards(model_dir: str, shards: int) -> list[tuple[int, int]]:
    """The model's catalog cut into ``shards`` ranges of vocabulary positions ``(first, stop)``."""
    if shards < 1:
        raise ConfigError(f"embed_shards must be 1 or more, got {shards}")
    n_items = artifact.read_manifest(Path(model_dir)).n_items
    edges = np.linspace(0, n_items, min(shards, max(1, n_items)) + 1).round().astype(int)
    return [(int(first), int(stop)) for first, stop in zip(edges[:-1], edges[1:])]


@functools.lru_cache(maxsize=2)
def _model(model_dir: str, written: float):
    return artifact.load(Path(model_dir))


def embed_shard(model_dir: str, first: int, stop: int, out_dir: str, threads: int | None = None) -> str:
    """Embed the items at vocabulary positions ``first`` to ``stop`` (exclusive) of the model's
    catalog into ``out_dir/items-<first>-<stop>.npy`` (float32 ``[stop - first, vector_dim]``,
    written whole or not at all); return its path. A process embedding several shards loads
    the model once. threads: torch threads for this process (default: torch's choice)."""
    if threads:
        torch.set_num_threads(threads)
    trained = _model(str(Path(model_dir).resolve()), (Path(model_dir) / "weights.pt").stat().st_mtime)
    _, vectors = item_vectors(trained, first=first, stop=stop)
    path = Path(out_dir) / f"items-{first:012d}-{stop:012d}.npy"
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.save(file, vectors, allow_pickle=False)
    partial.replace(path)
    return str(path)


def read_embedded(files: list[str], n_items: int, dim: int) -> np.ndarray:
    """The vectors ``embed_shard`` wrote, in catalog order, ``[n_items, dim]``; refuses shards
    that leave a gap, overlap, or hold the wrong shape."""
    vectors = np.empty((n_items, dim), dtype=np.float32)
    expected = 0
    for file in sorted(files, key=lambda name: Path(name).name):
        first, stop = (int(part) for part in Path(file).stem.split("-")[1:3])
        shard = np.load(file, allow_pickle=False)
        if first != expected or shard.shape != (stop - first, dim):
            raise CollectionError(f"{file}: embedded shard {first}-{stop} of shape {shard.shape} does not continue "
                                  f"the catalog at position {expected} with {dim}-dimensional vectors")
        vectors[first:stop] = shard
        expected = stop
    if expected != n_items:
        raise CollectionError(f"the embedded shards cover {expected} of {n_items} items; nothing was indexed")
    return vectors


def index_model(model_dir: str, uri: str, alias: str = DEFAULT_ALIAS, progress: bool = True,
                index_params: dict | None = None, keep_versions: int = defaults.KEEP_VERSIONS,
                target_recall: float = defaults.TARGET_RECALL, embedded: list[str] | None = None,
                insert_workers: int | None = None) -> BuiltVersion:
    """Embed every item, load the vectors as a new collection version with an IVF_PQ (or
    SCANN) index, tune its search, point the alias at it, and keep the newest ``keep_versions``.

    index_params: ``index_type`` (``AUTO``, the default, ``IVF_PQ`` or ``SCANN``; see
    ``build_version``) and overrides of the
    parameters chosen from the data (``nlist``; ``m``, ``nbits`` for IVF_PQ), checked before any
    write. One build per alias at a time (a lock in TOWERBRIDGE_HOME); versions a crashed
    build left half-built are dropped first. A failure before the alias moves drops the
    partial collection and leaves the alias where it was. embedded: the item vectors as
    ``embed_shard`` files (e.g. from Dask workers) instead of embedding them here.
    insert_workers: processes inserting at once (default: by catalog size, ``store.insert_workers``).
    keep_versions (at least 1) and target_recall (in (0, 1]) as ``IndexOptions`` checks them.
    """
    with ItemStore(uri) as store, settings.lock(f"index-{alias}"):
        half_built = store.remove_half_built(alias)
        built = build_version(store, model_dir, alias, progress, index_params, target_recall, embedded=embedded,
                              insert_workers=insert_workers)
        try:
            previous = store.alias_target(alias)
            serve_version(store, alias, built.collection)
        except BaseException:
            store.drop(built.collection)
            raise
        dropped = store.apply_retention(alias, keep_versions)
        return replace(built, previous=previous, dropped_versions=tuple(dropped), removed_half_built=tuple(half_built))


def build_version(store: ItemStore, model_dir: str, alias: str, progress: bool = True,
                  index_params: dict | None = None, target_recall: float = defaults.TARGET_RECALL,
                  complete: bool = True, embedded: list[str] | None = None,
                  insert_workers: int | None = None) -> BuiltVersion:
    """A new version of ``alias`` (every item embedded, index built, loaded, search tuned),
    not yet serving. Call it holding the alias' build lock. On any failure the partial
    collection is dropped before the error propagates. ``complete=False`` leaves it unmarked
    (the rebuild marks it after validation): until then the next build removes it as half-built.
    embedded: the item vectors as ``embed_shard`` files, read instead of embedding here.
    insert_workers: processes inserting at once (default: by catalog size). The version's
    ``timing`` says where the time went: embed, insert (and flush), index (build and load), tune.

    The index left to towerbridge (``index_type`` AUTO, the default): IVF_PQ; where its tuned
    search falls short of ``target_recall``, that version is dropped and a SCANN one built from
    the same vectors (its record says why, ``Fallback``). A rebuild whose serving version had to
    fall back on a catalog of about this size goes straight to SCANN.

    The alias' catalog changes (``catalog.ChangeLog``) as logged when the build starts are kept:
    retired items are left out of the collection, and added items the model's catalog lacks are
    embedded from their features; the version records how far through the log it is, and the
    changes logged after that are applied when it is made to serve (``serve_version``).
    """
    started = time.perf_counter()
    manifest = artifact.read_manifest(Path(model_dir))
    trained = artifact.load(Path(model_dir))
    if embedded is not None:
        item_ids, vectors = trained.item_ids, read_embedded(embedded, len(trained.item_ids), trained.config.vector_dim)
    else:
        item_ids, vectors = item_vectors(trained, progress=progress)
    items = read_part(manifest.prepared_dir, "items").set_index("item_id").reindex(item_ids)
    titles, genres = items["title"].fillna("").tolist(), items["genres"].fillna("").tolist()
    changes = ChangeLog(alias).state()
    if changes.through:
        item_ids, vectors, titles, genres = _with_changes(trained, changes, item_ids, vectors, titles, genres)
    params = choose_index(len(item_ids), vectors.shape[1], index_params)
    auto = auto_index(index_params)
    fallback = _remembered_fallback(store, alias, len(item_ids), target_recall) if auto else None
    scann = fallback_index(len(item_ids), vectors.shape[1], index_params) if auto else None
    if fallback is not None and scann is not None:
        params = scann
    catalog = _Catalog(item_ids, vectors, titles, genres, changes.through)
    workers = insert_workers or store_insert_workers(len(item_ids))
    timing = {"embed_s": time.perf_counter() - started}
    build = partial(_build_one, store, manifest, model_dir, alias, trained, catalog, target_recall, progress, workers)
    name, info, search, recall, stages = build(params, fallback)
    if auto and isinstance(params, IvfPqParams) and recall < target_recall and scann is not None:
        fallback = Fallback(recall=round(recall, 4), nprobe=search.nprobe, items=len(item_ids), target=target_recall)
        log.warning(f"{name}: {fallback.describe()}; building SCANN instead")
        store.drop(name)
        timing.update({f"ivf_pq_{key}": value for key, value in stages.items()})
        params = scann
        name, info, search, recall, stages = build(params, fallback)
    timing.update(stages)
    if complete:
        try:
            store.mark_complete(name)
        except BaseException:
            store.drop(name)
            raise
    return BuiltVersion(collection=name, alias=alias, rows=int(info["indexed_rows"]), items=len(item_ids),
                        segments=tuple(store.segments(name)), index=params_record(params), nprobe=search.nprobe,
                        reorder_k=search.reorder_k, index_recall=round(recall, 4), model_id=manifest.model_id,
                        model_dir=str(Path(model_dir).resolve()),
                        insert_workers=workers,
                        index_fallback=fallback.to_dict() if fallback and isinstance(params, ScannParams) else None,
                        timing={key: round(value, 1) for key, value in timing.items()})


@dataclass(frozen=True)
class _Catalog:
    """The items a version holds: ids, vectors (unpadded), titles and genres."""

    item_ids: np.ndarray
    vectors: np.ndarray
    titles: list[str]
    genres: list[str]
    changes_through: int = 0  # the last catalog change included


def _build_one(store: ItemStore, manifest, model_dir: str, alias: str, trained, catalog: _Catalog,
               target_recall: float, progress: bool, workers: int, params,
               fallback: Fallback | None) -> tuple[str, dict, SearchParams, float, dict]:
    """One collection of ``catalog`` with the ``params`` index: created, filled, indexed, loaded
    and its search tuned (not marked complete); dropped on any failure. Returns ``(name, index
    info, tuned search, recall, seconds per stage)``."""
    pad = pad_dims(params, catalog.vectors.shape[1])
    id_type = manifest.id_type
    record = VersionRecord(model_id=manifest.model_id, model_dir=str(Path(model_dir).resolve()), alias=alias,
                           dataset=manifest.dataset, created_at=defaults.utc_now(),
                           user_tower=manifest.config.user_tower, id_type=id_type, **params_record(params),
                           pad_dims=pad, index_fallback=fallback if isinstance(params, ScannParams) else None)
    name = store.create_version(alias, manifest.model_id, catalog.vectors.shape[1] + pad, record,
                                TextLimits.of(catalog.titles, catalog.genres,
                                              catalog.item_ids if id_type == "string" else None))
    timing: dict[str, float] = {}
    try:
        mark = time.perf_counter()
        store.insert(name, catalog.item_ids, pad_vectors(catalog.vectors, pad), catalog.titles, catalog.genres,
                     progress=progress, workers=workers)
        timing["insert_s"], mark = time.perf_counter() - mark, time.perf_counter()
        info = store.build_index(name, params)
        timing["index_s"], mark = time.perf_counter() - mark, time.perf_counter()
        if catalog.changes_through:
            store.set_record(name, catalog=CatalogRecord(through=catalog.changes_through,
                                                         updated_at=defaults.utc_now()))
        search, recall = _tune_search(store, name, params, trained, catalog.vectors,
                                      read_part(manifest.prepared_dir, "train"), target=target_recall, pad=pad,
                                      catalog_ids=catalog.item_ids)
        timing["tune_s"] = time.perf_counter() - mark
    except BaseException:
        store.drop(name)
        raise
    return name, info, search, recall, timing


def _with_changes(trained, changes, item_ids: np.ndarray, vectors: np.ndarray, titles: list[str],
                  genres: list[str]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The model's catalog with the logged changes: retired items out; added items in, and
    updated ones (an add of an item the catalog has) replaced, each embedded from its logged
    features by this model, as ``add_items`` embedded it into the serving version."""
    # a hash lookup: np.isin with the log's object array compares every id with every retired one
    keep = ~pd.Index(item_ids).isin(changes.retired)
    item_ids, vectors = item_ids[keep], vectors[keep]
    titles = [title for title, kept in zip(titles, keep) if kept]
    genres = [genre for genre, kept in zip(genres, keep) if kept]
    if changes.added is None or not len(changes.added):
        return item_ids, vectors, titles, genres
    needed = [f.column for f in trained.spec.item if f.kind != "id" and f.column not in changes.added.columns]
    if needed:
        raise DataError(f"items added since the last rebuild lack column(s) this model reads: "
                        f"{', '.join(needed)}; add them again with those columns")
    logged = changes.added["item_id"].to_numpy().astype(item_ids.dtype)
    at = pd.Index(item_ids).get_indexer(logged)
    updated, extra = changes.added[at >= 0], changes.added[at < 0]
    if len(updated):
        vectors = vectors.copy()
        vectors[at[at >= 0]] = new_item_vectors(trained, updated)
        for position, title, genre in zip(at[at >= 0], _text(updated, "title"), _text(updated, "genres")):
            titles[position], genres[position] = title, genre
    if len(extra):
        item_ids = np.concatenate([item_ids, logged[at < 0]])
        vectors = np.concatenate([vectors, new_item_vectors(trained, extra)])
        titles, genres = titles + _text(extra, "title"), genres + _text(extra, "genres")
    return item_ids, vectors, titles, genres


def _remembered_fallback(store: ItemStore, alias: str, n_items: int, target: float) -> Fallback | None:
    """The serving version's fallback from IVF_PQ, when it still applies to ``n_items`` items
    (``Fallback.still_applies``), as this version records it: measured in the serving version,
    or where that one had it from."""
    serving = store.alias_target(alias)
    if serving is None:
        return None
    try:
        fallback = store.record(serving).index_fallback
    except CollectionError:
        return None
    if fallback is None or not fallback.still_applies(n_items, target):
        return None
    return replace(fallback, seen_in=fallback.seen_in or serving)


def search_indices(store: ItemStore, name: str, tuned: SearchParams, trained):
    """A ``search`` for ``evaluation.search_top_k``: Milvus' answers to each (vectors, limit)
    request as vocabulary indices, ``[n, limit]``, 0 where a row ran short."""
    def search(requests):
        for ids, scores in store.search_many(name, requests, tuned):
            found = np.isfinite(scores)
            index = np.zeros(ids.shape, dtype=np.int64)
            index[found] = trained.item_index(ids[found])
            yield index
    return search


def _tune_search(store: ItemStore, name: str, params, trained, vectors: np.ndarray, train_part: pd.DataFrame,
                 n_queries: int = 1000, target: float = defaults.TARGET_RECALL,
                 pad: int = 0, catalog_ids: np.ndarray | None = None) -> tuple[SearchParams, float]:
    """Pick the search settings (nprobe; SCANN's reorder_k) on real queries, the way they are
    served: a seeded sample of training users, each asking for their top 100 unseen items,
    against brute force over the same vectors (``vectors``, the rows of ``catalog_ids``; by
    default the model's catalog in vocabulary order). Record them with the collection so every
    later search uses them."""
    users = np.sort(np.random.default_rng(0).permutation(trained.user_ids)[:n_queries])
    queries = user_queries(trained, users, train_part)
    catalog = pd.Index(trained.item_ids if catalog_ids is None else catalog_ids)
    row_of = pd.Series(np.arange(len(users)), index=users)
    mine = train_part[train_part["user_id"].isin(users)]
    position = catalog.get_indexer(mine["item_id"].to_numpy()) + 1  # 0: not in the catalog (retired)
    kept = position > 0
    seen = ev.ItemSets.from_pairs(row_of.loc[mine["user_id"]].to_numpy()[kept], position[kept], len(users))
    k = min(100, len(catalog))
    exact = ev.exact_top_k(queries, vectors, seen, k)

    def recall_at(candidate: SearchParams) -> float:
        def positions(requests):  # Milvus' answers as catalog positions, 0 where a row ran short
            for ids, scores in store.search_many(name, requests, replace(candidate, pad=pad)):
                found = np.isfinite(scores)
                index = np.zeros(ids.shape, dtype=np.int64)
                index[found] = catalog.get_indexer(ids[found]) + 1
                yield index

        approximate = ev.search_top_k(positions, queries, seen, k, max_limit=len(catalog))
        return ev.overlap(approximate, exact, (k,))[f"recall@{k}"]

    search, recall = tune_search(params, recall_at, k, target, least=min_nprobe(params.nlist, len(catalog)))
    search = replace(search, pad=pad)
    reorder = {} if search.reorder_k is None else {"reorder_k": search.reorder_k}
    store.set_record(name, nprobe=search.nprobe, **reorder,
                     tuning=Tuning(target_recall=target, k=k, queries=len(users), recall=round(recall, 4),
                                   reached_target=bool(recall >= target)))
    if recall < target:
        why = ("every list searched" if search.nprobe >= params.nlist else
               f"more lists gained less than {PLATEAU} each doubling")
        log.warning(f"{name}: recall@{k} {recall:.3f} at {search.describe()} (nlist {params.nlist}); {why}, so the "
                    f"index's codes ({params.codes()}), not nprobe, limit recall below the target {target}")
    return search, recall


def user_queries(trained, users: np.ndarray, interactions: pd.DataFrame) -> np.ndarray:
    """Query vectors of ``users``; the history towers read their histories in ``interactions``
    (user_id, item_id, timestamp), the id tower only their ids and features."""
    histories = trained.model.user_tower.histories(trained, interactions[interactions["user_id"].isin(users)])
    return user_vectors(trained, users, histories)


def seen_items(train_part: pd.DataFrame, users: np.ndarray, trained) -> ev.ItemSets:
    row_of = pd.Series(np.arange(len(users)), index=users)
    mine = train_part[train_part["user_id"].isin(users)]
    return ev.ItemSets.from_pairs(row_of.loc[mine["user_id"]].to_numpy(),
                              trained.item_index(mine["item_id"].to_numpy()), len(users))


PER_QUERY = "per_query.parquet"


@dataclass(frozen=True)
class EvaluationQueries:
    """The queries an evaluation ranks: ``users`` (raw ids, sorted) with held-out interactions,
    those interactions (``held_out``, in the prepared data's order) and the training part the
    rankings exclude and the history towers read. Under leave-last-out and time-cutoff a query
    is a user and all of the user's held-out items are relevant to it; under tfrs each held-out
    interaction is a query of its own. Vocabulary-free, so two models can rank the same queries."""

    users: np.ndarray
    held_out: pd.DataFrame
    train_part: pd.DataFrame
    protocol: str
    eligible: int = 0  # users with held-out interactions (``users`` may be a sample of them)

    @classmethod
    def read(cls, prepared_dir: str, protocol: str, eval_users: int | None = None,
             seed: int = defaults.EVALUATION_SEED, users: np.ndarray | None = None) -> EvaluationQueries:
        """Every user with held-out interactions, a seeded sample of ``eval_users`` of them, or
        exactly ``users`` (an earlier evaluation's)."""
        train_part, held_out = read_part(prepared_dir, "train"), read_part(prepared_dir, "held_out")
        eligible = held_out["user_id"].nunique()
        if users is None:
            users = np.unique(held_out["user_id"].to_numpy())
            if eval_users is not None and eval_users < len(users):
                users = np.sort(np.random.default_rng(seed).choice(users, eval_users, replace=False))
        held_out = held_out[held_out["user_id"].isin(users)].reset_index(drop=True)
        return cls(np.sort(users), held_out, train_part, protocol, eligible=int(eligible))

    @property
    def user_row(self) -> np.ndarray:
        """The row in ``users`` of each held-out interaction."""
        return np.searchsorted(self.users, self.held_out["user_id"].to_numpy())

    @property
    def query_unit(self) -> str:
        return "user" if excludes_seen(self.protocol) else "interaction"

    @property
    def rows(self) -> np.ndarray:
        """The row in ``users`` whose ranking each query reads."""
        return np.arange(len(self.users)) if excludes_seen(self.protocol) else self.user_row

    def query_users(self) -> np.ndarray:
        """The user of each query."""
        return self.users[self.rows]

    def per_query(self) -> pd.DataFrame:
        """Who each query is (and, for interaction queries, its held-out item): the columns
        ``per_query.parquet`` starts with."""
        if excludes_seen(self.protocol):
            return pd.DataFrame({"user_id": self.query_users()})
        return pd.DataFrame({"user_id": self.query_users(), "item_id": self.held_out["item_id"].to_numpy()})

    def matches(self, written: pd.DataFrame) -> bool:
        """Whether ``written`` (a ``per_query.parquet``) holds these queries, in this order."""
        expected = self.per_query()
        return len(written) == len(expected) and all(
            np.array_equal(written[column].to_numpy(), expected[column].to_numpy()) for column in expected.columns)

    def trained_on(self, interactions: pd.DataFrame) -> np.ndarray:
        """Per query: whether a model trained on ``interactions`` (user_id, item_id) saw one of
        its held-out interactions, so would be scored on what it memorised."""
        pairs = pd.MultiIndex.from_frame(interactions[["user_id", "item_id"]])
        seen = pd.MultiIndex.from_frame(self.held_out[["user_id", "item_id"]]).isin(pairs)
        if not excludes_seen(self.protocol):
            return seen
        return np.bincount(self.user_row, weights=seen.astype(np.float64), minlength=len(self.users)) > 0

    def relevant(self, trained) -> ev.ItemSets:
        """Each query's relevant items in ``trained``'s vocabulary (0: an item it does not know)."""
        targets = trained.item_index(self.held_out["item_id"].to_numpy())
        if excludes_seen(self.protocol):
            return ev.ItemSets.from_pairs(self.user_row, targets, len(self.users))
        return ev.ItemSets.from_pairs(np.arange(len(targets)), targets, len(targets))

    def seen(self, trained) -> ev.ItemSets:
        """What each user's ranking leaves out, in ``trained``'s vocabulary."""
        if not excludes_seen(self.protocol):
            return ev.ItemSets.empty(len(self.users))
        return seen_items(self.train_part, self.users, trained)

    def vectors(self, trained) -> np.ndarray:
        """The users' query vectors by ``trained`` (the history towers read ``train_part``)."""
        return user_queries(trained, self.users, self.train_part)

    def rank(self, store: ItemStore, collection: str, trained, vectors: np.ndarray, k: int) -> np.ndarray:
        """Each user's top ``k`` (``[n_users, k]`` vocabulary indices of ``trained``) for the query
        ``vectors`` through ``trained``'s version ``collection`` in Milvus, as it serves: the
        version's tuned search, seen items left out."""
        search = search_indices(store, collection, store.record(collection).search_params(), trained)
        return ev.search_top_k(search, vectors, self.seen(trained), k, max_limit=len(trained.item_ids))


def evaluate_model(model_dir: str, uri: str, collection: str, report_dir: str, ks: tuple[int, ...] = defaults.REPORT_KS,
                   eval_users: int | None = defaults.EVAL_USERS,
                   seed: int = defaults.EVALUATION_SEED) -> EvaluationReport:
    """Every metric at every k through Milvus, beside exact search, popularity and random.

    Each user with held-out interactions (or of a sample of them) is ranked once. Queries are users for protocols
    that exclude seen items (all of a user's held-out items are relevant to one ranking),
    and interactions for tfrs (each held-out interaction is its own query, as in TFRS).
    ks: the cut-offs, ascending, each between 1 and Milvus' search limit; eval_users: evaluate a
    seeded sample of that many users (1 or more) where more have held-out interactions, None:
    all of them (``EvaluateOptions`` checks both). Besides the report, ``per_query.parquet`` in
    ``report_dir`` holds each query's user and the model's hit_rate, recall, ndcg and mrr at every
    k through Milvus: what the rebuild's gate pairs with the serving model's on the same queries.
    """
    manifest = artifact.read_manifest(Path(model_dir))
    trained = artifact.load(Path(model_dir))
    protocol = manifest.protocol
    queries = EvaluationQueries.read(manifest.prepared_dir, protocol, eval_users, seed)
    users, seen, vectors = queries.users, queries.seen(trained), queries.vectors(trained)
    k = max(ks)

    with ItemStore(uri) as store:
        record = store.record(collection)
        if record.model_id != manifest.model_id:
            raise CollectionError(f"collection {collection} was built from model {record.model_id!r}, "
                                  f"not {manifest.model_id!r}; evaluate it with its own model")
        tuned = record.search_params()
        started = time.perf_counter()
        rankings = {"model": queries.rank(store, collection, trained, vectors, k)}
        milvus_seconds = time.perf_counter() - started
    _, item_vecs = item_vectors(trained)
    started = time.perf_counter()
    rankings["exact"] = ev.exact_top_k(vectors, item_vecs, seen, k)
    exact_seconds = time.perf_counter() - started
    rankings["popularity"] = ev.popularity_top_k(trained.item_counts, seen, k)
    rankings["random"] = ev.random_top_k(len(trained.item_ids), seen, k, seed)

    rows, relevant = queries.rows, queries.relevant(trained)
    metrics = {source: ev.ranking_metrics(top[rows], relevant, ks, trained.item_counts)
               for source, top in rankings.items()}
    per_query = queries.per_query().assign(**ev.per_query_metrics(rankings["model"][rows], relevant, ks))
    report = EvaluationReport(
        dataset=manifest.dataset,
        protocol=protocol,
        ks=tuple(ks),
        users_evaluated=len(users),
        users_eligible=queries.eligible,
        interactions_evaluated=len(queries.held_out),
        queries=len(rows),
        query_unit=queries.query_unit,
        **metrics,
        ann_gap={key: round(metrics["model"][key] - metrics["exact"][key], 6)
                 for key in metrics["model"] if key.split("@")[0] in ("hit_rate", "recall", "ndcg", "mrr")},
        index_recall=ev.overlap(rankings["model"], rankings["exact"], ks),
        index={"index_type": record.index_type, "metric_type": record.metric_type,
               "params": {**record.params, **tuned.for_limit(0)},
               "tuning": record.tuning.to_dict() if record.tuning else None,
               **({"fallback": record.index_fallback.describe()} if record.index_fallback else {})},
        collection=collection,
        alias=record.alias,
        model_id=manifest.model_id,
        model_dir=str(Path(model_dir).resolve()),
        training={
            "seconds": manifest.train_seconds,
            "epochs": manifest.epochs,
            "processes": manifest.training.processes,
            "examples_per_s": manifest.mean_examples_per_s(),
            "train_interactions": manifest.train_interactions,
            "stopped": describe_stop(manifest.stop, manifest.config.validation_k),
            "temperature": manifest.config.temperature,
            "temperature_learned": manifest.config.learn_temperature,
            "ema_decay": manifest.config.ema_decay,
            "exclude_history": manifest.config.exclude_history,
        },
        timing={
            "milvus_seconds": round(milvus_seconds, 3),
            "milvus_users_per_s": round(len(users) / max(milvus_seconds, 1e-9), 1),
            "exact_seconds": round(exact_seconds, 3),
            "exact_users_per_s": round(len(users) / max(exact_seconds, 1e-9), 1),
        },
    )
    write_report(report, Path(report_dir))
    settings.write_atomic(Path(report_dir) / PER_QUERY, lambda path: per_query.to_parquet(path, index=False))
    with ItemStore(uri) as store:  # what `collections` shows of the version
        store.set_record(collection, evaluation=VersionEvaluation.of(report))
    return report


SERVING_PER_QUERY = "per_query_serving.parquet"


def compare_with_serving(model_dir: str, report_dir: str, uri: str, serving: str,
                         metrics: tuple[str, ...] = defaults.GATE_METRICS,
                         confidence: float = defaults.GATE_CONFIDENCE,
                         margin: float = defaults.GATE_TOLERANCE) -> Comparison:
    """The candidate (the model in ``model_dir``, evaluated into ``report_dir`` by
    ``evaluate_model``) against the version ``serving`` on the same queries: the serving
    model ranks the evaluation's users through its own collection, as it serves, with
    today's data (the histories it reads, the seen items it leaves out, the held-out items
    it should find); each gated metric's per-user difference gets its interval
    (``evaluation.paired_interval``). The serving model's per-query results are written to
    ``per_query_serving.parquet`` beside the candidate's ``per_query.parquet``.

    Counted as the serving model would serve: a user an id tower was not trained on gets no
    answer from it (a miss), an item it does not know it can never find (a miss). A query
    whose held-out interaction the serving model was trained on (possible under tfrs' random
    split, or a moved time cutoff) is left out of the comparison for both.

    Not compared (and said why) when the serving version was built on another dataset, id
    type or protocol, its model's files or training data are gone, or it cannot rank today's
    data.
    """
    started = time.perf_counter()
    manifest = artifact.read_manifest(Path(model_dir))

    def skipped(note: str) -> Comparison:
        log.warning("the rebuild's gate: %s; not compared", note)
        return Comparison.not_compared(serving, f"{note}: not compared; the candidate serves on its other checks",
                                       confidence, margin)

    with ItemStore(uri) as store:
        record = store.record(serving)
        if record.model_dir is None:
            return skipped(f"{serving} has no towerbridge model recorded")
        if (record.dataset, record.id_type) != (manifest.dataset, manifest.id_type):
            return skipped(f"{serving} was built on {record.dataset} ({record.id_type} ids), the candidate on "
                           f"{manifest.dataset} ({manifest.id_type} ids)")
        try:
            trained = artifact.load(Path(record.model_dir))
            served_manifest = artifact.read_manifest(Path(record.model_dir))
            if served_manifest.protocol != manifest.protocol:
                return skipped(f"the model of {serving} was trained on a {served_manifest.protocol} split, the "
                               f"candidate on a {manifest.protocol} split")
        except (OSError, TowerbridgeError) as error:
            return skipped(f"the model of {serving} cannot be loaded from {record.model_dir} ({error})")
        candidate = pd.read_parquet(Path(report_dir) / PER_QUERY)
        queries = EvaluationQueries.read(manifest.prepared_dir, manifest.protocol,
                                         users=np.unique(candidate["user_id"].to_numpy()))
        if not queries.matches(candidate):
            raise CollectionError(f"{Path(report_dir) / PER_QUERY} does not hold the queries of the prepared data "
                                  f"{manifest.prepared_dir}; evaluate the candidate again")
        served_train = Path(served_manifest.prepared_dir or "") / "train.parquet"
        kept = ~queries.trained_on(pd.read_parquet(served_train, columns=["user_id", "item_id"])) \
            if served_train.is_file() else np.ones(len(queries.rows), dtype=bool)
        ks = sorted({int(column.split("@")[1]) for column in candidate.columns if "@" in column})
        try:
            top = queries.rank(store, serving, trained, queries.vectors(trained), max(ks))
        except TowerbridgeError as error:
            return skipped(f"the model of {serving} cannot rank today's data ({error})")
    rows, query_users = queries.rows, queries.query_users()
    served = ev.per_query_metrics(top[rows], queries.relevant(trained), tuple(ks))
    unknown = np.zeros(len(queries.users), dtype=bool)
    if not trained.model.user_tower.reads_history:  # serving refuses users the id tower was not trained on
        unknown = trained.user_index(queries.users) == 0
        for values in served.values():
            values[unknown[rows]] = 0.0
    queries.per_query().assign(**served).to_parquet(Path(report_dir) / SERVING_PER_QUERY, index=False)
    if not kept.any():
        return skipped(f"the model of {serving} was trained on every held-out interaction of today's data")
    new_items = int((trained.item_index(queries.held_out["item_id"].to_numpy()) == 0).sum())
    compared = []
    for metric in metrics:
        difference, low, high = ev.paired_interval(candidate[metric].to_numpy()[kept], served[metric][kept],
                                                   query_users[kept], confidence, defaults.GATE_MIN_USERS)
        compared.append(MetricComparison(metric, float(served[metric][kept].mean()),
                                         float(candidate[metric].to_numpy()[kept].mean()), difference, low, high))
    users = len(np.unique(query_users[kept]))
    notes = []
    if unknown.any():
        notes.append(f"{int(unknown.sum()):,} users the serving model was not trained on (it cannot answer them) "
                     "counted as its misses")
    if new_items:
        notes.append(f"{new_items:,} held-out interactions with items the serving model does not know counted as "
                     "its misses")
    if not kept.all():
        notes.append(f"{int((~kept).sum()):,} queries left out: the serving model was trained on their held-out "
                     "interactions")
    if not served_train.is_file():
        notes.append(f"the serving model's training data ({served_train}) is gone: queries it may have been "
                     "trained on could not be left out")
    if users < defaults.GATE_MIN_USERS:
        notes.append(f"only {users} users compared, fewer than {defaults.GATE_MIN_USERS}: too few to reject on")
    return Comparison(
        serving=serving, compared=True, note="; ".join(notes), confidence=confidence, margin=margin,
        serving_model=record.model_id, serving_tower=record.user_tower, users=users,
        queries=int(kept.sum()), metrics=tuple(compared),
        serving_metrics={name: float(values[kept].mean()) for name, values in served.items()},
        candidate_metrics={name: float(candidate[name].to_numpy()[kept].mean()) for name in served},
        unknown_users=int(unknown.sum()), new_items=new_items, excluded_queries=int((~kept).sum()),
        seconds=round(time.perf_counter() - started, 2))


@dataclass(frozen=True)
class CatalogUpdate:
    """What ``add_items`` or ``retire_items`` did: the change it logged (``change``, its
    number in the alias' log), the serving version it was applied to, and every change
    applied there now (``applied``: a change an earlier writer logged but did not apply
    comes first); ``added``: items new to the version, ``updated``: items it held whose rows
    were replaced, ``retired``: items removed; ``record``: the version's catalog record after."""

    alias: str
    collection: str
    change: int
    applied: tuple[int, ...]
    added: int = 0
    updated: int = 0
    retired: int = 0
    record: CatalogRecord | None = None

    def describe(self) -> str:
        done = (f"{self.added:,} item(s) added, {self.updated:,} updated" if self.added or self.updated
                else f"{self.retired:,} item(s) retired")
        return (f"{done} in {self.collection} (serving {self.alias}; change {self.change} of its catalog log; "
                f"since the version was built: +{self.record.added:,} / -{self.record.retired:,})")


def add_items(uri: str, alias: str, items: pd.DataFrame, lock_timeout_s: float | None = 600.0) -> CatalogUpdate:
    """Add (or update) catalog items in the version serving ``alias``, without a rebuild: each
    embedded from its features by that version's model (cold start; an item the model trained
    on keeps its learned row), logged first (``catalog.ChangeLog``), then upserted whole.
    ``items``: ``item_id`` and the item feature columns the model reads (title and genres
    optional; every column is kept in the log, for the next model). Items the model cannot
    read are refused, named, before anything is written; adding the same items twice leaves
    one row each. Changes logged earlier and not yet applied are applied first."""
    with ItemStore(uri) as store, ChangeLog(alias).locked(lock_timeout_s) as log:
        name, record, trained = _serving(store, alias)
        record, earlier = _catch_up(store, alias, name, record, trained, log)
        checked = _readable_items(trained, items, record, store.text_limits(name))
        change = log.append("add", checked, after=record.catalog.through if record.catalog else 0)
        return _merged(earlier, _apply_logged(store, alias, name, record, trained, log, change.seq))


def retire_items(uri: str, alias: str, ids: list | None = None, expression: str | None = None,
                 lock_timeout_s: float | None = 600.0) -> CatalogUpdate:
    """Retire items from the version serving ``alias``: the ones with ``ids``, or matching the
    filter ``expression``. They are logged, then deleted from the collection, so no reader
    (recommend, similar, query, a pymilvus query of its own) sees them again; the next rebuild
    leaves them out. Ids the serving version does not hold (once changes logged earlier are
    applied) are refused, named; ids the log has retired already are done (a retry, or the same
    retirement read twice), not refused."""
    if (ids is None) == (expression is None):
        raise ConfigError("retire needs item ids or a filter (one of them)")
    with ItemStore(uri) as store, ChangeLog(alias).locked(lock_timeout_s) as log:
        name, record, trained = _serving(store, alias)
        record, earlier = _catch_up(store, alias, name, record, trained, log)
        if expression is not None:
            store.check_filter(name, expression)
            wanted = [row["item_id"] for row in store.rows(name, expression, ["item_id"], consistency="Strong")]
            if not wanted:
                raise DataError(f"no item of {name} matches {expression!r}: nothing to retire")
        else:
            wanted = list(dict.fromkeys(_typed_ids(ids, record)))
            held = set(_held(store, name, wanted))
            # a retirement the log already holds (a retry after it was applied, an inbox file
            # read again after a crash) is done, not refused
            done = set(log.state().retired.tolist()) - held
            wanted = [item for item in wanted if item not in done]
            if not wanted:
                return earlier or CatalogUpdate(alias=alias, collection=name, change=log.last(), applied=(),
                                                record=record.catalog)
            missing = [item for item in wanted if item not in held]
            if missing:
                raise DataError(f"{len(missing)} item(s) are not in the serving version {name}, nothing was "
                                f"retired: {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}")
        change = log.append("retire", pd.DataFrame({"item_id": pd.Series(wanted, dtype=trained.item_ids.dtype)}),
                            after=record.catalog.through if record.catalog else 0)
        return _merged(earlier, _apply_logged(store, alias, name, record, trained, log, change.seq))


def _catch_up(store: ItemStore, alias: str, name: str, record: VersionRecord, trained, log: ChangeLog):
    """Apply the changes logged but not yet applied to ``name`` (a writer that died between
    logging and applying); the version's record after, and what was applied (None: nothing)."""
    through = record.catalog.through if record.catalog else 0
    if not log.changes(after=through):
        return record, None
    update = _apply_logged(store, alias, name, record, trained, log, log.last())
    return replace(record, catalog=update.record), update


def _merged(earlier: CatalogUpdate | None, update: CatalogUpdate) -> CatalogUpdate:
    if earlier is None:
        return update
    return replace(update, applied=earlier.applied + update.applied, added=earlier.added + update.added,
                   updated=earlier.updated + update.updated, retired=earlier.retired + update.retired)


def serve_version(store: ItemStore, alias: str, name: str, lock_timeout_s: float | None = 600.0) -> tuple[int, ...]:
    """Apply to version ``name`` the catalog changes logged since it was built, then point
    ``alias`` at it, holding the alias' catalog lock: no change goes to the version being
    replaced once it stopped serving, and if applying fails the alias has not moved. Returns
    the changes applied."""
    log = ChangeLog(alias)
    with log.locked(lock_timeout_s):
        applied = apply_catalog_changes(store, alias, name, log)
        store.point_alias(alias, name)
        return applied


def apply_catalog_changes(store: ItemStore, alias: str, name: str, log: ChangeLog) -> tuple[int, ...]:
    """Apply to version ``name`` of ``alias`` every change of the log it has not had (the
    rebuild, before its swap, for the changes logged while it built); call it holding the log's
    lock. Returns the changes applied."""
    record = store.record(name)
    if not log.changes(after=record.catalog.through if record.catalog else 0):
        return ()
    trained = artifact.load(Path(record.model_dir))
    return _apply_logged(store, alias, name, record, trained, log, log.last()).applied


def _serving(store: ItemStore, alias: str):
    name = store.alias_target(alias)
    if name is None:
        raise CollectionError(f"no version serves {alias!r}: catalog changes go to a serving version (build one "
                              "with `towerbridge run` or `towerbridge rebuild`)")
    record = store.record(name)
    if not record.model_dir or not Path(record.model_dir).is_dir():
        raise CollectionError(f"{name} (serving {alias}) has no model to embed new items with "
                              f"({record.model_dir or 'none recorded'})")
    return name, record, artifact.load(Path(record.model_dir))


def _apply_logged(store: ItemStore, alias: str, name: str, record: VersionRecord, trained, log: ChangeLog,
                  change: int) -> CatalogUpdate:
    """Apply the log's changes after the version's ``through`` up to ``change``, in order, each
    recorded once applied (so a crash repeats at most one, harmlessly)."""
    catalog = record.catalog or CatalogRecord()
    applied, added, updated, retired = [], 0, 0, 0
    for logged in log.changes(after=catalog.through):
        if logged.seq > change:
            break
        table = logged.items()
        ids = table["item_id"].to_numpy()
        if logged.kind == "add":
            held = set(_held(store, name, ids.tolist()))
            vectors = pad_vectors(new_item_vectors(trained, table), record.pad_dims)
            store.upsert(name, ids, vectors, _text(table, "title"), _text(table, "genres"))
            new = len(ids) - len(held)
            added, updated, count = added + new, updated + len(held), new
        else:
            held = _held(store, name, ids.tolist())
            if held:
                store.delete_items(name, held)
            retired, count = retired + len(held), len(held)
        catalog = catalog.after(logged, count)
        store.set_record(name, catalog=catalog)
        applied.append(logged.seq)
    return CatalogUpdate(alias=alias, collection=name, change=change, applied=tuple(applied), added=added,
                         updated=updated, retired=retired, record=catalog)


def _held(store: ItemStore, name: str, ids: list) -> list:
    """Which of ``ids`` the version holds now."""
    return store.held(name, ids)


def _typed_ids(ids: list, record: VersionRecord) -> list:
    if record.id_type == "string":
        return [str(item) for item in ids]
    try:
        return [int(item) for item in ids]
    except (TypeError, ValueError):
        raise DataError(f"item ids {[i for i in ids if not str(i).lstrip('-').isdigit()][:5]}: this "
                        "collection's ids are integers") from None


def _text(table: pd.DataFrame, column: str) -> list[str]:
    return table[column].fillna("").astype(str).tolist() if column in table.columns else [""] * len(table)


def _readable_items(trained, items: pd.DataFrame, record: VersionRecord, limits: TextLimits) -> pd.DataFrame:
    """``items`` as the model reads them, or a DataError naming what it cannot read: a missing
    ``item_id`` or feature column, repeated or badly typed ids, values a feature cannot encode."""
    if "item_id" not in items.columns:
        raise DataError(f"the items have no item_id column (columns: {', '.join(map(str, items.columns))})")
    needed = [feature.column for feature in trained.spec.item if feature.kind != "id"]
    missing = [column for column in needed if column not in items.columns]
    if missing:
        raise DataError(f"the items lack the column(s) the model reads: {', '.join(missing)} "
                        f"(it reads {', '.join(needed) or 'ids only'})")
    if items["item_id"].isna().any():
        raise DataError(f"{int(items['item_id'].isna().sum())} item(s) have no item_id")
    table = items.copy()
    table["item_id"] = pd.Series(_typed_ids(items["item_id"].tolist(), record), index=items.index,
                                 dtype=trained.item_ids.dtype)
    # repeats as the collection reads the ids (" 42" and "42" are one integer id)
    repeated = table["item_id"][table["item_id"].duplicated()].unique().tolist()
    if repeated:
        raise DataError(f"item ids given more than once: {', '.join(map(str, repeated[:10]))}")
    if record.id_type == "string":
        long = [item for item in table["item_id"] if len(str(item).encode()) > limits.item_id]
        if long:
            raise DataError(f"{len(long)} item id(s) are longer than this version's ids may be ({limits.item_id} "
                            f"bytes): {', '.join(map(str, long[:5]))}")
    for encoder in trained.item_encoders:
        if encoder.feature.kind == "id":
            continue
        try:
            encoder.transform(table[encoder.feature.column])
        except (TypeError, ValueError) as error:
            raise DataError(f"items column {encoder.feature.column!r} ({encoder.feature.kind}) cannot be read: "
                            f"{str(error).splitlines()[0][:200]}") from None
    vectors = new_item_vectors(trained, table)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} item(s) get no usable vector from their features (NaN or infinite "
                        f"values?): {', '.join(map(str, table['item_id'][bad].tolist()[:10]))}")
    return table  # every column: a later model may read more of them than this one

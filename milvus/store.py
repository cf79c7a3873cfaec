"""The one door to Milvus: connections, versioned collections, the alias, retention, search.

Every other module asks this one to "load these embeddings as a new version",
"point the alias at it", "search these vectors"; none of them calls pymilvus.

A version is a collection named ``<alias>_v<UTC time>_<model id>`` that records
itself (``record.VersionRecord``: model directory, index parameters, tuned search) in
its description and properties. Readers use the alias, which moves only to a fully
indexed, loaded collection.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException
from tqdm import tqdm

from towerbridge import defaults, settings
from towerbridge.errors import CollectionError, ConfigError, MilvusUnavailable
from towerbridge.milvus import answers, server
from towerbridge.milvus.index import METRIC, IndexParams, SearchParams
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.schema import (
    MAX_LIMIT,
    VECTOR_FIELD,
    TextLimits,
    clip_text,
    literal,
    version_name,
)
from towerbridge.settings import redact

PART_RESULTS = 100_000  # results per search request (queries x limit): the server reduces each in one go
IN_FLIGHT = 4  # search requests on the wire at once
# Signs of a server that is down or still recovering (after a crash its coordinators wait for
# the dead components' sessions to expire): worth retrying, unlike a refusal.
RECOVERING = ("unavailable", "node not found", "node not match", "session not found", "not ready",
              "service not ready", "channel not found")
REQUEST_BYTES = 32 * 2**20  # insert batches stay well under Milvus' 64 MB gRPC limit
# Parallel inserts pay for starting processes (~1 s each) above this many rows
# (BENCHMARKS.md, "Parallel inserts at 1M items").
PARALLEL_INSERT_ROWS = 200_000
MAX_INSERT_WORKERS = 4
MISSING_RECHECK_S = 3.0  # missing_files looks twice, this far apart, before it says a file is gone

# pymilvus logs every failed RPC with a traceback; we report failures ourselves.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)


def connect(uri: str, token: str | None = None, attempts: int = 4, timeout: float = 10.0) -> MilvusClient:
    """A client for ``uri``, retried with backoff; MilvusUnavailable names the URI (redacted).

    token: credentials; None reads them from the environment (``settings.milvus_token``),
    as it does the TLS settings (``settings.milvus_tls``). Refused credentials and an
    untrusted certificate are said as such, and not retried."""
    token = settings.milvus_token() if token is None else token
    tls = settings.milvus_tls()
    last = ""
    for attempt in range(attempts):
        try:
            return MilvusClient(uri=uri, token=token, timeout=timeout, **tls)
        except MilvusException as error:
            last = getattr(error, "message", "") or str(error)
            cause = _rpc_cause(error)
            if cause is not None and cause.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ConfigError(f"Milvus at {redact(uri)} refused the credentials (MILVUS_TOKEN, or MILVUS_USER "
                                  f"and MILVUS_PASSWORD{'' if token else ': none are set'}): {cause.details()}"
                                  ) from None
            if cause is not None and "CERTIFICATE_VERIFY_FAILED" in (cause.details() or ""):
                raise MilvusUnavailable(f"cannot reach Milvus at {redact(uri)}: its TLS certificate is not signed by "
                                        "an authority this machine trusts (set MILVUS_CA_CERT to your CA's PEM file)"
                                        ) from None
        if attempt + 1 < attempts:
            time.sleep(min(8.0, 0.5 * 2**attempt))
    raise MilvusUnavailable(f"cannot reach Milvus at {redact(uri)} after {attempts} attempts ({last})")


def _rpc_cause(error: BaseException) -> grpc.RpcError | None:
    """The gRPC error behind a pymilvus error, if there is one."""
    seen = error.__cause__ or error.__context__
    while seen is not None and not isinstance(seen, grpc.RpcError):
        seen = seen.__cause__ or seen.__context__
    return seen if seen is not None and callable(getattr(seen, "code", None)) else None


def _batches(n_rows: int, row_bytes: int, workers: int = 1) -> Iterator[slice]:
    """Row ranges of at most REQUEST_BYTES and 50k rows; with several workers, small enough
    that each has batches to send (a catalog of two batches would keep one of four busy)."""
    size = min(50_000, REQUEST_BYTES // max(1, row_bytes))
    if workers > 1:
        size = min(size, -(-n_rows // (2 * workers)))
    size = max(1, size)
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


def insert_workers(n_rows: int) -> int:
    """Processes to insert ``n_rows`` with: one below PARALLEL_INSERT_ROWS and inside a
    daemonic process (a Dask or multiprocessing worker, which may not start children),
    else one per core up to MAX_INSERT_WORKERS."""
    if n_rows < PARALLEL_INSERT_ROWS or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(MAX_INSERT_WORKERS, len(os.sched_getaffinity(0))))


def _send_from_process(uri: str, token: str | None, name: str, ids: list, vectors: np.ndarray, titles: list[str],
                       genres: list[str], limits: TextLimits) -> int:
    """``ItemStore.send`` in an insert process, over its own connection."""
    with ItemStore(uri, token) as store:
        return store.send(name, ids, vectors, titles, genres, limits)


class ItemStore:
    """Item vectors in Milvus: one collection per version, an alias for readers."""

    def __init__(self, uri: str, token: str | None = None) -> None:
        self.uri, self.token = uri, token
        self.client = connect(uri, token)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ItemStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, function, *args, attempts: int = 3, **kwargs):
        """Run one client call, retrying transient failures (server unavailable) with backoff;
        turn a server error into an error that names the call."""
        for attempt in range(attempts):
            try:
                return function(*args, **kwargs)
            except MilvusException as error:
                message = _one_line(getattr(error, "message", "") or str(error))
                transient = getattr(error, "code", None) in (2, 503) or any(
                    sign in message.lower() for sign in RECOVERING)
                if not transient:
                    raise CollectionError(f"Milvus refused {what}: {message}") from None
                if attempt + 1 == attempts:
                    raise MilvusUnavailable(f"Milvus at {redact(self.uri)} failed during {what}: {message}") from None
                time.sleep(0.5 * 2**attempt)

    # --- versions -------------------------------------------------------------------------

    def create_version(self, alias: str, model_id: str, dim: int, record: VersionRecord,
                       limits: TextLimits | None = None) -> str:
        """Create an empty collection for a new version, recording ``record`` (its fields
        fixed at creation) in its description; return its name.

        The primary key is ``record.id_type``: ``int64``, or ``string`` (a VARCHAR), as the
        catalog's ids are. limits: the text fields' maximum lengths (default: the caps);
        ``TextLimits.of(...)`` the data to be inserted."""
        limits = limits or TextLimits()
        name = version_name(alias, model_id)
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False,
                                           description=record.description())
        if record.id_type == "string":
            schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=limits.item_id)
        else:
            schema.add_field("item_id", DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("title", DataType.VARCHAR, max_length=limits.title)
        schema.add_field("genres", DataType.VARCHAR, max_length=limits.genres)
        # the same genres as an array, for filters such as array_contains(genre_list, "Comedy")
        schema.add_field("genre_list", DataType.ARRAY, element_type=DataType.VARCHAR,
                         max_capacity=limits.genre_count, max_length=limits.genre)
        self._call(f"create collection {name}", self.client.create_collection, name, schema=schema)
        return name

    def insert(self, name: str, item_ids: np.ndarray, vectors: np.ndarray, titles: list[str],
               genres: list[str], progress: bool = False, workers: int | None = None) -> int:
        """Insert all rows in batches under the request size limit, flush, verify the count.

        workers: processes that build and send batches at once (default: ``insert_workers``
        for the row count). pymilvus turns rows into a request in Python, a CPU cost that
        threads share under one GIL, so parallel inserts are processes, each with its own
        connection. A batch that fails fails the insert; the caller drops the collection,
        which holds whatever part arrived."""
        workers = insert_workers(len(item_ids)) if workers is None else workers
        if workers < 1:
            raise ConfigError(f"insert workers must be at least 1, got {workers}")
        dim, limits = self._writable(name, vectors)
        text_bytes = sum(map(len, titles[:1000])) + sum(map(len, genres[:1000]))
        row_bytes = 8 + 4 * vectors.shape[1] + 64 + text_bytes // max(1, min(1000, len(titles)))
        ids = item_ids.tolist()
        parts = list(_batches(len(ids), row_bytes, workers))
        with tqdm(total=len(ids), desc="insert", unit="row", disable=not progress, leave=False) as bar:
            if workers == 1:
                for part in parts:
                    bar.update(self.send(name, ids[part], vectors[part], titles[part], genres[part], limits))
            else:
                with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    sent = [pool.submit(_send_from_process, self.uri, self.token, name, ids[part], vectors[part],
                                        titles[part], genres[part], limits) for part in parts]
                    try:
                        for done in as_completed(sent):
                            bar.update(done.result())
                    except BrokenProcessPool:
                        raise CollectionError(f"an insert process into {name} died (killed, or out of memory); "
                                              "nothing of this version is served") from None
                    finally:
                        for future in sent:
                            future.cancel()
        self._call(f"flush {name}", self.client.flush, name)
        count = self.count(name)
        if count != len(ids):
            raise CollectionError(f"{name} holds {count} rows after flush, expected {len(ids)}")
        return count

    def send(self, name: str, ids: list, vectors: np.ndarray, titles: list[str], genres: list[str],
             limits: TextLimits) -> int:
        """One insert request of these rows, texts clipped to ``limits``; the number sent."""
        rows = _rows(ids, vectors, titles, genres, limits)
        self._call(f"insert into {name}", self.client.insert, name, rows)
        return len(rows)

    def _writable(self, name: str, vectors: np.ndarray) -> tuple[int, TextLimits]:
        """The version's vector dimension and text limits, once ``vectors`` are checked to be
        finite and of that dimension (CollectionError before anything is written otherwise)."""
        if not np.isfinite(vectors).all():
            bad = int((~np.isfinite(vectors)).any(axis=1).sum())
            raise CollectionError(f"{bad} item vector(s) contain NaN or infinity; nothing was written to {name}")
        params = self._field_params(name)
        dim, limits = int(params[VECTOR_FIELD]["dim"]), self.text_limits(name, params)
        if vectors.shape[1] != dim:
            raise CollectionError(f"{name} holds {dim}-dimensional vectors, these are {vectors.shape[1]}-dimensional; "
                                  "nothing was written")
        return dim, limits

    def upsert(self, name: str, item_ids: np.ndarray, vectors: np.ndarray, titles: list[str],
               genres: list[str]) -> int:
        """Write these rows into a serving version, each replacing the row of its item if there
        is one (Milvus' upsert: the same rows twice leave one of each). Every request carries
        whole rows, so a reader never sees an item without its fields; the rows become
        visible to every reader before this returns (a strongly consistent count)."""
        dim, limits = self._writable(name, vectors)
        ids = item_ids.tolist()
        for part in _batches(len(ids), 8 + 4 * dim + 256):
            rows = _rows(ids[part], vectors[part], titles[part], genres[part], limits)
            self._call(f"upsert into {name}", self.client.upsert, name, rows)
        self._call(f"flush {name}", self.client.flush, name)
        self.wait_visible(name)
        return len(ids)

    def delete_items(self, name: str, item_ids: list) -> None:
        """Remove these items' rows from a version (readers stop seeing them before this returns)."""
        for start in range(0, len(item_ids), 10_000):
            chunk = item_ids[start:start + 10_000]
            self._call(f"delete from {name}", self.client.delete, name,
                       filter=f"item_id in [{', '.join(literal(item) for item in chunk)}]")
        self._call(f"flush {name}", self.client.flush, name)
        self.wait_visible(name)

    def held(self, name: str, item_ids: list) -> list:
        """Which of ``item_ids`` the version holds, seeing every write acknowledged so far (strong
        consistency; one plain query per thousand ids)."""
        found: list = []
        for start in range(0, len(item_ids), 1000):
            chunk = item_ids[start:start + 1000]
            rows = self._call(f"query {name}", self.client.query, name, output_fields=["item_id"],
                              filter=f"item_id in [{', '.join(literal(item) for item in chunk)}]",
                              consistency_level="Strong")
            found += [row["item_id"] for row in rows]
        return found

    def wait_visible(self, name: str) -> int:
        """Wait until every write so far is visible to searches and queries: a count with
        strong consistency (it waits for the server to have applied them); the row count."""
        rows = self._call(f"count {name}", self.client.query, name, filter="", output_fields=["count(*)"],
                          consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def build_index(self, name: str, params: IndexParams, timeout_s: float = 1800.0) -> dict:
        """Build the index (IVF_PQ or SCANN), wait until every row is indexed, load the collection."""
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=params.index_type, metric_type=METRIC,
                               params=params.build_params())
        self._call(f"create index on {name}", self.client.create_index, name, index_params)
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.describe_index(name)
            if info.get("state") == "Failed":
                raise CollectionError(f"index build failed on {name}: {info.get('index_state_fail_reason', '')}")
            if info.get("state") == "Finished" and info.get("indexed_rows") == info.get("total_rows"):
                break
            if time.monotonic() > deadline:
                raise CollectionError(f"index on {name} not finished after {timeout_s:.0f} s: {info}")
            time.sleep(0.5)
        replicas = settings.milvus_replicas()
        try:
            self._call(f"load {name}", self.client.load_collection, name, replica_number=replicas)
        except CollectionError as error:
            if replicas > 1:
                raise CollectionError(f"{error} (MILVUS_REPLICAS={replicas}: this Milvus needs at least {replicas} "
                                      "query nodes to hold that many replicas)") from None
            raise
        return info

    def _field_params(self, name: str) -> dict[str, dict]:
        info = self._call(f"describe {name}", self.client.describe_collection, name)
        return {f["name"]: f.get("params", {}) for f in info["fields"]}

    def text_limits(self, name: str, params: dict[str, dict] | None = None) -> TextLimits:
        """The text limits ``name``'s schema declares (fields it lacks keep the caps)."""
        return TextLimits.declared(params if params is not None else self._field_params(name))

    def describe_index(self, name: str) -> dict:
        """The vector index of ``name``; empty when it has none on towerbridge's vector field
        (a collection someone else made on the same server may index a field of another name)."""
        return self._call(f"describe index of {name}", self.client.describe_index, name, VECTOR_FIELD) or {}

    def count(self, name: str) -> int:
        """Rows persisted in a collection (flushed rows; no load needed)."""
        stats = self._call(f"count rows of {name}", self.client.get_collection_stats, name)
        return int(stats["row_count"])

    def segments(self, name: str) -> list[int]:
        """Rows of each loaded segment of a collection, largest first. Each segment has its own
        IVF lists, so a query costs a list choice and a merge per segment."""
        loaded = self._call(f"list segments of {name}", self.client.list_loaded_segments, name)
        return sorted((int(segment.num_rows) for segment in loaded), reverse=True)

    def missing_files(self, name: str) -> list[str]:
        """Files version ``name`` needs that are gone from the server's disk, as paths under
        its storage directory: the binlog of every field of every flushed segment, and each
        segment's index files once its index is built. Milvus cannot load a version with any
        of them missing. Empty when nothing is missing, and when the server keeps its files
        where this machine cannot see them (only the embedded server's are checked)."""
        root = server.local_storage(self.uri)
        if root is None:
            return []
        missing = self._missing_files(name, root)
        if missing:
            # a version that items were added to or retired from is compacted now and then: for a
            # moment the segment list names a segment whose files are being replaced. Missing
            # files that are still missing a little later are missing.
            time.sleep(MISSING_RECHECK_S)
            missing = self._missing_files(name, root)
        return missing

    def _missing_files(self, name: str, root: Path) -> list[str]:
        info = self._call(f"describe {name}", self.client.describe_collection, name)
        # 0 and 1 are the row id and timestamp fields every collection has
        fields = [0, 1, *(int(field["field_id"]) for field in info["fields"])]
        index = self.describe_index(name) if self._call(f"list indexes of {name}", self.client.list_indexes, name) \
            else {}
        # every segment indexed (a compacted segment's index is built after the segment exists)
        indexed = index.get("state") == "Finished" and index.get("indexed_rows") == index.get("total_rows")
        missing = []
        for segment in self._call(f"list segments of {name}", self.client.list_persistent_segments, name):
            if not segment.num_rows:
                continue
            where = f"{info['collection_id']}/{segment.partition_id}/{segment.segment_id}"
            missing += [f"insert_log/{where}/{field}/" for field in fields
                        if not _holds_file(root / "insert_log" / where / str(field))]
            index_files = f"index_files/*/*/{segment.partition_id}/{segment.segment_id}/*"
            if indexed and segment.num_rows >= server.SMALLEST_INDEXED_SEGMENT and \
                    not any(path.is_file() for path in root.glob(index_files)):
                missing.append(index_files)
        return missing

    def wait_until_serving(self, timeout_s: float = 120.0, log: Callable[[str], None] | None = None) -> list[str]:
        """Wait until every collection Milvus is loading or holds as loaded answers queries;
        return those that still do not after ``timeout_s``.

        A restarted Milvus reports healthy, and its collections as "Loading", some seconds
        before it answers queries on them (its coordinators first wait out the sessions of
        the previous run's nodes, ``common.session.ttl`` in ``server.SERVER_CONFIG``): a
        question asked in between is refused as "collection not loaded". A damaged collection
        (``missing_files``) never loads and is not waited for."""
        deadline = time.monotonic() + timeout_s

        def state(name: str) -> str:
            return str(self._call(f"load state of {name}", self.client.get_load_state, name)["state"])

        waiting = [name for name in self._call("list collections", self.client.list_collections)
                   if state(name) in ("Loading", "Loaded") and not self.missing_files(name)]
        if waiting and log:
            log(f"Waiting until Milvus answers queries on the {len(waiting)} collection(s) it had loaded ...")
        while waiting and time.monotonic() < deadline:
            if state(waiting[0]) == "Loaded":
                try:
                    self.client.query(waiting[0], filter="", limit=1)
                    waiting.pop(0)
                    continue
                except MilvusException:
                    pass
            time.sleep(0.5)
        return waiting

    def damaged(self) -> dict[str, list[str]]:
        """Every collection on the server with files missing (``missing_files``), by name."""
        names = sorted(self._call("list collections", self.client.list_collections))
        found = {name: self.missing_files(name) for name in names}
        return {name: missing for name, missing in found.items() if missing}

    def record(self, name: str) -> VersionRecord:
        """What a version records about itself: the fields in its description (fixed at
        creation), with those its properties set later (e.g. the tuned nprobe)."""
        info = self._call(f"describe {name}", self.client.describe_collection, name)
        return VersionRecord.read(info.get("description"), info.get("properties"), name)

    def set_record(self, name: str, **values) -> None:
        """Set fields of a version's record that are set after its creation, each of its type
        (``VersionRecord.UPDATED``; others are refused), as collection properties."""
        properties = VersionRecord.properties(**values)
        # Sent twice: Milvus 2.3.5 persists, on each change of properties, the properties as
        # they were before it; the newest change lives only in memory and is gone after a
        # restart (measured: set a, b, c, d; restart; d was lost). The second, identical call
        # makes the first one durable.
        for _ in range(2):
            self._call(f"set properties of {name}", self.client.alter_collection_properties, name,
                       properties=properties)

    def point_alias(self, alias: str, name: str) -> None:
        """Make ``alias`` serve ``name``: create it, or move it in one step."""
        if self.alias_target(alias) is None:
            self._call(f"create alias {alias}", self.client.create_alias, name, alias)
        else:
            self._call(f"move alias {alias}", self.client.alter_alias, name, alias)

    def drop_alias(self, alias: str) -> None:
        self._call(f"drop alias {alias}", self.client.drop_alias, alias)

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` serves; None when there is no such alias (an unreachable
        server is an error, not "no alias")."""
        try:
            return self._call(f"describe alias {alias}", self.client.describe_alias, alias)["collection_name"]
        except CollectionError:
            return None

    def drop(self, name: str) -> None:
        if self._call(f"look up {name}", self.client.has_collection, name):
            self._call(f"release {name}", self.client.release_collection, name)
            self._call(f"drop {name}", self.client.drop_collection, name)

    def versions(self, alias: str) -> list[str]:
        """Every version collection of ``alias``, oldest first (names sort by build time)."""
        pattern = re.compile(rf"^{re.escape(alias)}_v\d{{8}}_\d{{6}}_\w+$")
        return sorted(n for n in self._call("list collections", self.client.list_collections) if pattern.match(n))

    def mark_complete(self, name: str) -> None:
        """Record that a version is fully built, indexed, loaded and tuned."""
        self.set_record(name, complete=True, completed_at=defaults.utc_now())

    def remove_half_built(self, alias: str) -> list[str]:
        """Drop versions a crashed build left behind (never marked complete, not served).

        Call it only while holding the build lock of ``alias``: an unfinished version
        is then never one that another build is still writing."""
        serving = self.alias_target(alias)
        dropped = [name for name in self.versions(alias)
                   if name != serving and not self.record(name).complete]
        for name in dropped:
            self.drop(name)
        return dropped

    def apply_retention(self, alias: str, keep: int) -> list[str]:
        """Keep the ``keep`` newest complete versions (the served one always among them);
        release and drop the older ones, and every damaged one (``missing_files``: it can
        never load again, so it is no version to go back to) that does not serve. Returns
        the dropped names."""
        defaults.check_keep_versions(keep, "keep")
        serving = self.alias_target(alias)
        complete = [n for n in self.versions(alias) if self.record(n).complete]
        damaged = [n for n in complete if n != serving and self.missing_files(n)]
        complete = [n for n in complete if n not in damaged]
        kept = set(complete[-keep:]) | ({serving} if serving else set())
        while len(kept) > keep:  # the served one is older than the newest `keep`: drop the oldest of the rest
            kept.remove(min(kept - {serving}))
        dropped = sorted(damaged + [n for n in complete if n not in kept])
        for name in dropped:
            self.drop(name)
        return dropped

    # --- search ---------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The collection behind an alias, or the collection itself; CollectionError otherwise."""
        target = self.alias_target(name)
        if target:
            return target
        if self._call(f"look up {name}", self.client.has_collection, name):
            return name
        known = self._call("list collections", self.client.list_collections)
        raise CollectionError(f"no collection or alias named {name!r} on {redact(self.uri)}; "
                              f"collections: {', '.join(sorted(known)) or 'none'}")

    def field_names(self, name: str) -> list[str]:
        info = self._call(f"describe {name}", self.client.describe_collection, name)
        return [field["name"] for field in info["fields"]]

    def check_filter(self, name: str, expression: str) -> None:
        """Raise ConfigError when Milvus cannot parse ``expression`` on this collection."""
        try:
            self.client.query(name, filter=expression, output_fields=["item_id"], limit=1)
        except MilvusException as error:
            message = getattr(error, "message", "") or str(error)
            raise ConfigError(f"invalid filter {expression!r}: {message}") from None

    def rows(self, name: str, expression: str, fields: list[str], limit: int | None = None,
             batch_size: int = 1000, consistency: str | None = None) -> list[dict]:
        """Rows matching ``expression``, in primary-key order, read page by page (no size
        limit of one request).

        consistency: Milvus' consistency level (default: the collection's, bounded staleness);
        ``Strong`` sees every write acknowledged before the call.

        Each page asks for keys above the last one read, quoted by ``literal``. This is
        what pymilvus' query_iterator does, without its ``reduce_stop_for_best`` (on Milvus
        2.3.5 it drops every row of all but one segment once a version has several, as a version
        does after `items add`: measured), and except that it writes a string key into the
        next filter unescaped: a key holding a double quote rewrote the query (measured
        with pymilvus 3.0.2: ``a" or item_id != "`` matched every row)."""
        found: list[dict] = []
        last = None
        wanted = list(dict.fromkeys(["item_id", *fields]))
        level = {} if consistency is None else {"consistency_level": consistency}
        while limit is None or len(found) < limit:
            size = batch_size if limit is None else min(batch_size, limit - len(found))
            condition = " and ".join(part for part in (
                None if last is None else f"item_id > {literal(last)}", f"({expression})" if expression else None)
                if part)
            page = self._call(f"query {name}", self.client.query, name, filter=condition, output_fields=wanted,
                              limit=size, iterator="True", **level)
            keys = [row["item_id"] for row in page]
            if keys != sorted(keys) or (last is not None and keys and keys[0] <= last):
                raise CollectionError(f"query {name}: Milvus answered a page out of key order; cannot page safely")
            found.extend({key: row[key] for key in fields} for row in page)
            if len(page) < size:
                break
            last = keys[-1]
        return found

    def search_rows(self, name: str, vector: np.ndarray, limit: int, search: SearchParams | int, expression: str = "",
                    fields: tuple[str, ...] = ("title", "genres")) -> list[dict]:
        """One query's hits, best first, as ``{"item_id", "score", <fields>}``. search: the
        version's search settings (``record.search_params()``), or an nprobe."""
        limit = min(limit, MAX_LIMIT)
        chosen = _settings(search)
        vector = chosen.queries(np.asarray(vector, dtype=np.float32)).tolist()
        hits = self._call(f"search {name}", self.client.search, name, data=[vector], limit=limit,
                          filter=expression, anns_field=VECTOR_FIELD, output_fields=list(fields),
                          search_params=_search_params(chosen, limit))
        return [{"item_id": hit["id"], "score": float(hit["distance"]),
                 **{field: hit["entity"].get(field) for field in fields}} for hit in hits[0]]

    def search(self, name: str, vectors: np.ndarray, limit: int,
               search: SearchParams | int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``limit`` item ids per query vector, with ``search``'s settings (or an nprobe).
        Returns ``(ids, scores)``, both ``[nq, limit]``; rows with fewer hits are padded with
        score -inf (and id -1, or None for string ids): ``np.isfinite(scores)`` marks the real hits."""
        limit = min(limit, MAX_LIMIT)
        part = max(1, min(MAX_LIMIT, PART_RESULTS // limit))
        parts = list(self.search_many(name, [(vectors[start:start + part], limit)
                                             for start in range(0, len(vectors), part)], search))
        ids = np.concatenate([p[0] for p in parts]) if parts else np.full((0, limit), -1, dtype=np.int64)
        scores = np.concatenate([p[1] for p in parts]) if parts else np.full((0, limit), -np.inf, np.float32)
        return ids, scores

    def search_many(self, name: str, requests: Iterable[tuple[np.ndarray, int]], search: SearchParams | int,
                    in_flight: int = IN_FLIGHT) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``search`` for a sequence of ``(vectors, limit)`` requests, answered in order.

        Bulk evaluation goes through here, so it is built for throughput: up to ``in_flight``
        requests are on the wire at once (the server searches one while it reduces and sends
        another); requests carry vectors as bytes and ask for primary keys only, with eventual
        consistency (a version is flushed and never written again before it is searched); answers are read as columns
        from the response (``answers.read``), not as pymilvus' one Python object per
        hit, which cost three times the search itself. A request that fails transiently is
        sent again on its own, with ``_call``'s retries."""
        pending: deque = deque()
        for vectors, limit in requests:
            pending.append((vectors, limit, self._submit(name, vectors, limit, search)))
            if len(pending) >= in_flight:
                yield self._collect(name, search, *pending.popleft())
        while pending:
            yield self._collect(name, search, *pending.popleft())

    def _submit(self, name: str, vectors: np.ndarray, limit: int, search: SearchParams | int):
        # float32 rows as bytes: pymilvus packs each number of a numpy row separately otherwise
        chosen = _settings(search)
        rows = [row.tobytes() for row in np.ascontiguousarray(chosen.queries(vectors), dtype=np.float32)]
        try:
            return self.client.search(name, data=rows, limit=min(limit, MAX_LIMIT), anns_field=VECTOR_FIELD,
                                      search_params=_search_params(chosen, min(limit, MAX_LIMIT)),
                                      consistency_level="Eventually", _async=True)
        except MilvusException as error:  # refused before sending (e.g. unknown collection): read at collect
            return error

    def _collect(self, name: str, search: SearchParams | int, vectors: np.ndarray, limit: int,
                 future) -> tuple[np.ndarray, np.ndarray]:
        try:
            return answers.read(future, len(vectors), min(limit, MAX_LIMIT))
        except MilvusException:  # again on its own, with retries and a clear error
            return self._call(f"search {name}", lambda: answers.read(self._submit(name, vectors, limit, search),
                                                                     len(vectors), min(limit, MAX_LIMIT)))



def _rows(ids: list, vectors: np.ndarray, titles: list[str], genres: list[str], limits: TextLimits) -> list[dict]:
    """Rows as a version stores them, texts clipped to ``limits``."""
    return [{"item_id": i, VECTOR_FIELD: v, "title": clip_text(t, limits.title), "genres": clip_text(g, limits.genres),
             "genre_list": [clip_text(x, limits.genre) for x in g.split("|") if x][:limits.genre_count]}
            for i, v, t, g in zip(ids, vectors, titles, genres)]


def _settings(search: SearchParams | int) -> SearchParams:
    return search if isinstance(search, SearchParams) else SearchParams(int(search))


def _search_params(search: SearchParams, limit: int) -> dict:
    return {"metric_type": METRIC, "params": search.for_limit(limit)}


def _holds_file(directory: Path) -> bool:
    return directory.is_dir() and any(path.is_file() for path in directory.iterdir())


def _one_line(message: str, keep: int = 400) -> str:
    """A server message as one line; Milvus puts its Go stack traces in some, and the cause
    is at the end, so a long one keeps its end."""
    message = " ".join(message.split())
    return message if len(message) <= keep else "..." + message[-keep:]
